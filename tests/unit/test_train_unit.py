"""Training helpers without Postgres: splits, search grids, hyperparameter checks, target encoding,
metrics, explanations that add up, models stored without pickle (model_store) and loaded back the same."""

from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np
import pytest

from indb_runtime import algorithms as algs
from indb_runtime import explain, model_store, training
from indb_runtime.errors import IndbRuntimeError


def test_splits_are_deterministic_and_disjoint():
    y = np.arange(100, dtype=float)
    tr, te = training.split_indices(100, 0.2, "random", y, "regression")
    tr2, te2 = training.split_indices(100, 0.2, "random", y, "regression")
    assert len(te) == 20 and set(tr).isdisjoint(te) and len(tr) + len(te) == 100
    assert np.array_equal(te, te2) and np.array_equal(tr, tr2)
    tr, te = training.split_indices(100, 0.2, "last", y, "regression")
    assert te.tolist() == list(range(80, 100))
    cls = np.array([0] * 90 + [1] * 10)
    tr, te = training.split_indices(100, 0.2, "stratified", cls, "classification")
    assert (cls[te] == 1).sum() == 2 and (cls[te] == 0).sum() == 18
    with pytest.raises(IndbRuntimeError, match="test_size must be between 0 and 1"):
        training.split_indices(100, 1.5, "random", y, "regression")
    with pytest.raises(IndbRuntimeError, match='unknown test_sampling "first"'):
        training.split_indices(100, 0.2, "first", y, "regression")


def test_search_candidates():
    combos, folds = training.search_candidates("grid", {"a": [1, 2], "b": [3, 4, 5], "cv": 4})
    assert len(combos) == 6 and folds == 4 and {"a": 2, "b": 5} in combos
    combos, folds = training.search_candidates("random", {"a": [1, 2], "b": [3, 4, 5], "n_iter": 3})
    assert len(combos) == 3 and folds == 3
    assert training.search_candidates("random", {"a": [1, 2], "b": [3, 4, 5], "n_iter": 3})[0] == combos
    with pytest.raises(IndbRuntimeError, match="must be a list"):
        training.search_candidates("grid", {"a": 1})
    with pytest.raises(IndbRuntimeError, match='unknown search "bayes"'):
        training.search_candidates("bayes", {"a": [1]})


def test_hyperparameter_checks_name_the_parameter():
    hp = algs.check_hyperparams("regression", "xgboost", {"max_depth": 4.0, "learning_rate": 0.1})
    assert hp["max_depth"] == 4 and isinstance(hp["max_depth"], int)
    with pytest.raises(IndbRuntimeError, match='"n_estimators" of random_forest must be int, got str'):
        algs.check_hyperparams("regression", "random_forest", {"n_estimators": "many"})
    with pytest.raises(IndbRuntimeError, match='unknown hyperparameter "depth" for knn') as e:
        algs.check_hyperparams("regression", "knn", {"depth": 3})
    assert "n_neighbors" in e.value.detail
    with pytest.raises(IndbRuntimeError, match='unknown algorithm "xgboost" for task clustering') as e:
        algs.check_algorithm("clustering", "xgboost")
    assert e.value.detail == "valid algorithms for clustering: kmeans, mini_batch_kmeans"
    with pytest.raises(IndbRuntimeError, match='unknown task "ranking"'):
        algs.check_task("ranking")


def test_target_encoding_and_labels():
    y, classes = training.encode_target(["b", "a", "b"], "classification", "text")
    assert classes == ["a", "b"] and y.tolist() == [1, 0, 1]
    y, classes = training.encode_target([True, False], "classification", "boolean")
    b = {"task": "classification", "classes": classes}
    assert training.prediction_values(b, np.array([1.0, 0.0])).tolist() == [1.0, 0.0]
    y, classes = training.encode_target([3, 7, 7], "classification", "integer")
    b = {"task": "classification", "classes": classes}
    assert training.prediction_values(b, np.array([1.0, 0.0])).tolist() == [7.0, 3.0]  # labels, not indexes
    with pytest.raises(IndbRuntimeError, match="at least two classes"):
        training.encode_target([1, 1], "classification", "integer")
    with pytest.raises(IndbRuntimeError, match="2 NULL"):
        training.encode_target([1.0, None, None], "regression", "float8")
    with pytest.raises(IndbRuntimeError, match="numeric target"):
        training.encode_target(["x"], "regression", "text")


