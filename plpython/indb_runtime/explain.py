"""Per-feature contributions (SHAP for tree models, exact for linear models) and feature importance,
summed back from expanded features (one-hot columns, vector elements) to the original columns.

``contributions`` + ``base_value`` add up to ``raw_output``: the prediction for regression, the
log-odds (xgboost, lightgbm, logistic) or the probability (sklearn forests) for classification.

Two kinds of importance (ml.feature_importance shows both, and which is which):
* ``mean_abs_shap``: the mean |contribution| of each column over the test rows, as ml.explain computes it;
  ml.train stores it in the model bundle. It says how much each column moves the predictions, so it
  ranks columns the way ml.explain's contributions do.
* the model's own (NATIVE_KINDS): ``gain`` for xgboost and lightgbm (loss reduction of the splits on the
  column), ``impurity`` for scikit-learn forests, ``abs_coefficient`` for linear models. Gain favours
  columns that split cleanly early in the trees: one one-hot column (ocean_proximity = INLAND) can take
  most of the gain while the predictions move more with median_income.
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


def tree_explainer(bundle: dict):
    """shap's TreeExplainer of a scikit-learn tree model, made once per bundle (reading deep trees into it
    takes seconds; the bundle of a deployed model is cached per backend)."""
    ex = bundle.get("_tree_explainer")
    if ex is None:
        import shap

        ex = bundle["_tree_explainer"] = shap.TreeExplainer(bundle["est"])
    return ex


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
        ex = tree_explainer(bundle)
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


# ---------------------------------------------------------------------------------------------------------
# feature importance: what ml.feature_importance reports
# ---------------------------------------------------------------------------------------------------------
# the model's own importance, by algorithm: (kind, how)
NATIVE_KINDS = {
    "xgboost": "gain",  # mean loss reduction of the splits on the column (xgboost's default)
    "lightgbm": "gain",  # total loss reduction of the splits on the column
    "random_forest": "impurity",  # mean decrease in impurity (scikit-learn's feature_importances_)
    "extra_trees": "impurity",
    "gradient_boosting": "impurity",
    **{a: "abs_coefficient" for a in LINEAR},  # |coefficient| x the column's standard deviation
}
SHAP_KIND = "mean_abs_shap"
SHAP_MAX_ROWS = 500  # test rows explained at training time, at most ...
SHAP_MIN_ROWS = 20  # ... and at least (a model too large to explain that many: its own importance instead)
SHAP_SECONDS = 1.0  # about how long the explaining may take; the row count follows from the model's size
# TreeSHAP costs about leaves x depth^2 per tree and row; measured throughput of that unit per second
SHAP_THROUGHPUT = {"xgboost": 2e8, "lightgbm": 5e8, "gradient_boosting": 8e7, "random_forest": 2e9, "extra_trees": 2e9}
SHAP_BATCH = 64


def _lightgbm_booster(est):
    from .model_store import LightGBMModel

    return est.booster if isinstance(est, LightGBMModel) else est.booster_


def native_importance(bundle: dict) -> tuple[str, dict[str, float]]:
    """The model's own importance per column (sums to 1) and its kind (NATIVE_KINDS)."""
    alg, est = bundle["algorithm"], bundle["est"]
    kind = NATIVE_KINDS.get(alg)
    if kind is None:
        raise _not_supported(alg, "ml.feature_importance")
    if alg == "lightgbm":
        vals = np.asarray(_lightgbm_booster(est).feature_importance(importance_type="gain"), dtype=np.float64)
    elif alg in LINEAR:
        coef = np.abs(np.atleast_2d(est.coef_)).mean(axis=0)
        vals = coef * np.asarray(bundle["x_std"])  # effect of one standard deviation
    else:
        vals = np.asarray(est.feature_importances_, dtype=np.float64)
    return kind, _normalized(vals, bundle["groups"])


def importance(bundle: dict) -> dict[str, float]:
    """The model's own importance per column (sums to 1)."""
    return native_importance(bundle)[1]


def _normalized(vals: np.ndarray, groups: list[str]) -> dict[str, float]:
    vals = np.nan_to_num(np.asarray(vals, dtype=np.float64), nan=0.0)
    total = float(vals.sum())
    if total > 0:
        vals = vals / total
    return _group(vals, groups)


