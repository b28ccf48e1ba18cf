"""Question: how far behind is a hot standby right after a large write has committed on the primary, and does a
replica add read throughput?

Makes a replica of the project's cluster (the way `indb db replica add` does: pg_basebackup, a slot, its own
runtime service), then in a scratch database:

1. inserts N rows (default 10,000 short texts) into a table with a sync vectorizer (all-MiniLM-L6-v2: the
   embeddings are computed by the INSERT itself, in one transaction);
2. materializes a feature view of 100,000 entities (one source row each, 10 float features, monthly offline
   partitions and the online store) with features.materialize, in one transaction;

and for each measures the statement's wall time, the WAL it wrote, and the lag = the time from the primary's
commit until pg_last_wal_replay_lsn() on the replica has reached the commit's LSN (polled every 2 ms), then checks
that the replica holds the rows (and answers get_online as the primary does).

3. Read throughput: 4 client threads for DURATION seconds each calling `ml.search` (a 20,000-document collection
   of 384-d vectors, HNSW, a vector query, k 10: the search path without embedding) or `features.get_online`
   (1 entity x the view's 10 features), either all 4 against the primary, or 2 against the primary and 2
   against the replica. Calls per second (all clients together) and p50/p99 per call.

Removes the replica and the database at the end. Writes benchmarks/results/scale_out.json.

Run: flock -x /work/heavy.lock .venv/bin/python -m benchmarks.scale_out 10000
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

import numpy as np
import psycopg

from benchmarks.common import percentile, run_together, scratch_database, write

DB = "indb_bench_scale_out"
ENTITIES = int(os.environ.get("INDB_SCALE_OUT_ENTITIES", "100000"))
N_FEATS = 10
DOCS = int(os.environ.get("INDB_SCALE_OUT_DOCS", "20000"))
DIM = 384
DURATION = float(os.environ.get("INDB_SCALE_OUT_SECONDS", "20"))


def wait_replay(r: psycopg.Connection, lsn: str) -> None:
    while not r.execute("select pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn]).fetchone()[0]:
        time.sleep(0.002)


def timed_write(p: psycopg.Connection, r: psycopg.Connection, sql: str, params: list) -> dict:
    """Run one autocommit statement on the primary; its time, WAL, and the replica's lag after the commit."""
    lsn0 = p.execute("select pg_current_wal_insert_lsn()").fetchone()[0]
    t0 = time.perf_counter()
    cur = p.execute(sql, params)
    ret = cur.fetchone() if cur.description else None
    committed = time.perf_counter()
    lsn1 = p.execute("select pg_current_wal_insert_lsn()::text").fetchone()[0]
    wait_replay(r, lsn1)
    lag = time.perf_counter() - committed
    wal = p.execute("select pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", [lsn1, lsn0]).fetchone()[0]
    return {"seconds": committed - t0, "wal_mib": float(wal) / 2**20, "lag_s": lag, "returned": ret[0] if ret else None}