def test_metrics():
    m = algs.regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert m["mae"] == pytest.approx(1 / 3) and m["rmse"] == pytest.approx((1 / 3) ** 0.5) and m["r2"] == 0.5
    # targets near 1e200: their squares overflow a double, the metrics must not
    big = algs.regression_metrics(np.array([1.0, 2.0, 3.0]) * 1e200, np.array([1.0, 2.0, 4.0]) * 1e200)
    assert big["r2"] == pytest.approx(0.5) and big["rmse"] == pytest.approx((1 / 3) ** 0.5 * 1e200)
    assert big["mae"] == pytest.approx(1e200 / 3)
    c = algs.classification_metrics(
        np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]), np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]]), 2
    )
    assert c["accuracy"] == 0.75 and c["precision"] == 1.0 and c["recall"] == 0.5 and c["roc_auc"] == 1.0


def _bundle(alg, task="regression", n=200):
    rng = np.random.RandomState(0)
    X = rng.rand(n, 3)
    y = 3 * X[:, 0] - 2 * X[:, 1] + rng.rand(n) * 0.1
    if task == "classification":
        y = (y > 0.5).astype(int)
    est = algs.make(
        task, alg, algs.check_hyperparams(task, alg, {"n_estimators": 20} if alg not in ("linear", "logistic") else {})
    )
    algs.fit(task, alg, est, X, y)
    return {
        "algorithm": alg,
        "task": task,
        "est": est,
        "groups": ["a", "b", "b"],
        "classes": [0, 1],
        "x_mean": X.mean(axis=0).tolist(),
        "x_std": X.std(axis=0).tolist(),
    }, X


@pytest.mark.parametrize("alg", ["xgboost", "lightgbm", "random_forest", "gradient_boosting", "linear"])
def test_explanations_add_up(alg):
    b, X = _bundle(alg)
    e = explain.contributions(b, X[:1])
    assert set(e["contributions"]) == {"a", "b"}  # expanded columns grouped back
    assert e["raw_output"] == pytest.approx(float(b["est"].predict(X[:1])[0]), rel=1e-4)
    imp = explain.importance(b)
    assert abs(sum(imp.values()) - 1) < 1e-9


@pytest.mark.parametrize("task", ["regression", "classification"])
@pytest.mark.parametrize("alg", ["xgboost", "lightgbm", "random_forest", "gradient_boosting", "linear"])
def test_importance_kinds_and_mean_abs_shap(alg, task):
    if task == "classification" and alg == "linear":
        alg = "logistic"
    b, X = _bundle(alg, task)
    kind, native = explain.native_importance(b)
    assert kind == explain.NATIVE_KINDS[alg] and set(native) == {"a", "b"}
    assert abs(sum(native.values()) - 1) < 1e-9
    imp = explain.shap_importance(b, X)
    assert imp is not None and imp["kind"] == "mean_abs_shap" and imp["rows"] >= 1
    assert set(imp["values"]) == {"a", "b"} and abs(sum(imp["values"].values()) - 1) < 1e-9
    # the mean |contribution| of ml.explain's contributions, row by row (expanded columns summed first)
    if task == "regression":
        rows = [explain.contributions(b, X[i : i + 1])["contributions"] for i in range(imp["rows"])]
        mean = {k: sum(abs(r[k]) for r in rows) / len(rows) for k in ("a", "b")}
        total = sum(mean.values())
        assert imp["values"] == pytest.approx({k: v / total for k, v in mean.items()}, rel=1e-5)


