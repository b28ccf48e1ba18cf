"""Single-row ml.predict latency from a client (Unix-socket loopback, prepared statement, model warm):
p50/p99 for the float8[] form (numeric features) and the jsonb form (with the one-hot text feature).
Target: p99 <= 2 ms."""

from __future__ import annotations

import json
import os
import statistics
import time

from .common import percentile, proc_rollup_kib
from .training_common import PREPROCESS, connect, load_housing, save

CALLS = int(os.environ.get("BENCH_LATENCY_CALLS", "3000"))
NUMERIC = [
    "longitude",
    "latitude",
    "housing_median_age",
    "total_rooms",
    "total_bedrooms",
    "population",
    "households",
    "median_income",
]


def measure(conn, sql: str, params_list: list) -> dict:
    for p in params_list[:200]:
        conn.execute(sql, p, prepare=True).fetchone()
    lat = []
    for p in params_list:
        t0 = time.perf_counter()
        conn.execute(sql, p, prepare=True).fetchone()
        lat.append((time.perf_counter() - t0) * 1000)
    return {
        "calls": len(lat),
        "p50_ms": round(percentile(lat, 50), 3),
        "p90_ms": round(percentile(lat, 90), 3),
        "p99_ms": round(percentile(lat, 99), 3),
        "max_ms": round(max(lat), 3),
        "mean_ms": round(sum(lat) / len(lat), 3),
    }


def first_calls(dsn: str, project: str, sql: str, params: tuple, connections: int = 5) -> dict:
    """A new connection's first and second ml.predict (what a pool that opens connections pays: PL/Python starts,
    the model's libraries are imported and the model is read), the median over `connections` connections, and
    what the backend holds after the first call: its private memory and whether torch was imported (a
    scikit-learn or xgboost model needs no torch)."""
    import psycopg

    first, second, private_mb, torch = [], [], [], []
    for _ in range(connections):
        with psycopg.connect(dsn, autocommit=True) as conn:
            for lat in (first, second):
                t0 = time.perf_counter()
                conn.execute(sql, params).fetchone()
                lat.append((time.perf_counter() - t0) * 1000)
            pid = conn.execute("select pg_backend_pid()").fetchone()[0]
            rollup = proc_rollup_kib(pid)
            private_mb.append((rollup["Private_Clean"] + rollup["Private_Dirty"]) / 1024)
            with open(f"/proc/{pid}/maps") as f:
                torch.append("libtorch_cpu" in f.read())
    return {
        "project": project,
        "connections": connections,
        "first_call_ms_median": round(statistics.median(first), 1),
        "second_call_ms_median": round(statistics.median(second), 2),
        "backend_private_mb_median": round(statistics.median(private_mb), 1),
        "backends_with_torch_loaded": sum(torch),
    }


def main() -> None:
    c = connect()
    load_housing(c.conn)
    hp = {"n_estimators": 300, "max_depth": 6}
    c.train(
        "bench_latency_num",
        task="regression",
        target="median_house_value",
        hyperparams=hp,
        relation=f"select {', '.join(NUMERIC)}, median_house_value from bench_housing",
        preprocess={"total_bedrooms": {"impute": "median"}},
    )
    c.train(
        "bench_latency_json",
        task="regression",
        relation="bench_housing",
        target="median_house_value",
        hyperparams=hp,
        preprocess=PREPROCESS,
    )
    rows = c.conn.execute(
        f"select {', '.join(NUMERIC)}, ocean_proximity from bench_housing "
        f"where total_bedrooms is not null limit {CALLS}"
    ).fetchall()
    arrays = [([float(x) for x in r[:8]],) for r in rows]
    objs = [(json.dumps(dict(zip(NUMERIC + ["ocean_proximity"], r))),) for r in rows]
    res = {
        "transport": "Unix-domain socket on the same host (TCP loopback needs a password on this cluster)",
        "model": {"algorithm": "xgboost", **hp},
    }
    res["float8[]"] = measure(c.conn, "select ml.predict('bench_latency_num', %s::float8[])", arrays)
    res["jsonb"] = measure(c.conn, "select ml.predict('bench_latency_json', %s::jsonb)", objs)
    res["select_1_baseline"] = measure(c.conn, "select %s::int", [(i,) for i in range(len(rows))])
    c.train(
        "bench_latency_linear",
        task="regression",
        algorithm="linear",
        relation=f"select {', '.join(NUMERIC)}, median_house_value from bench_housing",
        target="median_house_value",
        preprocess={"total_bedrooms": {"impute": "median"}},
    )
    dsn = c.conn.info.dsn
    res["new_connection"] = [
        first_calls(dsn, p, f"select ml.predict('{p}', %s::float8[])", arrays[0])
        for p in ("bench_latency_num", "bench_latency_linear")
    ]
    res["target_met"] = res["float8[]"]["p99_ms"] <= 2.0
    save("single_row_latency", res)
    print(json.dumps(res, indent=1))
    c.close()


if __name__ == "__main__":
    main()
