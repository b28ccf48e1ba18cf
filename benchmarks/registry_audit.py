"""Question: what does the audit log cost? (target: <= 15% overhead on a write-heavy registry workload)
and how long does audit.verify() take per million events?

Workload, one client, per iteration: start_run, log_params (10), log_batch (20 metrics), set_tag,
register_model (1 KiB artifact), set_alias, end_run = 7 API calls writing ~10 catalog rows + 2 batches.
Sides: audit triggers on vs off (ALTER TABLE ... DISABLE TRIGGER indb_audit/indb_audit_batch), measured
in alternating blocks so that load from other work on the shared machine hits both sides alike.
verify(): N_EVENTS synthetic events appended through audit._append (the trigger path) in transactions of
1,000, then audit.verify() timed 3 times; seconds per million = median time * 1e6 / events.
"""

from __future__ import annotations

import statistics

import psycopg

from .registry_common import Timer, drop_db, fresh_db, save

BLOCKS = 6
PER_BLOCK = 40
N_EVENTS = 200_000


def set_audit(conn, on: bool) -> None:
    rows = conn.execute(
        "select tgrelid::regclass::text, tgname from pg_trigger "
        "where tgname in ('indb_audit', 'indb_audit_batch') and not tgisinternal"
    ).fetchall()
    for rel, name in rows:
        conn.execute(f"alter table {rel} {'enable' if on else 'disable'} trigger {name}")


def workload(client, n: int, tag: str) -> float:
    with Timer() as t:
        for i in range(n):
            with client.start_run(experiment=f"audit-{tag}", run_name=f"r{i}") as run:
                run.log_params({f"p{k}": k for k in range(10)})
                for m in range(20):
                    run.log_metric(f"m{m}", m / 20.0, step=0)
                run.flush()
                run.set_tag("stage", "bench")
            name = f"m-{tag}-{i % 10}"
            v = client.register_model(name, b"x" * 1024, flavor="custom", run=run)
            client.set_alias(name, "champion", v["version"])
    return t.s


def main() -> None:
    import indb

    dsn = fresh_db()
    try:
        client = indb.connect(dsn)
        admin = psycopg.connect(dsn, autocommit=True)
        workload(client, 20, "warm")
        on_s, off_s = [], []
        for b in range(BLOCKS):
            for state in (True, False) if b % 2 == 0 else (False, True):
                set_audit(admin, state)
                s = workload(client, PER_BLOCK, f"{'on' if state else 'off'}{b}")
                (on_s if state else off_s).append(s / PER_BLOCK * 1000.0)
        set_audit(admin, True)
        med_on, med_off = statistics.median(on_s), statistics.median(off_s)
        overhead = {
            "iterations_per_side": BLOCKS * PER_BLOCK,
            "ms_per_iteration_audit_on": [round(x, 2) for x in on_s],
            "ms_per_iteration_audit_off": [round(x, 2) for x in off_s],
            "median_ms_on": round(med_on, 2),
            "median_ms_off": round(med_off, 2),
            "overhead_pct": round((med_on / med_off - 1) * 100, 1),
            "events_per_iteration": None,
        }
        before = admin.execute("select count(*) from audit.events").fetchone()[0]
        workload(client, 10, "count")
        overhead["events_per_iteration"] = (
            admin.execute("select count(*) from audit.events").fetchone()[0] - before
        ) / 10
        print("overhead", overhead)

        # verify() per million events
        with Timer() as t_gen:
            done = 0
            while done < N_EVENTS:
                k = min(1000, N_EVENTS - done)
                admin.execute(
                    "select count(audit._append('INSERT', 'bench.synthetic', jsonb_build_object('id', g), "
                    "null, jsonb_build_object('id', g, 'name', 'row ' || g, 'value', g * 0.5, "
                    "'tags', jsonb_build_object('team', 'x')), null)) from generate_series(%s::int, %s::int) g",
                    [done + 1, done + k],
                )
                done += k
        events = admin.execute("select count(*) from audit.events").fetchone()[0]
        times = []
        for _ in range(3):
            with Timer() as t:
                ok = admin.execute("select ok from audit.verify()").fetchone()[0]
            assert ok
            times.append(t.s)
        med = statistics.median(times)
        verify = {
            "events": events,
            "append_events_per_s": round(N_EVENTS / t_gen.s),
            "verify_seconds": [round(x, 2) for x in times],
            "verify_seconds_per_million_events": round(med * 1e6 / events, 1),
        }
        print("verify", verify)
        client.close()
        admin.close()
        save(
            "audit",
            {
                "question": "audit overhead on a write-heavy registry workload (target <= 15%) and audit.verify() "
                "time per million events",
                "workload": "per iteration: start_run, log_params(10), 20 metrics in one log_batch, set_tag, end_run, "
                "register_model (1 KiB), set_alias",
                "overhead": overhead,
                "verify": verify,
            },
        )
    finally:
        drop_db()


if __name__ == "__main__":
    main()
