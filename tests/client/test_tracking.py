"""The tracking client end to end: MLflow-style runs with batched metrics, artifacts, registered models
of four flavors loaded back and predicting the same, aliases, search_runs as a DataFrame, lineage."""

from __future__ import annotations

import hashlib
import secrets

import numpy as np
import pandas as pd
import pytest

import indb


@pytest.fixture(scope="module")
def housing(data_dir):
    df = pd.read_csv(data_dir / "california_housing" / "housing.csv", nrows=600).dropna()
    X = df[["longitude", "latitude", "housing_median_age", "total_rooms", "population", "median_income"]]
    y = (df["median_house_value"] / 100000.0).to_numpy()
    return X.to_numpy(dtype=np.float32), y.astype(np.float32)


def uid(p):
    return f"{p}_{secrets.token_hex(4)}"


def test_run_context_manager_round_trip(client, tmp_path):
    exp = uid("exp")
    f = tmp_path / "notes.txt"
    f.write_text("hello artifact")
    with client.start_run(experiment=exp, run_name="first", tags={"team": "ml"}, batch_size=250) as run:
        run.log_param("depth", 6)
        run.log_params({"eta": 0.1, "objective": "reg:squarederror"})
        for step in range(100):
            run.log_metrics({"rmse": 1.0 / (step + 1), "mae": 2.0 / (step + 1)}, step=step)
        run.set_tag("stage", "dev")
        art = run.log_artifact(f, "docs/")
        # nothing is lost in the buffer: 200 points went out in batches of 250 at most
    assert art == {
        "path": "docs/notes.txt",
        "sha256": hashlib.sha256(b"hello artifact").hexdigest(),
        "size_bytes": 14,
        "uri": None,
    }
    assert run.points_sent == 200 and run.status == "FINISHED"
    info = client.get_run(run.id)
    assert info["status"] == "FINISHED" and info["experiment"] == exp
    assert info["run_id"] == run.id and info["run_name"] == "first" and info["parent_run_id"] is None
    assert [(a["path"], a["size_bytes"]) for a in info["artifacts"]] == [("docs/notes.txt", 14)]
    assert info["inputs"] == []
    assert info["params"] == {"depth": "6", "eta": "0.1", "objective": "reg:squarederror"}
    assert info["metrics"] == {"rmse": 0.01, "mae": 0.02}
    assert info["tags"] == {"team": "ml", "stage": "dev"}
    hist = client.metric_history(run.id, "rmse")
    assert [h["step"] for h in hist] == list(range(100)) and hist[0]["value"] == 1.0
    assert client.get_artifact(run.id, "docs/notes.txt") == b"hello artifact"


def test_failed_block_marks_the_run_failed_and_logging_after_end_is_refused(client):
    exp = uid("exp")
    with pytest.raises(ZeroDivisionError), client.start_run(experiment=exp) as run:
        run.log_metric("loss", 1.0)
        raise ZeroDivisionError
    info = client.get_run(run.id)
    assert info["status"] == "FAILED" and info["metrics"] == {"loss": 1.0}
    with pytest.raises(indb.IndbError, match="FAILED"):
        client.call("select registry.log_metric(%s, 'loss', 2)", [run.id])
    with pytest.raises(indb.InvalidInput, match="invalid metric name"), client.start_run(experiment=exp) as r2:
        r2.log_metric("bad;name", 1.0)


def test_nested_runs(client):
    exp = uid("exp")
    with (
        client.start_run(experiment=exp, run_name="parent") as parent,
        client.start_run(experiment=exp, run_name="child", parent_run=parent) as child,
    ):
        child.log_metric("x", 1)
    assert client.get_run(child)["parent_run_id"] == parent.id
    with client.start_run(experiment=exp) as run:
        did = run.log_input("iris", "sha256abc", "training", source="iris.csv", row_count=150)
        assert run.log_uri("data/iris.parquet", "s3://bucket/iris.parquet")["uri"] == "s3://bucket/iris.parquet"
    info = client.get_run(run.id)
    assert [(i["dataset_id"], i["dataset"], i["context"], i["row_count"]) for i in info["inputs"]] == [
        (did, "iris", "training", 150)
    ]
    assert [(a["path"], a["uri"]) for a in client.list_artifacts(run)] == [
        ("data/iris.parquet", "s3://bucket/iris.parquet")
    ]


def _fit(flavor, X, y):
    if flavor == "xgboost":
        import xgboost as xgb

        return xgb.XGBRegressor(n_estimators=20, max_depth=3, n_jobs=1).fit(X, y)
    if flavor == "xgboost-booster":
        import xgboost as xgb

        return xgb.train({"max_depth": 3, "nthread": 1}, xgb.DMatrix(X, label=y), num_boost_round=10)
    if flavor == "lightgbm":
        import lightgbm as lgb

        return lgb.train({"verbose": -1, "num_threads": 1}, lgb.Dataset(X, y), num_boost_round=10)
    if flavor == "sklearn":
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), Ridge()).fit(X, y)
    if flavor == "torch":
        import torch

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        xt, yt = torch.from_numpy((X - X.mean(0)) / X.std(0)), torch.from_numpy(y)[:, None]
        for _ in range(20):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(xt), yt).backward()
            opt.step()
        return model.eval()


def _predict(flavor, model, X):
    if flavor == "xgboost-booster":
        import xgboost as xgb

        return model.predict(xgb.DMatrix(X))
    if flavor == "torch":
        import torch

        with torch.no_grad():
            return model(torch.from_numpy((X - X.mean(0)) / X.std(0))).numpy().ravel()
    return np.asarray(model.predict(X)).ravel()


