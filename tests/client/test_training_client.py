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
    assert e["prediction"] == pytest.approx(v) and e["model_id"] == r["model_id"] and e["output"] == "value"
    imp = c.feature_importance("client_house")
    # mean |SHAP| on the test rows, as explain sees it (xgboost's gain puts the one-hot ocean_proximity first)
    assert max(imp, key=imp.get) in ("median_income", "latitude", "longitude")
    detail = c.feature_importance("client_house", detail=True)
    assert {(d["kind"], d["model_kind"]) for d in detail} == {("mean_abs_shap", "gain")}
    m = c.evaluate("client_house", "select * from housing limit 500")
    assert m["rows"] == 500 and m["r2"] > 0.7 and m["model_id"] == r["model_id"]
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


def test_numbers_in_feature_order_may_mix_ints_and_floats(housing, db_dsn, capsys):
    """Issue 12: client.predict(..., [8.3, 41, 880]) and `indb predict p '[8.3, 41, 880]'` failed with psycopg's
    "cannot dump lists of mixed types"."""
    from indb import cli

    c = housing
    c.train(
        "client_numeric",
        task="regression",
        relation="select median_income, housing_median_age, total_rooms, median_house_value from housing",
        target="median_house_value",
        algorithm="linear",
    )
    v = c.predict("client_numeric", [8.3, 41, 880])
    assert v == pytest.approx(c.predict("client_numeric", [8.3, 41.0, 880.0]))
    assert c.predict("client_numeric", (8, 41, 880)) == pytest.approx(c.predict("client_numeric", [8.0, 41, 880]))
    assert c.explain("client_numeric", [8.3, 41, 880])["prediction"] == pytest.approx(v)
    with pytest.raises(InvalidInput, match=r"features\[1\] must be a number"):
        c.predict("client_numeric", [8.3, "x", 880])
    assert cli.main(["predict", "client_numeric", "[8.3, 41, 880]", "--dsn", db_dsn]) == 0
    assert float(capsys.readouterr().out) == pytest.approx(v)
    assert cli.main(["predict", "client_numeric", "[8.3, 41, 880]", "--explain", "--dsn", db_dsn]) == 0
    out = capsys.readouterr().out
    assert "median_income" in out and "contribution" in out


def test_progress_bars_come_from_ml_progress(housing, capsys):
    """progress=True: tqdm bars per phase (rows, search trials, iterations), read from ml.progress."""
    c = housing
    c.train(
        "client_bars",
        task="regression",
        relation="housing",
        target="median_house_value",
        preprocess=PRE,
        search="grid",
        search_params={"max_depth": [3, 5], "n_estimators": [100, 200], "cv": 3},
        progress=True,
    )
    err = capsys.readouterr().err
    assert "ml.train client_bars: searching (grid, 3-fold cross-validation)" in err
    assert "4/4" in err and " trials" in err  # the search, trial by trial, with its rate (or time per trial)


def test_cli_tables_and_errors(housing, db_dsn, capsys, monkeypatch):
    """`indb models` prints tables (not JSON lines); unknown projects exit non-zero."""
    from indb import cli

    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: no cell wraps

    assert cli.main(["models", "--dsn", db_dsn]) == 0
    out = capsys.readouterr().out
    assert "client_house" in out and "{" not in out and "┃" in out
    assert cli.main(["models", "client_house", "--dsn", db_dsn]) == 0
    out = capsys.readouterr().out
    assert "model_id" in out and "version" in out and "r2" in out
    assert cli.main(["deployments", "client_house", "--dsn", db_dsn]) == 0
    out = capsys.readouterr().out
    assert "rollback" in out and "most_recent" in out
    with pytest.raises(SystemExit) as e:
        cli.main(["models", "no_such_project", "--dsn", db_dsn])
    assert e.value.code != 0 and "does not exist" in str(e.value.code)
    with pytest.raises(SystemExit) as e:
        cli.main(["predict", "client_house", "{not json", "--dsn", db_dsn])
    assert "not valid JSON" in str(e.value.code)
    assert cli.main(["predict", "no_such_project", "[1]", "--dsn", db_dsn]) != 0
