"""Algorithms for ml.train: names per task, estimator construction with hyperparameter checks, fitting in
chunks (a ``tick`` callback between chunks lets statement_timeout / cancel interrupt), training curves.

No Postgres here; ``tick(done, total)`` is whatever the caller passes (in the database: a cheap
plpy.execute plus a NOTICE with progress).
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import IndbRuntimeError, invalid

TASKS = ("regression", "classification", "clustering")

ALGORITHMS = {
    "regression": [
        "xgboost",
        "lightgbm",
        "random_forest",
        "extra_trees",
        "gradient_boosting",
        "hist_gradient_boosting",
        "linear",
        "ridge",
        "lasso",
        "elastic_net",
        "svm",
        "knn",
        "mlp",
    ],
    "classification": [
        "xgboost",
        "lightgbm",
        "random_forest",
        "extra_trees",
        "gradient_boosting",
        "hist_gradient_boosting",
        "logistic",
        "ridge",
        "svm",
        "knn",
        "mlp",
    ],
    "clustering": ["kmeans", "mini_batch_kmeans"],
}

# Defaults chosen where the library default is poor or slow for in-database use.
DEFAULTS: dict[str, dict[str, Any]] = {
    "xgboost": {"n_estimators": 100, "random_state": 0, "n_jobs": None},
    "lightgbm": {"n_estimators": 100, "random_state": 0, "verbose": -1},
    "random_forest": {"n_estimators": 100, "random_state": 0},
    "extra_trees": {"n_estimators": 100, "random_state": 0},
    "gradient_boosting": {"random_state": 0},
    "hist_gradient_boosting": {"random_state": 0},
    "kmeans": {"n_clusters": 8, "random_state": 0, "n_init": "auto"},
    "mini_batch_kmeans": {"n_clusters": 8, "random_state": 0, "n_init": "auto"},
    "logistic": {"max_iter": 1000},
}

# Types of hyperparameters whose library default is None (so the default cannot tell the type).
KNOWN_TYPES = {
    "max_depth": int,
    "n_estimators": int,
    "num_leaves": int,
    "min_child_samples": int,
    "n_jobs": int,
    "learning_rate": float,
    "subsample": float,
    "colsample_bytree": float,
    "reg_alpha": float,
    "reg_lambda": float,
    "min_child_weight": float,
    "gamma": (float, str),
    "max_bin": int,
    "random_state": int,
    "max_leaf_nodes": int,
    "max_features": (int, float, str),
    "tree_method": str,
    "booster": str,
    "objective": str,
    "hidden_layers": list,
    "epochs": int,
    "batch_size": int,
    "weight_decay": float,
    "n_clusters": int,
    "n_neighbors": int,
    "C": float,
    "alpha": float,
    "l1_ratio": float,
}


def valid_algorithms(task: str) -> list[str]:
    return ALGORITHMS[task]


def check_task(task: str | None) -> str:
    if task is None:
        raise invalid(
            "task is missing",
            detail="tasks: " + ", ".join(TASKS),
            hint="pass task => 'regression' (or classification, clustering) on the first ml.train of a project",
        )
    if task not in TASKS:
        raise invalid(
            f'unknown task "{task}"',
            detail="tasks: " + ", ".join(TASKS),
            hint="pass task => 'regression' (or classification, clustering) on the first ml.train of a project",
        )
    return task


def check_algorithm(task: str, algorithm: str) -> str:
    if algorithm not in ALGORITHMS[task]:
        raise invalid(
            f'unknown algorithm "{algorithm}" for task {task}',
            detail=f"valid algorithms for {task}: " + ", ".join(ALGORITHMS[task]),
        )
    return algorithm


def estimator_class(task: str, algorithm: str):
    reg = task == "regression"
    if algorithm == "xgboost":
        import xgboost as xgb

        return xgb.XGBRegressor if reg else xgb.XGBClassifier
    if algorithm == "lightgbm":
        import lightgbm as lgb

        return lgb.LGBMRegressor if reg else lgb.LGBMClassifier
    if algorithm == "mlp":
        from .mlp import TorchMLP

        return TorchMLP
    from sklearn import cluster, ensemble, linear_model, neighbors, svm

    table = {
        "random_forest": (ensemble.RandomForestRegressor, ensemble.RandomForestClassifier),
        "extra_trees": (ensemble.ExtraTreesRegressor, ensemble.ExtraTreesClassifier),
        "gradient_boosting": (ensemble.GradientBoostingRegressor, ensemble.GradientBoostingClassifier),
        "hist_gradient_boosting": (ensemble.HistGradientBoostingRegressor, ensemble.HistGradientBoostingClassifier),
        "linear": (linear_model.LinearRegression, None),
        "ridge": (linear_model.Ridge, linear_model.RidgeClassifier),
        "lasso": (linear_model.Lasso, None),
        "elastic_net": (linear_model.ElasticNet, None),
        "logistic": (None, linear_model.LogisticRegression),
        "svm": (svm.SVR, svm.SVC),
        "knn": (neighbors.KNeighborsRegressor, neighbors.KNeighborsClassifier),
        "kmeans": (cluster.KMeans, cluster.KMeans),
        "mini_batch_kmeans": (cluster.MiniBatchKMeans, cluster.MiniBatchKMeans),
    }
    return table[algorithm][0 if reg or task == "clustering" else 1]


def _param_names(cls) -> dict[str, Any]:
    """Constructor parameters and defaults (xgboost/lightgbm take **kwargs: use get_params())."""
    try:
        return dict(cls().get_params())
    except Exception:  # pragma: no cover
        sig = inspect.signature(cls.__init__)
        return {k: p.default for k, p in sig.parameters.items() if k not in ("self", "kwargs")}


def _type_ok(value, expected) -> bool:
    if expected is None:
        return True
    exp = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):
        return bool in exp
    for e in exp:
        if e is float and isinstance(value, (int, float)):
            return True
        if e is int and isinstance(value, int):
            return True
        if e is int and isinstance(value, float) and value.is_integer():
            return True
        if isinstance(value, e):
            return True
    return False


# LightGBM takes any of its native parameters through the scikit-learn wrapper, and some of them name files or
# the network: distributed training listens on a port and waits for the listed machines (for up to `time_out`,
# 120 minutes by default), and the file parameters read or write paths of the server, all as the database
# server's OS user. They are refused under every alias (LightGBM's own alias table); `tree_learner` may only be
# "serial".
LIGHTGBM_REFUSED = frozenset(
    {
        # distributed training
        "machines",
        "machine_list_filename",
        "local_listen_port",
        "num_machines",
        "time_out",
        # files (the command-line tool's input, output and configuration, forced splits and bins)
        "config",
        "data",
        "valid",
        "input_model",
        "output_model",
        "output_result",
        "convert_model",
        "save_binary",
        "snapshot_freq",
        "forcedsplits_filename",
        "forcedbins_filename",
        "parser_config_file",
        "task",
    }
)
# thread counts (LightGBM's own aliases resolve to num_threads through its alias table)
THREAD_PARAMS = frozenset({"n_jobs", "nthread", "nthreads", "num_threads", "num_thread"})


@functools.cache
def _lightgbm_aliases() -> dict[str, str]:
    """{any name LightGBM accepts for a parameter: its canonical name}, read once from LightGBM's alias table."""
    from lightgbm.basic import _ConfigAliases

    return {
        alias: canonical
        for canonical, aliases in _ConfigAliases._get_all_param_aliases().items()
        for alias in (canonical, *aliases)
    }


