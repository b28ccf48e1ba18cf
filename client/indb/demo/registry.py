"""Demo step: an MLflow-style run on California housing, a registered model with an alias, its lineage
both ways, a search over runs, and audit.verify() over the hash-chained audit log."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

TITLE = "registry: tracked run, registered model, lineage, search_runs, audit.verify()"


def run(client, data: Path) -> None:
    import numpy as np
    import pandas as pd
    import xgboost as xgb

    df = pd.read_csv(data / "california_housing" / "housing.csv").dropna()
    cols = [
        "longitude",
        "latitude",
        "housing_median_age",
        "total_rooms",
        "total_bedrooms",
        "population",
        "households",
        "median_income",
    ]
    X = df[cols].to_numpy(dtype=np.float32)
    y = (df["median_house_value"] / 100000.0).to_numpy(dtype=np.float32)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(X))
    tr, te = idx[: int(0.8 * len(X))], idx[int(0.8 * len(X)) :]
    dtrain, dtest = xgb.DMatrix(X[tr], y[tr]), xgb.DMatrix(X[te], y[te])
    digest = hashlib.sha256(X.tobytes() + y.tobytes()).hexdigest()

    params = {"max_depth": 6, "eta": 0.1, "subsample": 0.8, "nthread": 2}
    t0 = time.time()
    with client.start_run(
        experiment="demo-housing",
        run_name=f"xgb-depth-{params['max_depth']}",
        tags={"team": "pricing", "data": "california_housing"},
    ) as run:
        run.log_params(params)
        run.log_input(
            "california_housing", digest, "training", source=str(data / "california_housing"), row_count=len(X)
        )
        history: dict = {}
        booster = xgb.train(
            params,
            dtrain,
            num_boost_round=100,
            evals=[(dtrain, "train"), (dtest, "test")],
            evals_result=history,
            verbose_eval=False,
        )
        for step, (a, b) in enumerate(zip(history["train"]["rmse"], history["test"]["rmse"])):
            run.log_metrics({"train_rmse": a, "rmse": b}, step=step)  # buffered, sent in batches
    print(f"run {run.id}: {run.points_sent} metric points logged in {time.time() - t0:.1f} s")
    info = client.get_run(run.id)
    print(f"  status {info['status']}, params {info['params']}, final rmse {info['metrics']['rmse']:.4f}")

    v = client.register_model(
        "demo-housing-price",
        booster,
        run=run,
        description="xgboost on California housing",
        input_schema={"columns": cols},
        metrics={"rmse": info["metrics"]["rmse"]},
    )
    client.set_alias("demo-housing-price", "champion", v["version"])
    print(f"registered demo-housing-price version {v['version']} (alias champion)")
    model = client.load_model("demo-housing-price", alias="champion")
    pred = model.predict(xgb.DMatrix(X[te[:3]]))
    print("  champion predicts", [round(float(p) * 100000) for p in pred], "for", [int(t * 100000) for t in y[te[:3]]])

    print("lineage of the champion (up: what it came from, down: what came from it):")
    for e in client.lineage("model_version", "demo-housing-price@champion"):
        print(
            f"  {e['side']:>4} depth {e['depth']}: {e['src_kind']} {e['src_label'] or e['src_id']} "
            f"-[{e['relation']}]-> {e['dst_kind']} {e['dst_label'] or e['dst_id']}"
        )

    df_runs = client.search_runs(
        ["demo-housing"],
        "metrics.rmse < 1 and params.max_depth = '6' and attributes.status = 'FINISHED'",
        order_by=["metrics.rmse ASC"],
        max_results=5,
    )
    print(f"search_runs: {len(df_runs)} matching run(s)")
    if len(df_runs):
        print(df_runs[["run_id", "run_name", "status", "metrics.rmse", "params.max_depth"]].to_string(index=False))

    out = client.audit_verify()
    print(f"audit.verify(): ok={out['ok']} over {out['events_checked']} events, head {out['last_hash'][:16]}...")
