"""Question: what does the audit log cost? (target: <= 15% overhead on a write-heavy registry workload)
and how long do audit.seal() and audit.verify() take per million events?

Workload, per iteration: start_run, log_params (10), log_batch (20 metrics), set_tag, end_run,
register_model (1 KiB artifact), set_alias = 7 API calls writing ~10 catalog rows + 2 batches.
Sides: audit triggers on vs off (ALTER TABLE ... DISABLE TRIGGER on every trigger named indb_audit*), measured
in many short alternating blocks so that load from other work on the shared machine hits both sides alike:
  * one client;
  * four clients at once (threads with their own connections): a chain-head lock held to commit would
    serialize them, so this side shows whether audited writers wait on each other.
The overhead is the median over adjacent (on, off) block pairs of on/off - 1, with the medians of each side, in
wall-clock time and in CPU time of the server backend(s) doing the work (/proc/<pid>/schedstat, when the server
runs on this machine): on a shared machine, CPU time is the steadier measure of what the audit costs.
c_vs_plpgsql: the same workload, audit on, alternating between the append path of today (C, sql/c) and the PL/pgSQL
one of revision PLPGSQL_REF (its audit._append, _row_trigger and _batch_trigger, taken with `git show` and created
in place), and with the audit off: backend CPU per iteration of each side. Skipped where git cannot show it.
seal: where audit.seal() exists, the events the workload left pending are sealed and timed.
verify(): N_EVENTS synthetic events appended through audit._append (the trigger path) in transactions of
1,000, sealed (where sealing exists), then audit.verify() timed 3 times; seconds per million = median * 1e6 / events.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
from pathlib import Path

import psycopg

from .registry_common import Timer, drop_db, fresh_db, save

BLOCKS = 16
PER_BLOCK = 12
THREADS = 4
MT_BLOCKS = 6
MT_PER_THREAD = 8
N_EVENTS = 200_000
AB_BLOCKS = 30
AB_PER_BLOCK = 12
# the last revision whose audit append was PL/pgSQL
PLPGSQL_REF = os.environ.get("INDB_AUDIT_PLPGSQL_REF", "5ea01fe")


def backend_cpu_s(pids: list[int]) -> float | None:
    """CPU seconds the server backends ``pids`` have used so far (None where /proc does not have them)."""
    try:
        total = 0
        for pid in pids:
            with open(f"/proc/{pid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except OSError:
        return None


def pids_of(clients: list) -> list[int]:
    return [c.conn.execute("select pg_backend_pid()").fetchone()[0] for c in clients]


def set_audit(conn: psycopg.Connection, on: bool) -> None:
    rows = conn.execute(
        "select t.tgrelid::regclass::text, t.tgname from pg_trigger t join pg_class c on c.oid = t.tgrelid "
        "join pg_namespace n on n.oid = c.relnamespace "
        "where t.tgname like 'indb\\_audit%' and not t.tgisinternal and n.nspname <> 'audit' and t.tgparentid = 0"
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


def concurrent(clients: list, n: int, tag: str) -> float:
    """Iterations per second of len(clients) threads doing n iterations each."""
    errors: list[BaseException] = []

    def one(k: int) -> None:
        try:
            workload(clients[k], n, f"{tag}t{k}")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(clients))]
    with Timer() as t:
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    if errors:
        raise errors[0]
    return len(clients) * n / t.s


def paired_overhead(on: list[float], off: list[float], higher_is_better: bool = False) -> float:
    ratios = [(f / o if higher_is_better else o / f) for o, f in zip(on, off)]
    return round((statistics.median(ratios) - 1) * 100, 1)


def plpgsql_append(rev: str) -> str | None:
    """The CREATE statements of audit._append, _row_trigger and _batch_trigger as PL/pgSQL at revision ``rev``."""
    root = Path(__file__).resolve().parents[1]
    shown = subprocess.run(
        ["git", "show", f"{rev}:sql/800-audit-int.sql"], cwd=root, capture_output=True, text=True, check=False
    )
    if shown.returncode != 0:
        return None
    text, parts = shown.stdout, []
    for start, end in (
        ("create or replace function audit._append(", "comment on function audit._append("),
        ("create or replace function audit._row_trigger()", "-- statement trigger of history tables"),
        ("create or replace function audit._batch_trigger()", "-- registry.latest_metrics is derived"),
    ):
        a = text.find(start)
        b = text.find(end, a)
        if a < 0 or b < 0 or "language plpgsql" not in text[a:b]:
            return None
        parts.append(text[a:b])
    return "\n".join(parts)


def c_vs_plpgsql(client, admin: psycopg.Connection, pids: list[int]) -> dict | None:
    """Backend CPU per iteration: the audit off, the C append, the PL/pgSQL append of PLPGSQL_REF; alternating."""
    old = plpgsql_append(PLPGSQL_REF)
    if old is None:
        return None
    current = admin.execute(
        "select string_agg(pg_get_functiondef(p.oid), E';\\n') || ';' from pg_proc p "
        "join pg_namespace n on n.oid = p.pronamespace "
        "where n.nspname = 'audit' and p.proname in ('_append', '_row_trigger', '_batch_trigger')"
    ).fetchone()[0]
    sides = {"off": None, "c": current, "plpgsql": old}
    cpu: dict[str, list[float]] = {k: [] for k in sides}
    try:
        for b in range(AB_BLOCKS):
            for side in list(sides) if b % 2 == 0 else list(sides)[::-1]:
                set_audit(admin, side != "off")
                if sides[side]:
                    admin.execute(sides[side])
                workload(client, 2, f"ab-warm{b}{side}")  # plans made again after the functions changed
                c0 = backend_cpu_s(pids)
                workload(client, AB_PER_BLOCK, f"ab{b}{side}")
                c1 = backend_cpu_s(pids)
                if c0 is not None and c1 is not None:
                    cpu[side].append((c1 - c0) / AB_PER_BLOCK * 1000.0)
    finally:
        admin.execute(current)
        set_audit(admin, True)
    if not cpu["off"]:
        return None
    med = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "reference": PLPGSQL_REF,
        "iterations_per_side": AB_BLOCKS * AB_PER_BLOCK,
        "backend_cpu_ms_per_iteration": {k: round(v, 3) for k, v in med.items()},
        "audit_cpu_ms_per_iteration": {k: round(med[k] - med["off"], 3) for k in ("c", "plpgsql")},
        "cpu_overhead_pct": {k: round((med[k] / med["off"] - 1) * 100, 1) for k in ("c", "plpgsql")},
    }


def has_seal(conn: psycopg.Connection) -> bool:
    return conn.execute("select to_regprocedure('audit.seal()') is not null").fetchone()[0]


def main() -> None:
    import indb

    dsn = fresh_db()
    try:
        client = indb.connect(dsn)
        admin = psycopg.connect(dsn, autocommit=True)
        sealing = has_seal(admin)
        workload(client, 20, "warm")
        pids = pids_of([client])
        on_s, off_s, on_cpu, off_cpu = [], [], [], []
        for b in range(BLOCKS):
            for state in (True, False) if b % 2 == 0 else (False, True):
                set_audit(admin, state)
                cpu0 = backend_cpu_s(pids)
                s = workload(client, PER_BLOCK, f"{'on' if state else 'off'}{b}")
                cpu1 = backend_cpu_s(pids)
                (on_s if state else off_s).append(s / PER_BLOCK * 1000.0)
                if cpu0 is not None and cpu1 is not None:
                    (on_cpu if state else off_cpu).append((cpu1 - cpu0) / PER_BLOCK * 1000.0)
        set_audit(admin, True)
        med_on, med_off = statistics.median(on_s), statistics.median(off_s)
        overhead = {
            "iterations_per_side": BLOCKS * PER_BLOCK,
            "ms_per_iteration_audit_on": [round(x, 2) for x in on_s],
            "ms_per_iteration_audit_off": [round(x, 2) for x in off_s],
            "median_ms_on": round(med_on, 2),
            "median_ms_off": round(med_off, 2),
            "overhead_pct": round((med_on / med_off - 1) * 100, 1),
            "overhead_pct_paired_median": paired_overhead(on_s, off_s),
            "backend_cpu_ms_per_iteration_on": round(statistics.median(on_cpu), 3) if on_cpu else None,
            "backend_cpu_ms_per_iteration_off": round(statistics.median(off_cpu), 3) if off_cpu else None,
            "backend_cpu_overhead_pct_paired_median": paired_overhead(on_cpu, off_cpu) if on_cpu else None,
            "events_per_iteration": None,
        }
        before = admin.execute("select count(*) from audit.events").fetchone()[0]
        workload(client, 10, "count")
        overhead["events_per_iteration"] = (
            admin.execute("select count(*) from audit.events").fetchone()[0] - before
        ) / 10
        print("overhead", overhead)
        versus = c_vs_plpgsql(client, admin, pids)
        print("c_vs_plpgsql", versus)

        clients = [indb.connect(dsn) for _ in range(THREADS)]
        concurrent(clients, 2, "mtwarm")
        mt_pids = pids_of(clients)
        mt_on, mt_off, mt_on_cpu, mt_off_cpu = [], [], [], []
        for b in range(MT_BLOCKS):
            for state in (True, False) if b % 2 == 0 else (False, True):
                set_audit(admin, state)
                cpu0 = backend_cpu_s(mt_pids)
                r = concurrent(clients, MT_PER_THREAD, f"mt{'on' if state else 'off'}{b}")
                cpu1 = backend_cpu_s(mt_pids)
                (mt_on if state else mt_off).append(r)
                if cpu0 is not None and cpu1 is not None:
                    per_it = (cpu1 - cpu0) / (THREADS * MT_PER_THREAD) * 1000.0
                    (mt_on_cpu if state else mt_off_cpu).append(per_it)
        set_audit(admin, True)
        for c in clients:
            c.close()
        ratio = statistics.median([a / b for a, b in zip(mt_on, mt_off)])
        concurrency = {
            "threads": THREADS,
            "iterations_per_side": MT_BLOCKS * THREADS * MT_PER_THREAD,
            "iterations_per_s_audit_on": [round(x, 1) for x in mt_on],
            "iterations_per_s_audit_off": [round(x, 1) for x in mt_off],
            "median_per_s_on": round(statistics.median(mt_on), 1),
            "median_per_s_off": round(statistics.median(mt_off), 1),
            "throughput_loss_pct_paired_median": round((1 - ratio) * 100, 1),
            "backend_cpu_overhead_pct_paired_median": paired_overhead(mt_on_cpu, mt_off_cpu) if mt_on_cpu else None,
        }
        print("concurrency", concurrency)

        seal = None
        if sealing:
            pending = admin.execute("select pending from audit.verify()").fetchone()[0]
            with Timer() as t:
                sealed = admin.execute("select audit.seal()").fetchone()[0]
            seal = {
                "pending_after_workload": pending,
                "sealed": sealed,
                "seconds": round(t.s, 3),
                "events_per_s": round(sealed / t.s) if t.s else None,
            }
            print("seal", seal)

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
        seal_s = None
        if sealing:
            with Timer() as t_seal:
                admin.execute("select audit.seal()")
            seal_s = t_seal.s
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
            "seal_seconds_per_million_events": round(seal_s * 1e6 / N_EVENTS, 1) if seal_s else None,
            "verify_seconds": [round(x, 2) for x in times],
            "verify_seconds_per_million_events": round(med * 1e6 / events, 1),
        }
        print("verify", verify)
        client.close()
        admin.close()
        save(
            "audit",
            {
                "question": "audit overhead on a write-heavy registry workload (target <= 15%), one client and four; "
                "audit.seal() and audit.verify() time per million events",
                "workload": "per iteration: start_run, log_params(10), 20 metrics in one log_batch, set_tag, end_run, "
                "register_model (1 KiB), set_alias",
                "overhead": overhead,
                "c_vs_plpgsql": versus,
                "concurrency": concurrency,
                "seal": seal,
                "verify": verify,
            },
        )
    finally:
        drop_db()


if __name__ == "__main__":
    main()
