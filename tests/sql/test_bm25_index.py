"""The BM25 index (postings + delta + tombstones, sql/230, plpython/indb_runtime/bm25.py) gives exactly the
reference BM25 on SciFact: all 809 train queries, top 10 with the same scores to 1e-9, on the freshly written
collection (everything in the delta), after a merge, after a round of updates, deletes and inserts (unmerged),
and after the next merge; filtered and tenant-scoped searches stay exact; the index never reads a document."""

from __future__ import annotations

import secrets

import pytest
from helpers import act_as, ensure_tenant
from psycopg.types.json import Jsonb

from benchmarks.common import reference_bm25
from indb.demo.search import read_corpus, read_train

K1, B = 1.2, 0.75


def reference(conn, table: str, queries: dict[str, str], where: str = "true") -> dict[str, list[tuple[str, float]]]:
    """The reference BM25 (benchmarks.common.reference_bm25: plain Python over the rows' tsvectors, the whole
    collection's statistics): top 10 (id, score) of the rows matching ``where``."""
    return reference_bm25(conn, table, queries, where=where, top=10, k1=K1, b=B)


def assert_exact(conn, name: str, ref, queries, filt=None) -> None:
    """Every query's top 10 has the reference's scores (to 1e-9) and each id its reference score: the exact top
    10 (documents tied in score may come in either order)."""
    bad = []
    for qid, text in queries.items():
        got = conn.execute("select id, score from ml.keyword_search(%s, %s, 10, %s)", [name, text, filt]).fetchall()
        want = ref[qid]
        full = dict(want)
        ok = len(got) == len(want) and all(abs(g[1] - w[1]) <= 1e-9 for g, w in zip(got, want, strict=True))
        ok = ok and len({g[0] for g in got}) == len(got)
        # an id outside the reference's 10 is fine only when tied with the 10th
        ok = ok and all(g[0] in full or abs(g[1] - want[-1][1]) <= 1e-9 for g in got)
        if not ok:
            bad.append((qid, got[:3], want[:3]))
    assert not bad, f"{len(bad)} of {len(queries)} queries differ from the reference, e.g. {bad[:2]}"


def keyword_collection(conn, prefix: str, docs: list[dict]) -> str:
    """A collection without a model (keyword search needs no vectors) holding ``docs``, added 1,000 at a time;
    its name."""
    name = f"{prefix}_{secrets.token_hex(3)}"
    conn.execute("select ml.create_collection(%s, model => null, options => '{\"dimensions\": 2}')", [name])
    for lo in range(0, len(docs), 1000):
        conn.execute("select ml.add_documents(%s, %s)", [name, Jsonb(docs[lo : lo + 1000])])
    return name


@pytest.fixture(scope="module")
def scifact_bm25(sconn, data_dir):
    """All 5,183 SciFact documents in a collection without a model (keyword search needs no vectors)."""
    docs = read_corpus(data_dir)
    for i, d in enumerate(docs):
        d["embedding"] = [1, 0]
        d["metadata"] = {"bucket": i % 3}
    name = keyword_collection(sconn, "sfbm25", docs)
    queries, _ = read_train(data_dir)
    assert len(queries) == 809
    return name, queries


def index_counts(conn, name):
    return conn.execute(
        "select (select count(*) from ml.bm25_delta d where d.collection_id = c.id), "
        "(select count(*) from ml.bm25_deleted d where d.collection_id = c.id), "
        "(select count(*) from ml.bm25_postings p where p.collection_id = c.id) "
        "from ml.collections c where c.name = %s",
        [name],
    ).fetchone()


def test_all_809_train_queries_equal_the_reference_through_writes_and_merges(sconn, scifact_bm25):
    name, queries = scifact_bm25
    table = f"collections.{name}"
    delta, dead, merged = index_counts(sconn, name)
    postings = sconn.execute(
        "select sum(df) from ml.collection_terms t join ml.collections c on c.id = t.collection_id where c.name = %s",
        [name],
    ).fetchone()[0]
    assert delta == postings > 400_000 and merged == 0  # everything written is in the delta
    assert_exact(sconn, name, reference(sconn, table, queries), queries)

    assert sconn.execute("select ml._bm25_merge_pending()").fetchone()[0] >= 1
    delta, dead, merged = index_counts(sconn, name)
    assert delta == 0 and dead == 0 and merged > 20_000
    ref = reference(sconn, table, queries)
    assert_exact(sconn, name, ref, queries)

    # a round of writes: content updates (re-indexed), metadata-only updates (not re-indexed), deletes, inserts
    sconn.execute(
        f"update {table} set content = content || ' cancer cells in mice' where id in "
        f"(select id from {table} order by id limit 300)"
    )
    sconn.execute(
        f"update {table} set metadata = metadata || '{{\"seen\": true}}' where id in "
        f"(select id from {table} order by id desc limit 300)"
    )
    sconn.execute(f"delete from {table} where id in (select id from {table} order by md5(id) limit 200)")
    # new rows made of queries' words: they enter those queries' top 10
    sconn.execute(
        f"insert into {table} (id, content, embedding) select 'new' || i, q, '[1,0]' "
        "from unnest(%s::text[]) with ordinality x(q, i)",
        [[t + " " + t for t in list(queries.values())[:100]]],
    )
    delta, dead, _ = index_counts(sconn, name)
    assert dead == 500 and delta > 0  # 300 content updates + 200 deletes; metadata updates left the index alone
    ref = reference(sconn, table, queries)
    assert any(d.startswith("new") for r in ref.values() for d, _ in r)  # the inserted rows do rank
    assert_exact(sconn, name, ref, queries)

    sconn.execute("select ml._bm25_merge_pending()")
    assert index_counts(sconn, name)[:2] == (0, 0)
    assert_exact(sconn, name, ref, queries)


