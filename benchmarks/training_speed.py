"""Training speed on California housing (20,640 rows; 80/20 split): ml.train vs the same algorithm and
hyperparameters in a plain Python process on the same rows (target: ml.train <= 1.2x), vs the client
pipeline a user would otherwise write (psycopg -> pandas -> fit -> pickle -> INSERT the model).
Median of 3 runs per side, imports warm on every side."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # what the database backend sets too (bootstrap.RUNTIME_ENV)

import io
import pickle
import statistics
import time

import numpy as np

from .training_common import FEATURES, PREPROCESS, connect, load_housing, save

CASES = {
    "xgboost": {"n_estimators": 300, "max_depth": 6, "learning_rate": 0.1},
    "random_forest": {"n_estimators": 100, "max_features": 0.5, "n_jobs": -1},
}
REPEAT = 3


def estimator(alg: str, hp: dict):
    if alg == "xgboost":
        import xgboost as xgb

        return xgb.XGBRegressor(random_state=0, **hp)
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(random_state=0, **hp)


def prepare(df, medians=None):
    """What a user writes with pandas: impute total_bedrooms with the median, one-hot ocean_proximity."""
    import pandas as pd

    df = df.copy()
    med = medians if medians is not None else df["total_bedrooms"].median()
    df["total_bedrooms"] = df["total_bedrooms"].fillna(med)
    X = pd.get_dummies(df[FEATURES], columns=["ocean_proximity"], dtype=float)
    return X, med


def split(n: int, test_size: float = 0.2, seed: int = 42):
    perm = np.random.RandomState(seed).permutation(n)
    k = int(round(n * test_size))
    return np.sort(perm[k:]), np.sort(perm[:k])


FIT_SECONDS: list = []


def fit_and_score(df, alg: str, hp: dict) -> float:
    tr, te = split(len(df))
    Xtr, med = prepare(df.iloc[tr])
    Xte, _ = prepare(df.iloc[te], med)
    Xte = Xte.reindex(columns=Xtr.columns, fill_value=0.0)
    est = estimator(alg, hp)
    t0 = time.perf_counter()
    est.fit(Xtr.to_numpy(), df["median_house_value"].to_numpy()[tr])
    FIT_SECONDS.append(time.perf_counter() - t0)
    p = est.predict(Xte.to_numpy())
    rmse = float(np.sqrt(np.mean((p - df["median_house_value"].to_numpy()[te]) ** 2)))
    return est, rmse


def main() -> None:
    import pandas as pd
    import psycopg

    c = connect()
    n = load_housing(c.conn)
    dsn = c.conn.info.dsn
    cols = FEATURES + ["median_house_value"]
    with psycopg.connect(dsn) as raw:
        rows = raw.execute(f"select {', '.join(cols)} from bench_housing").fetchall()
    same_rows = pd.DataFrame(rows, columns=cols)  # the plain process gets the rows in memory up front
    c.conn.execute(
        "create table if not exists public.bench_client_models (id bigserial primary key, "
        "name text, model bytea, rmse float8, created_at timestamptz default now())"
    )
    # warm-up: imports in the database backend and here
    c.train(
        "bench_speed_warm",
        task="regression",
        relation="select * from bench_housing limit 500",
        target="median_house_value",
        preprocess=PREPROCESS,
        hyperparams={"n_estimators": 5},
    )
    fit_and_score(same_rows.head(500), "xgboost", {"n_estimators": 5})
    results = {}
    for alg, hp in CASES.items():
        t_db, t_plain, t_client, rm, loads, fit_db, fit_plain = [], [], [], {}, [], [], []
        for _ in range(REPEAT):
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            r = c.train(
                f"bench_speed_{alg}",
                task="regression",
                relation="bench_housing",
                target="median_house_value",
                algorithm=alg,
                hyperparams=hp,
                preprocess=PREPROCESS,
                test_size=0.2,
            )
            t_db.append(time.perf_counter() - t0)
            rm["ml.train"] = r["metrics"]["rmse"]
            fit_db.append(r["metrics"]["fit_seconds"])

            t0 = time.perf_counter()
            _, rm["plain_python"] = fit_and_score(same_rows, alg, hp)
            t_plain.append(time.perf_counter() - t0)
            fit_plain.append(FIT_SECONDS[-1])

            t0 = time.perf_counter()
            with psycopg.connect(dsn) as cc:
                cur = cc.execute(f"select {', '.join(cols)} from bench_housing")
                df = pd.DataFrame(cur.fetchall(), columns=cols)
                est, rmse = fit_and_score(df, alg, hp)
                buf = io.BytesIO()
                pickle.dump(est, buf)
                cc.execute(
                    "insert into bench_client_models (name, model, rmse) values (%s, %s, %s)",
                    [f"client_{alg}", buf.getvalue(), rmse],
                )
                cc.commit()
            rm["client_pipeline"] = rmse
            t_client.append(time.perf_counter() - t0)
            loads.append(round(load, 2))
        res = {
            "hyperparams": hp,
            "rows": n,
            "seconds_median": {
                "ml.train": round(statistics.median(t_db), 3),
                "plain_python": round(statistics.median(t_plain), 3),
                "client_pipeline": round(statistics.median(t_client), 3),
            },
            "seconds_all": {
                "ml.train": [round(x, 3) for x in t_db],
                "plain_python": [round(x, 3) for x in t_plain],
                "client_pipeline": [round(x, 3) for x in t_client],
            },
            "test_rmse": {k: round(v, 1) for k, v in rm.items()},
            "loadavg_1min_per_round": loads,
            "fit_only_seconds_median": {
                "inside ml.train": round(statistics.median(fit_db), 3),
                "plain_python": round(statistics.median(fit_plain), 3),
            },
            "model_bytes": c.conn.execute(
                "select length(artifact) from registry.model_versions where id = %s", [r["model_id"]]
            ).fetchone()[0],
        }
        res["ratio_ml_train_over_plain"] = round(
            res["seconds_median"]["ml.train"] / res["seconds_median"]["plain_python"], 3
        )
        res["ratio_ml_train_over_client"] = round(
            res["seconds_median"]["ml.train"] / res["seconds_median"]["client_pipeline"], 3
        )
        res["target_met"] = res["ratio_ml_train_over_plain"] <= 1.2
        results[alg] = res
        print(alg, res["seconds_median"], "ratio vs plain", res["ratio_ml_train_over_plain"])
    save(
        "training_speed",
        {
            "what": "ml.train (whole call: read rows, snapshot, preprocess, fit, metrics, curves, "
            "store model, deploy) vs plain Python (pandas preprocessing + fit + score on rows "
            "already in memory) vs client pipeline (SELECT -> pandas -> fit -> pickle -> INSERT)",
            "results": results,
        },
    )
    c.close()


if __name__ == "__main__":
    main()
