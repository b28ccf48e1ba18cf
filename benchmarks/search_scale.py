"""Question: do ANN, BM25 and hybrid search stay fast at 100k (and 1M) documents on 2 cores, and how do they
compare with what a Postgres user would write by hand?

Corpus: benchmarks/search_corpus.py (real SciFact / MovieLens sentences, 1-5 per document, vectors = the
normalized mean of the sentences' real MiniLM embeddings; SciFact's 1,109 queries; exact top 10 by brute
force). All sides in one run, in a scratch database:
- load: BYO-embedding rows through the collection trigger (BM25 statistics + postings delta), COPY in chunks;
  the BM25 merge; the parallel HNSW build (max_parallel_maintenance_workers, maintenance_work_mem), its size;
  halfvec and binary (bit) HNSW indexes beside it;
- insert throughput into the loaded collection vs the same rows into a plain table with the same indexes and
  no indb trigger (the trigger's whole cost, BM25 postings included);
- ANN recall@10 and p50/p99 at several ef_search, ml.search vs the hand-written pgvector query; halfvec and
  binary-quantized (rerank) recall and latency at ef 40;
- BM25: ml.keyword_search p50/p99 vs a GIN @@ OR-query ranked by ts_rank_cd limit 10; exactness against a
  reference BM25 computed in Python from the matching rows' tsvectors (independent of the index);
- hybrid p50/p99 (ml.hybrid_search, text query embedded in the server);
- 4-client throughput (ml.search ef 40, ml.keyword_search).

Run: flock -x /work/heavy.lock .venv/bin/python -m benchmarks.search_scale 100000 [queries]
Results: benchmarks/results/search_scale.json, key "<N>".
"""

from __future__ import annotations

import io
import json
import math
import sys
import threading
import time
from collections import defaultdict

import numpy as np
import psycopg

from benchmarks.common import RESULTS, create_scratch_db, machine, percentile
from benchmarks.search_corpus import corpus, sentences

K1, B = 1.2, 0.75
DB = "indb_bench_scale"


def vec(v) -> str:
    return "[" + ",".join(f"{x:.6f}" for x in v) + "]"


def lat(ts: list[float]) -> dict:
    return {"p50_ms": round(percentile(ts, 50) * 1000, 2), "p99_ms": round(percentile(ts, 99) * 1000, 2)}


def timed(conn, sql, params) -> tuple[list, float]:
    t0 = time.perf_counter()
    rows = conn.execute(sql, params).fetchall()
    return rows, time.perf_counter() - t0


def load(conn, texts, vecs, table, chunk=10_000) -> float:
    t0 = time.perf_counter()
    for lo in range(0, len(texts), chunk):
        buf = io.StringIO()
        for i in range(lo, min(lo + chunk, len(texts))):
            t = texts[i].replace("\\", "\\\\").replace("\t", " ").replace("\n", " ")
            buf.write(f"d{i}\t{t}\t{vec(vecs[i])}\n")
        with conn.cursor().copy(f"copy {table} (id, content, embedding) from stdin") as cp:
            cp.write(buf.getvalue())
        conn.commit()
        print(f"  loaded {min(lo + chunk, len(texts)):,}", flush=True)
    return time.perf_counter() - t0


