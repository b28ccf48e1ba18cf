"""Question: how fast does the client log metrics? (target >= 50,000 metric points/s batched)

Each run logs 10 params and 20 metrics x 100 steps (2,000 points) through the MLflow-style client
(`run.log_metric`, buffered, sent with registry.log_batch). Sides, all in one run, audit triggers on:
  batched (client default, 5,000 points per batch), batched with 500 per batch, and one SQL call per point
  (what an unbatched client does). Throughput counts the whole run: start_run, params, metrics, end_run.
"""

from __future__ import annotations

from .registry_common import Timer, drop_db, fresh_db, save

PARAMS = 10
METRICS = 20
STEPS = 100


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


def main() -> None:
    import indb

    dsn = fresh_db()
    client = indb.connect(dsn)
    try:
        log_runs(client, 2, 5000, "warmup")
        results = {
            "batched_5000": log_runs(client, 50, 5000, "batched5000"),
            "batched_500": log_runs(client, 20, 500, "batched500"),
            "unbatched_one_call_per_point": unbatched(client, 3000, "unbatched"),
        }
        again = log_runs(client, 50, 5000, "batched5000b")  # second measurement of the main side
        results["batched_5000_repeat"] = again
        n = client.scalar("select count(*) from registry.metrics")
        save(
            "logging",
            {
                "question": "client metric logging throughput (target >= 50,000 points/s batched)",
                "workload": f"{PARAMS} params + {METRICS} metrics x {STEPS} steps per run, via client.start_run/log_metric",
                "results": results,
                "metric_rows_in_db": n,
                "audit": "on (one INSERT_BATCH audit event per log_batch call)",
            },
        )
        for k, v in results.items():
            print(f"{k:32} {v['points_per_s']:>10,} points/s  ({v['points']:,} points in {v['seconds']} s)")
    finally:
        client.close()
        drop_db()


if __name__ == "__main__":
    main()
