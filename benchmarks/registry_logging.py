"""Question: how fast does the client log metrics? (target >= 50,000 metric points/s batched)

Each run logs 10 params and 20 metrics x 100 steps (2,000 points) through the MLflow-style client
(`run.log_metric`, buffered, sent with registry.log_batch). Sides, all in one run, audit triggers on:
  batched (client default, 5,000 points per batch), batched with 500 per batch, and one SQL call per point
  (what an unbatched client does). Throughput counts the whole run: start_run, params, metrics, end_run.

Old beside new, interleaved: the batched side with registry.metrics' foreign key to registry.runs put back
for the block (the per-point run check migration 0023 replaced with one check per statement).

Baseline, interleaved with the batched side (issue 16: the shared machine's load moves every figure by 2-3x
between runs): the same points sent by psycopg's COPY into a plain table of the same columns (no index, no
trigger, no audit), i.e. how fast this machine ingests these points at that moment. The ratio batched/COPY
says how close logging is to plain ingest, whatever the load.

Steady: then 1,000 more runs (2,000,000 points; INDB_BENCH_STEADY_RUNS), the rate per block of 100 runs, while
registry.metrics and its index grow.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from .registry_common import Timer, drop_db, fresh_db, save

PARAMS = 10
METRICS = 20
STEPS = 100
STEADY_RUNS = int(os.environ.get("INDB_BENCH_STEADY_RUNS", "1000"))


def log_runs(client, n_runs: int, batch_size: int, exp: str) -> dict:
    with Timer() as t:
        for i in range(n_runs):
            with client.start_run(experiment=exp, run_name=f"r{i}", batch_size=batch_size, flush_seconds=3600) as run:
                run.log_params({f"p{k}": k * i for k in range(PARAMS)})
                for step in range(STEPS):
                    for m in range(METRICS):
                        run.log_metric(f"m{m}", (m + 1) / (step + 1), step=step)
    points = n_runs * METRICS * STEPS
    return {"runs": n_runs, "points": points, "seconds": round(t.s, 3), "points_per_s": round(points / t.s)}


def unbatched(client, n_points: int, exp: str) -> dict:
    run = client.start_run(experiment=exp)
    with Timer() as t:
        for i in range(n_points):
            client.call("select registry.log_metric(%s, %s, %s, %s)", [run.id, f"m{i % METRICS}", 0.5, i // METRICS])
    run.end()
    return {"points": n_points, "seconds": round(t.s, 3), "points_per_s": round(n_points / t.s)}


def copy_baseline(dsn: str, n_runs: int) -> dict:
    """The same 2,000 points per run as log_runs, COPYed into a plain table by psycopg."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("drop table if exists bench_points")
        c.execute("create table bench_points (run_id bigint, key text, value float8, step bigint, ts timestamptz)")
        with Timer() as t:
            for i in range(n_runs):
                with c.cursor().copy("copy bench_points (run_id, key, value, step, ts) from stdin") as cp:
                    for step in range(STEPS):
                        for m in range(METRICS):
                            cp.write_row((i, f"m{m}", (m + 1) / (step + 1), step, "now"))
        c.execute("drop table bench_points")
    points = n_runs * METRICS * STEPS
    return {"runs": n_runs, "points": points, "seconds": round(t.s, 3), "points_per_s": round(points / t.s)}


@contextmanager
def per_point_key(dsn: str):
    """registry.metrics checked as before migration 0023: the foreign key to registry.runs (added NOT
    VALID: it checks new rows only, so adding it reads nothing) instead of the per-statement trigger."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(
            "alter table registry.metrics add constraint bench_metrics_run_fk foreign key (run_id) "
            "references registry.runs (id) on delete cascade not valid"
        )
        c.execute("alter table registry.metrics disable trigger indb_metrics_run_exists")
        try:
            yield
        finally:
            c.execute("alter table registry.metrics enable trigger indb_metrics_run_exists")
            c.execute("alter table registry.metrics drop constraint bench_metrics_run_fk")


def main() -> None:
    import indb

    dsn = fresh_db()
    client = indb.connect(dsn)
    try:
        log_runs(client, 2, 5000, "warmup")
        results = {
            "batched_5000": log_runs(client, 50, 5000, "batched5000"),
            "batched_500": log_runs(client, 20, 500, "batched500"),
            "unbatched_one_call_per_point": unbatched(client, 1000, "unbatched"),
        }
        again = log_runs(client, 50, 5000, "batched5000b")  # second measurement of the main side
        results["batched_5000_repeat"] = again
        # interleaved: batched, COPY, batched, COPY, ... (the ratio holds under any load)
        pairs = []
        for k in range(3):
            b = log_runs(client, 25, 5000, f"inter{k}")
            with per_point_key(dsn):
                with_key = log_runs(client, 25, 5000, f"interkey{k}")
            cp = copy_baseline(dsn, 25)
            pairs.append(
                {
                    "batched_points_per_s": b["points_per_s"],
                    "batched_with_per_point_key_points_per_s": with_key["points_per_s"],
                    "copy_points_per_s": cp["points_per_s"],
                    "ratio": round(b["points_per_s"] / cp["points_per_s"], 3),
                }
            )
        # steady: the same client over STEADY_RUNS more runs, in blocks of 100 (does the rate hold while
        # registry.metrics and its index grow?)
        steady = [log_runs(client, 100, 5000, f"steady{k}")["points_per_s"] for k in range(STEADY_RUNS // 100)]
        print("steady, per block of 100 runs:", steady, flush=True)
        n = client.scalar("select count(*) from registry.metrics")
        save(
            "logging",
            {
                "question": "client metric logging throughput (target >= 50,000 points/s batched)",
                "workload": f"{PARAMS} params + {METRICS} metrics x {STEPS} steps per run, via client.start_run/log_metric",
                "results": results,
                "interleaved_with_plain_copy": pairs,
                "steady_points_per_s_per_100_runs": steady,
                "steady_min_over_max": round(min(steady) / max(steady), 3) if steady else None,
                "metric_rows_in_db": n,
                "audit": "on (one INSERT_BATCH audit event per log_batch call)",
            },
        )
        for k, v in results.items():
            print(f"{k:32} {v['points_per_s']:>10,} points/s  ({v['points']:,} points in {v['seconds']} s)")
        print("interleaved with plain COPY", pairs)
    finally:
        client.close()
        drop_db()


if __name__ == "__main__":
    main()