def _check_lightgbm_param(name: str, canonical: str, value: Any) -> None:
    refused = canonical in LIGHTGBM_REFUSED
    if canonical == "tree_learner" and str(value).strip().lower() not in ("serial", "serial_tree_learner"):
        refused = True
    if refused:
        also = f' ("{canonical}")' if canonical != name else ""
        raise invalid(
            f'hyperparameter "{name}"{also} of lightgbm is not allowed: it names a file or the network, which '
            "LightGBM would open as the database server's OS user",
            detail="indb refuses LightGBM's distributed training (machines, ports, tree_learner other than "
            "serial) and its file parameters under every alias",
            hint="train on this server's rows through the training query; leave these parameters out",
        )


def _check_threads(algorithm: str, name: str, canonical: str, value: Any) -> None:
    """A thread count above the server's cores is refused: each is an OS thread of the database server (10,000 of
    them in one training statement take the process table that new connections need), for no speed."""
    if canonical not in THREAD_PARAMS and name not in THREAD_PARAMS:
        return
    cores = os.cpu_count() or 1
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > cores:
        raise invalid(
            f'hyperparameter "{name}" of {algorithm} must be at most {cores} (this server\'s CPU cores), got {value}',
            hint=f"leave it out, or pass a number from 1 to {cores} (-1 or 0 mean all cores where the library allows)",
        )