def reference_top10(conn, table, text, n_docs, avgdl) -> list[tuple[str, float]]:
    """BM25 from the matching rows' tsvectors (GIN @@ OR-query), df counted from the same rows."""
    terms = conn.execute(
        "select coalesce(array_agg(distinct lexeme), '{}') from unnest(to_tsvector('english', %s))", [text]
    ).fetchone()[0]
    if not terms:
        return []
    q = " | ".join("'" + t.replace("'", "''") + "'" for t in terms)
    rows = conn.execute(
        f"select t.id, t.doc_len, u.lexeme, coalesce(array_length(u.positions, 1), 1) from {table} t, unnest(t.tsv) u "
        "where t.tsv @@ %s::tsquery and u.lexeme = any(%s)",
        [q, terms],
    ).fetchall()
    df: dict[str, int] = defaultdict(int)
    for _, _, lex, _ in rows:
        df[lex] += 1
    s: dict[str, float] = defaultdict(float)
    for did, dl, lex, f in rows:
        idf = math.log(1 + (n_docs - df[lex] + 0.5) / (df[lex] + 0.5))
        s[did] += idf * f * (K1 + 1) / (f + K1 * (1 - B + B * dl / avgdl))
    return sorted(s.items(), key=lambda x: (-x[1], x[0]))[:10]


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
    """Write what is measured so far (a long run that is stopped keeps its finished sections)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "search_scale.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[str(n)] = out
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    nq = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    out: dict = {"documents": n, "machine": {**machine(), "note": "2 CPU cores shared with other engineers' work"}}
    c = corpus(n)
    texts, vecs, qtexts, qv, truth = c["texts"], c["vectors"], c["queries"], c["query_vectors"], c["truth"]
    sel = np.random.Generator(np.random.PCG64(7)).choice(len(qtexts), size=min(nq, len(qtexts)), replace=False)
    out["corpus"] = {
        "sentences": "SciFact titles + first two abstract sentences, MovieLens titles + tags (distinct)",
        "distinct_sentences": len(sentences()),
        "document": "1-5 sampled sentences (seed 14)",
        "vectors": "normalized mean of the sentences' real all-MiniLM-L6-v2 embeddings",
        "queries_timed": len(sel),
        "avg_words": round(float(np.mean([len(t.split()) for t in texts])), 1),
    }
    dsn = create_scratch_db(DB)
    conn = psycopg.connect(dsn)
    conn.execute("select ml.create_collection('scale')")
    conn.execute("drop index collections.scale_ann")  # built after the load, in parallel (measured below)
    conn.commit()
    print("loading", flush=True)
    secs = load(conn, texts, vecs, "collections.scale")
    out["load"] = {"rows": n, "seconds": round(secs, 1), "rows_per_s": round(n / secs, 1)}
    designs = {}
    for name, sql in {
        "C: postings as rows, SQL group by": ROWS_SQL,
        "B: numpy postings, all in the delta (unmerged)": "select id from ml.keyword_search('scale', %s, 10)",
    }.items():
        ts = [timed(conn, sql, [qtexts[q]])[1] for q in sel[:100]]
        designs[name] = lat(ts)
        print(name, designs[name], flush=True)
    t0 = time.perf_counter()
    conn.execute("select ml._bm25_merge_pending()")
    conn.commit()
    out["load"]["bm25_merge_seconds"] = round(time.perf_counter() - t0, 1)
    conn.autocommit = True
    conn.execute("vacuum analyze collections.scale")
    sizes = conn.execute(
        "select pg_total_relation_size('ml.bm25_postings'), pg_relation_size('collections.scale_tsv')"
    ).fetchone()
    out["load"]["bm25_postings_bytes"], out["load"]["gin_tsv_bytes"] = sizes
    rescan_function(conn)
    for name, sql in {
        "B: numpy postings, merged (chosen: ml.keyword_search)": "select id from ml.keyword_search('scale', %s, 10)",
        "A: plpgsql MaxScore rescanning tsvectors (previous engine)": "select id from public.kw_rescan("
        "(select c from ml.collections c where c.name = 'scale'), %s, 10, null, '{}')",
    }.items():
        ts = [timed(conn, sql, [qtexts[q]])[1] for q in sel[:100]]
        designs[name] = lat(ts)
        print(name, designs[name], flush=True)
    out["bm25_designs"] = {"queries": min(100, len(sel)), **designs}
    save(n, out)
    # ---------------------------------------------------------------- index builds (parallel)
    conn.execute("set max_parallel_maintenance_workers = 2")
    conn.execute("set maintenance_work_mem = '2GB'")
    builds = {}
    for name, ddl in {
        "hnsw_vector": "create index scale_ann on collections.scale using hnsw (embedding vector_cosine_ops)",
        "hnsw_halfvec": "create index scale_half on collections.scale using hnsw "
        "((embedding::halfvec(384)) halfvec_cosine_ops)",
        "hnsw_binary": "create index scale_bit on collections.scale using hnsw "
        "((binary_quantize(embedding)::bit(384)) bit_hamming_ops)",
    }.items():
        t0 = time.perf_counter()
        conn.execute(ddl)
        idx = ddl.split()[2]
        builds[name] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "bytes": conn.execute(f"select pg_relation_size('collections.{idx}')").fetchone()[0],
        }
        print(name, builds[name], flush=True)
        out["index_builds"] = builds
        save(n, out)
    out["index_builds"] = {"settings": {"max_parallel_maintenance_workers": 2, "maintenance_work_mem": "2GB"}, **builds}
    # ---------------------------------------------------------------- insert throughput
    m = 5000
    extra_t = [t + " extra" for t in texts[:m]]
    conn.execute("create table public.plain (like collections.scale including defaults including generated)")
    conn.execute("create index on public.plain using hnsw (embedding vector_cosine_ops)")
    conn.execute("create index on public.plain using gin (tsv)")
    conn.execute("create index on public.plain using gin (metadata)")
    conn.autocommit = False
    rows_ext = [(f"x{i}", extra_t[i], vec(vecs[i])) for i in range(m)]

    def ins(table):
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            for lo in range(0, m, 500):
                cur.execute(
                    f"insert into {table} (id, content, embedding) select * from unnest(%s::text[], %s::text[], "
                    "%s::text[]::vector[])",
                    [list(col) for col in zip(*rows_ext[lo : lo + 500], strict=True)],
                )
                conn.commit()
        return m / (time.perf_counter() - t0)

    with_trigger, plain = ins("collections.scale"), ins("public.plain")
    out["insert"] = {
        "rows": m,
        "batch": 500,
        "collection_rows_per_s": round(with_trigger, 1),
        "plain_table_same_indexes_rows_per_s": round(plain, 1),
        "trigger_cost_fraction": round(1 - with_trigger / plain, 3),
        "note": "the trigger's whole cost (BM25 statistics + postings delta); HNSW, GIN in both",
    }
    print(out["insert"], flush=True)
    save(n, out)
    conn.autocommit = True
    conn.execute("select ml._bm25_merge_pending()")
    conn.execute("delete from collections.scale where id like 'x%'")
    conn.execute("select ml._bm25_merge_pending()")
    conn.execute("vacuum analyze collections.scale")
    # ---------------------------------------------------------------- ANN
    ids = np.array([f"d{i}" for i in range(n)])
    ann = []
    for ef in (20, 40, 80, 160):
        for side, sql in {
            "ml.search": "select id from ml.search('scale', %s::vector, 10, null, jsonb_build_object('ef_search', %s))",
            "hand-written": "select id from collections.scale order by embedding <=> %s::vector(384) limit 10",
        }.items():
            if side == "hand-written":
                conn.execute(f"set hnsw.ef_search = {ef}")
            ts, rec = [], []
            for q in sel:
                p = [vec(qv[q]), ef] if side == "ml.search" else [vec(qv[q])]
                rows, dt = timed(conn, sql, p)
                ts.append(dt)
                rec.append(len({r[0] for r in rows} & set(ids[truth[q]])) / 10)
            ann.append({"side": side, "ef_search": ef, "recall_at_10": round(float(np.mean(rec)), 4), **lat(ts)})
            print(ann[-1], flush=True)
            conn.execute("reset hnsw.ef_search")
    for side, sql in {
        "halfvec hnsw (hand-written)": "select id from collections.scale order by embedding::halfvec(384) <=> "
        "%s::halfvec(384) limit 10",
        "binary hnsw + rerank 40 (hand-written)": "select id from (select id, embedding from collections.scale "
        "order by binary_quantize(embedding)::bit(384) <~> binary_quantize(%s::vector(384)) limit 40) s "
        "order by embedding <=> %s::vector(384) limit 10",
    }.items():
        conn.execute("set hnsw.ef_search = 40")
        ts, rec = [], []
        for q in sel:
            p = [vec(qv[q])] * sql.count("%s")
            rows, dt = timed(conn, sql, p)
            ts.append(dt)
            rec.append(len({r[0] for r in rows} & set(ids[truth[q]])) / 10)
        ann.append({"side": side, "ef_search": 40, "recall_at_10": round(float(np.mean(rec)), 4), **lat(ts)})
        print(ann[-1], flush=True)
    conn.execute("reset hnsw.ef_search")
    out["ann"] = ann
    save(n, out)
    # ---------------------------------------------------------------- BM25
    nd, avgdl = conn.execute("select count(*), avg(doc_len)::float8 from collections.scale").fetchone()
    kw_ts, gin_ts, exact, checked = [], [], 0, 0
    for q in sel:
        rows, dt = timed(conn, "select id, score from ml.keyword_search('scale', %s, 10)", [qtexts[q]])
        kw_ts.append(dt)
        terms = conn.execute(
            "select coalesce(string_agg(quote_literal(lexeme), ' | '), '') from "
            "(select distinct lexeme from unnest(to_tsvector('english', %s))) s",
            [qtexts[q]],
        ).fetchone()[0]
        if terms:
            _, dt = timed(
                conn,
                "select id from collections.scale where tsv @@ %s::tsquery "
                "order by ts_rank_cd(tsv, %s::tsquery) desc limit 10",
                [terms, terms],
            )
            gin_ts.append(dt)
        ref = reference_top10(conn, "collections.scale", qtexts[q], nd, avgdl)
        checked += 1
        full = dict(ref)
        ok = len(rows) == len(ref) and all(abs(a[1] - b[1]) <= 1e-9 for a, b in zip(rows, ref, strict=True))
        ok = ok and all(r[0] in full or abs(r[1] - ref[-1][1]) <= 1e-9 for r in rows)
        exact += ok
    out["bm25"] = {
        "ml.keyword_search": lat(kw_ts),
        "gin_or_query_ts_rank_cd": lat(gin_ts),
        "exact_top10_vs_reference": f"{exact}/{checked}",
    }
    print(out["bm25"], flush=True)
    save(n, out)
    # ---------------------------------------------------------------- hybrid
    conn.execute("select ml.warmup()")
    hy = []
    for q in sel[:150]:
        _, dt = timed(conn, "select id from ml.hybrid_search('scale', %s, 10)", [qtexts[q]])
        hy.append(dt)
    out["hybrid"] = {"ml.hybrid_search": lat(hy), "queries": len(hy), "note": "includes embedding the text query"}
    print(out["hybrid"], flush=True)
    save(n, out)
    # ---------------------------------------------------------------- 4 clients
    out["throughput_4_clients_qps"] = {
        "ml.search ef 40": throughput(
            dsn,
            [
                ("select id from ml.search('scale', %s::vector, 10, null, '{\"ef_search\": 40}')", [vec(qv[q])])
                for q in sel
            ],
        ),
        "ml.keyword_search": throughput(
            dsn, [("select id from ml.keyword_search('scale', %s, 10)", [qtexts[q]]) for q in sel]
        ),
    }
    print(out["throughput_4_clients_qps"], flush=True)
    conn.close()
    out["complete"] = True
    save(n, out)
    print("wrote", RESULTS / "search_scale.json")


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
        if "bm25" in r:
            labels = [f"keyword_search\n{int(n):,}", f"GIN ts_rank_cd\n{int(n):,}"]
            vals = [r["bm25"]["ml.keyword_search"], r["bm25"]["gin_or_query_ts_rank_cd"]]
            b.bar([x + " p50" for x in labels], [v["p50_ms"] for v in vals])
            b.bar([x + " p99" for x in labels], [v["p99_ms"] for v in vals])
    a.set_xlabel("p99 latency (ms)")
    a.set_ylabel("recall@10")
    a.set_title("ANN: recall vs p99 by ef_search")
    a.legend(fontsize=7)
    b.set_yscale("log")
    b.set_ylabel("ms (log)")
    b.set_title("BM25 top 10: p50 / p99")
    b.tick_params(axis="x", labelsize=6)
    fig.tight_layout()
    fig.savefig(RESULTS / "search_scale.png", dpi=120)


if __name__ == "__main__":
    if sys.argv[1:2] == ["plot"]:
        plot()
    else:
        main()
        plot()