@pytest.mark.parametrize("flavor", ["xgboost", "xgboost-booster", "lightgbm", "sklearn", "torch"])
def test_register_and_load_model_per_flavor(client, housing, flavor):
    X, y = housing
    model = _fit(flavor, X, y)
    name = uid(f"house_{flavor.replace('-', '_')}")
    with client.start_run(experiment=uid("exp")) as run:
        run.log_input("california_housing", hashlib.sha256(X.tobytes()).hexdigest(), "training")
        pred = _predict(flavor, model, X)
        run.log_metric("rmse", float(np.sqrt(np.mean((pred - y) ** 2))))
    v = client.register_model(
        name, model, run=run, description="test", tags={"owner": "me"}, input_schema={"columns": 6}
    )
    assert v["version"] == 1
    client.set_alias(name, "champion", 1)
    # torch models are stored as their state_dict (no pickled module): load them into a module of the same shape
    template = _fit("torch", X, y) if flavor == "torch" else None
    if template is not None:
        import torch

        with torch.no_grad():
            for p in template.parameters():
                p.zero_()
    loaded = client.load_model(name, alias="champion", into=template)
    np.testing.assert_allclose(_predict(flavor, loaded, X), pred, rtol=1e-5, atol=1e-5)
    mv = client.get_model_version(name, version=1)
    assert mv["source"] == "client" and mv["flavor"] == flavor.split("-")[0] and mv["aliases"] == ["champion"]
    assert mv["artifact_sha256"] == hashlib.sha256(bytes(mv["artifact"])).hexdigest()
    if flavor == "xgboost":
        assert type(loaded).__name__ == "XGBRegressor" and mv["artifact_format"] == "xgboost-ubj"
    # lineage: data -> run -> this version
    up = client.lineage("model_version", f"{name}/1", "up")
    assert {(e["src_kind"], e["dst_kind"]) for e in up} == {("dataset", "run"), ("run", "model_version")}


def test_aliases_move_and_missing_versions(client):
    name = uid("m")
    for i in range(3):
        client.register_model(name, f"model-{i}".encode(), flavor="custom")
    client.set_alias(name, "champion", 1)
    client.set_alias(name, "champion", 3)
    assert client.load_model(name, alias="champion") == b"model-2"
    assert client.load_model(name) == b"model-2" and client.load_model(name, version=2) == b"model-1"
    with pytest.raises(indb.NotFound, match="has no version 7"):
        client.set_alias(name, "champion", 7)
    assert client.get_model_version(name, alias="champion")["version"] == 3
    assert [v["version"] for v in client.list_model_versions(name)] == [1, 2, 3]
    assert client.delete_alias(name, "champion") is True
    with pytest.raises(indb.NotFound):
        client.load_model(name, alias="champion")


def test_search_runs_dataframe(client):
    exp = uid("exp")
    for i, depth in enumerate(["4", "6", "6", "8"]):
        with client.start_run(experiment=exp, run_name=f"r{i}", tags={"team": "x" if i % 2 else "y"}) as run:
            run.log_params({"depth": depth})
            run.log_metric("rmse", 0.2 * (i + 1))
    df = client.search_runs([exp], "metrics.rmse < 0.7 and params.depth = '6'", order_by=["metrics.rmse DESC"])
    assert list(df["run_name"]) == ["r2", "r1"]
    assert {"run_id", "status", "metrics.rmse", "params.depth", "tags.team"} <= set(df.columns)
    assert df["metrics.rmse"].tolist() == pytest.approx([0.6, 0.4])
    assert client.search_runs([exp], "tags.team = 'nobody'").empty
    with pytest.raises(indb.InvalidInput, match="position"):
        client.search_runs([exp], "metrics.rmse < 'x'")


def test_metric_values_come_back_as_floats(client):
    """Metrics are float8 and may be NaN or infinite (a diverged loss): search_runs and get_run return them as
    the floats that were logged. They travel inside jsonb, which spelled them "NaN" and "Infinity" (strings)
    and 1e300 as an integer of 301 digits."""
    import math

    exp = uid("exp")
    with client.start_run(experiment=exp, run_name="diverged") as run:
        run.log_metrics({"nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"), "big": 1e300, "one": 1})
    df = client.search_runs([exp], "metrics.inf > 1e308")
    assert list(df["run_name"]) == ["diverged"]
    for got in (df.iloc[0].to_dict(), {f"metrics.{k}": v for k, v in client.get_run(run.id)["metrics"].items()}):
        vals = {k: got[f"metrics.{k}"] for k in ("nan", "inf", "ninf", "big", "one")}
        assert all(type(v) is float for v in vals.values()), vals
        assert math.isnan(vals["nan"]) and vals["inf"] == math.inf and vals["ninf"] == -math.inf
        assert vals["big"] == 1e300 and vals["one"] == 1.0


def test_audit_verify_from_the_client(client):
    out = client.audit_verify()
    assert out["ok"] is True and out["events_checked"] > 0


def test_a_nan_metric_of_a_registered_model_is_refused_by_name(client):
    from indb.errors import InvalidInput

    name = uid("nanm")
    with pytest.raises(InvalidInput, match=r"metrics\['r2'\] is nan") as e:
        client.register_model(name, b"model", flavor="custom", metrics={"rmse": 0.5, "r2": float("nan")})
    assert e.value.sqlstate == "22023"
    v = client.register_model(name, b"model", flavor="custom", metrics={"rmse": 0.5, "r2": None})
    assert v["version"] == 1  # nothing was registered by the refused call
