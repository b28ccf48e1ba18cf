"""ml.explain: per-feature contributions that add up to the model's output (SHAP for trees, exact for
linear models), grouped back to the original columns, as one row of columns; ml.feature_importance: the mean
|contribution| on the test rows (agrees with ml.explain) next to the model's own importance, each with its kind."""

from __future__ import annotations

import json
import math

import psycopg
import pytest
from test_train import PRE, load_housing, load_titanic, train

ROW = {
    "longitude": -122.23,
    "latitude": 37.88,
    "housing_median_age": 41,
    "total_rooms": 880,
    "total_bedrooms": 129,
    "population": 322,
    "households": 126,
    "median_income": 8.3252,
    "ocean_proximity": "NEAR BAY",
}


def explain(db, sql, params=None) -> dict:
    """The one row of an ml.explain call, as a dict."""
    cur = db.execute(sql, params)
    r = cur.fetchone()
    return dict(zip([d.name for d in cur.description], r))


@pytest.fixture(scope="module")
def db(sconn, data_dir):
    load_housing(sconn, data_dir)
    load_titanic(sconn, data_dir)
    return sconn


@pytest.mark.parametrize(
    "algorithm",
    ["xgboost", "lightgbm", "random_forest", "extra_trees", "gradient_boosting", "linear", "ridge", "lasso"],
)
def test_contributions_sum_to_the_prediction(db, algorithm):
    p = f"explain_{algorithm}"
    hp = (
        {"n_estimators": 30}
        if algorithm in ("xgboost", "lightgbm", "random_forest", "extra_trees", "gradient_boosting")
        else {}
    )
    train(
        db,
        p,
        task="regression",
        relation="housing_feats",
        target="median_house_value",
        algorithm=algorithm,
        preprocess=PRE,
        hyperparams=json.dumps(hp),
    )
    e = explain(db, "select * from ml.explain(%s, %s::jsonb)", [p, json.dumps(ROW)])
    pred = db.execute("select ml.predict(%s, %s::jsonb)", [p, json.dumps(ROW)]).fetchone()[0]
    assert list(e) == [
        "model_id",
        "algorithm",
        "prediction",
        "output",
        "base_value",
        "raw_output",
        "explained_class",
        "contributions",
    ]
    assert e["algorithm"] == algorithm and e["explained_class"] is None
    assert e["model_id"] == db.execute("select model_id from ml.models where project = %s", [p]).fetchone()[0]
    # one contribution per original column (the five one-hot columns of ocean_proximity are summed)
    assert set(e["contributions"]) == set(ROW)
    total = e["base_value"] + sum(e["contributions"].values())
    assert total == pytest.approx(pred, rel=1e-4, abs=1.0)
    assert e["prediction"] == pytest.approx(pred) and e["output"] == "value"
    # median_income matters most for this district (rich, near the bay)
    top = max(e["contributions"], key=lambda k: abs(e["contributions"][k]))
    assert top in ("median_income", "longitude", "latitude", "ocean_proximity")
    # the same through a row and float8[] are not possible here (text feature): row works
    by_row = explain(db, "select e.* from (select * from housing_feats limit 1) h, ml.explain(%s, h) e", [p])
    assert by_row["base_value"] + sum(by_row["contributions"].values()) == pytest.approx(
        by_row["prediction"], rel=1e-4, abs=1.0
    )


def test_classification_contributions_are_log_odds(db):
    rel = 'select "Pclass", "Sex", "Age", "Fare", "Survived" from titanic'
    train(
        db,
        "explain_titanic",
        task="classification",
        relation=rel,
        target="Survived",
        preprocess=json.dumps({"Sex": {"encode": "one_hot"}, "Age": {"impute": "median"}}),
        hyperparams=json.dumps({"n_estimators": 40}),
    )
    f = json.dumps({"Pclass": 3, "Sex": "male", "Age": 22, "Fare": 7.25})
    e = explain(db, "select * from ml.explain('explain_titanic', %s::jsonb)", [f])
    proba = db.execute("select ml.predict_proba('explain_titanic', %s::jsonb)", [f]).fetchone()[0]
    assert e["output"] == "log_odds"
    raw = e["base_value"] + sum(e["contributions"].values())
    assert 1 / (1 + math.exp(-raw)) == pytest.approx(proba[1], abs=1e-5)
    assert e["contributions"]["Sex"] < 0  # being male lowers the odds of survival
    assert e["raw_output"] == pytest.approx(raw) and e["prediction"] == 0.0


def test_feature_importance_and_unsupported(db):
    train(
        db,
        "imp_rf",
        task="regression",
        relation="housing_feats",
        target="median_house_value",
        algorithm="random_forest",
        preprocess=PRE,
        hyperparams=json.dumps({"n_estimators": 20}),
    )
    imp = db.execute("select * from ml.feature_importance('imp_rf')").fetchall()
    assert {r[0] for r in imp} == set(ROW) and abs(sum(r[1] for r in imp) - 1) < 1e-9
    assert abs(sum(r[3] for r in imp) - 1) < 1e-9
    assert {(r[2], r[4]) for r in imp} == {("mean_abs_shap", "impurity")}
    assert imp[0][0] == "median_income"  # sorted, most important first
    train(
        db,
        "imp_knn",
        task="regression",
        relation="housing_feats",
        target="median_house_value",
        algorithm="knn",
        preprocess=PRE,
    )
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="not available for knn"):
        db.execute("select ml.explain('imp_knn', %s::jsonb)", [json.dumps(ROW)])
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="not available for knn"):
        db.execute("select * from ml.feature_importance('imp_knn')")


def test_default_importance_agrees_with_explain_and_says_its_kind(db):
    """Issue 12: xgboost's gain put ocean_proximity first (one one-hot column, INLAND, takes most of the gain)
    while ml.explain put median_income first. The default is now the mean |contribution| on the test rows
    (kind mean_abs_shap), the model's own gain is next to it under its name."""
    train(
        db,
        "imp_xgb",
        task="regression",
        relation="housing_feats",
        target="median_house_value",
        preprocess=PRE,
        hyperparams=json.dumps({"n_estimators": 60}),
    )
    cur = db.execute("select * from ml.feature_importance('imp_xgb')")
    assert [d.name for d in cur.description] == ["feature", "importance", "kind", "model_importance", "model_kind"]
    rows = cur.fetchall()
    assert {(r[2], r[4]) for r in rows} == {("mean_abs_shap", "gain")}
    by_importance = [r[0] for r in rows]
    assert by_importance[0] == "median_income"
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)
    # ml.explain's contributions, averaged in absolute value over many rows, rank the columns the same way
    contribs: dict[str, float] = {}
    for (c,) in db.execute(
        "select e.contributions from (select * from housing_feats limit 300) h, ml.explain('imp_xgb', h) e"
    ).fetchall():
        for k, v in c.items():
            contribs[k] = contribs.get(k, 0.0) + abs(v)
    assert max(contribs, key=contribs.get) == by_importance[0]


def test_linear_importance_kinds(db):
    train(
        db,
        "imp_ridge",
        task="regression",
        relation="housing_feats",
        target="median_house_value",
        algorithm="ridge",
        preprocess=PRE,
    )
    rows = db.execute("select feature, kind, model_kind from ml.feature_importance('imp_ridge')").fetchall()
    assert {(k, mk) for _, k, mk in rows} == {("mean_abs_shap", "abs_coefficient")}