def test_filtered_keyword_search_is_exact(sconn, scifact_bm25):
    name, queries = scifact_bm25
    some = dict(list(queries.items())[:150])
    ref = reference(sconn, f"collections.{name}", some, where="metadata @> '{\"bucket\": 2}'")
    assert_exact(sconn, name, ref, some, filt=Jsonb({"bucket": 2}))


def test_a_filter_that_passes_few_documents_is_exact(sconn, scifact_bm25):
    """A filter passing 40 of 5,183 documents: the rounds of candidates would grow until they had read every
    document of the query's terms; the rows the filter passes are scored instead, with the same scores."""
    name, queries = scifact_bm25
    some = dict(list(queries.items())[:120])
    ids = [r[0] for r in sconn.execute(f"select id from collections.{name} order by md5(id) limit 40")]
    where = "id in (" + ", ".join("'" + i.replace("'", "''") + "'" for i in ids) + ")"
    ref = reference(sconn, f"collections.{name}", some, where=where)
    assert sum(len(r) for r in ref.values()) > 50  # the filtered top lists are not empty
    assert_exact(sconn, name, ref, some, filt=Jsonb({"id": {"$in": ids}}))


def test_tenant_scoped_keyword_search_is_exact(sconn):
    """A collection shared by two tenants: each sees the exact BM25 top k of its own rows (statistics are the
    collection's), never the other's rows, also when the other tenant's documents score higher."""
    docs = []
    for i in range(300):
        tenant = "acme" if i % 10 == 0 else "globex"  # acme has 30 rows; globex's score higher
        words = "merger plan " * (3 if tenant == "globex" else 1) + f"doc{i} " + "filler " * (i % 7)
        docs.append({"id": f"d{i}", "tenant": tenant, "content": words, "embedding": [1, 0]})
    ensure_tenant(sconn, "acme")
    ensure_tenant(sconn, "globex")
    name = keyword_collection(sconn, "tbm25", docs)
    table = f"collections.{name}"
    queries = {"q1": "merger plan", "q2": "plan filler"}
    for tenant in ("acme", "globex"):
        ref = reference(sconn, table, queries, where=f"tenant = '{tenant}'")
        act_as(sconn, "indb_reader", tenant)
        try:
            assert_exact(sconn, name, ref, queries)
            ids = [r[0] for r in sconn.execute("select id from ml.keyword_search(%s, 'merger plan', 50)", [name])]
            assert ids and all(int(i[1:]) % 10 == 0 for i in ids) == (tenant == "acme")
            # a filter on id passing few rows (scored from the rows themselves): still the tenant's rows only
            few = Jsonb({"id": {"$in": [f"d{i}" for i in range(20)]}})
            ids = [
                r[0] for r in sconn.execute("select id from ml.keyword_search(%s, 'merger plan', 10, %s)", [name, few])
            ]
            mine = [f"d{i}" for i in range(20) if (i % 10 == 0) == (tenant == "acme")]
            assert set(ids) <= set(mine) and len(ids) == min(10, len(mine)), (tenant, ids)
        finally:
            sconn.execute("reset role")


