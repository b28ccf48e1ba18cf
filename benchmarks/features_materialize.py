"""Question: how many rows per second does features.materialize write (offline upsert into the time
partitions + online upsert), with statistics on and off, with expectations checked; and how fast is
features.push for streaming batches?

    flock /tmp/indb-bench.lock .venv/bin/python -m benchmarks.features_materialize
"""

from __future__ import annotations

import json
import os
import time

import psycopg

from ._features_db import bench_database, write_section

ROWS = int(os.environ.get("INDB_MAT_ROWS", "500000"))
USERS = 50_000
N_FEATS = 10


def main() -> None:
    out: dict = {"rows": ROWS, "entities": USERS, "features": N_FEATS}
    with bench_database("indb_bench_features_mat") as (dsn, note), psycopg.connect(dsn, autocommit=True) as c:
        cols = ", ".join(f"random() * {i} as f{i}" for i in range(1, N_FEATS + 1))
        c.execute(f"""create table mat_src as select (random() * {USERS - 1})::int + 1 as user_id,
                      '2024-01-01'::timestamptz + random() * interval '365 days' as ts, {cols}
                      from generate_series(1, {ROWS})""")
        c.execute("vacuum analyze mat_src")
        c.execute("select features.create_entity('user', array['user_id'])")
        feats = [
            {"name": f"f{i}", "type": "float8", "expect": {"not_null": True, "min": 0}} for i in range(1, N_FEATS + 1)
        ]
        runs = {}
        for label, stats in (("statistics_off", False), ("statistics_on", True)):
            name = f"mat_{label}"
            c.execute(
                "select features.create_feature_view(%s, 'user', 'mat_src', 'ts', %s, partition_by => 'month')",
                [name, json.dumps(feats)],
            )
            t0 = time.perf_counter()
            r = c.execute(
                "select features.materialize(%s, '2024-01-01', '2025-01-02', statistics => %s)", [name, stats]
            ).fetchone()[0]
            dt = time.perf_counter() - t0
            runs[label] = {
                "seconds": dt,
                "rows_written": r["rows_written"],
                "online_updated": r["online_updated"],
                "rows_per_s": r["rows_written"] / dt,
            }
            print(label, runs[label], flush=True)
        out["materialize"] = runs
        # streaming pushes: batches of 1 and 500 rows into the statistics_off view
        res = {}
        for batch, calls in ((1, 300), (500, 40)):
            lat = []
            for i in range(calls):
                rows = [
                    {
                        "user_id": (i * batch + j) % USERS + 1,
                        "ts": f"2025-01-01T00:00:{j % 60:02d}+00:00",
                        **{f"f{k}": 1.0 * k for k in range(1, N_FEATS + 1)},
                    }
                    for j in range(batch)
                ]
                t0 = time.perf_counter()
                c.execute("select features.push('mat_statistics_off', %s)", [json.dumps(rows)])
                lat.append(time.perf_counter() - t0)
            lat.sort()
            res[f"batch_{batch}"] = {
                "calls": calls,
                "p50_ms": lat[len(lat) // 2] * 1000,
                "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
                "rows_per_s": batch * calls / sum(lat),
            }
            print("push", batch, res[f"batch_{batch}"], flush=True)
        out["push"] = res
        out["install"] = note
    print("wrote", write_section("materialization", out))


if __name__ == "__main__":
    main()