def throughput(dsns: list[str], sql: str, make_params, seconds: float) -> dict:
    """len(dsns) client threads, one connection each, calling sql for `seconds`; totals and latencies."""
    lat: list[list[float]] = [[] for _ in dsns]
    per: list[int] = [0 for _ in dsns]

    def client(i: int, ready) -> None:
        rng = random.Random(i)
        with psycopg.connect(dsns[i], autocommit=True) as c:
            for _ in range(20):  # warm the session (plans, caches)
                c.execute(sql, make_params(rng)).fetchall()
            ready()
            end = time.perf_counter() + seconds
            while (t := time.perf_counter()) < end:
                c.execute(sql, make_params(rng)).fetchall()
                lat[i].append((time.perf_counter() - t) * 1000)
                per[i] += 1

    wall = run_together(len(dsns), client)
    every = [x for one in lat for x in one]
    return {
        "clients": len(dsns),
        "calls_per_s": round(sum(per) / wall, 1),
        "calls_per_client": per,
        "p50_ms": round(percentile(every, 50), 2),
        "p99_ms": round(percentile(every, 99), 2),
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    from indb.localdb import Cluster, Replica

    primary = Cluster.local()
    out: dict = {}
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
                # 1. the 10,000-row sync-vectorizer INSERT
                p.execute("create table docs (id int primary key, body text)")
                p.execute("select * from ml.create_vectorizer('docs', array['body'])")
                w = timed_write(
                    p,
                    r,
                    "insert into docs select i, 'document number ' || i || ' about topic ' || (i %% 97) "
                    "|| ' with a few more words to embed' from generate_series(1, %s) i",
                    [n],
                )
                rows = r.execute("select count(*) from docs").fetchone()[0]
                view = p.execute("select ml.vectorizer_search('docs', 'topic 5', 1) is not null").fetchone()[0]
                embedded = r.execute(
                    "select count(*) from ml.vectorizer_search('docs', 'document about topic 5', 5)"
                ).fetchone()[0]
                out["replica_lag"] = {
                    "rows": n,
                    "insert_s": round(w["seconds"], 3),
                    "wal_mib": round(w["wal_mib"], 2),
                    "replica_lag_after_commit_s": round(w["lag_s"], 4),
                    "target_lag_s": 1.0,
                    "replica_rows": rows,
                    "replica_search_hits": embedded,
                    "primary_search_ok": view,
                    "pg_basebackup_and_start_s": round(basebackup_s, 2),
                    "note": "replica on the same machine (2 shared cores), streaming over the Unix socket, one "
                    "physical slot",
                }
                print(out["replica_lag"], flush=True)

                # 2. a 100,000-entity feature materialization
                cols = ", ".join(f"random() * {i} as f{i}" for i in range(1, N_FEATS + 1))
                p.execute(
                    f"create table user_src as select i as user_id, '2024-01-01'::timestamptz + random() * "
                    f"interval '365 days' as ts, {cols} from generate_series(1, {ENTITIES}) i"
                )
                p.execute("vacuum analyze user_src")
                p.execute("select features.create_entity('user', array['user_id'])")
                feats = [{"name": f"f{i}", "type": "float8"} for i in range(1, N_FEATS + 1)]
                p.execute(
                    "select features.create_feature_view('user_stats', 'user', 'user_src', 'ts', %s, "
                    "partition_by => 'month')",
                    [json.dumps(feats)],
                )
                m = timed_write(
                    p,
                    r,
                    "select jsonb_build_object('rows_written', rows_written, 'online_updated', online_updated) "
                    "from features.materialize('user_stats', '2024-01-01', '2025-01-02', statistics => false)",
                    [],
                )
                probe = [1, 4242, ENTITIES]
                same = all(
                    p.execute(
                        "select features.get_online(array['user_stats:*'], %s::jsonb)", [json.dumps({"user_id": u})]
                    ).fetchone()[0]
                    == r.execute(
                        "select features.get_online(array['user_stats:*'], %s::jsonb)", [json.dumps({"user_id": u})]
                    ).fetchone()[0]
                    for u in probe
                )
                out["replica_lag_feature_materialization"] = {
                    "entities": ENTITIES,
                    "features": N_FEATS,
                    "rows_written": m["returned"]["rows_written"],
                    "online_updated": m["returned"]["online_updated"],
                    "materialize_s": round(m["seconds"], 3),
                    "wal_mib": round(m["wal_mib"], 2),
                    "replica_lag_after_commit_s": round(m["lag_s"], 4),
                    "replica_get_online_equals_primary": same,
                }
                print(out["replica_lag_feature_materialization"], flush=True)

                # 3. read throughput: a collection of 20,000 384-d vectors (bring your own), HNSW
                p.execute(
                    "select ml.create_collection('rd', model => null, options => %s::jsonb)",
                    [json.dumps({"dimensions": DIM})],
                )
                p.execute("drop index collections.rd_ann")  # built once after the load
                rng = np.random.default_rng(15)
                vecs = rng.standard_normal((DOCS, DIM)).astype(np.float32)
                vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
                with p.cursor().copy("copy collections.rd (id, content, embedding) from stdin") as cp:
                    for i in range(DOCS):
                        cp.write_row((f"r{i}", f"document {i}", "[" + ",".join(f"{x:.6g}" for x in vecs[i]) + "]"))
                p.execute("set maintenance_work_mem = '512MB'")
                p.execute("select * from ml.reindex_collection('rd')")
                p.execute("analyze collections.rd")
                wait_replay(r, p.execute("select pg_current_wal_insert_lsn()::text").fetchone()[0])
                queries = rng.standard_normal((200, DIM)).astype(np.float32)
                qtext = ["[" + ",".join(f"{x:.6g}" for x in q) + "]" for q in queries]
                assert (
                    p.execute("select array_agg(id) from ml.search('rd', %s::vector, 10)", [qtext[0]]).fetchone()
                    == r.execute("select array_agg(id) from ml.search('rd', %s::vector, 10)", [qtext[0]]).fetchone()
                )
                out["read_throughput"] = {
                    "seconds_per_run": DURATION,
                    "ml_search_call": f"ml.search('rd', <384-d vector>, 10): {DOCS:,} documents, HNSW m 16, ef_search 40",
                    "get_online_call": f"features.get_online(array['user_stats:*'], {{user_id}}): 1 of {ENTITIES:,} entities x "
                    "10 features",
                }
                loads = {
                    "ml_search": (
                        "select id from ml.search('rd', %s::vector, 10)",
                        lambda g: [qtext[g.randrange(len(qtext))]],
                    ),
                    "get_online": (
                        "select features.get_online(array['user_stats:*'], %s::jsonb)",
                        lambda g: [json.dumps({"user_id": g.randint(1, ENTITIES)})],
                    ),
                }
                for name, (sql, params) in loads.items():
                    for label, targets in (
                        ("primary_only_4_clients", [dsn] * 4),
                        ("primary_2_plus_replica_2_clients", [dsn, rdsn, dsn, rdsn]),
                    ):
                        res = throughput(targets, sql, params, DURATION)
                        out["read_throughput"].setdefault(name, {})[label] = res
                        print(name, label, res, flush=True)
                    a = out["read_throughput"][name]
                    a["gain"] = round(
                        a["primary_2_plus_replica_2_clients"]["calls_per_s"]
                        / a["primary_only_4_clients"]["calls_per_s"],
                        3,
                    )
                out["read_throughput"]["note"] = (
                    "primary and replica on the same machine: 2 CPU cores shared with other engineers' work, so the "
                    "replica's backends compete with the primary's for the same cores; the 4 client threads (Python) "
                    "run there too. A replica on its own machine adds its cores; here it can only add what the "
                    "primary leaves idle"
                )
                out["loadavg_at_end"] = list(os.getloadavg())
        finally:
            rep.remove()
    print(out)
    print(write("scale_out", out))


if __name__ == "__main__":
    main()