def check_hyperparams(task: str, algorithm: str, hyperparams: dict) -> dict:
    """Unknown names and wrong types fail here with the parameter named (before any fitting)."""
    if not isinstance(hyperparams, dict):
        raise invalid("hyperparams must be a JSON object", hint="e.g. hyperparams => '{\"max_depth\": 6}'")
    cls = estimator_class(task, algorithm)
    known = _param_names(cls)
    out: dict[str, Any] = dict(DEFAULTS.get(algorithm, {}))
    if algorithm in ("kmeans", "mini_batch_kmeans") and "n_clusters" not in hyperparams:
        out["n_clusters"] = 8
    for k, v in hyperparams.items():
        canonical = _lightgbm_aliases().get(k, k) if algorithm == "lightgbm" else k
        if algorithm == "lightgbm":
            _check_lightgbm_param(k, canonical, v)
        _check_threads(algorithm, k, canonical, v)
        if k not in known and algorithm not in ("xgboost", "lightgbm"):
            raise invalid(
                f'unknown hyperparameter "{k}" for {algorithm}',
                detail="valid hyperparameters: " + ", ".join(sorted(known)),
            )
        default = known.get(k)
        expected = KNOWN_TYPES.get(k)
        if expected is not None and v is not None and not _type_ok(v, expected):
            names = "/".join(e.__name__ for e in (expected if isinstance(expected, tuple) else (expected,)))
            raise invalid(
                f'hyperparameter "{k}" of {algorithm} must be {names}, got {type(v).__name__} {v!r}',
                hint=f"e.g. hyperparams => '{{\"{k}\": {json_example(expected, default)}}}'",
            )
        if isinstance(v, float) and (expected is int or expected == (int,)) and v.is_integer():
            v = int(v)
        out[k] = v
    return out


def json_example(expected, default) -> str:
    e = expected[0] if isinstance(expected, tuple) else expected
    if default is not None and not isinstance(default, str):
        return str(default).lower() if isinstance(default, bool) else str(default)
    return {int: "6", float: "0.1", str: '"auto"', list: "[64, 64]", bool: "true"}.get(e, "1")


def make(task: str, algorithm: str, params: dict):
    cls = estimator_class(task, algorithm)
    try:
        return cls(**params)
    except (TypeError, ValueError) as e:
        raise invalid(f"{algorithm} rejected the hyperparameters: {e}") from None


