"""What ml.search costs over the query a user would write by hand against pgvector, side by side and interleaved
(every query runs on each side in turn, so load on a shared machine falls on all sides alike, and the side that
runs a query first rotates: the first reads the query's part of the HNSW graph into the CPU caches for the others).

Two hand-written sides: the one that returns what ml.search returns (id, score, content, metadata) -- the fair
comparison -- and the one that returns only the id, which reads no content and so is cheaper than any search
API that returns documents.

Needs the collection `scale` that `python -m benchmarks.search_scale N` built (database indb_bench_scale of the
project's cluster, or INDB_BENCH_DSN). Queries: SciFact's queries, embedded by ml.embed in that database.

    python -m benchmarks.search_overhead [queries]      # benchmarks/results/search_overhead.json, key "<documents>"
    INDB_BENCH_DSN="... user=<a login granted indb_reader>" python -m benchmarks.search_overhead 1000
                                                        # key "<documents> (<login>)": row security applies
"""

from __future__ import annotations

import json
import os
import sys
import time

import psycopg

from benchmarks.common import RESULTS, machine, percentile

SIDES = {
    "ml.search": ("select * from ml.search('scale', %s::vector, 10, null, jsonb_build_object('ef_search', %s))", 2),
    "hand-written, same columns": (
        "select t.id, (1 - (t.embedding <=> %s::vector(384)))::float8 as score, t.content, t.metadata "
        "from collections.scale t order by t.embedding <=> %s::vector(384) limit 10",
        2,
    ),
    "hand-written, id only": ("select id from collections.scale order by embedding <=> %s::vector(384) limit 10", 1),
}


def main() -> None:
    nq = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    dsn = os.environ.get("INDB_BENCH_DSN")
    if not dsn:
        from indb.localdb import Cluster

        dsn = Cluster.local().dsn("indb_bench_scale")
    conn = psycopg.connect(dsn, autocommit=True)
    n = conn.execute("select count(*) from collections.scale").fetchone()[0]
    from indb.demo import data_dir

    with open(data_dir() / "scifact" / "queries.jsonl") as f:
        texts = [json.loads(line)["text"] for line in f][:nq]
    qv = [r[0] for r in conn.execute("select unnest(ml.embed('all-MiniLM-L6-v2', %s::text[]))::text", [texts])]
    out: dict = {"documents": n, "queries": len(qv), "machine": machine(), "sides": {}}
    for ef in (40, 80):
        conn.execute(f"set hnsw.ef_search = {ef}")
        ts: dict[str, list[float]] = {k: [] for k in SIDES}
        order = list(SIDES)
        for rnd in range(2):  # the first round warms caches and psycopg's prepared statements
            for i, q in enumerate(qv):
                # each query runs on every side in turn, and the side that goes first rotates: the first side
                # of a query reads its graph neighbourhood into the CPU caches for the sides after it
                for side in order[i % len(order) :] + order[: i % len(order)]:
                    sql, nparams = SIDES[side]
                    params = [q, ef] if side == "ml.search" else [q] * nparams
                    t0 = time.perf_counter()
                    conn.execute(sql, params).fetchall()
                    if rnd:
                        ts[side].append(time.perf_counter() - t0)
        res = {
            k: {"p50_ms": round(percentile(v, 50) * 1000, 3), "p99_ms": round(percentile(v, 99) * 1000, 3)}
            for k, v in ts.items()
        }
        base = res["hand-written, same columns"]["p50_ms"]
        for k in res:
            res[k]["p50_vs_same_columns"] = round(res[k]["p50_ms"] / base, 3)
        out["sides"][f"ef_search {ef}"] = res
        print(ef, json.dumps(res), flush=True)
    path = RESULTS / "search_overhead.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    if "documents" in data:  # the first format: one run (100,000 documents, before ml._search ran without a cursor)
        data = {f"{data['documents']} (before: RETURN QUERY EXECUTE)": data}
    # a login that row security applies to (INDB_BENCH_DSN) gets a key of its own
    su = conn.execute("select rolsuper from pg_roles where rolname = current_user").fetchone()[0]
    out["role"] = conn.info.user
    data[str(n) if su else f"{n} ({conn.info.user})"] = out
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
