"""Question: how good are ml.keyword_search (BM25), ml.search (MiniLM vectors) and ml.hybrid_search (RRF and
weighted) on SciFact, and is the in-database BM25 the same as a reference BM25 computed in Python?

All 5,183 SciFact documents (title + abstract) in the `scifact` collection (built by the search demo step,
reused when present); the 809 train queries with qrels/train.tsv. nDCG@10 and recall@100 for every method.
The Python reference BM25 (k1 1.2, b 0.75, Lucene idf) reads the SAME tokens: each document's tsvector
and each query's to_tsvector('english', ...) lexemes, so it checks the SQL implementation, not the tokenizer.
Published anchors (SciFact test split, not these train queries): BM25 0.665-0.679, all-MiniLM-L6-v2 0.645.

Run: flock /tmp/indb-bench.lock .venv/bin/python -m benchmarks.search_quality
"""

from __future__ import annotations

import math
import time

from benchmarks.common import percentile
from benchmarks.common import reference_bm25 as common_reference_bm25
from benchmarks.search_performance import merge_results

K1, B = 1.2, 0.75


def ndcg10(ranked, rel):
    dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(rel.values(), reverse=True)[:10]))
    return dcg / ideal if ideal else 0.0


def recall100(ranked, rel):
    return len(set(ranked[:100]) & set(rel)) / len(rel)


def reference_bm25(conn, queries: dict[str, str]) -> dict[str, list[str]]:
    """The reference BM25's top 100 ids per query over the demo's SciFact collection (benchmarks.common)."""
    ranked = common_reference_bm25(conn, "collections.scifact", queries, top=100, k1=K1, b=B)
    return {q: [d for d, _ in r] for q, r in ranked.items()}


def main() -> None:
    import indb
    from indb.demo.search import ensure_collection, read_train
    from indb.localdb import repo_root

    data = repo_root().parent / "shared" / "data"
    client = indb.connect()
    t_all = time.time()
    ensure_collection(client, data)
    client.warmup()
    queries, qrels = read_train(data)
    conn = client.conn
    methods = {
        "keyword (ml.keyword_search, BM25)": lambda q: ("select id from ml.keyword_search('scifact', %s, 100)", [q]),
        "vector (ml.search, MiniLM)": lambda q: ("select id from ml.search('scifact', %s::text, 100)", [q]),
        "hybrid rrf (ml.hybrid_search)": lambda q: ("select id from ml.hybrid_search('scifact', %s, 100)", [q]),
        "hybrid weighted (ml.hybrid_search)": lambda q: (
            "select id from ml.hybrid_search('scifact', %s, 100, method => 'weighted')",
            [q],
        ),
    }
    ranked: dict[str, dict[str, list[str]]] = {}
    lat: dict[str, list[float]] = {}
    for name, fn in methods.items():
        ranked[name], lat[name] = {}, []
        for qid, text in queries.items():
            sql, p = fn(text)
            t0 = time.perf_counter()
            ranked[name][qid] = [r[0] for r in conn.execute(sql, p).fetchall()]
            lat[name].append(time.perf_counter() - t0)
        print(name, "done", flush=True)
    t0 = time.perf_counter()
    ranked["reference BM25 (Python, same tokens)"] = reference_bm25(conn, queries)
    ref_seconds = time.perf_counter() - t0
    rows = []
    for name, rk in ranked.items():
        row = {
            "method": name,
            "ndcg_at_10": round(sum(ndcg10(rk[q], qrels[q]) for q in queries) / len(queries), 4),
            "recall_at_100": round(sum(recall100(rk[q], qrels[q]) for q in queries) / len(queries), 4),
        }
        if name in lat:
            row["p50_ms"] = round(percentile(lat[name], 50) * 1000, 2)
            row["p99_ms"] = round(percentile(lat[name], 99) * 1000, 2)
        rows.append(row)
        print(row, flush=True)
    by = {r["method"]: r["ndcg_at_10"] for r in rows}
    kw, vec = by["keyword (ml.keyword_search, BM25)"], by["vector (ml.search, MiniLM)"]
    ref = by["reference BM25 (Python, same tokens)"]
    best_hybrid = max(by["hybrid rrf (ml.hybrid_search)"], by["hybrid weighted (ml.hybrid_search)"])
    same_top10 = sum(
        ranked["keyword (ml.keyword_search, BM25)"][q][:10] == ranked["reference BM25 (Python, same tokens)"][q][:10]
        for q in queries
    )
    checks = {
        "keyword_within_0.01_of_reference": abs(kw - ref) <= 0.01,
        "keyword_minus_reference": round(kw - ref, 4),
        "queries_with_identical_top10_vs_reference": f"{same_top10}/{len(queries)}",
        "hybrid_rrf_minus_best_single": round(by["hybrid rrf (ml.hybrid_search)"] - max(kw, vec), 4),
        "hybrid_weighted_minus_best_single": round(by["hybrid weighted (ml.hybrid_search)"] - max(kw, vec), 4),
        "hybrid_beats_both_by_0.02": best_hybrid - max(kw, vec) >= 0.02,
    }
    print(checks)
    merge_results(
        "quality",
        {
            "dataset": "SciFact corpus (5,183 docs, title + abstract), 809 train queries, qrels/train.tsv",
            "queries": len(queries),
            "rows": rows,
            "checks": checks,
            "reference_seconds": round(ref_seconds, 1),
            "anchors_test_split": {"BM25": "0.665-0.679", "all-MiniLM-L6-v2": 0.645},
            "total_seconds": round(time.time() - t_all, 1),
        },
    )


if __name__ == "__main__":
    main()