def test_multiclass_mean_abs_shap():
    rng = np.random.RandomState(0)
    X = rng.rand(150, 3)
    y = (X[:, 0] * 3).astype(int)  # three classes, decided by the first column
    for alg in ("xgboost", "lightgbm", "random_forest", "logistic"):
        est = algs.make("classification", alg, algs.check_hyperparams("classification", alg, {}))
        algs.fit("classification", alg, est, X, y)
        b = {
            "algorithm": alg,
            "task": "classification",
            "est": est,
            "groups": ["a", "b", "c"],
            "classes": [0, 1, 2],
            "x_mean": X.mean(axis=0).tolist(),
            "x_std": X.std(axis=0).tolist(),
        }
        imp = explain.shap_importance(b, X[:50])
        assert imp is not None and max(imp["values"], key=imp["values"].get) == "a", alg


def test_explained_rows_follow_the_model_not_the_clock(monkeypatch):
    b, X = _bundle("random_forest")
    assert explain.explain_rows(b) == explain.explain_rows(b) > 0
    assert explain.shap_importance(b, X)["rows"] == min(len(X), explain.explain_rows(b))  # type: ignore[index]
    # a forest too large to explain SHAP_MIN_ROWS rows in about SHAP_SECONDS: no test-row importance (the
    # model's own importance is shown instead, under its own kind)
    monkeypatch.setitem(explain.SHAP_THROUGHPUT, "random_forest", 1.0)
    assert explain.shap_importance(b, X) is None


def test_no_importance_where_explain_has_no_method():
    b, X = _bundle("linear")
    assert explain.shap_importance(dict(b, algorithm="knn"), X) is None
    with pytest.raises(IndbRuntimeError, match="not available for knn"):
        explain.native_importance(dict(b, algorithm="knn"))


def test_chunked_forest_ticks_and_mlp_round_trips():
    ticks = []
    b, X = _bundle("random_forest")
    est = algs.make("regression", "random_forest", {"n_estimators": 40, "random_state": 0})
    algs.fit("regression", "random_forest", est, X, X[:, 0], tick=lambda d, t: ticks.append((d, t)))
    assert ticks[-1] == (40, 40) and len(ticks) >= 2 and len(est.estimators_) == 40
    mlp = algs.make("regression", "mlp", {"task": "regression", "epochs": 30, "hidden_layers": [16], "batch_size": 16})
    y = 3 * X[:, 0] + 1
    curves = algs.fit("regression", "mlp", mlp, X, y)
    assert len(curves["train_loss"]) == 30 and curves["train_loss"][-1] < curves["train_loss"][0]
    blob = model_store.dump_bundle({"task": "regression", "algorithm": "mlp"}, mlp)
    again = model_store.load_bundle(blob, model_store.sha256_hex(blob), model_store.BUNDLE_FORMAT, "indb")["est"]
    assert np.allclose(again.predict(X[:5]), mlp.predict(X[:5]))
    assert algs.regression_metrics(y, mlp.predict(X))["r2"] > 0.8


def _round_trip(task, alg, X, y, hp=None):
    est = algs.make(task, alg, algs.check_hyperparams(task, alg, hp or {}))
    algs.fit(task, alg, est, X, y)
    blob = model_store.dump_bundle({"task": task, "algorithm": alg, "classes": [0, 1]}, est)
    with zipfile.ZipFile(io.BytesIO(blob)) as z:  # numbers and JSON only: no pickle anywhere in the bundle
        for name in z.namelist():
            assert not z.read(name).startswith(b"\x80"), name
    back = model_store.load_bundle(blob, model_store.sha256_hex(blob), model_store.BUNDLE_FORMAT, "indb")
    return est, back["est"]


@pytest.mark.parametrize("task", ["regression", "classification", "clustering"])
def test_every_algorithm_round_trips_through_a_code_free_bundle(task):
    rng = np.random.RandomState(0)
    X = rng.rand(120, 3)
    y = None if task == "clustering" else 3 * X[:, 0] - 2 * X[:, 1]
    if task == "classification":
        y = (y > 0.5).astype(int)
    for alg in algs.ALGORITHMS[task]:
        hp = {"n_estimators": 10} if alg in ("xgboost", "lightgbm", "random_forest", "extra_trees") else {}
        if alg == "mlp":
            hp = {"epochs": 3, "task": task}
        if alg in ("kmeans", "mini_batch_kmeans"):
            hp = {"n_clusters": 3}
        est, back = _round_trip(task, alg, X, y, hp)
        assert np.allclose(np.asarray(back.predict(X), dtype=float), np.asarray(est.predict(X), dtype=float)), alg
        if task == "classification":
            assert np.allclose(algs.predict_proba(back, X), algs.predict_proba(est, X)), alg