def _chunked_forest(est, X, y, tick) -> None:
    """Random forests / extra trees / gradient boosting grow in chunks with warm_start so cancel works."""
    total = int(est.get_params().get("n_estimators", 100))
    step = max(1, min(25, total // 4 or 1))
    est.set_params(warm_start=True)
    n = 0
    while n < total:
        n = min(total, n + step)
        est.set_params(n_estimators=n)
        est.fit(X, y)
        tick(n, total)
    est.set_params(warm_start=False)


# algorithms that compute in float32: a value beyond its range becomes infinity inside the library (xgboost:
# "Label contains NaN, infinity or a value too large", with a C++ stack trace)
FLOAT32_ALGORITHMS = ("xgboost", "lightgbm", "mlp")
FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_float32_range(algorithm: str, X, y, hint: str | None = None) -> None:
    """22003 when ``algorithm`` computes in float32 and the features or the target hold a value beyond it."""
    if algorithm not in FLOAT32_ALGORITHMS:
        return
    for what, a in (("the target", y), ("a feature", X)):
        if a is None:
            continue
        a = np.asarray(getattr(a, "data", a) if hasattr(a, "tocsr") else a)  # a sparse matrix: its stored values
        if a.dtype.kind != "f" or a.size == 0:
            continue
        # two passes without a copy (predict_batch calls this for every chunk); all-NaN gives NaN: no error
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            hi, lo = float(np.nanmax(a)), float(np.nanmin(a))
        if hi > FLOAT32_MAX or lo < -FLOAT32_MAX:
            m = hi if hi > -lo else -lo
            raise IndbRuntimeError(
                "22003",
                f"{algorithm} computes in float32 (up to 3.4e38), and {what} holds a value of {m:.3g}",
                hint=hint
                or "scale that column (divide it by a power of ten) or train with algorithm => 'linear' "
                "(or another scikit-learn algorithm: float64)",
            )


def fit(
    task: str,
    algorithm: str,
    est,
    X: np.ndarray,
    y: np.ndarray | None,
    eval_set: tuple | None = None,
    tick: Callable[[int, int], None] = lambda d, t: None,
) -> dict:
    """Fit ``est`` in place; returns per-iteration curves {name: [values]} where the library has them."""
    curves: dict[str, list] = {}
    check_float32_range(algorithm, X, y)
    if eval_set is not None:
        check_float32_range(algorithm, *eval_set)
    try:
        if algorithm == "xgboost":
            import xgboost as xgb

            total = int(est.get_params().get("n_estimators") or 100)

            class Tick(xgb.callback.TrainingCallback):
                def after_iteration(self, model, epoch, evals_log):
                    if epoch % 10 == 9 or epoch + 1 == total:
                        tick(epoch + 1, total)
                    return False

            est.set_params(callbacks=[Tick()])
            kw: dict[str, Any] = {"verbose": False}
            if eval_set is not None:
                kw["eval_set"] = [eval_set]
            est.fit(X, y, **kw)
            est.set_params(callbacks=None)
            if eval_set is not None:
                for name, vals in est.evals_result().get("validation_0", {}).items():
                    curves["test_" + name] = [float(v) for v in vals]
        elif algorithm == "lightgbm":
            total = int(est.get_params().get("n_estimators") or 100)

            def cb(env):
                if env.iteration % 10 == 9 or env.iteration + 1 == total:
                    tick(env.iteration + 1, total)

            kw = {"callbacks": [cb]}
            if eval_set is not None:
                kw["eval_set"] = [eval_set]
            est.fit(X, y, **kw)
            if eval_set is not None:
                for name, vals in est.evals_result_.get("valid_0", {}).items():
                    curves["test_" + name] = [float(v) for v in vals]
        elif algorithm in ("random_forest", "extra_trees"):
            _chunked_forest(est, X, y, tick)
        elif algorithm == "gradient_boosting":
            _chunked_forest(est, X, y, tick)
            curves["train_loss"] = [float(v) for v in est.train_score_]
        elif algorithm == "mlp":
            est.fit(X, y, tick=tick)
            curves["train_loss"] = list(est.loss_curve_)
        elif task == "clustering":
            est.fit(X)
            tick(1, 1)
        else:
            est.fit(X, y)
            tick(1, 1)
    except IndbRuntimeError:
        raise
    except Exception as e:
        if type(e).__module__.startswith(("plpy", "spiexceptions")) or type(e).__name__ in (
            "QueryCanceled",
            "SPIError",
        ):
            raise
        # errors of xgboost / lightgbm native code (XGBoostError is a ValueError: tested first)
        if "XGBoostError" in type(e).__name__ or "LightGBMError" in type(e).__name__:
            raise invalid(
                f"{algorithm} rejected the training set-up: {str(e).splitlines()[0][:500]}", hint="check hyperparams"
            ) from None
        if isinstance(e, (TypeError, ValueError)):
            if type(e).__name__ == "InvalidParameterError" or "parameter" in str(e).lower():
                raise invalid(f"{algorithm}: {e}", hint="fix the hyperparameter named above") from None
            raise IndbRuntimeError("38000", f"{algorithm} training failed: {e}") from None
        raise
    return curves


def predict(task: str, est, X: np.ndarray) -> np.ndarray:
    return np.asarray(est.predict(X), dtype=np.float64)


def predict_proba(est, X: np.ndarray) -> np.ndarray | None:
    if hasattr(est, "predict_proba"):
        try:
            return np.asarray(est.predict_proba(X), dtype=np.float64)
        except AttributeError:  # SVC without probability=True
            pass
    if hasattr(est, "decision_function"):
        d = np.asarray(est.decision_function(X), dtype=np.float64)
        if d.ndim == 1:
            p = 1.0 / (1.0 + np.exp(-d))
            return np.column_stack([1 - p, p])
        e = np.exp(d - d.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return None


def regression_metrics(y: np.ndarray, p: np.ndarray) -> dict:
    # computed on targets scaled to at most 1 in magnitude: squares of targets near 1e200 overflowed (r2 and rmse
    # came out NaN, stored as null, for a model that fitted them well); r2 does not depend on the scale
    scale = float(np.max(np.abs(y))) if len(y) else 0.0
    if not math.isfinite(scale) or scale == 0.0:
        scale = 1.0
    ys, err = y / scale, (p - y) / scale
    ss_res = float(np.sum(err**2))
    ss_tot = float(np.sum((ys - ys.mean()) ** 2))
    return {
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0,
        "rmse": scale * math.sqrt(ss_res / len(y)),
        "mae": scale * float(np.mean(np.abs(err))),
    }


def classification_metrics(y: np.ndarray, p: np.ndarray, proba: np.ndarray | None, n_classes: int) -> dict:
    from sklearn import metrics as skm

    yi, pi = y.astype(int), p.astype(int)
    avg = "binary" if n_classes == 2 else "macro"
    out: dict[str, float | None] = {
        "accuracy": float(skm.accuracy_score(yi, pi)),
        "precision": float(skm.precision_score(yi, pi, average=avg, zero_division=0)),
        "recall": float(skm.recall_score(yi, pi, average=avg, zero_division=0)),
        "f1": float(skm.f1_score(yi, pi, average=avg, zero_division=0)),
    }
    if proba is not None and proba.shape[1] == n_classes:
        labels = list(range(n_classes))
        try:
            if n_classes == 2:
                out["roc_auc"] = float(skm.roc_auc_score(yi, proba[:, 1]))
            else:
                out["roc_auc"] = float(skm.roc_auc_score(yi, proba, multi_class="ovr", labels=labels))
        except ValueError:
            out["roc_auc"] = None  # only one class in the test split
        out["log_loss"] = float(skm.log_loss(yi, np.clip(proba, 1e-15, 1), labels=labels))
    return out


def clustering_metrics(X: np.ndarray, labels: np.ndarray) -> dict:
    from sklearn import metrics as skm

    k = len(set(labels.tolist()))
    if k < 2 or k >= len(labels):
        return {"silhouette": None, "clusters": k}
    n = min(len(labels), 5000)
    return {"silhouette": float(skm.silhouette_score(X, labels, sample_size=n, random_state=0)), "clusters": k}