def test_keyword_search_reads_postings_not_documents(sconn, conn, scifact_bm25):
    """A query of common terms reads the collection table only for the rows it returns (by primary key: no
    sequential scan, no tsvector rescans); the merged postings hold each lexeme's documents once, in order."""
    name, _ = scifact_bm25
    sconn.execute("select ml._bm25_merge_pending()")
    # a new backend: no statistics pending from earlier statements in pg_stat_xact_user_tables
    with conn.transaction():
        rows = conn.execute("select id from ml.keyword_search(%s, 'cells protein expression in the cell', 10)", [name])
        assert len(rows.fetchall()) == 10
        seq, idx = conn.execute(
            "select coalesce(seq_tup_read, 0), coalesce(idx_tup_fetch, 0) from pg_stat_xact_user_tables "
            "where relid = %s::regclass",
            [f"collections.{name}"],
        ).fetchone()
    # the 10 rows and the candidates tied with them, out of thousands of matching documents
    matching = sconn.execute(
        f"select count(*) from collections.{name} where tsv @@ to_tsquery('english', 'cell | protein | expression')"
    ).fetchone()[0]
    assert matching > 1000 and seq == 0 and idx <= 20
    n, docs = sconn.execute(
        "select n, docs from ml.bm25_postings p join ml.collections c on c.id = p.collection_id "
        "where c.name = %s and term = 'cell'",
        [name],
    ).fetchone()
    nums = [int.from_bytes(docs[i : i + 4], "big") for i in range(0, len(docs), 4)]
    assert len(nums) == n and nums == sorted(set(nums))
    df = sconn.execute(
        "select df from ml.collection_terms t join ml.collections c on c.id = t.collection_id "
        "where c.name = %s and term = 'cell'",
        [name],
    ).fetchone()[0]
    assert df == n


def test_a_rebuild_from_the_rows_is_exact(sconn, scifact_bm25):
    """What install does for collections made before the index (ml._bm25_build): postings from the rows,
    nothing left in delta or tombstones, the same exact results."""
    name, queries = scifact_bm25
    some = dict(list(queries.items())[:200])
    sconn.execute(f"delete from collections.{name} where id in (select id from collections.{name} limit 5)")
    sconn.execute("select ml._bm25_build(id) from ml.collections where name = %s", [name])
    assert index_counts(sconn, name)[:2] == (0, 0)
    assert_exact(sconn, name, reference(sconn, f"collections.{name}", some), some)


def test_a_bulk_update_after_an_upsert_pairs_old_and_new_rows_exactly(sconn):
    """One session, as a pooled application would: add_documents (an upsert, whose UPDATE trigger fires with
    empty transition tables, so the session's plans for the UPDATE branch are made for empty tables), then
    UPDATEs of many rows, shared (tenant null) and a tenant's. A metadata-only update leaves the BM25 index as it
    was (no tombstone, no delta); a text change of some rows tombstones exactly those; results stay exact.
    (Before, the trigger joined the two transition tables, and such a session planned a nested loop over both:
    quadratic, 8,000 rows took 35 s.)"""
    name = f"ubm25_{secrets.token_hex(3)}"
    sconn.execute("select ml.create_collection(%s, model => null, options => '{\"dimensions\": 2}')", [name])
    ensure_tenant(sconn, "acme")
    docs = [
        {
            "id": f"d{i}",
            "tenant": "acme" if i % 2 else None,
            "content": f"merger plan doc{i} " + "filler " * (i % 5),
            "embedding": [1, i],
            "metadata": {"n": i},
        }
        for i in range(3000)
    ]
    sconn.execute("select ml.add_documents(%s, %s)", [name, Jsonb(docs)])
    sconn.execute("select ml.add_documents(%s, %s)", [name, Jsonb(docs[:1])])  # upsert: UPDATE trigger, no rows
    sconn.execute("select ml._bm25_merge(id) from ml.collections where name = %s", [name])
    table = f"collections.{name}"
    before = index_counts(sconn, name)
    sconn.execute(f"update {table} set metadata = metadata || '{{\"touched\": true}}'")
    assert index_counts(sconn, name) == before
    sconn.execute(f"update {table} set content = content || ' acquisition' where id in ('d1', 'd2', 'd3')")
    delta, deleted, _ = index_counts(sconn, name)
    assert deleted == before[1] + 3 and delta > before[0]
    queries = {"q1": "merger acquisition", "q2": "plan filler", "q3": "doc17 merger"}
    assert_exact(sconn, name, reference(sconn, table, queries), queries)
    # a vector kept by the writer is not lost by a metadata update (a collection without a model)
    assert sconn.execute(f"select embedding::text from {table} where id = 'd7'").fetchone()[0] == "[1,7]"


