"""Demo step: hybrid search over SciFact (5,183 abstracts) inside PostgreSQL.

Loads the corpus into the collection ``scifact`` (title + abstract, embedded in the server by MiniLM;
reused when already loaded), prints the top results of vector, keyword (BM25) and hybrid (RRF) search for
a few claims, and scores nDCG@10 of each method on SciFact's train judgments.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

TITLE = "vector collections and hybrid search over SciFact"
COLLECTION = "scifact"


def read_corpus(data: Path) -> list[dict]:
    docs = []
    with open(data / "scifact" / "corpus.jsonl") as f:
        for line in f:
            d = json.loads(line)
            docs.append(
                {
                    "id": d["_id"],
                    "content": (d["title"] + "\n" + d["text"]).strip(),
                    "metadata": {"title": d["title"], "chars": len(d["text"])},
                }
            )
    return docs


def read_train(data: Path) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    queries = {}
    with open(data / "scifact" / "queries.jsonl") as f:
        for line in f:
            q = json.loads(line)
            queries[q["_id"]] = q["text"]
    qrels: dict[str, dict[str, int]] = {}
    with open(data / "scifact" / "qrels" / "train.tsv") as f:
        next(f)
        for line in f:
            qid, did, score = line.split("\t")
            qrels.setdefault(qid, {})[did] = int(score)
    return {q: queries[q] for q in qrels}, qrels


def ensure_collection(client, data: Path, progress=print) -> int:
    """Create and fill the scifact collection unless it is already complete (idempotent)."""
    docs = read_corpus(data)
    if not any(c["name"] == COLLECTION for c in client.collections()):
        client.create_collection(COLLECTION)
    have = {r["id"] for r in client.call(f"select id from collections.{COLLECTION}")}
    todo = [d for d in docs if d["id"] not in have]
    if todo:
        progress(f"embedding {len(todo):,} SciFact abstracts in the server (MiniLM, ~17 abstracts/s on 2 cores)")
        client.add_documents(COLLECTION, todo, batch_size=256, progress=progress)
    else:
        progress(f"collection {COLLECTION} already holds all {len(docs):,} documents: reusing it")
    return len(docs)


def ndcg_at_10(ranked: list[str], rel: dict[str, int]) -> float:
    dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(rel.values(), reverse=True)[:10]))
    return dcg / ideal if ideal else 0.0


def run(client, data: Path, n_eval: int = 200) -> None:
    ensure_collection(client, data)
    queries, qrels = read_train(data)
    client.warmup()
    for qid in list(queries)[:3]:
        claim = queries[qid]
        print(f"\nclaim {qid}: {claim}")
        rows = client.hybrid_search(COLLECTION, claim, k=3)
        for r in rows:
            mark = "*" if r["id"] in qrels[qid] else " "
            print(
                f"  {mark} {r['id']:>9}  rrf={r['score']:.4f}  vector#{r['vector_rank'] or '-':<3} "
                f"bm25#{r['keyword_rank'] or '-':<3} {r['metadata']['title'][:80]}"
            )
    print("  (* = judged relevant in qrels/train.tsv)")
    ids = list(queries)[:n_eval]
    scores: dict[str, list[float]] = {"vector": [], "keyword (BM25)": [], "hybrid (rrf)": [], "hybrid (weighted)": []}
    t0 = time.time()
    for qid in ids:
        q = queries[qid]
        scores["vector"].append(ndcg_at_10([r["id"] for r in client.search(COLLECTION, q, k=10)], qrels[qid]))
        scores["keyword (BM25)"].append(
            ndcg_at_10([r["id"] for r in client.keyword_search(COLLECTION, q, k=10)], qrels[qid])
        )
        scores["hybrid (rrf)"].append(
            ndcg_at_10([r["id"] for r in client.hybrid_search(COLLECTION, q, k=10)], qrels[qid])
        )
        scores["hybrid (weighted)"].append(
            ndcg_at_10([r["id"] for r in client.hybrid_search(COLLECTION, q, k=10, method="weighted")], qrels[qid])
        )
    print(
        f"\nnDCG@10 on the first {len(ids)} train queries ({time.time() - t0:.1f} s; "
        f"full 809-query table: benchmarks/search_quality.py):"
    )
    for method, s in scores.items():
        print(f"  {method:<17} {sum(s) / len(s):.4f}")
