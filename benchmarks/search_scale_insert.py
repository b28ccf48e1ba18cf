"""Question: what does the collection trigger (BM25 statistics + BM25 postings delta) cost on insert, with the
same indexes on both sides? Reuses search_scale.py's loaded scratch database (run that first): drops the
halfvec/binary HNSW indexes it built for comparison, then inserts the same 5,000 BYO-embedding rows (batches of
500) into the collection and into a plain table with the same columns and indexes (one HNSW, two GIN) and no
trigger. Updates the "insert" section of benchmarks/results/search_scale.json.

Run: flock -x /work/heavy.lock .venv/bin/python -m benchmarks.search_scale_insert 100000
"""

from __future__ import annotations

import json
import sys
import time

import psycopg

from benchmarks.common import RESULTS
from benchmarks.search_corpus import documents
from benchmarks.search_scale import DB, vec


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    from indb.localdb import Cluster

    texts, vecs = documents(n)
    m = 5000
    rows = [(f"y{i}", texts[i] + " again", vec(vecs[i])) for i in range(m)]
    with psycopg.connect(Cluster.local().dsn(DB), autocommit=True) as conn:
        conn.execute("drop index if exists collections.scale_half, collections.scale_bit")
        conn.execute("drop table if exists public.plain")
        conn.execute("create table public.plain (like collections.scale including defaults including generated)")
        conn.execute("create index on public.plain using hnsw (embedding vector_cosine_ops)")
        conn.execute("create index on public.plain using gin (tsv)")
        conn.execute("create index on public.plain using gin (metadata)")
        conn.execute(
            "insert into public.plain (id, content, metadata, tenant, created_at, embedding) "
            "select id, content, metadata, tenant, created_at, embedding from collections.scale"
        )
        idx = {
            t: conn.execute(
                "select count(*) from pg_index where indrelid = %s::regclass and indexrelid::regclass::text !~ 'pkey'",
                [t],
            ).fetchone()[0]
            for t in ("collections.scale", "public.plain")
        }
        conn.autocommit = False

        def ins(table):
            t0 = time.perf_counter()
            for lo in range(0, m, 500):
                conn.execute(
                    f"insert into {table} (id, content, embedding) select * from unnest(%s::text[], %s::text[], "
                    "%s::text[]::vector[])",
                    [list(col) for col in zip(*rows[lo : lo + 500], strict=True)],
                )
                conn.commit()
            return m / (time.perf_counter() - t0)

        plain = ins("public.plain")
        coll = ins("collections.scale")
        conn.autocommit = True
        conn.execute("delete from collections.scale where id like 'y%'")
        conn.execute("select ml._bm25_merge_pending()")
    out = {
        "rows": m,
        "batch": 500,
        "collection_rows_per_s": round(coll, 1),
        "plain_table_same_indexes_rows_per_s": round(plain, 1),
        "trigger_cost_fraction": round(1 - coll / plain, 3),
        "secondary_indexes": idx,
        "note": f"both tables hold the {n:,} loaded rows and have one HNSW and two GIN indexes; the difference is "
        "the collection trigger (BM25 statistics upsert + BM25 postings delta)",
    }
    print(out)
    path = RESULTS / "search_scale.json"
    data = json.loads(path.read_text())
    data[str(n)]["insert"] = out
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
