"""Question: how far behind is a hot standby right after a large write has committed on the primary?

Makes a replica of the project's cluster (the way `indb db replica add` does), then in a scratch database
inserts N rows (default 10,000 short texts) into a table with a sync vectorizer (all-MiniLM-L6-v2: the
embeddings are computed by the INSERT itself, in one transaction). Measures the INSERT's wall time, the WAL it
wrote, and the lag = the time from the primary's commit until pg_last_wal_replay_lsn() on the replica has
reached the commit's LSN (polled every 2 ms), and checks that the replica then holds all N embedded rows.
Removes the replica and the database at the end. Writes benchmarks/results/scale_out.json.

Run: flock -x /work/heavy.lock .venv/bin/python -m benchmarks.scale_out 10000
"""

from __future__ import annotations

import sys
import time

import psycopg

from benchmarks.common import scratch_database, write

DB = "indb_bench_scale_out"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    from indb.localdb import Cluster, Replica

    primary = Cluster.local()
    with scratch_database(DB) as dsn:
        rep = Replica.of(primary, "bench")
        if rep.initialized():
            rep.remove()
        t = time.perf_counter()
        rep.create()
        rep.runtime_start()
        basebackup_s = time.perf_counter() - t
        try:
            rdsn = rep.dsn(DB)
            with psycopg.connect(dsn, autocommit=True) as p, psycopg.connect(rdsn, autocommit=True) as r:
                p.execute("create table docs (id int primary key, body text)")
                p.execute("select * from ml.create_vectorizer('docs', array['body'])")
                lsn0 = p.execute("select pg_current_wal_insert_lsn()").fetchone()[0]
                t0 = time.perf_counter()
                p.execute(
                    "insert into docs select i, 'document number ' || i || ' about topic ' || (i %% 97) "
                    "|| ' with a few more words to embed' from generate_series(1, %s) i",
                    [n],
                )
                committed = time.perf_counter()
                lsn1 = p.execute("select pg_current_wal_insert_lsn()::text").fetchone()[0]
                wal_bytes = p.execute("select pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", [lsn1, lsn0]).fetchone()[0]
                while not r.execute("select pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn1]).fetchone()[0]:
                    time.sleep(0.002)
                lag = time.perf_counter() - committed
                rows = r.execute("select count(*) from docs").fetchone()[0]
                view = p.execute("select ml.vectorizer_search('docs', 'topic 5', 1) is not null").fetchone()[0]
                embedded = r.execute(
                    "select count(*) from ml.vectorizer_search('docs', 'document about topic 5', 5)"
                ).fetchone()[0]
        finally:
            rep.remove()
    out = {
        "rows": n,
        "insert_s": round(committed - t0, 3),
        "wal_mib": round(float(wal_bytes) / 2**20, 2),
        "replica_lag_after_commit_s": round(lag, 4),
        "target_lag_s": 1.0,
        "replica_rows": rows,
        "replica_search_hits": embedded,
        "primary_search_ok": view,
        "pg_basebackup_and_start_s": round(basebackup_s, 2),
        "note": "replica on the same machine (2 shared cores), streaming over the Unix socket, one physical slot",
    }
    print(out)
    write("scale_out", {"replica_lag": out})


if __name__ == "__main__":
    main()
