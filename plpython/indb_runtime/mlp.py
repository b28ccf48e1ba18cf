"""A small torch MLP with a scikit-learn face (fit / predict / predict_proba), stored as JSON + a state_dict.

Inputs are standardized inside the model (and the target, for regression), so it trains well without
asking for ``scale`` in preprocess. ``tick(epoch, epochs)`` runs after every epoch (cancel point).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import IndbRuntimeError


class TorchMLP:
    def __init__(
        self,
        task: str = "regression",
        hidden_layers=(64, 64),
        epochs: int = 50,
        batch_size: int = 256,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        random_state: int = 0,
    ):
        self.task = task
        self.hidden_layers = list(hidden_layers)
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.random_state = random_state
        self.net: Any = None
        self.loss_curve_: list[float] = []

    def get_params(self, deep: bool = True) -> dict:
        return {
            k: getattr(self, k)
            for k in ("task", "hidden_layers", "epochs", "batch_size", "learning_rate", "weight_decay", "random_state")
        }

    def set_params(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)
        return self

    def _build(self, n_in: int, n_out: int):
        import torch.nn as nn

        layers, prev = [], n_in
        for h in self.hidden_layers:
            layers += [nn.Linear(prev, int(h)), nn.ReLU()]
            prev = int(h)
        layers.append(nn.Linear(prev, n_out))
        return nn.Sequential(*layers)

    def fit(self, X, y, tick=lambda d, t: None):
        import torch

        torch.manual_seed(self.random_state)
        # the standardization is computed in float64 (in float32, the squares of values above ~1.8e19 overflowed
        # to an infinite std) and kept in float32, the network's type
        X64 = np.asarray(X, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            self.mu_ = X64.mean(axis=0).astype(np.float32)
            self.sd_ = X64.std(axis=0).astype(np.float32)
        if not (np.all(np.isfinite(self.mu_)) and np.all(np.isfinite(self.sd_))):
            raise IndbRuntimeError(
                "22003",
                "mlp computes in float32: the features' spread is beyond its range (3.4e38)",
                hint="scale the features (divide by a power of ten) or train with another algorithm",
            )
        self.sd_[self.sd_ == 0] = 1.0
        X = X64.astype(np.float32)
        Xt = torch.from_numpy((X - self.mu_) / self.sd_)
        if self.task == "classification":
            self.classes_ = np.unique(y)
            n_out = len(self.classes_)
            yt = torch.from_numpy(np.searchsorted(self.classes_, y).astype(np.int64))
            loss_fn: Any = torch.nn.CrossEntropyLoss()
        else:
            y64 = np.asarray(y, dtype=np.float64)
            self.ymu_, self.ysd_ = float(y64.mean()), float(y64.std() or 1.0)
            if not (math.isfinite(self.ymu_) and math.isfinite(self.ysd_)):
                raise IndbRuntimeError(
                    "22003",
                    "mlp computes in float32: the target's spread is beyond its range (3.4e38)",
                    hint="scale the target (divide by a power of ten) or train with another algorithm",
                )
            y = y64.astype(np.float32)
            n_out = 1
            yt = torch.from_numpy(((y - self.ymu_) / self.ysd_).reshape(-1, 1))
            loss_fn = torch.nn.MSELoss()
        self.net = self._build(X.shape[1], n_out)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        n = len(Xt)
        g = torch.Generator().manual_seed(self.random_state)
        self.loss_curve_ = []
        for epoch in range(int(self.epochs)):
            perm = torch.randperm(n, generator=g)
            total = 0.0
            self.net.train()
            for i in range(0, n, int(self.batch_size)):
                idx = perm[i : i + int(self.batch_size)]
                opt.zero_grad()
                loss = loss_fn(self.net(Xt[idx]), yt[idx])
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            self.loss_curve_.append(total / n)
            if not math.isfinite(total):
                raise IndbRuntimeError(
                    "22000",
                    f"mlp training diverged: the loss became {total} in epoch {epoch + 1}",
                    hint=f"lower learning_rate (now {self.learning_rate}), or scale the features",
                )
            tick(epoch + 1, int(self.epochs))
        self.net.eval()
        return self

    def _forward(self, X):
        import torch

        with torch.no_grad():
            x = torch.from_numpy(((np.asarray(X, dtype=np.float32) - self.mu_) / self.sd_).astype(np.float32))
            return self.net(x).numpy()

    def predict(self, X):
        out = self._forward(X)
        if self.task == "classification":
            return self.classes_[out.argmax(axis=1)]
        return out[:, 0].astype(np.float64) * self.ysd_ + self.ymu_

    def predict_proba(self, X):
        out = self._forward(X).astype(np.float64)
        e = np.exp(out - out.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    # the registry stores numbers only (indb_runtime.model_store): JSON state + a torch state_dict
    def to_state(self) -> tuple[dict, dict]:
        """(JSON-able state, the network's state_dict); from_state(*to_state()) gives the same model."""
        state: dict[str, Any] = {"params": self.get_params(), "loss_curve": list(self.loss_curve_)}
        state["mu"], state["sd"] = self.mu_.tolist(), self.sd_.tolist()
        if self.task == "classification":
            state["classes"] = self.classes_.tolist()
        else:
            state["ymu"], state["ysd"] = self.ymu_, self.ysd_
        state["n_in"], state["n_out"] = self.net[0].in_features, self.net[-1].out_features
        return state, self.net.state_dict()

    @classmethod
    def from_state(cls, state: dict, weights: dict) -> TorchMLP:
        m = cls(**state["params"])
        m.loss_curve_ = list(state.get("loss_curve", []))
        m.mu_ = np.asarray(state["mu"], dtype=np.float32)
        m.sd_ = np.asarray(state["sd"], dtype=np.float32)
        if m.task == "classification":
            m.classes_ = np.asarray(state["classes"])
        else:
            m.ymu_, m.ysd_ = float(state["ymu"]), float(state["ysd"])
        m.net = m._build(int(state["n_in"]), int(state["n_out"]))
        m.net.load_state_dict(weights)
        m.net.eval()
        return m
