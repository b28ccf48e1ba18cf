"""Per-feature contributions (SHAP for tree models, exact for linear models) and feature importance,
summed back from expanded features (one-hot columns, vector elements) to the original columns.

``contributions`` + ``base_value`` add up to ``raw_output``: the prediction for regression, the
log-odds (xgboost, lightgbm, logistic) or the probability (sklearn forests) for classification.
"""

from __future__ import annotations

import numpy as np

from .errors import IndbRuntimeError

LINEAR = ("linear", "ridge", "lasso", "elastic_net", "logistic")
SKLEARN_TREES = ("random_forest", "extra_trees", "gradient_boosting")


def _not_supported(algorithm: str, what: str) -> IndbRuntimeError:
    return IndbRuntimeError(
        "0A000",
        f"{what} is not available for {algorithm} models",
        detail="supported: xgboost, lightgbm, random_forest, extra_trees, gradient_boosting, "
        "linear, ridge, lasso, elastic_net, logistic",
        hint="train the project with one of those algorithms, or deploy one",
    )


def _group(values: np.ndarray, groups: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for g, v in zip(groups, values):
        out[g] = out.get(g, 0.0) + float(v)
    return out


def contributions(bundle: dict, X: np.ndarray) -> dict:
    """Explain one row X (1 x p, already preprocessed)."""
    alg, task, est = bundle["algorithm"], bundle["task"], bundle["est"]
    groups = bundle["groups"]
    cls_index = None
    output = "value"
    if task == "clustering":
        raise _not_supported(alg, "ml.explain")
    if task == "classification":
        cls_index = int(np.asarray(est.predict(X)).ravel()[0]) if alg not in ("xgboost", "lightgbm") else None
    if alg == "xgboost":
        import xgboost as xgb

        c = est.get_booster().predict(xgb.DMatrix(X), pred_contribs=True)
        if c.ndim == 3:  # multiclass: (rows, classes, p+1)
            cls_index = int(np.argmax(est.predict_proba(X)[0]))
            c = c[:, cls_index, :]
        row = c[0]
        output = "log_odds" if task == "classification" else "value"
    elif alg == "lightgbm":
        c = np.asarray(est.predict(X, pred_contrib=True))
        p = X.shape[1]
        if task == "classification" and c.shape[1] > p + 1:
            cls_index = int(np.argmax(est.predict_proba(X)[0]))
            c = c[:, cls_index * (p + 1) : (cls_index + 1) * (p + 1)]
        row = c[0]
        output = "log_odds" if task == "classification" else "value"
    elif alg in SKLEARN_TREES:
        import shap

        ex = shap.TreeExplainer(est)
        sv = ex.shap_values(X, check_additivity=False)
        base = np.atleast_1d(ex.expected_value)
        sv = np.asarray(sv)
        if task == "classification":
            # (rows, p, classes) in shap>=0.45 for multi-output models
            if sv.ndim == 3:
                k = cls_index if sv.shape[2] > 1 else 0
                if sv.shape[2] == 1:
                    k = 0
                vals, b = sv[0, :, k], base[k if k is not None and len(base) > k else 0]
            else:
                vals, b = sv[0], base[0]
            output = "log_odds" if alg == "gradient_boosting" else "probability"
        else:
            vals, b = sv[0], base[0]
        row = np.append(vals, b)
    elif alg in LINEAR:
        coef = np.atleast_2d(est.coef_)
        intercept = np.atleast_1d(est.intercept_)
        k = 0
        if coef.shape[0] > 1:
            k = cls_index
        mean = np.asarray(bundle["x_mean"])
        vals = coef[k] * (X[0] - mean)
        b = float(intercept[k] + coef[k] @ mean)
        row = np.append(vals, b)
        output = "log_odds" if task == "classification" else "value"
    else:
        raise _not_supported(alg, "ml.explain")
    contribs, base_value = np.asarray(row[:-1], dtype=np.float64), float(row[-1])
    out = {
        "algorithm": alg,
        "output": output,
        "base_value": base_value,
        "contributions": _group(contribs, groups),
        "raw_output": base_value + float(contribs.sum()),
    }
    if cls_index is not None:
        out["explained_class"] = bundle["classes"][cls_index] if bundle.get("classes") else cls_index
    return out


def importance(bundle: dict) -> dict[str, float]:
    alg, est = bundle["algorithm"], bundle["est"]
    if hasattr(est, "feature_importances_") and alg not in ("hist_gradient_boosting",):
        vals = np.asarray(est.feature_importances_, dtype=np.float64)
    elif alg in LINEAR:
        coef = np.abs(np.atleast_2d(est.coef_)).mean(axis=0)
        vals = coef * np.asarray(bundle["x_std"])  # effect of one standard deviation
    else:
        raise _not_supported(alg, "ml.feature_importance")
    total = float(vals.sum())
    if total > 0:
        vals = vals / total
    return _group(vals, bundle["groups"])
