"""ml.add_documents from several sessions at once with overlapping ids (issue 10, item 8): no unique violation
(23505), no deadlock, every id once, and BM25 statistics that match the rows. Before 0.2.0 the upsert was a
DELETE then an INSERT, and three sessions writing overlapping ids failed with 23505 or a deadlock."""

from __future__ import annotations

import random
import secrets
import threading

import pytest
from psycopg.types.json import Jsonb

WORDS = ["protein", "cell", "gene", "virus", "immune", "tumor", "drug", "brain", "blood", "heart", "liver"]


@pytest.mark.parametrize("partition_by", [None, "tenant", "time"])
def test_three_sessions_upserting_overlapping_ids(connect_as, sconn, partition_by):
    name = f"conc_{secrets.token_hex(3)}"
    connect_as("acme_writer").execute(
        "select ml.create_collection(%s, model => null, partition_by => %s, options => '{\"dimensions\": 3}')",
        [name, partition_by],
    )
    errors: list[BaseException] = []
    sessions = [connect_as("acme_writer") for _ in range(3)]
    start = threading.Barrier(3)

    def writer(w: int) -> None:
        rng = random.Random(w)
        try:
            start.wait()
            for round_ in range(6):
                ids = rng.sample(range(40), 25)  # three sessions, 25 of 40 ids each: mostly the same ids
                docs = []
                for i in ids:
                    d = {
                        "id": f"d{i}",
                        "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))),
                        "embedding": [1, rng.random(), w + 1],
                        "metadata": {"writer": w, "round": round_},
                    }
                    if partition_by == "time" and rng.random() < 0.7:
                        d["created_at"] = f"2024-0{rng.randint(1, 3)}-1{rng.randint(0, 9)}T00:00:00Z"
                    docs.append(d)
                sessions[w].execute("select ml.add_documents(%s, %s)", [name, Jsonb(docs)])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, [f"{type(e).__name__}: {e}" for e in errors]
    t = f"collections.{name}"
    n, distinct = sconn.execute(f"select count(*), count(distinct id) from {t}").fetchone()
    assert n == distinct and 0 < n <= 40  # every id once (a time-partitioned collection too)
    # the statistics follow the rows
    docs, total = sconn.execute(
        "select s.n_docs, s.total_len from ml.collection_stats s join ml.collections c on c.id = s.collection_id "
        "where c.name = %s",
        [name],
    ).fetchone()
    assert (docs, total) == sconn.execute(f"select count(*), coalesce(sum(doc_len), 0) from {t}").fetchone()
    cid = sconn.execute("select id from ml.collections where name = %s", [name]).fetchone()[0]
    want = dict(sconn.execute(f"select u.lexeme, count(*) from {t} r, unnest(r.tsv) u group by 1").fetchall())
    got = dict(sconn.execute("select term, df from ml.collection_terms where collection_id = %s", [cid]).fetchall())
    assert got == want
    if partition_by == "time":
        # documents without created_at are in the current month, never in the default partition
        assert sconn.execute(f"select count(*) from collections.{name}_default").fetchone()[0] == 0
