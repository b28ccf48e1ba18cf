"""Question: do ANN, BM25 and hybrid search stay fast at 100k and 1M documents on 2 cores, and how do they
compare with what a Postgres user would write by hand?

Corpus: benchmarks/search_corpus.py (real SciFact / MovieLens sentences, 1-5 per document, vectors = the
normalized mean of the sentences' real MiniLM embeddings; SciFact's 1,109 queries; exact top 10 by brute
force). All sides in one run, in a scratch database, in phases (in this order):
- load: BYO-embedding rows through the collection trigger (BM25 statistics + postings delta), COPY in chunks,
  the BM25 merge every 200,000 rows (what pg_cron / `indb worker` does every minute) and at the end;
- the parallel HNSW build of the collection's index (max_parallel_maintenance_workers, maintenance_work_mem
  sized so the graph fits), its time and size;
- ANN recall@10 and p50/p99 at several ef_search, ml.search vs the hand-written pgvector query;
- BM25: ml.keyword_search p50/p99 vs a GIN @@ OR-query ranked by ts_rank_cd limit 10 (at 1M on a small
  sample: it reads every matching row); exactness against a reference BM25 computed in SQL from the matching
  rows' tsvectors (independent of the index); the previous engine (plpgsql rescans) on a sample;
- hybrid p50/p99 (ml.hybrid_search, text query embedded in the server);
- 4-client throughput (ml.search ef 40, ml.keyword_search);
- insert throughput into the loaded collection: the same table and indexes with its trigger (BM25 statistics
  + postings delta) and without (session_replication_role = replica), batches interleaved, and the merge;
- halfvec and binary (bit) HNSW indexes beside the full one: build time, size, recall and latency.

Resumable: every phase saves its results in benchmarks/results/search_scale.json (key "<N>") as it ends; a
rerun with the same N continues the loaded database and skips finished phases (--fresh starts over).
Timed phases take /work/heavy.lock exclusively; the load and the index builds take it shared (other engineers'
tests may run beside them: the machine is shared), as the results say.

Run: .venv/bin/python -m benchmarks.search_scale 1000000 [queries] [--fresh]
     INDB_BENCH_SKIP=hnsw_halfvec .venv/bin/python -m benchmarks.search_scale 1000000   # leaves that build out
     .venv/bin/python -m benchmarks.search_scale plot
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import sys
import threading
import time

import numpy as np
import psycopg

from benchmarks.common import RESULTS, create_scratch_db, machine, percentile
from benchmarks.search_corpus import corpus, sentences

K1, B = 1.2, 0.75
DB = "indb_bench_scale"
LOCK = os.environ.get("INDB_BENCH_LOCK", "/work/heavy.lock")
MERGE_EVERY = 200_000
SKIP = set(os.environ.get("INDB_BENCH_SKIP", "").split(","))  # index builds to leave out (hnsw_halfvec, hnsw_binary)


@contextlib.contextmanager
def heavy(exclusive: bool, log: dict | None = None, phase: str = ""):
    """Hold the machine's benchmark lock (exclusive for timed phases, shared for loads and builds)."""
    if not os.path.exists(LOCK):
        yield
        return
    # INDB_BENCH_TIMED_LOCK=shared: timed phases too take the lock shared (when other benchmarks queue for it
    # for longer than the session has; the results say so, with the load average)
    if exclusive and os.environ.get("INDB_BENCH_TIMED_LOCK") == "shared":
        exclusive = False
    with open(LOCK) as f:
        t0 = time.time()
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        if log is not None:
            log[phase] = {
                "lock": "exclusive" if exclusive else "shared",
                "waited_s": round(time.time() - t0, 1),
                "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            }
        t1 = time.time()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
            if log is not None:
                log[phase]["seconds"] = round(time.time() - t1, 1)


def vec(v) -> str:
    return "[" + ",".join(f"{x:.6f}" for x in v) + "]"


VFMT = "[" + ",".join(["%.6f"] * 384) + "]"


def lat(ts: list[float]) -> dict:
    return {"p50_ms": round(percentile(ts, 50) * 1000, 2), "p99_ms": round(percentile(ts, 99) * 1000, 2), "n": len(ts)}


def timed(conn, sql, params) -> tuple[list, float]:
    t0 = time.perf_counter()
    rows = conn.execute(sql, params).fetchall()
    return rows, time.perf_counter() - t0


def copy_rows(conn, texts, vecs, lo, hi, table) -> None:
    buf = io.StringIO()
    for i in range(lo, hi):
        t = texts[i].replace("\\", "\\\\").replace("\t", " ").replace("\n", " ")
        buf.write(f"d{i}\t{t}\t{VFMT % tuple(vecs[i].tolist())}\n")
    with conn.cursor().copy(f"copy {table} (id, content, embedding) from stdin") as cp:
        cp.write(buf.getvalue())
    conn.commit()


# the reference BM25, in SQL over the matching rows' tsvectors (never the index): df counted from the same rows
# (every row holding a query lexeme matches the OR-query), Lucene's idf, the same (score desc, id) order
REFERENCE_SQL = """
with q as (select distinct u.lexeme from unnest(to_tsvector('english', %(text)s)) u),
m as (select t.id, t.doc_len::float8 dl, u.lexeme, coalesce(array_length(u.positions, 1), 1)::float8 f
        from collections.scale t, unnest(t.tsv) u
       where t.tsv @@ %(tsq)s::tsquery and u.lexeme in (select lexeme from q)),
df as (select lexeme, count(*)::float8 df from m group by lexeme)
select m.id, sum(ln(1 + (%(nd)s - df.df + 0.5) / (df.df + 0.5)) * m.f * (%(k1)s + 1)
                 / (m.f + %(k1)s * (1 - %(b)s + %(b)s * m.dl / %(avgdl)s))) s
  from m join df using (lexeme) group by m.id order by s desc, m.id limit 10"""


def throughput(dsn, sql_params, seconds=10.0, clients=4) -> float:
    done = [0] * clients
    stop = time.perf_counter() + seconds

    def work(i):
        with psycopg.connect(dsn, autocommit=True) as c:
            j = i
            while time.perf_counter() < stop:
                sql, p = sql_params[j % len(sql_params)]
                c.execute(sql, p).fetchall()
                done[i] += 1
                j += clients

    ts = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return round(sum(done) / seconds, 1)


# the two designs measured beside the chosen one (numpy over bytea postings, ml.keyword_search):
# A: the previous engine, plpgsql MaxScore re-reading tsvectors from the heap (sql/230 before the index)
RESCAN_COMMIT = "04a656d"
# C: postings as rows of an ordinary B-tree-indexed table, aggregated in SQL (the unmerged delta is exactly that)
ROWS_SQL = """
with t as (select * from ml._bm25_terms((select c from ml.collections c where c.name = 'scale'), %s))
select d.doc, sum(t.idfs[array_position(t.terms, d.term)] * d.tf * 2.2
                  / (d.tf + 1.2 * (0.25 + 0.75 * d.dl / (t.tl::float8 / t.nd)))) s
from t, ml.bm25_delta d
where d.collection_id = (select id from ml.collections where name = 'scale') and d.term = any(t.terms)
group by d.doc order by s desc limit 10"""
KW_SQL = "select id from ml.keyword_search('scale', %s, 10)"
RESCAN_SQL = (
    "select id from public.kw_rescan((select c from ml.collections c where c.name = 'scale'), %s, 10, null, '{}')"
)


def rescan_function(conn) -> None:
    """Design A as public.kw_rescan(c, query, k, filter, options), from the previous sql/230 in git."""
    import re
    import subprocess

    old = subprocess.run(
        ["git", "show", f"{RESCAN_COMMIT}:sql/230-bm25-hybrid.sql"], capture_output=True, text=True, check=True
    ).stdout
    body = re.search(r"create or replace function ml\._keyword_search\(.*?end \$\$;", old, re.S).group(0)
    conn.execute(body.replace("ml._keyword_search(", "public.kw_rescan(", 1))


def save(n: int, out: dict) -> None:
    """Write what is measured so far (a long run that is stopped keeps its finished phases)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "search_scale.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[str(n)] = out
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def previous(n: int) -> dict | None:
    path = RESULTS / "search_scale.json"
    if not path.exists():
        return None
    r = json.loads(path.read_text()).get(str(n))
    return r if r and not r.get("complete") and "phases" in r else None


def scratch(fresh: bool) -> str:
    from indb.localdb import Cluster

    c = Cluster.local()
    if not c.running():
        c.start()
    if not fresh:
        with psycopg.connect(c.dsn("postgres"), autocommit=True) as admin:
            if admin.execute("select 1 from pg_database where datname = %s", [DB]).fetchone():
                return c.dsn(DB)
    dsn = create_scratch_db(DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("select ml.create_collection('scale')")
        conn.execute("drop index collections.scale_ann")  # built after the load, in parallel (measured below)
    return dsn


def build(conn, name: str, ddl: str, mem: str) -> dict:
    idx = ddl.split()[2]
    if conn.execute("select to_regclass(%s)", [f"collections.{idx}"]).fetchone()[0]:
        return {"bytes": conn.execute(f"select pg_relation_size('collections.{idx}')").fetchone()[0]}
    conn.execute("set max_parallel_maintenance_workers = 2")
    conn.execute(f"set maintenance_work_mem = '{mem}'")
    t0 = time.perf_counter()
    conn.execute(ddl)
    r = {
        "seconds": round(time.perf_counter() - t0, 1),
        "bytes": conn.execute(f"select pg_relation_size('collections.{idx}')").fetchone()[0],
        "maintenance_work_mem": mem,
        "max_parallel_maintenance_workers": 2,
    }
    conn.execute("reset maintenance_work_mem")
    print(name, r, flush=True)
    return r


def ann_sides(conn, sides: dict, sel, qv, ids, truth, efs, vecs=None) -> list[dict]:
    """recall_at_10: tie-aware, as ann-benchmarks counts it (a returned document at a distance no greater than the
    10th true neighbour's is a hit: at 1M many documents are the same sentence, with the same vector, so which
    of the tied ids the brute force lists is arbitrary); recall_at_10_ids: the ids of the brute force exactly."""
    res = []
    for ef in efs:
        for side, (sql, nparams) in sides.items():
            conn.execute(f"set hnsw.ef_search = {ef}")
            ts, rec, rec_ids = [], [], []
            for q in sel:
                p = [vec(qv[q])] * nparams
                if "%s::int" in sql or "ef_search" in sql:
                    p = [vec(qv[q]), ef]
                rows, dt = timed(conn, sql, p)
                ts.append(dt)
                rec_ids.append(len({r[0] for r in rows} & set(ids[truth[q]])) / 10)
                if vecs is not None:
                    d10 = 1 - float(qv[q] @ vecs[truth[q][9]])
                    got = np.array([int(r[0][1:]) for r in rows], dtype=np.int64)
                    rec.append(min(int(np.sum(1 - vecs[got] @ qv[q] <= d10 + 1e-6)), 10) / 10 if len(got) else 0.0)
            r = {"side": side, "ef_search": ef}
            if vecs is not None:
                r["recall_at_10"] = round(float(np.mean(rec)), 4)
                r["recall_at_10_ids"] = round(float(np.mean(rec_ids)), 4)
            else:
                r["recall_at_10"] = round(float(np.mean(rec_ids)), 4)
            res.append({**r, **lat(ts)})
            print(res[-1], flush=True)
            conn.execute("reset hnsw.ef_search")
    return res


def trigger_load(conn, texts, vecs, lo0, n, ld, checkpoint) -> None:
    """COPY through the collection trigger (BM25 statistics + postings delta), merging every MERGE_EVERY rows."""
    ld["merge_every_rows"] = MERGE_EVERY
    for lo in range(lo0, n, 10_000):
        hi = min(lo + 10_000, n)
        t0 = time.perf_counter()
        copy_rows(conn, texts, vecs, lo, hi, "collections.scale")
        ld["seconds"] = round(ld["seconds"] + time.perf_counter() - t0, 1)
        if hi % MERGE_EVERY == 0 or hi == n:
            t0 = time.perf_counter()
            conn.execute("select ml._bm25_merge_pending()")
            conn.commit()
            ld["bm25_merge_seconds"] = round(ld["bm25_merge_seconds"] + time.perf_counter() - t0, 1)
            checkpoint()
        print(f"  loaded {hi:,} ({ld['seconds']} s, merges {ld['bm25_merge_seconds']} s)", flush=True)


def bulk_load(conn, texts, vecs, lo0, n, ld) -> None:
    """A bulk load (at 1M, where the trigger path ran at ~440 rows/s on the shared machine): COPY with the
    collection trigger off (session_replication_role = replica) and the GIN tsv index dropped, then the GIN
    index, the BM25 statistics (ml.collection_stats, ml.collection_terms) and the BM25 index (ml._bm25_build)
    built from all the rows (the rows loaded through the trigger before included). The exactness check below
    compares the result with a reference computed from the rows."""
    gin = conn.execute("select pg_get_indexdef('collections.scale_tsv'::regclass)").fetchone()[0]
    conn.execute("drop index collections.scale_tsv")
    conn.commit()
    t_copy = 0.0
    for lo in range(lo0, n, 10_000):
        hi = min(lo + 10_000, n)
        t0 = time.perf_counter()
        conn.execute("set local session_replication_role = replica")
        copy_rows(conn, texts, vecs, lo, hi, "collections.scale")
        t_copy += time.perf_counter() - t0
        print(f"  bulk loaded {hi:,} ({t_copy:.1f} s)", flush=True)
    ld["bulk"] = {"rows": n - lo0, "copy_seconds": round(t_copy, 1)}
    steps = {
        "gin_tsv_index": [gin],
        "bm25_statistics": [
            "update ml.collection_stats s set n_docs = x.n, total_len = x.l from (select count(*) n, "
            "coalesce(sum(doc_len), 0) l from collections.scale) x "
            "where s.collection_id = (select id from ml.collections where name = 'scale')",
            "delete from ml.collection_terms where collection_id = (select id from ml.collections where name = 'scale')",
            "insert into ml.collection_terms (collection_id, term, df) select (select id from ml.collections where "
            "name = 'scale'), u.lexeme, count(*) from collections.scale t, unnest(t.tsv) u group by u.lexeme",
        ],
        "bm25_build": ["select ml._bm25_build((select id from ml.collections where name = 'scale'))"],
    }
    conn.execute("set maintenance_work_mem = '1GB'")
    for name, sqls in steps.items():
        t0 = time.perf_counter()
        for sql in sqls:
            conn.execute(sql)
        conn.commit()
        ld["bulk"][f"{name}_seconds"] = round(time.perf_counter() - t0, 1)
        print(" ", name, ld["bulk"][f"{name}_seconds"], "s", flush=True)
    conn.execute("reset maintenance_work_mem")
    conn.commit()
    ld["seconds"] = round(
        ld["seconds"]
        + t_copy
        + sum(v for k, v in ld["bulk"].items() if k.endswith("_seconds") and k != "copy_seconds"),
        1,
    )
    ld["note"] = (
        f"the first {ld.get('trigger_rows', 0):,} rows through the collection trigger, the rest by the bulk path "
        "(trigger off, GIN dropped, then GIN + BM25 statistics + BM25 index built from all rows): "
        "the shared machine (load average ~7 on 2 cores) ran the trigger path at ~440 rows/s"
    )


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    fresh = "--fresh" in sys.argv
    n = int(args[0]) if args else 100_000
    nq = int(args[1]) if len(args) > 1 else 300
    big = n > 100_000
    out = None if fresh else previous(n)
    if out is None:
        out = {
            "documents": n,
            "machine": {**machine(), "note": "2 CPU cores and 24 GB shared with other engineers' work"},
            "phases": {},
        }
    ph = out["phases"]
    c = corpus(n)
    texts, vecs, qtexts, qv, truth = c["texts"], c["vectors"], c["queries"], c["query_vectors"], c["truth"]
    sel = np.random.Generator(np.random.PCG64(7)).choice(len(qtexts), size=min(nq, len(qtexts)), replace=False)
    out["corpus"] = {
        "sentences": "SciFact titles + first two abstract sentences, MovieLens titles + tags (distinct)",
        "distinct_sentences": len(sentences()),
        "document": "1-5 sampled sentences (seed 14)",
        "vectors": "normalized mean of the sentences' real all-MiniLM-L6-v2 embeddings",
        "queries_timed": len(sel),
        "avg_words": round(float(np.mean([len(t.split()) for t in texts[:100_000]])), 1),
    }
    dsn = scratch(fresh)
    conn = psycopg.connect(dsn)
    # ---------------------------------------------------------------- load (resumes from the rows committed)
    ld = out.setdefault("load", {"rows": n, "seconds": 0.0, "bm25_merge_seconds": 0.0})
    if not ld.get("done"):
        with heavy(False, ph, "load"):
            have = conn.execute("select count(*) from collections.scale").fetchone()[0]
            conn.commit()
            if big and have < n and not ld.get("trigger_rows"):
                ld["trigger_rows"] = have
            print(f"loading from {have:,}", flush=True)
            if big and have < n:
                bulk_load(conn, texts, vecs, have, n, ld)
            else:
                trigger_load(conn, texts, vecs, have, n, ld, lambda: save(n, out))
            conn.autocommit = True
            conn.execute("select ml._bm25_merge_pending()")
            t0 = time.perf_counter()
            conn.execute("vacuum analyze collections.scale")
            ld["vacuum_analyze_seconds"] = round(time.perf_counter() - t0, 1)
            ld["rows_per_s"] = round(n / ld["seconds"], 1)
            sizes = conn.execute(
                "select pg_total_relation_size('ml.bm25_postings'), pg_relation_size('collections.scale_tsv'), "
                "pg_total_relation_size('collections.scale')"
            ).fetchone()
            ld["bm25_postings_bytes"], ld["gin_tsv_bytes"], ld["table_total_bytes"] = sizes
            ld["done"] = True
        save(n, out)
    conn.autocommit = True
    # ---------------------------------------------------------------- the HNSW index (parallel build)
    builds = out.setdefault("index_builds", {})
    if "hnsw_vector" not in builds:
        with heavy(False, ph, "build hnsw_vector"):
            builds["hnsw_vector"] = build(
                conn,
                "hnsw_vector",
                "create index scale_ann on collections.scale using hnsw (embedding vector_cosine_ops)",
                "3GB" if big else "2GB",
            )
        save(n, out)
    ids = np.array([f"d{i}" for i in range(n)])
    # ---------------------------------------------------------------- ANN
    if "ann" not in out:
        with heavy(True, ph, "ann"):
            conn.execute("select ml.search('scale', %s::vector, 10)", [vec(qv[0])])  # warm
            # every query once at the widest ef_search, untimed: the graph pages the queries visit are in
            # shared_buffers for both sides alike (otherwise the side measured first pays the reads)
            conn.execute("set hnsw.ef_search = 320")
            for q in sel:
                conn.execute(
                    "select id from collections.scale order by embedding <=> %s::vector(384) limit 10", [vec(qv[q])]
                )
            conn.execute("reset hnsw.ef_search")
            out["ann"] = ann_sides(
                conn,
                {
                    "ml.search": (
                        "select id from ml.search('scale', %s::vector, 10, null, jsonb_build_object('ef_search', %s))",
                        2,
                    ),
                    "hand-written": (
                        "select id from collections.scale order by embedding <=> %s::vector(384) limit 10",
                        1,
                    ),
                },
                sel,
                qv,
                ids,
                truth,
                (20, 40, 80, 160, 320) if big else (20, 40, 80, 160),
                vecs,
            )
        save(n, out)
    # ---------------------------------------------------------------- BM25
    if "bm25" not in out:
        nd, avgdl = conn.execute("select count(*), avg(doc_len)::float8 from collections.scale").fetchone()
        gin_q = 20 if big else len(sel)
        exact_q = 50 if big else 200
        kw_rows, kw_ts, gin_ts, des = {}, [], [], {}
        tsqs = {
            q: conn.execute(
                "select coalesce(string_agg(quote_literal(lexeme), ' | '), '') from "
                "(select distinct lexeme from unnest(to_tsvector('english', %s))) s",
                [qtexts[q]],
            ).fetchone()[0]
            for q in sel
        }
        rescan_function(conn)
        kw_cold: list[float] = []
        with heavy(True, ph, "bm25"):
            # two passes: the first reads each query's postings into shared_buffers (and is reported as the cold
            # figure); the second is the steady state of a search service, whose postings stay cached
            for q in sel:
                kw_rows[q], dt = timed(conn, "select id, score from ml.keyword_search('scale', %s, 10)", [qtexts[q]])
                kw_cold.append(dt)
            for q in sel:
                kw_rows[q], dt = timed(conn, "select id, score from ml.keyword_search('scale', %s, 10)", [qtexts[q]])
                kw_ts.append(dt)
            for q in sel[:gin_q]:
                if tsqs[q]:
                    _, dt = timed(
                        conn,
                        "select id from collections.scale where tsv @@ %s::tsquery "
                        "order by ts_rank_cd(tsv, %s::tsquery) desc limit 10",
                        [tsqs[q], tsqs[q]],
                    )
                    gin_ts.append(dt)
            # the designs: the chosen engine and the previous one on the same queries (at 1M, a sample)
            dq = sel[:20] if big else sel[:100]
            for name, sql in {
                "B: numpy postings, merged (chosen: ml.keyword_search)": KW_SQL,
                "A: plpgsql MaxScore rescanning tsvectors (previous engine)": RESCAN_SQL,
            }.items():
                des[name] = lat([timed(conn, sql, [qtexts[q]])[1] for q in dq])
                print(name, des[name], flush=True)
        exact, checked = 0, 0
        with heavy(False, ph, "bm25 exactness (not timed)"):
            for q in sel[:exact_q]:
                rows = kw_rows[q]
                ref = (
                    conn.execute(
                        REFERENCE_SQL,
                        {"text": qtexts[q], "tsq": tsqs[q], "nd": nd, "avgdl": avgdl, "k1": K1, "b": B},
                    ).fetchall()
                    if tsqs[q]
                    else []
                )
                checked += 1
                full = dict(ref)
                ok = len(rows) == len(ref) and all(abs(a[1] - b[1]) <= 1e-9 for a, b in zip(rows, ref, strict=True))
                ok = ok and all(r[0] in full or abs(r[1] - ref[-1][1]) <= 1e-9 for r in rows)
                exact += ok
        out["bm25"] = {
            "ml.keyword_search": lat(kw_ts),
            "ml.keyword_search, first pass (cold postings, first call of the session)": lat(kw_cold),
            "gin_or_query_ts_rank_cd": lat(gin_ts),
            "gin_queries": len(gin_ts),
            "exact_top10_vs_reference": f"{exact}/{checked}",
        }
        out["bm25_designs"] = {"queries": len(dq), **des}
        if big:
            out["bm25"]["note"] = (
                f"the GIN ts_rank_cd query on the first {gin_q} of the {len(sel)} queries (it reads every matching "
                f"row: seconds per query at this size); exactness checked on the first {exact_q}"
            )
        print(out["bm25"], flush=True)
        save(n, out)
    # ---------------------------------------------------------------- hybrid
    if "hybrid" not in out:
        conn.execute("select ml.warmup()")
        with heavy(True, ph, "hybrid"):
            cold = [timed(conn, "select id from ml.hybrid_search('scale', %s, 10)", [qtexts[q]])[1] for q in sel[:150]]
            hy = [timed(conn, "select id from ml.hybrid_search('scale', %s, 10)", [qtexts[q]])[1] for q in sel[:150]]
        out["hybrid"] = {
            "ml.hybrid_search": lat(hy),
            "ml.hybrid_search, first pass": lat(cold),
            "queries": len(hy),
            "note": "includes embedding the text query; the second pass of the same queries (caches warm)",
        }
        print(out["hybrid"], flush=True)
        save(n, out)
    # ---------------------------------------------------------------- 4 clients
    if "throughput_4_clients_qps" not in out:
        with heavy(True, ph, "throughput"):
            out["throughput_4_clients_qps"] = {
                "ml.search ef 40": throughput(
                    dsn,
                    [
                        ("select id from ml.search('scale', %s::vector, 10, null, '{\"ef_search\": 40}')", [vec(qv[q])])
                        for q in sel
                    ],
                ),
                "ml.keyword_search": throughput(dsn, [(KW_SQL, [qtexts[q]]) for q in sel]),
            }
        print(out["throughput_4_clients_qps"], flush=True)
        save(n, out)
    # ---------------------------------------------------------------- insert: with and without the trigger
    if "insert" not in out:
        out["insert"] = insert_phase(conn, n, ph)
        print(out["insert"], flush=True)
        save(n, out)
    # ---------------------------------------------------------------- halfvec and binary indexes
    for name, ddl, mem in (
        (
            "hnsw_halfvec",
            "create index scale_half on collections.scale using hnsw ((embedding::halfvec(384)) halfvec_cosine_ops)",
            "2GB",
        ),
        (
            "hnsw_binary",
            "create index scale_bit on collections.scale using hnsw "
            "((binary_quantize(embedding)::bit(384)) bit_hamming_ops)",
            "1GB",
        ),
    ):
        if name in SKIP:
            builds.setdefault(name, {"skipped": "not built in this run (INDB_BENCH_SKIP): machine time"})
        if name not in builds:
            with heavy(False, ph, f"build {name}"):
                builds[name] = build(conn, name, ddl, mem)
            save(n, out)
    if "ann_quantized" not in out:
        built = {k for k, v in builds.items() if "bytes" in v}
        with heavy(True, ph, "ann quantized"):
            res = []
            if "hnsw_halfvec" in built:
                res += ann_sides(
                    conn,
                    {
                        "halfvec hnsw (hand-written)": (
                            "select id from collections.scale order by embedding::halfvec(384) <=> %s::halfvec(384) limit 10",
                            1,
                        )
                    },
                    sel,
                    qv,
                    ids,
                    truth,
                    (40, 160),
                    vecs,
                )
            for rr in (40, 160) if "hnsw_binary" in built else ():
                res += ann_sides(
                    conn,
                    {
                        f"binary hnsw + rerank {rr} (hand-written)": (
                            "select id from (select id, embedding from collections.scale order by "
                            "binary_quantize(embedding)::bit(384) <~> binary_quantize(%s::vector(384)) "
                            f"limit {rr}) s order by embedding <=> %s::vector(384) limit 10",
                            2,
                        )
                    },
                    sel,
                    qv,
                    ids,
                    truth,
                    (rr,),
                    vecs,
                )
        out["ann_quantized"] = res
        save(n, out)
    conn.close()
    out["complete"] = True
    save(n, out)
    print("wrote", RESULTS / "search_scale.json")


def insert_phase(conn, n, ph) -> dict:
    """The same 5,000 rows' shape into the same table with the same indexes, with the collection trigger (BM25
    statistics + postings delta) and without it, 500-row batches interleaved; then the merge of what came."""
    from benchmarks.search_corpus import documents

    m, batch = 5000, 500
    tx, v = documents(m)
    conn.execute("drop index if exists collections.scale_half, collections.scale_bit")
    idx = conn.execute(
        "select count(*) from pg_index where indrelid = 'collections.scale'::regclass "
        "and indexrelid::regclass::text !~ 'pkey'"
    ).fetchone()[0]
    conn.execute("delete from collections.scale where id like 'x%' or id like 'z%'")
    conn.autocommit = False
    t = {"with": 0.0, "without": 0.0}
    with heavy(True, ph, "insert"):
        for lo in range(0, m, batch):
            for side, prefix in (("with", "x"), ("without", "z")):
                rows = [(f"{prefix}{i}", tx[i] + " extra", vec(v[i])) for i in range(lo, lo + batch)]
                t0 = time.perf_counter()
                if side == "without":
                    conn.execute("set local session_replication_role = replica")
                conn.execute(
                    "insert into collections.scale (id, content, embedding) select * from unnest(%s::text[], "
                    "%s::text[], %s::text[]::vector[])",
                    [list(col) for col in zip(*rows, strict=True)],
                )
                conn.commit()
                t[side] += time.perf_counter() - t0
        t0 = time.perf_counter()
        conn.execute("select ml._bm25_merge_pending()")
        conn.commit()
        merge = time.perf_counter() - t0
    conn.execute("set local session_replication_role = replica")
    conn.execute("delete from collections.scale where id like 'z%'")
    conn.commit()
    conn.execute("delete from collections.scale where id like 'x%'")
    conn.commit()
    conn.autocommit = True
    conn.execute("select ml._bm25_merge_pending()")
    w, wo = m / t["with"], m / t["without"]
    wm = m / (t["with"] + merge)
    return {
        "rows": m,
        "batch": batch,
        "collection_rows": n,
        "with_trigger_rows_per_s": round(w, 1),
        "without_trigger_rows_per_s": round(wo, 1),
        "bm25_merge_of_the_inserted_seconds": round(merge, 2),
        "with_trigger_and_merge_rows_per_s": round(wm, 1),
        "bm25_maintenance_cost_fraction": round(1 - w / wo, 3),
        "bm25_maintenance_cost_fraction_with_merge": round(1 - wm / wo, 3),
        "secondary_indexes": idx,
        "note": "the same table and indexes (one HNSW, two GIN) on both sides, batches interleaved; without = the "
        "collection trigger disabled (session_replication_role = replica), i.e. no BM25 statistics, postings delta "
        "or merge",
    }


def plot() -> None:
    """benchmarks/results/search_scale.png: ANN recall@10 against p99 per ef_search (ml.search and the
    hand-written query), and BM25 p50/p99 (ml.keyword_search against the GIN ts_rank_cd query), per corpus size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads((RESULTS / "search_scale.json").read_text())
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for n, r in sorted(data.items(), key=lambda x: int(x[0])):
        for side, mark in (("ml.search", "o-"), ("hand-written", "s--")):
            pts = [x for x in r.get("ann", []) if x["side"] == side]
            a.plot([x["p99_ms"] for x in pts], [x["recall_at_10"] for x in pts], mark, label=f"{side}, {int(n):,} docs")
            for x in pts:
                a.annotate(f"ef {x['ef_search']}", (x["p99_ms"], x["recall_at_10"]), fontsize=7)
        quant = [x for x in r.get("ann", []) + r.get("ann_quantized", []) if "hnsw" in x["side"]]
        if quant:
            a.scatter(
                [x["p99_ms"] for x in quant],
                [x["recall_at_10"] for x in quant],
                marker="x",
                s=18,
                label=f"halfvec / binary + rerank (hand-written), {int(n):,} docs",
            )
            for x in quant:
                a.annotate(
                    x["side"].split(" hnsw")[0] + (" rr" if "rerank" in x["side"] else "") + f" {x['ef_search']}",
                    (x["p99_ms"], x["recall_at_10"]),
                    fontsize=6,
                )
        if "bm25" in r:
            labels = [f"keyword_search\n{int(n):,}", f"GIN ts_rank_cd\n{int(n):,}"]
            vals = [r["bm25"]["ml.keyword_search"], r["bm25"]["gin_or_query_ts_rank_cd"]]
            b.bar([x + " p50" for x in labels], [v["p50_ms"] for v in vals])
            b.bar([x + " p99" for x in labels], [v["p99_ms"] for v in vals])
    a.axhline(0.95, color="grey", lw=0.8, ls=":")
    a.axvline(15, color="grey", lw=0.8, ls=":")
    a.set_xscale("log")
    b.axhline(50, color="grey", lw=0.8, ls=":")
    a.set_xlabel("p99 latency (ms, log; dotted: the 1M targets recall 0.95, p99 15 ms)")
    a.set_ylabel("recall@10")
    a.set_title("ANN: recall vs p99 by ef_search")
    a.legend(fontsize=7)
    b.set_yscale("log")
    b.set_ylabel("ms (log)")
    b.set_title("BM25 top 10: p50 / p99 (dotted: the 1M target p99 50 ms)")
    b.tick_params(axis="x", labelsize=6)
    fig.tight_layout()
    fig.savefig(RESULTS / "search_scale.png", dpi=120)


if __name__ == "__main__":
    if sys.argv[1:2] == ["plot"]:
        plot()
    else:
        main()
        plot()
