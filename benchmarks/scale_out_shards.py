"""Question: does a collection sharded over 2 shards answer like one node holding the same documents, and how fast?

Starts two extra local clusters (indb installed, default memory settings) as shards of a scratch database of
the project's cluster, and loads the same N documents (default 200,000) of the search corpus
(benchmarks/search_corpus.py: real text, bring-your-own 384-d vectors derived from real MiniLM embeddings, no
embedding here) into a single-node collection and into a collection sharded over the two shards (bulk load:
COPY into the single node's table, and into each shard's own table at once, each row on the shard the
coordinator's hash partitions give it), then each HNSW index built once (m 16, ef_construction 64) and each
BM25 delta merged. The routed write paths (ml.add_documents and INSERT through the coordinator) are timed on a
sample of 2,000 and 500 rows.

Measures, on the same queries (SciFact's), interleaved one node / sharded (default, and each shard at ef_search 40):
* recall@10 of the ANN search against the exact top 10 (brute force over all N vectors, numpy), both sides;
* exact search: the sharded answer (ids and scores) equals the single node's;
* BM25: keyword_search ids equal and the largest score difference;
* p50/p99 latency of ml.search (ANN, k 10) and ml.keyword_search (k 10).
Stops and deletes the shards and drops the database at the end. Writes benchmarks/results/scale_out_shards.json.

Run: flock -x /work/heavy.lock .venv/bin/python -m benchmarks.scale_out_shards 200000
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time

import numpy as np
import psycopg

from benchmarks.common import percentile, scratch_database, write
from benchmarks.search_corpus import corpus

DB = "indb_bench_shards"
Q_ANN = 200
Q_EXACT = 20
Q_BM25 = 100


def vec_text(v: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in v) + "]"


def copy_rows(dsn: str, table: str, rows: list[int], texts: list[str], vecs: np.ndarray, out: dict, key: str) -> None:
    """COPY the given documents into a table, 20,000 rows per statement (one trigger run each)."""
    t = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for lo in range(0, len(rows), 20_000):
            with conn.cursor().copy(f"copy {table} (id, content, embedding) from stdin") as cp:
                for i in rows[lo : lo + 20_000]:
                    cp.write_row((f"d{i}", texts[i], vec_text(vecs[i])))
    out[key] = time.perf_counter() - t


def parallel(jobs: list[tuple]) -> float:
    threads = [threading.Thread(target=f, args=a) for f, *a in jobs]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t


def build_index(dsn: str, name: str, out: dict) -> None:
    """Drop-free rebuild of a plain collection's HNSW index (ml.reindex_collection), with memory for the graph."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("set maintenance_work_mem = '1GB'")
        t = time.perf_counter()
        c.execute("select * from ml.reindex_collection(%s)", [name])
        c.execute("select ml._bm25_merge_pending()")
        out[dsn] = time.perf_counter() - t


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    from indb.localdb import Cluster, SmallCluster

    t0 = time.perf_counter()
    cp = corpus(n)
    texts, vecs, qv, truth = cp["texts"], cp["vectors"], cp["query_vectors"], cp["truth"]
    qtexts = cp["queries"]
    print(f"corpus: {n:,} documents, {len(qtexts)} queries ({time.perf_counter() - t0:.0f} s)", flush=True)
    primary = Cluster.local()
    shards = []
    for name in ("bench_s1", "bench_s2"):
        st = primary.state / "bench-shards" / name
        shards.append(SmallCluster.at(st))
    res: dict = {"documents": n, "shards": 2, "dimensions": int(vecs.shape[1])}
    try:
        dsns = [s.start_as_shard() for s in shards]
        with scratch_database(DB) as dsn, psycopg.connect(dsn, autocommit=True) as c:
            for i, d in enumerate(dsns):
                c.execute("select * from ml.add_shard(%s, %s)", [f"s{i + 1}", d])
            dims = {"dimensions": int(vecs.shape[1])}
            c.execute(
                "select ml.create_collection('one', model => null, options => %s::jsonb)", [str(dims).replace("'", '"')]
            )
            c.execute(
                "select ml.create_collection('sh', model => null, options => %s::jsonb, shards => array['s1', 's2'])",
                [str(dims).replace("'", '"')],
            )
            # load without the HNSW index (built once afterwards, as one does for a bulk load): the single node by
            # COPY; the shards by COPY into each shard's own table at once, each row where the coordinator's hash
            # partitions put it (a bulk load; the routed write paths are measured on a sample below)
            c.execute("drop index collections.one_ann")
            for s in shards:
                with psycopg.connect(s.dsn(), autocommit=True) as sc:
                    sc.execute("drop index collections.sh_ann")
            times: dict = {}
            copy_rows(dsn, "collections.one", list(range(n)), texts, vecs, times, "one")
            res["copy_single_node_s"] = round(times["one"], 1)
            print(f"COPY one node: {res['copy_single_node_s']} s", flush=True)
            part = [
                [
                    r[0] - 1
                    for r in c.execute(
                        "select o from unnest(%s::text[]) with ordinality u(id, o) "
                        "where satisfies_hash_partition('collections.sh'::regclass, 2, %s, u.id) order by o",
                        [[f"d{i}" for i in range(n)], rem],
                    ).fetchall()
                ]
                for rem in (0, 1)
            ]
            res["copy_shards_concurrently_s"] = round(
                parallel(
                    [
                        (copy_rows, s.dsn(), "collections.sh", part[i], texts, vecs, times, f"s{i}")
                        for i, s in enumerate(shards)
                    ]
                ),
                1,
            )
            print(f"COPY shards: {res['copy_shards_concurrently_s']} s", flush=True)
            res["rows_per_shard"] = [
                r[1]
                for r in c.execute(
                    "select tableoid::regclass::text, count(*) from collections.sh group by 1 order by 1"
                )
            ]
            assert sum(res["rows_per_shard"]) == n
            # the HNSW indexes: the single node's, then both shards' at once (each on its own cluster)
            build_index(dsn, "one", times)
            res["hnsw_build_single_node_s"] = round(times[dsn], 1)
            res["hnsw_build_shards_concurrently_s"] = round(
                parallel([(build_index, s.dsn(), "sh", times) for s in shards]), 1
            )
            print(
                f"indexes: one node {res['hnsw_build_single_node_s']} s, shards {res['hnsw_build_shards_concurrently_s']} s",
                flush=True,
            )
            # the routed write paths, on a sample in a second sharded collection: ml.add_documents (each shard's
            # documents in one call there, both shards at once) and INSERT ... SELECT through the parent (row by row:
            # the tenant-check row trigger turns postgres_fdw's batching off)
            c.execute(
                "select ml.create_collection('wr', model => null, options => %s::jsonb, shards => array['s1', 's2'])",
                [json.dumps(dims)],
            )
            sample = 2000
            docs = [
                {"id": f"w{i}", "content": texts[i], "embedding": [float(x) for x in vecs[i]]} for i in range(sample)
            ]
            t = time.perf_counter()
            for lo in range(0, sample, 500):
                c.execute("select ml.add_documents('wr', %s)", [json.dumps(docs[lo : lo + 500])])
            res["routed_add_documents_rows_per_s"] = round(sample / (time.perf_counter() - t), 1)
            t = time.perf_counter()
            c.execute(
                "insert into collections.wr (id, content, embedding) select 'i' || id, content, embedding "
                "from collections.one order by id limit 500"
            )
            res["routed_insert_rows_per_s"] = round(500 / (time.perf_counter() - t), 1)
            c.execute("select ml.drop_collection('wr')")
            print({k: v for k, v in res.items() if "routed" in k}, flush=True)
            c.execute("analyze collections.one")
            # warm both sides
            for name in ("one", "sh"):
                for j in range(5):
                    c.execute("select count(*) from ml.search(%s, %s::vector, 10)", [name, vec_text(qv[j])]).fetchone()
            # ANN recall and latency, interleaved
            # ANN recall and latency, interleaved: one node (ef_search 40), sharded with the default (each shard
            # at ef_search 5 x k' = 100, ml._shard_ef_search), sharded with each shard at ef_search 40 (asked)
            sides = {"one": ("one", "{}"), "sh": ("sh", "{}"), "sh40": ("sh", '{"ef_search": 40}')}
            lat: dict = {s: [] for s in sides}
            hits: dict = {s: 0 for s in sides}
            for j in range(Q_ANN):
                want = {f"d{x}" for x in truth[j]}
                q = vec_text(qv[j])
                for side, (name, opts) in sides.items():
                    t = time.perf_counter()
                    got = [
                        r[0]
                        for r in c.execute(
                            "select id from ml.search(%s, %s::vector, 10, options => %s::jsonb)", [name, q, opts]
                        ).fetchall()
                    ]
                    lat[side].append((time.perf_counter() - t) * 1000)
                    hits[side] += len(want & set(got))
            res["ann_queries"] = Q_ANN
            res["recall_at_10_single_node"] = round(hits["one"] / (10 * Q_ANN), 4)
            res["recall_at_10_sharded"] = round(hits["sh"] / (10 * Q_ANN), 4)
            res["recall_at_10_sharded_shard_ef40"] = round(hits["sh40"] / (10 * Q_ANN), 4)
            for side, label in (("one", "single_node"), ("sh", "sharded"), ("sh40", "sharded_shard_ef40")):
                res[f"search_ms_p50_{label}"] = round(percentile(lat[side], 50), 2)
                res[f"search_ms_p99_{label}"] = round(percentile(lat[side], 99), 2)
            print({k: v for k, v in res.items() if "recall" in k or "search_ms" in k}, flush=True)
            # exact search: equal answers
            same = 0
            same_scores = 0
            for j in range(Q_EXACT):
                q = vec_text(qv[j])
                a = c.execute(
                    "select id, score from ml.search('one', %s::vector, 10, options => '{\"exact\": true}')", [q]
                ).fetchall()
                b = c.execute(
                    "select id, score from ml.search('sh', %s::vector, 10, options => '{\"exact\": true}')", [q]
                ).fetchall()
                same += a == b
                # documents with the same text have the same vector: which of several tied documents fills the last
                # places is arbitrary on one node too, so the score lists are compared as well
                same_scores += [r[1] for r in a] == [r[1] for r in b]
                if j < 3:
                    res.setdefault("exact_recall_vs_numpy_truth", []).append(
                        len({r[0] for r in b} & {f"d{x}" for x in truth[j]}) / 10
                    )
            res["exact_queries"] = Q_EXACT
            res["exact_equal_answers"] = same
            res["exact_equal_score_lists"] = same_scores
            # recall with the option ef_search 100 on both sides
            hits = {"one": 0, "sh": 0}
            for j in range(Q_ANN):
                want = {f"d{x}" for x in truth[j]}
                for name in ("one", "sh"):
                    got = c.execute(
                        "select id from ml.search(%s, %s::vector, 10, options => '{\"ef_search\": 100}')",
                        [name, vec_text(qv[j])],
                    ).fetchall()
                    hits[name] += len(want & {r[0] for r in got})
            res["recall_at_10_single_node_ef100"] = round(hits["one"] / (10 * Q_ANN), 4)
            res["recall_at_10_sharded_ef100"] = round(hits["sh"] / (10 * Q_ANN), 4)
            # BM25
            lat = {"one": [], "sh": []}
            max_diff = 0.0
            ids_equal = 0
            nonempty = 0
            for j in range(Q_BM25):
                out = {}
                for name in ("one", "sh"):
                    t = time.perf_counter()
                    out[name] = c.execute(
                        "select id, score from ml.keyword_search(%s, %s, 10)", [name, qtexts[j]]
                    ).fetchall()
                    lat[name].append((time.perf_counter() - t) * 1000)
                ids_equal += [r[0] for r in out["one"]] == [r[0] for r in out["sh"]]
                nonempty += bool(out["one"])
                if len(out["one"]) == len(out["sh"]):
                    max_diff = max([max_diff] + [abs(x[1] - y[1]) for x, y in zip(out["one"], out["sh"], strict=True)])
            res["bm25_queries"] = Q_BM25
            res["bm25_queries_with_hits"] = nonempty
            res["bm25_same_ids"] = ids_equal
            res["bm25_max_abs_score_difference"] = max_diff
            for name, label in (("one", "single_node"), ("sh", "sharded")):
                res[f"keyword_ms_p50_{label}"] = round(percentile(lat[name], 50), 2)
                res[f"keyword_ms_p99_{label}"] = round(percentile(lat[name], 99), 2)
            c.execute("select ml.drop_collection('sh')")
            c.execute("select ml.remove_shard('s1'), ml.remove_shard('s2')")
    finally:
        for s in shards:
            s.remove()
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["notes"] = (
        "2 shards and the coordinator on the same 2-core machine (shared with other work): a sharded search runs the "
        "two shards at once on the same cores, so its latency shows the fan-out's overhead, not the speed-up that "
        "shards on their own machines give. Shards use PostgreSQL's default memory settings; the single node the "
        "project cluster's. HNSW m 16, ef_construction 64; one node searches at ef_search 40 (the default); each shard "
        "returns its top k' = max(2k, k + 10) = 20 (over-fetch), by default at ef_search 5 x k' = 100 "
        "(ml._shard_ef_search; *_shard_ef40: the option ef_search 40 asked), and the coordinator keeps the best 10. "
        "*_ef100: the option ef_search 100 on both sides."
    )
    print(res, flush=True)
    print(write("scale_out_shards", res))


if __name__ == "__main__":
    io.DEFAULT_BUFFER_SIZE = 1 << 16
    main()
