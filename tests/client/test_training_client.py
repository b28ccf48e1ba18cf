"""The client's TrainingAPI end to end: train with progress lines, predict, explain, deploy, evaluate;
errors arrive as typed exceptions with the SQLSTATE's message and hint."""

from __future__ import annotations

import pytest

from indb.errors import InvalidInput, NotFound

PRE = {"ocean_proximity": {"encode": "one_hot"}, "total_bedrooms": {"impute": "median"}}
ROW = {
    "longitude": -122.23,
    "latitude": 37.88,
    "housing_median_age": 41,
    "total_rooms": 880,
    "total_bedrooms": None,
    "population": 322,
    "households": 126,
    "median_income": 8.3252,
    "ocean_proximity": "NEAR BAY",
}


@pytest.fixture(scope="module")
def housing(client, data_dir):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sql"))
    from test_train import load_housing

    load_housing(client.conn, data_dir)
    return client


def test_train_predict_explain_deploy(housing):
    c = housing
    lines = []
    r = c.train(
        "client_house",
        task="regression",
        relation="housing",
        target="median_house_value",
        preprocess=PRE,
        hyperparams={"n_estimators": 300, "max_depth": 6},
        test_size=0.2,
        progress=lines.append,
    )
    assert r["deployed"] and r["metrics"]["rmse"] < 60000
    # NOTICEs reached the caller: progress while fitting (every 2 s) and a summary at the end
    assert any("trained on 16512 rows" in line and "deployed" in line for line in lines), lines
    v = c.predict("client_house", ROW)
    assert 300000 < v < 550000  # a rich district near the bay
    e = c.explain("client_house", ROW)
    assert e["base_value"] + sum(e["contributions"].values()) == pytest.approx(v, rel=1e-4)
    imp = c.feature_importance("client_house")
    assert max(imp, key=imp.get) in ("median_income", "ocean_proximity")
    m = c.evaluate("client_house", "select * from housing limit 500")
    assert m["rows"] == 500 and m["r2"] > 0.7
    preds = c.predict_batch("client_house", "select * from housing limit 10")
    assert len(preds) == 10
    worse = c.train("client_house", preprocess=PRE, hyperparams={"n_estimators": 5, "max_depth": 2})
    assert worse["deployed"] is False
    d = c.deploy("client_house", "most_recent")
    assert d["model_id"] == worse["model_id"] and c.predict("client_house", ROW) != v
    c.deploy("client_house", "rollback")
    assert c.predict("client_house", ROW) == v
    assert [m["version"] for m in c.models("client_house")] == [1, 2]
    assert any(p["project"] == "client_house" for p in c.projects())


def test_errors_are_typed(housing):
    with pytest.raises(NotFound) as e:
        housing.predict("no_such_project", [1.0])
    assert e.value.sqlstate == "42704" and "ml.train" in e.value.hint
    with pytest.raises(InvalidInput) as e:
        housing.train(
            "client_bad",
            task="regression",
            relation="housing",
            target="median_house_value",
            preprocess={"total_bedrooms": {"impute": "median"}},
        )
    assert "ocean_proximity" in str(e.value) and "one_hot" in e.value.hint
