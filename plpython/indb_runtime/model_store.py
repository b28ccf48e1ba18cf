"""Model artifacts that cannot carry code: how ml.train stores a model and how every reader loads it.

PL/Python is untrusted: whatever it deserializes runs as the server's operating-system user. So a model is
never pickled. An ml.train artifact (``artifact_format = 'indb-bundle-v2'``, flavor ``indb``) is a zip file
holding two entries:

  meta.json      task, algorithm, classes, target, the fitted preprocessing (plain JSON), feature names
  model.<ext>    the estimator in a format that holds only numbers:
                   xgboost    model.ubj   booster.save_raw('ubj')  -> XGBRegressor/XGBClassifier.load_model
                   lightgbm   model.txt   booster model text       -> lightgbm.Booster(model_str=...)
                   mlp        model.pt    torch state_dict         -> torch.load(weights_only=True)
                   scikit-learn model.skops skops                  -> skops.io.loads with TRUSTED_SKOPS_TYPES

Every load checks the stored sha256 first (``load_bundle(blob, sha256=...)``). A pickle (the 0.1.0 format,
flavor ``indb-pickle``) is refused with SQLSTATE 0A000 and a hint that says how to re-register the model.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import io
import json
import sys
import zipfile
from typing import Any

import numpy as np

from .errors import IndbRuntimeError

BUNDLE_FORMAT = "indb-bundle-v2"
FLAVOR = "indb"
LEGACY_FLAVORS = ("indb-pickle",)
LEGACY_FORMATS = ("pickle", "sklearn-pickle", "torch-save")
MAX_META_BYTES = 64 * 1024 * 1024

# skops trusts scikit-learn's estimators and numpy's plain types by itself; these are the other types that the
# scikit-learn models ml.train makes hold (found with skops.io.get_untrusted_types on every algorithm;
# tests/unit/test_train_unit.py keeps the list complete). Anything else is refused.
TRUSTED_SKOPS_TYPES = frozenset(
    {
        "sklearn.tree._tree.Tree",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "sklearn.neighbors._kd_tree.KDTree",
        "sklearn.neighbors._ball_tree.BallTree",
        "sklearn.metrics._dist_metrics.EuclideanDistance64",
        "sklearn.metrics._dist_metrics.ManhattanDistance64",
        "sklearn.metrics._dist_metrics.MinkowskiDistance64",
        "sklearn.metrics._dist_metrics.ChebyshevDistance64",
    }
)


def refused_legacy(where: str) -> IndbRuntimeError:
    return IndbRuntimeError(
        "0A000",
        f"{where} is stored as a Python pickle, which indb no longer loads: a pickle can run code when it is read",
        detail="indb 0.2.0 loads models only from formats that hold no code (xgboost UBJ, lightgbm text, "
        "torch state_dict, skops with trusted scikit-learn types)",
        hint="re-register it: retrain with ml.train(project) (it reuses the project's relation and settings), "
        "or register the model in a safe format with registry.register_model",
    )


def sha256_hex(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def check_sha(blob: bytes, expected: str | None, where: str) -> None:
    """The stored sha256 must match the bytes: refuse a changed (or hash-less) artifact."""
    got = sha256_hex(blob)
    if expected is None or got != expected:
        raise IndbRuntimeError(
            "XX001",
            f"{where} fails its sha256 check: the stored artifact was changed",
            detail=f"stored sha256 {expected or 'missing'}, artifact bytes hash to {got}",
            hint="do not load it; retrain the model with ml.train or register it again",
        )


# ---------------------------------------------------------------------------------------------------------
# estimators <-> bytes
# ---------------------------------------------------------------------------------------------------------
class LightGBMModel:
    """A lightgbm Booster (loaded from model text) with the scikit-learn face ml.train's code uses."""

    def __init__(self, booster: Any, task: str):
        self.booster = booster
        self.task = task

    def predict(self, X: np.ndarray, pred_contrib: bool = False) -> np.ndarray:
        if pred_contrib:
            return np.asarray(self.booster.predict(X, pred_contrib=True))
        out = np.asarray(self.booster.predict(X))
        if self.task != "classification":
            return out
        return (out > 0.5).astype(np.int64) if out.ndim == 1 else out.argmax(axis=1)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        out = np.asarray(self.booster.predict(X), dtype=np.float64)
        return np.column_stack([1.0 - out, out]) if out.ndim == 1 else out

    @property
    def feature_importances_(self) -> np.ndarray:
        return np.asarray(self.booster.feature_importance(importance_type="split"), dtype=np.float64)


def _dump_estimator(algorithm: str, est: Any) -> tuple[str, bytes, dict]:
    """(entry name, bytes, extra meta) for a fitted estimator."""
    if algorithm == "xgboost":
        return "model.ubj", bytes(est.get_booster().save_raw("ubj")), {"xgb_class": type(est).__name__}
    if algorithm == "lightgbm":
        booster = est.booster if isinstance(est, LightGBMModel) else est.booster_
        return "model.txt", booster.model_to_string().encode(), {}
    if algorithm == "mlp":
        import torch

        state, weights = est.to_state()
        buf = io.BytesIO()
        torch.save(weights, buf)
        return "model.pt", buf.getvalue(), {"mlp": state}
    return "model.skops", skops_io().dumps(est), {}