def test_merge_pending_takes_collections_with_enough_delta_or_any_tombstone(sconn):
    """ml._bm25_merge_pending(min_rows), what the minute job runs: a collection whose delta holds fewer than
    min_rows postings waits; one with at least min_rows is merged; a tombstone (a deleted or re-indexed row) is
    merged whatever min_rows is. (It reads at most min_rows postings per collection, not the whole delta.)"""
    docs = [
        {"id": f"d{i}", "content": f"alpha beta gamma {w}", "embedding": [1, 0]}
        for i, w in enumerate(["delta", "epsilon", "zeta"])
    ]
    name = keyword_collection(sconn, "mp", docs)
    delta, dead, merged = index_counts(sconn, name)
    assert delta == 12 and dead == 0 and merged == 0
    sconn.execute("select ml._bm25_merge_pending(13)")
    assert index_counts(sconn, name) == (12, 0, 0)  # fewer than min_rows: left for later
    sconn.execute("select ml._bm25_merge_pending(12)")
    delta, dead, merged = index_counts(sconn, name)
    assert delta == 0 and dead == 0 and merged > 0
    sconn.execute(f"delete from collections.{name} where id = 'd0'")
    assert index_counts(sconn, name)[:2] == (0, 1)
    sconn.execute("select ml._bm25_merge_pending(1000000)")
    assert index_counts(sconn, name)[:2] == (0, 0)
    assert [r[0] for r in sconn.execute("select id from ml.keyword_search(%s, 'delta', 10)", [name])] == []
    assert [r[0] for r in sconn.execute("select id from ml.keyword_search(%s, 'zeta', 10)", [name])] == ["d2"]


def test_documents_tied_in_score_come_by_id_and_a_filter_continues_past_them(sconn):
    """A word that 400 short documents of one length share gives them one score: the top k are the k smallest ids
    among them, after the documents that score higher; a filter that passes few of them still finds its k (later
    rounds continue in the same order); a deleted document leaves its place to the next."""
    docs = [
        {"id": f"d{i:03d}", "content": "alpha beta", "metadata": {"bucket": i % 7}, "embedding": [1, 0]}
        for i in range(400)
    ]
    docs += [{"id": f"top{i}", "content": "alpha alpha alpha beta", "embedding": [1, 0]} for i in range(3)]
    name = keyword_collection(sconn, "tie", docs)
    for merged in (False, True):
        got = sconn.execute("select id, score from ml.keyword_search(%s, 'alpha', 10)", [name]).fetchall()
        assert [g[0] for g in got] == ["top0", "top1", "top2"] + [f"d{i:03d}" for i in range(7)]
        assert got[0][1] == got[2][1] > got[3][1] == got[9][1]
        ids = [
            r[0]
            for r in sconn.execute(
                "select id from ml.keyword_search(%s, 'alpha', 10, %s)", [name, Jsonb({"bucket": 5})]
            )
        ]
        assert ids == [f"d{i:03d}" for i in range(400) if i % 7 == 5][:10]
        sconn.execute(f"delete from collections.{name} where id in ('top1', 'd000', 'd001')")
        ids = [r[0] for r in sconn.execute("select id from ml.keyword_search(%s, 'alpha', 5)", [name])]
        assert ids == ["top0", "top2", "d002", "d003", "d004"]
        sconn.execute(
            f"insert into collections.{name} (id, content, embedding) values ('top1', 'alpha alpha alpha beta', '[1,0]'), "
            "('d000', 'alpha beta', '[1,0]'), ('d001', 'alpha beta', '[1,0]')"
        )
        if not merged:
            sconn.execute("select ml._bm25_merge_pending()")


def test_a_database_not_yet_upgraded_still_gets_the_index_answer_as_rows(sconn, scifact_bm25):
    """The runtime's Python is shared by every database of the cluster, and `indb install` upgrades one database at
    a time: the SQL of a database still before migration 0027 calls bm25.topk and reads rows (document number,
    score). They must be ml._bm25_top's arrays, row by row."""
    name, _ = scifact_bm25
    sconn.execute(
        "create or replace function pg_temp.topk_rows(cid bigint, terms text[], idfs float8[], avgdl float8, "
        "k1 float8, b float8, n int) returns table(doc bigint, score float8) language plpython3u as $$\n"
        "import sys\n"
        "if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')\n"
        "from indb_runtime import bm25\n"
        "return bm25.topk(plpy, cid, terms, idfs, avgdl, k1, b, n)\n$$"
    )
    args = (
        "select c.id, t.terms, t.idfs, t.tl::float8 / t.nd from ml.collections c, "
        "lateral ml._bm25_terms(c, 'cancer cells in mice') t where c.name = %s"
    )
    cid, terms, idfs, avgdl = sconn.execute(args, [name]).fetchone()
    rows = sconn.execute(
        "select doc, score from pg_temp.topk_rows(%s, %s, %s, %s, 1.2, 0.75, 10)", [cid, terms, idfs, avgdl]
    ).fetchall()
    docs, scores = sconn.execute(
        "select docs, scores from ml._bm25_top(%s, %s, %s, %s, 1.2, 0.75, 10)", [cid, terms, idfs, avgdl]
    ).fetchone()
    assert len(rows) >= 10 and [r[0] for r in rows] == docs and [r[1] for r in rows] == scores