def contribution_matrix(bundle: dict, X: np.ndarray) -> np.ndarray:
    """The contributions of every expanded feature for every row of X, as ml.explain computes them (SHAP for
    trees, exact for linear models): an array (rows, outputs, features); outputs is the number of classes
    of a multiclass model, else 1."""
    alg, task, est = bundle["algorithm"], bundle["task"], bundle["est"]
    p = X.shape[1]
    if task == "clustering":
        raise _not_supported(alg, "ml.explain")
    if alg == "xgboost":
        import xgboost as xgb

        c = np.asarray(est.get_booster().predict(xgb.DMatrix(X), pred_contribs=True))
        return c[:, :, :p] if c.ndim == 3 else c[:, None, :p]
    if alg == "lightgbm":
        c = np.asarray(est.predict(X, pred_contrib=True))
        return c.reshape(c.shape[0], -1, p + 1)[:, :, :p]
    if alg in SKLEARN_TREES:
        sv = np.asarray(tree_explainer(bundle).shap_values(X, check_additivity=False))
        return np.transpose(sv, (0, 2, 1)) if sv.ndim == 3 else sv[:, None, :]  # (rows, p, classes) in shap>=0.45
    if alg in LINEAR:
        coef = np.atleast_2d(est.coef_)
        centered = X - np.asarray(bundle["x_mean"])
        return centered[:, None, :] * coef[None, :, :]
    raise _not_supported(alg, "ml.explain")


def _abs_grouped(c: np.ndarray, groups: list[str]) -> tuple[list[str], np.ndarray]:
    """|contribution| per original column (expanded features summed first, as ml.explain reports them):
    (column names, array (rows * outputs, columns))."""
    names = list(dict.fromkeys(groups))
    index = {g: i for i, g in enumerate(names)}
    m = np.zeros((len(groups), len(names)))
    for j, g in enumerate(groups):
        m[j, index[g]] = 1.0
    flat = c.reshape(-1, c.shape[-1])
    return names, np.abs(flat @ m)


def explain_rows(bundle: dict) -> int:
    """How many test rows ml.train explains for the mean |contribution| importance. It follows from the model's
    size (trees, leaves, depth), never from the clock, so the same training gives the same importance."""
    alg, est = bundle["algorithm"], bundle["est"]
    if alg in LINEAR:
        return SHAP_MAX_ROWS
    if alg == "xgboost":
        depth = int(est.get_params().get("max_depth") or 6)
        booster = est.get_booster()
        trees = booster.num_boosted_rounds() * (len(bundle["classes"]) if _multiclass(bundle) else 1)
        cost = trees * (2 ** min(depth, 16)) * depth * depth
    elif alg == "lightgbm":
        trees = _lightgbm_booster(est).num_trees()
        cost = trees * 31 * 100  # num_leaves 31 (the default), depth about 10
    elif alg in SKLEARN_TREES:
        cost = sum(t.tree_.n_leaves * max(t.tree_.max_depth, 1) ** 2 for t in np.ravel(est.estimators_))
    else:
        return 0
    return int(min(SHAP_MAX_ROWS, SHAP_THROUGHPUT[alg] * SHAP_SECONDS / max(cost, 1)))


def _multiclass(bundle: dict) -> bool:
    return bundle["task"] == "classification" and len(bundle.get("classes") or []) > 2


def shap_importance(bundle: dict, X: np.ndarray, tick=lambda done, total: None) -> dict | None:
    """Mean |contribution| per column over the first rows of X (the test split; explain_rows of them),
    normalized to sum to 1: the mean of the absolute values of ml.explain's contributions (for several
    classes, over the classes too). None where ml.explain has no method for the model, or the model is too
    large to explain SHAP_MIN_ROWS rows in about SHAP_SECONDS. Returns {"kind", "rows", "values"} (what
    ml.train stores in the model bundle)."""
    if bundle["algorithm"] not in NATIVE_KINDS or bundle["task"] == "clustering" or len(X) == 0:
        return None
    n = min(len(X), explain_rows(bundle))
    if n < min(SHAP_MIN_ROWS, len(X)):
        return None
    parts: list[np.ndarray] = []
    for i in range(0, n, SHAP_BATCH):
        parts.append(contribution_matrix(bundle, X[i : min(n, i + SHAP_BATCH)]))
        tick(min(n, i + SHAP_BATCH), n)
    c = np.concatenate(parts)
    names, a = _abs_grouped(c, bundle["groups"])
    return {"kind": SHAP_KIND, "rows": int(c.shape[0]), "values": _normalized(a.mean(axis=0), names)}