class _RefuseTorch(importlib.abc.MetaPathFinder):
    """An import finder that answers torch and its submodules with ModuleNotFoundError."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def skops_io() -> Any:
    """skops.io, imported without torch when torch is not loaded yet. Importing skops.io lists scikit-learn's
    estimators (sklearn.utils.discovery.all_estimators), which walks every scikit-learn package and so imports
    sklearn.externals.array_api_compat.torch, and torch with it: ~2 s and ~150 MB in each backend that loads or
    saves a scikit-learn model and never uses torch. The walk skips a package that fails to import; nothing of
    skops or of the models it loads needs torch, and a later ``import torch`` (an embedding) works as usual."""
    if "skops.io" in sys.modules or "torch" in sys.modules:
        import skops.io as sio

        return sio
    finder = _RefuseTorch()
    sys.meta_path.insert(0, finder)
    try:
        import skops.io as sio
    finally:
        sys.meta_path.remove(finder)
    return sio


def _load_estimator(algorithm: str, task: str, name: str, data: bytes, meta: dict, where: str) -> Any:
    if algorithm == "xgboost" and name == "model.ubj":
        import xgboost as xgb

        cls = {"XGBRegressor": xgb.XGBRegressor, "XGBClassifier": xgb.XGBClassifier}.get(meta.get("xgb_class", ""))
        if cls is None:
            raise _corrupt(where, f"unknown xgboost class {meta.get('xgb_class')!r}")
        est = cls()
        est.load_model(bytearray(data))
        return est
    if algorithm == "lightgbm" and name == "model.txt":
        import lightgbm as lgb

        return LightGBMModel(lgb.Booster(model_str=data.decode()), task)
    if algorithm == "mlp" and name == "model.pt":
        import torch

        from .mlp import TorchMLP

        weights = torch.load(io.BytesIO(data), weights_only=True)
        return TorchMLP.from_state(meta["mlp"], weights)
    if name == "model.skops":
        return load_skops(data, where)
    raise _corrupt(where, f"entry {name} does not fit algorithm {algorithm}")


def load_skops(data: bytes, where: str, trusted: frozenset[str] = TRUSTED_SKOPS_TYPES) -> Any:
    """A scikit-learn estimator from skops bytes, refusing any type outside ``trusted``."""
    sio = skops_io()

    types = set(sio.get_untrusted_types(data=data))
    bad = sorted(types - trusted)
    if bad:
        raise IndbRuntimeError(
            "0A000",
            f"{where} holds types indb does not trust: {', '.join(bad[:5])}",
            detail="a scikit-learn model is loaded only when every type it holds is on indb's trusted list",
            hint="retrain the model with ml.train",
        )
    return sio.loads(data, trusted=sorted(types))


def _corrupt(where: str, why: str) -> IndbRuntimeError:
    return IndbRuntimeError(
        "XX001", f"{where} is not a readable indb model bundle: {why}", hint="retrain the model with ml.train"
    )


# ---------------------------------------------------------------------------------------------------------
# bundles
# ---------------------------------------------------------------------------------------------------------
def dump_bundle(meta: dict, est: Any) -> bytes:
    """The artifact bytes of an ml.train model: meta (plain JSON) + the estimator in a code-free format."""
    name, data, extra = _dump_estimator(meta["algorithm"], est)
    meta = dict(meta, format=BUNDLE_FORMAT, model_entry=name, **extra)
    buf = io.BytesIO()
    try:
        meta_json = json.dumps(meta, allow_nan=False)
    except ValueError:  # NaN or an infinity: the data's values overflowed the fit's arithmetic (e.g. 1e300)
        raise IndbRuntimeError(
            "22003",
            "the trained model holds an infinite or NaN parameter: the data's values are too large to compute with "
            "(their squares overflow double precision)",
            hint="scale the large columns (divide them by a power of ten), or leave such rows out",
        ) from None
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("meta.json", meta_json)
        z.writestr(name, data)
    return buf.getvalue()


def load_bundle(
    blob: bytes, sha256: str | None, artifact_format: str | None, flavor: str | None, where: str = "the model"
) -> dict:
    """Check the hash, refuse pickles, and read a bundle: its meta with the estimator under ``"est"``."""
    blob = bytes(blob)
    check_sha(blob, sha256, where)
    if flavor in LEGACY_FLAVORS or artifact_format in LEGACY_FORMATS or blob[:1] == b"\x80":
        raise refused_legacy(where)
    if artifact_format != BUNDLE_FORMAT:
        raise IndbRuntimeError(
            "0A000",
            f"{where} is a {artifact_format or 'raw'} artifact, not a model trained by ml.train",
            hint="ml.predict serves models trained by ml.train; load registered models with the client's load_model",
        )
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            info = z.getinfo("meta.json")
            if info.file_size > MAX_META_BYTES:
                raise _corrupt(where, "meta.json is too large")
            meta = json.loads(z.read(info))
            name = meta.get("model_entry")
            if name not in ("model.ubj", "model.txt", "model.pt", "model.skops"):
                raise _corrupt(where, f"unknown model entry {name!r}")
            data = z.read(name)
    except (zipfile.BadZipFile, KeyError, ValueError) as e:
        raise _corrupt(where, str(e)) from None
    meta["est"] = _load_estimator(meta["algorithm"], meta["task"], name, data, meta, where)
    return meta
