"""ml.explain: per-feature contributions that add up to the model's output (SHAP for trees, exact for
linear models), grouped back to the original columns; ml.feature_importance."""

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
    e = db.execute("select ml.explain(%s, %s::jsonb)", [p, json.dumps(ROW)]).fetchone()[0]
    pred = db.execute("select ml.predict(%s, %s::jsonb)", [p, json.dumps(ROW)]).fetchone()[0]
    # one contribution per original column (the five one-hot columns of ocean_proximity are summed)
    assert set(e["contributions"]) == set(ROW)
    total = e["base_value"] + sum(e["contributions"].values())
    assert total == pytest.approx(pred, rel=1e-4, abs=1.0)
    assert e["prediction"] == pytest.approx(pred) and e["output"] == "value"
    # median_income matters most for this district (rich, near the bay)
    top = max(e["contributions"], key=lambda k: abs(e["contributions"][k]))
    assert top in ("median_income", "longitude", "latitude", "ocean_proximity")
    # the same through a row and float8[] are not possible here (text feature): row works
    by_row = db.execute("select ml.explain(%s, h) from housing_feats h limit 1", [p]).fetchone()[0]
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
    e = db.execute("select ml.explain('explain_titanic', %s::jsonb)", [f]).fetchone()[0]
    proba = db.execute("select ml.predict_proba('explain_titanic', %s::jsonb)", [f]).fetchone()[0]
    assert e["output"] == "log_odds"
    raw = e["base_value"] + sum(e["contributions"].values())
    assert 1 / (1 + math.exp(-raw)) == pytest.approx(proba[1], abs=1e-5)
    assert e["contributions"]["Sex"] < 0  # being male lowers the odds of survival


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
    imp = db.execute("select feature, importance from ml.feature_importance('imp_rf')").fetchall()
    assert {f for f, _ in imp} == set(ROW) and abs(sum(v for _, v in imp) - 1) < 1e-9
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