def test_the_trusted_skops_list_covers_every_scikit_learn_model_and_nothing_else_loads():
    import skops.io as sio

    rng = np.random.RandomState(1)
    X = rng.rand(80, 2)
    y = X[:, 0] + X[:, 1]
    for task, yy in (("regression", y), ("classification", (y > 1).astype(int)), ("clustering", None)):
        for alg in algs.ALGORITHMS[task]:
            if alg in ("xgboost", "lightgbm", "mlp"):
                continue
            est = algs.make(task, alg, algs.check_hyperparams(task, alg, {}))
            algs.fit(task, alg, est, X, yy)
            assert set(sio.get_untrusted_types(data=sio.dumps(est))) <= model_store.TRUSTED_SKOPS_TYPES, alg
    from sklearn.preprocessing import FunctionTransformer

    with pytest.raises(IndbRuntimeError, match="does not trust") as e:
        model_store.load_skops(sio.dumps(FunctionTransformer(func=print)), "the model")
    assert e.value.sqlstate == "0A000"


def test_pickles_and_changed_bytes_are_refused():
    blob = pickle.dumps({"est": "anything"})
    for fmt, flavor in [(None, "indb-pickle"), ("sklearn-pickle", "sklearn"), ("indb-bundle-v2", "indb")]:
        with pytest.raises(IndbRuntimeError, match="pickle") as e:
            model_store.load_bundle(blob, model_store.sha256_hex(blob), fmt, flavor, "model 7")
        assert e.value.sqlstate == "0A000" and "ml.train" in e.value.hint
    rng = np.random.RandomState(0)
    est = algs.make("regression", "linear", {})
    algs.fit("regression", "linear", est, rng.rand(20, 2), rng.rand(20))
    good = model_store.dump_bundle({"task": "regression", "algorithm": "linear"}, est)
    with pytest.raises(IndbRuntimeError, match="sha256") as e:
        model_store.load_bundle(good + b"x", model_store.sha256_hex(good), model_store.BUNDLE_FORMAT, "indb")
    assert e.value.sqlstate == "XX001"
    with pytest.raises(IndbRuntimeError, match="not a model trained by ml.train"):
        model_store.load_bundle(b"{}", model_store.sha256_hex(b"{}"), "xgboost-json", "xgboost")


def test_a_scikit_learn_model_is_saved_and_loaded_without_importing_torch():
    """skops.io's import walks every scikit-learn package, and one of them imports torch (~1.3 s and ~125 MB of
    private memory in each backend that predicts with a scikit-learn model). In a fresh interpreter: a model makes
    the round trip through model_store without torch loaded, and torch (and scikit-learn's shim for it) still
    import afterwards, for a backend that also embeds."""
    import subprocess
    import sys

    code = """
import sys
import numpy as np
from indb_runtime import algorithms as algs, model_store
X = np.random.RandomState(0).rand(50, 3)
y = X @ [1.0, 2.0, 3.0]
est = algs.make("regression", "linear", algs.check_hyperparams("regression", "linear", {}))
algs.fit("regression", "linear", est, X, y)
blob = model_store.dump_bundle({"task": "regression", "algorithm": "linear"}, est)
back = model_store.load_bundle(blob, model_store.sha256_hex(blob), model_store.BUNDLE_FORMAT, "indb")
assert np.allclose(back["est"].predict(X), est.predict(X))
assert "torch" not in sys.modules, "torch was imported"
import torch, sklearn.externals.array_api_compat.torch
print("ok", torch.zeros(1).shape)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok")
