"""Single-row writes right after a bulk load: do they find their rows by key, or scan the table they write to?

One scratch database, the runtime service's mode (indb.runtime = 'auto'), SciFact sentences:
  1. a sync vectorizer: one INSERT of INDB_BENCH_ROWS rows (3,000), then INDB_BENCH_SINGLE (150) single-row
     INSERTs from a new connection;
  2. a collection: the same, its bulk rows given an embedding (no model call), the single rows embedded by the
     trigger.
Autovacuum is off for the destination and the collection, so what is measured is the state before autovacuum
would first analyze them (up to a minute after a load). For each: backend CPU per single-row INSERT (from
/proc/<pid>/stat), wall p50, and the sequential scans of the destination / collection that the single-row
INSERTs made (pg_stat_user_tables.seq_scan; 0 when every lookup went by key). Run under `flock -x
/work/heavy.lock`. INDB_BENCH_LABEL (default "current") names the run in the results file, which keeps the
runs of other labels (e.g. the version before a change, measured from its checkout).
"""

from __future__ import annotations

import json
import os
import statistics
import time

import psycopg

from . import common
from .embeddings_throughput import texts
from .runtime_shared import cpu_seconds

DB = "indb_bench_single_row"
ROWS = int(os.environ.get("INDB_BENCH_ROWS", "3000"))
SINGLE = int(os.environ.get("INDB_BENCH_SINGLE", "150"))
LABEL = os.environ.get("INDB_BENCH_LABEL", "current")


def seq_scans(c: psycopg.Connection, writer: psycopg.Connection, rel: str) -> int:
    """Sequential scans of ``rel`` so far, read on ``c``, with ``writer``'s statements counted (a backend flushes
    its statistics when it goes idle after pg_stat_force_next_flush)."""
    writer.execute("select pg_stat_force_next_flush()")
    c.execute("select pg_stat_clear_snapshot()")
    return c.execute(
        "select coalesce(seq_scan, 0) from pg_stat_user_tables where relid = %s::regclass", [rel]
    ).fetchone()[0]


def singles(dsn: str, insert: str, rows: list[tuple], watched: str) -> dict:
    """``insert`` once per row of ``rows`` from a new connection (after 10 warm-up rows), one statement each."""
    with psycopg.connect(dsn, autocommit=True) as c:
        for r in rows[:10]:
            c.execute(insert, r)
        pid = c.execute("select pg_backend_pid()").fetchone()[0]
        with psycopg.connect(dsn, autocommit=True) as obs:
            scans0 = seq_scans(obs, c, watched)
            cpu0 = cpu_seconds(pid)
            lat = []
            for r in rows[10:]:
                t = time.perf_counter()
                c.execute(insert, r)
                lat.append(time.perf_counter() - t)
            cpu = cpu_seconds(pid) - cpu0
            scans = seq_scans(obs, c, watched) - scans0
    n = len(lat)
    return {
        "single_row_inserts": n,
        "backend_cpu_ms_per_row": round(cpu / n * 1000, 2),
        "wall_p50_ms": round(statistics.median(lat) * 1000, 2),
        "seq_scans_of_the_table_written_back": scans,
    }


def main() -> None:
    data = texts(ROWS + SINGLE + 100)
    res: dict = {"settings": {"bulk_rows": ROWS, "single_row_inserts": SINGLE}}
    with common.scratch_database(DB) as dsn, psycopg.connect(dsn, autocommit=True) as c:
        c.execute("select ml.embed('all-MiniLM-L6-v2', 'warm the model')")
        # 1. a sync vectorizer
        c.execute("create table bench_src (id bigserial primary key, body text)")
        c.execute("select ml.create_vectorizer('bench_src', array['body'], name => 'bench_src')")
        c.execute("alter table embeddings.bench_src set (autovacuum_enabled = false)")
        t = time.perf_counter()
        c.execute("insert into bench_src (body) select unnest(%s::text[])", [data[:ROWS]])
        bulk_s = time.perf_counter() - t
        print(f"vectorizer: bulk {ROWS} rows in {bulk_s:.1f} s", flush=True)
        rows = [(s,) for s in data[ROWS : ROWS + SINGLE + 10]]
        res["vectorizer"] = {
            "bulk_seconds": round(bulk_s, 1),
            **singles(dsn, "insert into bench_src (body) values (%s)", rows, "embeddings.bench_src"),
        }
        print(f"  {res['vectorizer']}", flush=True)
        # 2. a collection
        c.execute("select ml.create_collection('bench_docs')")
        c.execute("alter table collections.bench_docs set (autovacuum_enabled = false)")
        c.execute(
            "insert into collections.bench_docs (id, content, embedding) select 'b' || g, s, "
            "array_fill(0.05::real, array[384])::vector from unnest(%s::text[]) with ordinality u(s, g)",
            [data[:ROWS]],
        )
        rows = [(f"s{i}", s) for i, s in enumerate(data[ROWS : ROWS + SINGLE + 10])]
        res["collection"] = singles(
            dsn, "insert into collections.bench_docs (id, content) values (%s, %s)", rows, "collections.bench_docs"
        )
        print(f"collection: {res['collection']}", flush=True)
    runs = {}
    old = common.RESULTS / "single_row_writes.json"
    if old.exists():
        runs = json.loads(old.read_text()).get("runs", {})
    runs[LABEL] = {"machine": common.machine(), **res}
    path = common.write("single_row_writes", {"runs": runs})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
