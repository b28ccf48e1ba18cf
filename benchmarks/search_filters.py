"""Metadata-filtered search as an application login (row security applies) beside the superuser (it skips row
security), interleaved in one run: what migration 0024's leakproof operators (ml.@>, ml.?) changed.

Corpus: the first N documents of benchmarks/search_corpus.py (real text, vectors derived from real MiniLM
embeddings), in a collection of a scratch database, a third each for tenants acme and globex and a third shared.
Metadata: {"cat": i % 100, "year": 2000 + (i // 100) % 25, "lang": "en" for 9 in 10 documents else "fr"}. Queries:
SciFact's queries as vectors. Sides, each query in turn on every side (the first side rotates):

* ml.search with {"cat": c} (1% of the rows: the exact strategy), {"cat": c, "year": y} (0.04%) and
  {"lang": "en"} (90%: more than exact_threshold, an iterative index scan), as the superuser and as a login
  bound to tenant acme (granted indb_reader: an application's rights plus ml.search_explain; row security
  applies to it as to indb_app);
* the same exact query written with PostgreSQL's own @> as that login: what every filter cost before
  (no jsonb operator of PostgreSQL is leakproof, so row security kept the index out of reach).

    .venv/bin/python -m benchmarks.search_filters [documents] [queries]   # benchmarks/results/search_filters.json

INDB_KEEP_BENCH_DB=1 keeps the database (indb_bench_filters); INDB_BENCH_REUSE=1 times it again without loading.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time

import psycopg
from psycopg.types.json import Jsonb

from benchmarks.common import create_scratch_db, drop_scratch_db, percentile, write
from benchmarks.search_corpus import corpus
from benchmarks.search_scale import heavy

DB = "indb_bench_filters"
APP = "indb_bench_filter_login"


def _load(conn, texts, vecs, n: int) -> None:
    conn.execute("select ml.create_collection('filt', model => null, options => '{\"dimensions\": 384}')")
    t0 = time.time()
    step = 10_000
    for lo in range(0, n, step):
        buf = io.StringIO()
        for i in range(lo, min(n, lo + step)):
            t = texts[i].replace("\\", "\\\\").replace("\t", " ").replace("\n", " ")
            tenant = ("acme", "globex", "\\N")[i % 3]
            lang = "fr" if i % 10 == 9 else "en"
            md = json.dumps({"cat": i % 100, "year": 2000 + (i // 100) % 25, "lang": lang})
            v = "[" + ",".join(f"{x:.6f}" for x in vecs[i].tolist()) + "]"
            buf.write(f"d{i}\t{tenant}\t{t}\t{md}\t{v}\n")
        with conn.cursor().copy("copy collections.filt (id, tenant, content, metadata, embedding) from stdin") as cp:
            cp.write(buf.getvalue())
        done = min(n, lo + step)
        print(f"\rload {done:,}/{n:,} ({done / max(time.time() - t0, 1e-9):.0f} rows/s)", end="", flush=True)
    print()
    conn.execute("analyze collections.filt")


def _app_dsn(conn, dsn: str) -> str:
    if not conn.execute("select 1 from pg_roles where rolname = %s", [APP]).fetchone():
        conn.execute(f"create role {APP} login")
    conn.execute(f"grant indb_reader to {APP}")  # an application's rights, and ml.search_explain
    for t in ("acme", "globex"):
        conn.execute("select ml.create_tenant(%s)", [t])
    conn.execute("select ml.create_tenant('acme', %s)", [APP])
    return psycopg.conninfo.make_conninfo(dsn, user=APP)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    nq = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    c = corpus(n)
    reuse = bool(os.environ.get("INDB_BENCH_REUSE"))
    if reuse:  # the database an earlier run kept (INDB_KEEP_BENCH_DB=1), with the same N documents loaded
        from indb.localdb import Cluster

        dsn = Cluster.local().dsn(DB)
    else:
        dsn = create_scratch_db(DB)
    log: dict = {}
    try:
        with psycopg.connect(dsn, autocommit=True) as su:
            if not reuse:
                with heavy(False, log, "load"):
                    _load(su, c["texts"], c["vectors"], n)
            app_dsn = _app_dsn(su, dsn)
            qv = ["[" + ",".join(f"{x:.6f}" for x in v.tolist()) + "]" for v in c["query_vectors"][:nq]]
            with psycopg.connect(app_dsn, autocommit=True) as app:
                conns = {"superuser": su, "tenant login": app}
                filters = {
                    "cat (1%)": lambda i: {"cat": i % 100},
                    "cat + year (0.04%)": lambda i: {"cat": i % 100, "year": 2000 + i % 25},
                    "lang en (90%)": lambda i: {"lang": "en"},
                }
                sides = [(f, who) for f in filters for who in conns] + [("cat (1%)", "tenant login, PostgreSQL's @>")]
                old_sql = (
                    "select s.id, (1 - s.d)::float8, s.content, s.metadata from (select t.id, (t.embedding <=> "
                    "%s::vector(384)) + 0 as d, t.content, t.metadata from collections.filt t where "
                    "t.metadata @> %s and t.embedding is not null order by 2, 1 limit 10) s order by s.d, s.id"
                )
                ts: dict = {f"{f} / {who}": [] for f, who in sides}
                rows: dict = {k: 0 for k in ts}
                strategies = {
                    f: app.execute(
                        "select strategy from ml.search_explain('filt', %s::vector, 10, %s)",
                        [qv[0], Jsonb(filters[f](0))],
                    ).fetchone()[0]
                    for f in filters
                }
                with heavy(True, log, "timed"):
                    for rnd in range(2):  # the first round warms caches and plans
                        for i, q in enumerate(qv):
                            order = sides[i % len(sides) :] + sides[: i % len(sides)]
                            for f, who in order:
                                flt = filters[f](i)
                                t0 = time.perf_counter()
                                if who.endswith("@>"):
                                    got = app.execute(old_sql, [q, Jsonb(flt)]).fetchall()
                                else:
                                    got = (
                                        conns[who]
                                        .execute(
                                            "select id from ml.search('filt', %s::vector, 10, %s)", [q, Jsonb(flt)]
                                        )
                                        .fetchall()
                                    )
                                dt = (time.perf_counter() - t0) * 1000
                                if rnd == 1:
                                    ts[f"{f} / {who}"].append(dt)
                                    rows[f"{f} / {who}"] += len(got)
        out = {
            "question": "metadata-filtered ml.search as an application login (row security) vs the superuser, "
            "and the same exact query with PostgreSQL's own @> (the path before migration 0024)",
            "documents": n,
            "queries": len(qv),
            "phases": log,
            "strategy_as_tenant_login": strategies,
            "sides": {
                k: {
                    "p50_ms": round(percentile(v, 50), 2),
                    "p99_ms": round(percentile(v, 99), 2),
                    "rows_per_query": round(rows[k] / len(v), 2),
                }
                for k, v in ts.items()
            },
        }
        path = write("search_filters", out)
        print(path)
        for k, v in out["sides"].items():
            print(f"{k:45s} p50 {v['p50_ms']:8.2f}  p99 {v['p99_ms']:8.2f}  rows {v['rows_per_query']}")
    finally:
        if not os.environ.get("INDB_KEEP_BENCH_DB"):
            drop_scratch_db(DB)


if __name__ == "__main__":
    main()
