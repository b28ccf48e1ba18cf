"""ml.search: exact top-k under filters (whatever the strategy), the ANN index in EXPLAIN, bad input."""

from __future__ import annotations

import datetime as dt
import re
import secrets
import threading

import numpy as np
import psycopg
import pytest
from helpers import explain_everything, static_branch, static_source
from psycopg.types.json import Jsonb

DIM = 8
N = 2000


@pytest.fixture(scope="module")
def corpus(sconn):
    """2,000 clustered unit vectors with metadata; a collection holding them (bring-your-own embeddings)."""
    rng = np.random.default_rng(42)
    centers = rng.normal(size=(20, DIM))
    X = centers[rng.integers(0, 20, N)] + 0.3 * rng.normal(size=(N, DIM))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    base = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    docs = []
    for i in range(N):
        docs.append(
            {
                "id": f"d{i:04d}",
                "content": f"document number {i}",
                "embedding": X[i].round(6).tolist(),
                "tenant": ["acme", "globex"][i % 2],
                "created_at": (base + dt.timedelta(hours=i)).isoformat(),
                "metadata": {
                    "color": ["red", "green", "blue", "gold"][i % 4],
                    "year": 2000 + i % 25,
                    "rare": i % 100 == 7,
                    "published": (base + dt.timedelta(days=i % 365)).date().isoformat(),
                    "tags": ["a", "b"] if i % 3 == 0 else ["c"],
                },
            }
        )
    name = f"s_{secrets.token_hex(3)}"
    sconn.execute("select ml.create_collection(%s, model => null, options => %s)", [name, Jsonb({"dimensions": DIM})])
    sconn.execute("select ml.add_documents(%s, %s)", [name, Jsonb(docs)])
    sconn.execute(f"analyze collections.{name}")
    ids = np.array([d["id"] for d in docs])
    return name, X.astype(np.float32).round(6), ids, docs


def brute(X, ids, docs, q, k, pred):
    mask = np.array([pred(d) for d in docs])
    d = 1 - X[mask] @ q
    order = np.argsort(d, kind="stable")[:k]
    return list(ids[mask][order]), int(mask.sum())


FILTERS = [
    ({"color": "red"}, lambda d: d["metadata"]["color"] == "red"),
    ({"rare": True}, lambda d: d["metadata"]["rare"] is True),  # 1% selective
    (
        {"color": {"$in": ["gold", "green"]}, "year": {"$gte": 2010, "$lt": 2015}},
        lambda d: d["metadata"]["color"] in ("gold", "green") and 2010 <= d["metadata"]["year"] < 2015,
    ),
    (
        {"$or": [{"year": 2003}, {"tags": ["a"]}]},
        lambda d: d["metadata"]["year"] == 2003 or "a" in d["metadata"]["tags"],
    ),
    (
        {"tenant": "globex", "color": {"$ne": "blue"}},
        lambda d: d["tenant"] == "globex" and d["metadata"]["color"] != "blue",
    ),
    (
        {"created_at": {"$gte": "2024-02-01T00:00:00Z"}, "$not": {"color": "red"}},
        lambda d: d["created_at"] >= "2024-02-01T00:00:00+00:00" and d["metadata"]["color"] != "red",
    ),
    ({"published": {"$lt": "2024-01-10"}}, lambda d: d["metadata"]["published"] < "2024-01-10"),
    ({"missing_key": {"$exists": False}, "year": {"$lte": 2000}}, lambda d: d["metadata"]["year"] <= 2000),
]


@pytest.mark.parametrize("i", range(len(FILTERS)))
@pytest.mark.parametrize("strategy_opts", [{}, {"exact_threshold": 0}], ids=["auto", "force_index"])
def test_filtered_search_returns_exactly_the_matching_top_k(sconn, corpus, i, strategy_opts):
    name, X, ids, docs = corpus
    flt, pred = FILTERS[i]
    rng = np.random.default_rng(i)
    q = X[rng.integers(0, N)] + 0.05 * rng.normal(size=DIM)
    q = (q / np.linalg.norm(q)).astype(np.float32)
    k = 10
    expect, matches = brute(X, ids, docs, q, k, pred)
    rows = sconn.execute(
        "select id, score from ml.search(%s, %s::vector, %s, %s, %s)",
        [name, str(q.tolist()), k, Jsonb(flt), Jsonb({**strategy_opts, "ef_search": 100})],
    ).fetchall()
    got = [r[0] for r in rows]
    assert len(got) == min(k, matches)
    # ANN may swap near-ties; the set must match (recall 1 at k=10 on this small corpus) and be ordered by score
    assert len(set(got) & set(expect)) >= k - 1, (flt, got, expect)
    assert [r[1] for r in rows] == sorted([r[1] for r in rows], reverse=True)


def test_selective_filter_is_answered_exactly_and_explained(sconn, corpus):
    name, X, ids, docs = corpus
    q = X[5]
    row = sconn.execute(
        "select strategy, reason, filter_matches, settings, plan from ml.search_explain(%s, %s::vector, 10, "
        "'{\"rare\": true}')",
        [name, str(q.tolist())],
    ).fetchone()
    assert row[0] == "exact" and row[2] == 20 and "exact_threshold" in row[1]
    assert "actual rows=10" in row[4]
    row = sconn.execute(
        'select strategy, settings, plan from ml.search_explain(%s, %s::vector, 10, \'{"color": "red"}\', '
        '\'{"exact_threshold": 100, "ef_search": 40}\')',
        [name, str(q.tolist())],
    ).fetchone()
    assert row[0] == "ann_iterative" and row[1]["hnsw.iterative_scan"] == "strict_order"
    assert f"Index Scan using {name}_ann" in row[2]


def test_unfiltered_search_uses_the_hnsw_index(sconn, corpus):
    name, X, ids, docs = corpus
    row = sconn.execute(
        "select strategy, plan from ml.search_explain(%s, %s::vector, 5)", [name, str(X[0].tolist())]
    ).fetchone()
    assert row[0] == "ann" and f"Index Scan using {name}_ann" in row[1]
    # the plan shows the query as $1, not as its literal of DIM floats
    assert "$1" in row[1] and str(round(float(X[0][0]), 3))[:5] not in row[1] and "'[" not in row[1]
    got = [r[0] for r in sconn.execute("select id from ml.search(%s, %s::vector, 5)", [name, str(X[0].tolist())])]
    assert got[0] == "d0000"
    # the same query written by hand against pgvector gives the same answer
    hand = [
        r[0]
        for r in sconn.execute(
            f"select id from collections.{name} order by embedding <=> %s::vector limit 5", [str(X[0].tolist())]
        )
    ]
    assert got == hand


def test_explain_is_its_own_function_not_a_fake_result_row(sconn, corpus):
    name, X = corpus[0], corpus[1]
    for fn in (
        "ml.search(%s, %s::vector, 5, null, '{\"explain\": true}')",
        "ml.keyword_search(%s, 'document', 5, null, '{\"explain\": true}')",
    ):
        args = [name, str(X[0].tolist())] if "::vector" in fn else [name]
        with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
            sconn.execute(f"select * from {fn}", args)
        assert "ml.search_explain" in e.value.diag.message_hint


def test_zero_vectors_in_cosine_collections_are_refused(sconn, corpus):
    name = corpus[0]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="query vector is zero"):
        sconn.execute("select * from ml.search(%s, %s::vector, 5)", [name, str([0.0] * DIM)])
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="zero embedding"):
        sconn.execute("select ml.add_documents(%s, %s)", [name, Jsonb([{"id": "z", "embedding": [0] * DIM}])])
    with pytest.raises(psycopg.errors.CheckViolation):  # plain SQL too: a check on the table
        sconn.execute(f"insert into collections.{name} (id, embedding) values ('z', %s)", [str([0.0] * DIM)])
    # other metrics have no such problem
    other = f"l2_{secrets.token_hex(3)}"
    sconn.execute(
        "select ml.create_collection(%s, model => null, metric => 'l2', options => '{\"dimensions\": 2}')", [other]
    )
    sconn.execute("select ml.add_documents(%s, %s)", [other, Jsonb([{"id": "z", "embedding": [0, 0]}])])
    assert sconn.execute("select id from ml.search(%s, '[0,0]'::vector, 1)", [other]).fetchone()[0] == "z"


def test_k_larger_than_ef_search_still_returns_k_rows(sconn, corpus):
    name, X, ids, docs = corpus
    n = sconn.execute(
        "select count(*) from ml.search(%s, %s::vector, 500, null, '{\"ef_search\": 10}')", [name, str(X[1].tolist())]
    ).fetchone()[0]
    assert n == 500


def _prepared(conn, name, k):
    """(generic plans, custom plans) of the session's prepared statement for collection `name` and k, or None."""
    return conn.execute(
        "select generic_plans, custom_plans from pg_prepared_statements where statement like %s",
        [f"%from collections.{name} t %limit {k})%"],
    ).fetchone()


@pytest.mark.parametrize("path", ["static", "prepared"])
def test_the_fast_paths_answer_as_the_full_path_and_the_hand_written_query(sconn, corpus, path):
    """A filter-free ANN search (k <= 100) runs the collection's static query in ml._search_static (planned once
    per session, the vector passed as a value) or, for a collection without one, a prepared statement: either
    way the same rows and scores as the full path (an option that takes it: max_scan_tuples) and as pgvector
    queried by hand."""
    name, X, ids, docs = corpus
    sconn.execute("set hnsw.ef_search = 40")
    if path == "prepared":
        static_branch(sconn, name, False)
    before = sum(_prepared(sconn, name, 10) or (0, 0))  # (the session's earlier tests ran it too)
    try:
        for q in X[:30]:
            v = str(q.tolist())
            fast = sconn.execute(
                "select id, score from ml.search(%s, %s::vector, 10, null, '{\"ef_search\": 40}')", [name, v]
            ).fetchall()
            full = sconn.execute(
                "select id, score from ml.search(%s, %s::vector, 10, null, "
                '\'{"ef_search": 40, "max_scan_tuples": 20000}\')',
                [name, v],
            ).fetchall()
            hand = sconn.execute(
                f"select id, 1 - (embedding <=> %s::vector) from collections.{name} order by embedding <=> %s::vector "
                "limit 10",
                [v, v],
            ).fetchall()
            assert [r[0] for r in fast] == [r[0] for r in full] == [r[0] for r in hand]
            assert np.allclose([r[1] for r in fast], [r[1] for r in hand], atol=1e-6)
        # the full path (max_scan_tuples) runs the prepared statement 30 times; the fast path 30 more without a
        # static query, none with one
        generic, custom = _prepared(sconn, name, 10)
        assert generic >= 1  # planned once, then the cached (generic) plan ran
        assert generic + custom - before == (60 if path == "prepared" else 30)
    finally:
        sconn.execute("reset hnsw.ef_search")
        static_branch(sconn, name, True)


def test_a_static_branch_made_for_another_catalog_row_is_not_used(sconn, corpus):
    """A branch answers only for the catalog row it was made from (id, name, table, metric, storage, dimensions,
    index): one made for other values (simulated: other dimensions, a query that returns a planted row) is passed
    over for the full path, so a stale branch costs speed, never rows."""
    name, X = corpus[0], corpus[1]
    cid, dims = sconn.execute("select id, dimensions from ml.collections where name = %s", [name]).fetchone()
    v = str(X[3].tolist())
    honest = sconn.execute("select id from ml.search(%s, %s::vector, 10)", [name, v]).fetchall()
    src = static_source(sconn)
    branches = src.split("    -- branches begin\n", 1)[1].split("    -- branches end\n", 1)[0]
    planted = (
        f"    -- collection {name} begin\n    when '{name}' then\n"
        f"      if exists (select from ml.collections x where x.id = {cid} and x.dimensions = {dims + 1}) then\n"
        "        return query select 'planted', 1::float8, 'x', '{}'::jsonb;\n        return;\n      end if;\n"
        f"    -- collection {name} end\n"
    )
    sconn.execute(sconn.execute("select ml._search_static_ddl(%s)", [planted + branches]).fetchone()[0])
    try:
        assert sconn.execute("select id from ml.search(%s, %s::vector, 10)", [name, v]).fetchall() == honest
    finally:  # the branches as they were
        sconn.execute(sconn.execute("select ml._search_static_ddl(%s)", [branches]).fetchone()[0])
    assert static_source(sconn) == src


def test_the_fast_path_sets_ef_search_only_for_the_query(sconn, corpus):
    name, X = corpus[0], corpus[1]
    before = sconn.execute("select current_setting('hnsw.ef_search')").fetchone()[0]
    n = sconn.execute(
        "select count(*) from ml.search(%s, %s::vector, 60, null, '{\"ef_search\": 10}')", [name, str(X[2].tolist())]
    ).fetchone()[0]
    assert n == 60  # ef_search raised to k for the query: HNSW returns at most ef_search rows
    assert sconn.execute("select current_setting('hnsw.ef_search')").fetchone()[0] == before
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="ef_search"):
        sconn.execute(
            "select * from ml.search(%s, %s::vector, 5, null, '{\"ef_search\": 0}')", [name, str(X[2].tolist())]
        )


def test_a_collection_dropped_and_made_again_under_its_name_is_searched_afresh(sconn):
    """The session's static query (and prepared statement) names the table: after drop + create (same name,
    same or other dimensions) ml.search answers from the new rows, never from a stale plan; the dropped
    collection's branch is gone from ml._search_static."""
    name = f"re_{secrets.token_hex(3)}"
    for dims, rows in ((2, [("old", [1, 0])]), (2, [("new", [1, 0])]), (3, [("three", [1, 0, 0])])):
        sconn.execute(
            "select ml.create_collection(%s, model => null, options => %s)", [name, Jsonb({"dimensions": dims})]
        )
        sconn.execute("select ml.add_documents(%s, %s)", [name, Jsonb([{"id": i, "embedding": e} for i, e in rows])])
        q = str([1.0] + [0.0] * (dims - 1))
        assert [r[0] for r in sconn.execute("select id from ml.search(%s, %s::vector, 5)", [name, q])] == [rows[0][0]]
        cid = sconn.execute("select id from ml.collections where name = %s", [name]).fetchone()[0]
        assert f"when '{name}' then" in static_source(sconn) and f"x.id = {cid} " in static_source(sconn)
        sconn.execute("select ml.drop_collection(%s)", [name])
        assert f"when '{name}' then" not in static_source(sconn) and f"collections.{name} " not in static_source(sconn)


@pytest.mark.parametrize(
    "args, err, words",
    [
        (("x", 0), psycopg.errors.InvalidParameterValue, "k must be between 1 and 10000, got 0"),
        (("x", -3), psycopg.errors.InvalidParameterValue, "k must be between 1 and 10000"),
        (("x", 10**6), psycopg.errors.InvalidParameterValue, "k must be between 1 and 10000, got 1000000"),
        (("[1,2,3]", 5), psycopg.errors.InvalidParameterValue, "query vector has 3 dimensions; collection"),
    ],
)
def test_bad_k_and_dimension(sconn, corpus, args, err, words):
    name = corpus[0]
    q = args[0] if args[0] != "x" else str(corpus[1][0].tolist())
    with pytest.raises(err, match=words.replace("[", r"\[")):
        sconn.execute("select * from ml.search(%s, %s::vector, %s)", [name, q, args[1]])


def test_bad_filters_point_at_the_key_or_operator(sconn, corpus):
    name, X = corpus[0], corpus[1]
    for flt, words in [
        ({"year": {"$gtx": 1}}, 'at $.year.$gtx: unknown operator "$gtx"'),
        ({"$and": [{"a": 1}, {"b": {"$in": 3}}]}, "at $.$and[1].b.$in: $in takes a non-empty array"),
        ({"published": {"$gt": "last week"}}, "not an ISO-8601 timestamp"),
    ]:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
            sconn.execute("select * from ml.search(%s, %s::vector, 5, %s)", [name, str(X[0].tolist()), Jsonb(flt)])
        assert words in str(e.value)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown option"):
        sconn.execute("select * from ml.search(%s, %s::vector, 5, null, '{\"ef\": 3}')", [name, str(X[0].tolist())])


def test_metacharacters_in_filters_ids_and_queries_are_data_not_sql(sconn):
    name = f"inj_{secrets.token_hex(3)}"
    sconn.execute("select ml.create_collection(%s, model => null, options => '{\"dimensions\": 2}')", [name])
    evil = "x'); drop table ml.collections; --"
    docs = [
        {
            "id": evil,
            "content": evil + " O'Brien \\ $1 %s",
            "metadata": {evil: evil, 'k"ey': "v'al"},
            "embedding": [1, 0],
        },
        {"id": "plain", "content": "nothing to see", "metadata": {"a": 1}, "embedding": [0, 1]},
    ]
    sconn.execute("select ml.add_documents(%s, %s)", [name, Jsonb(docs)])
    got = sconn.execute(
        "select id, content from ml.search(%s, '[1,0]'::vector, 5, %s)", [name, Jsonb({evil: evil})]
    ).fetchall()
    assert got == [(evil, evil + " O'Brien \\ $1 %s")]
    got = sconn.execute(
        "select id from ml.search(%s, '[1,0]'::vector, 5, %s)", [name, Jsonb({'k"ey': {"$in": ["v'al"]}})]
    ).fetchall()
    assert got == [(evil,)]
    got = sconn.execute("select id from ml.keyword_search(%s, %s, 5)", [name, "O'Brien ') | drop & !"]).fetchall()
    assert got == [(evil,)]
    assert sconn.execute("select count(*) from ml.collections where name = %s", [name]).fetchone()[0] == 1


def test_text_queries_use_the_collection_model(sconn):
    name = f"txt_{secrets.token_hex(3)}"
    sconn.execute("select ml.create_collection(%s)", [name])
    docs = [
        {"id": "bio", "content": "Mitochondria produce ATP through oxidative phosphorylation."},
        {"id": "astro", "content": "Neutron stars form after supernova explosions."},
        {"id": "cook", "content": "Knead the dough and let the bread rise for an hour."},
    ]
    sconn.execute("select ml.add_documents(%s, %s)", [name, Jsonb(docs)])
    assert sconn.execute("select id from ml.search(%s, 'how do cells make energy', 1)", [name]).fetchone()[0] == "bio"
    assert sconn.execute("select id from ml.search(%s, 'baking a loaf', 1)", [name]).fetchone()[0] == "cook"
    for q in ["", "   ", None]:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="empty query"):
            sconn.execute("select * from ml.search(%s, %s::text, 3)", [name, q])


def test_exact_filtered_search_in_a_partitioned_collection_returns_only_matching_rows(sconn):
    """The exact answer of a filtered search over a collection partitioned by tenant holds the filter's rows
    only, as the brute force says (row locations repeat across partitions: nothing may rely on them alone)."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(300, DIM))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    docs = [
        {
            "id": f"p{i:03d}",
            "content": f"doc {i}",
            "embedding": X[i].round(6).tolist(),
            "tenant": ["acme", "globex", "initech"][i % 3],
            "metadata": {"shelf": i % 5},
        }
        for i in range(300)
    ]
    name = f"sp_{secrets.token_hex(3)}"
    sconn.execute(
        "select ml.create_collection(%s, model => null, partition_by => 'tenant', options => %s)",
        [name, Jsonb({"dimensions": DIM})],
    )
    sconn.execute("select ml.add_documents(%s, %s)", [name, Jsonb(docs)])
    ids = np.array([d["id"] for d in docs])
    Xs = X.round(6)
    for shelf in range(5):
        q = Xs[shelf * 7]
        pred = lambda d, s=shelf: d["tenant"] == "globex" and d["metadata"]["shelf"] == s  # noqa: E731
        expect, matches = brute(Xs, ids, docs, q, 10, pred)
        got = sconn.execute(
            "select id from ml.search(%s, %s::vector, 10, %s)",
            [name, str(q.tolist()), Jsonb({"tenant": "globex", "shelf": shelf})],
        ).fetchall()
        assert [r[0] for r in got] == expect and matches == 20
        plan = sconn.execute(
            "select strategy, plan from ml.search_explain(%s, %s::vector, 10, %s)",
            [name, str(q.tolist()), Jsonb({"tenant": "globex", "shelf": shelf})],
        ).fetchone()
        assert plan[0] == "exact"


def stale_statistics(sconn, seed: int, grp_at_analyze: str, grp_now):
    """3,000 unit vectors in a collection (autovacuum off) analyzed while every row's metadata grp was
    grp_at_analyze, then updated to grp_now(i) without a new ANALYZE: the planner's estimates are wrong.
    Returns the collection's name, the vectors, the ids and the documents as they are now."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(3000, DIM))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Xs = X.round(6)
    docs = [
        {"id": f"g{i:04d}", "content": f"doc {i}", "embedding": Xs[i].tolist(), "metadata": {"grp": grp_at_analyze}}
        for i in range(3000)
    ]
    name = f"sg_{secrets.token_hex(3)}"
    sconn.execute("select ml.create_collection(%s, model => null, options => %s)", [name, Jsonb({"dimensions": DIM})])
    sconn.execute(f"alter table collections.{name} set (autovacuum_enabled = false)")
    sconn.execute("select ml.add_documents(%s, %s)", [name, Jsonb(docs)])
    sconn.execute(f"analyze collections.{name}")
    for i, d in enumerate(docs):
        d["metadata"] = {"grp": grp_now(i)}
    sconn.execute(
        f"update collections.{name} t set metadata = jsonb_build_object('grp', u.g) "
        "from unnest(%s::text[], %s::text[]) u(id, g) where t.id = u.id",
        [[d["id"] for d in docs], [d["metadata"]["grp"] for d in docs]],
    )
    return name, Xs, np.array([d["id"] for d in docs]), docs


def test_a_filter_the_planner_misjudges_still_returns_exactly_the_matching_rows(sconn):
    """A filter the planner expects to match far more than exact_threshold rows goes to the iterative index scan
    without counting; when the estimate is wrong (statistics from before an update) and the scan finds fewer than
    k rows, the exact fallback still answers with every matching row, in order."""
    # the statistics say every row is in group a; now every 100th is
    name, Xs, ids, docs = stale_statistics(sconn, 11, "a", lambda i: "a" if i % 100 == 0 else "b")
    q = Xs[1]
    opts = Jsonb({"exact_threshold": 100, "max_scan_tuples": 50})
    ex = sconn.execute(
        "select strategy, reason from ml.search_explain(%s, %s::vector, 10, %s, %s)",
        [name, str(q.tolist()), Jsonb({"grp": "a"}), opts],
    ).fetchone()
    assert ex[0] == "ann_iterative" and "planner estimates" in ex[1]
    expect, matches = brute(Xs, ids, docs, q, 10, lambda d: d["metadata"]["grp"] == "a")
    got = sconn.execute(
        "select id from ml.search(%s, %s::vector, 10, %s, %s)", [name, str(q.tolist()), Jsonb({"grp": "a"}), opts]
    ).fetchall()
    assert matches == 30 and [r[0] for r in got] == expect


def test_only_an_equality_filter_skips_the_count_on_the_planners_estimate(sconn, corpus):
    """A broad equality filter goes to the index on the planner's estimate, without counting; a range (which the
    planner can only guess at for a metadata key) is counted, and a selective one is answered exactly."""
    name, X, ids, docs = corpus
    q = str(X[3].tolist())
    opts = Jsonb({"exact_threshold": 100})
    broad = sconn.execute(
        "select strategy, reason, filter_matches from ml.search_explain(%s, %s::vector, 10, %s, %s)",
        [name, q, Jsonb({"color": "red"}), opts],
    ).fetchone()
    assert broad[0] == "ann_iterative" and "planner estimates" in broad[1] and broad[2] is None
    rng = sconn.execute(
        "select strategy, reason, filter_matches from ml.search_explain(%s, %s::vector, 10, %s, %s)",
        [name, q, Jsonb({"year": {"$gte": 2024}}), opts],
    ).fetchone()
    assert rng[0] == "exact" and rng[2] == 80, rng
    expect, _ = brute(X, ids, docs, X[3], 10, lambda d: d["metadata"]["year"] >= 2024)
    got = sconn.execute(
        "select id from ml.search(%s, %s::vector, 10, %s, %s)", [name, q, Jsonb({"year": {"$gte": 2024}}), opts]
    ).fetchall()
    assert [r[0] for r in got] == expect


def test_a_filter_the_planner_thinks_rare_but_is_common_is_answered_by_the_index(sconn):
    """The other wrong estimate: statistics from before an update say few rows match, so the bounded exact scan
    runs; it finds more than exact_threshold rows and stops there, and the index scan answers (the top k of the
    matching rows, in order) instead of an exact scan of every matching row."""
    # the statistics say no row is in group a; now 9 in 10 are
    name, Xs, ids, docs = stale_statistics(sconn, 12, "b", lambda i: "b" if i % 10 == 0 else "a")
    q = Xs[2]
    opts = Jsonb({"exact_threshold": 100, "ef_search": 200})
    ex = sconn.execute(
        "select strategy, reason, filter_matches from ml.search_explain(%s, %s::vector, 10, %s, %s)",
        [name, str(q.tolist()), Jsonb({"grp": "a"}), opts],
    ).fetchone()
    assert ex[0] == "ann_iterative" and "planner estimates" in ex[1] and ex[2] == 101, ex
    expect, matches = brute(Xs, ids, docs, q, 10, lambda d: d["metadata"]["grp"] == "a")
    rows = sconn.execute(
        "select id, score from ml.search(%s, %s::vector, 10, %s, %s)",
        [name, str(q.tolist()), Jsonb({"grp": "a"}), opts],
    ).fetchall()
    got = [r[0] for r in rows]
    assert matches == 2700 and len(got) == 10 and len(set(got) & set(expect)) >= 9, (got, expect)
    assert all(docs[int(i[1:])]["metadata"]["grp"] == "a" for i in got)
    assert [r[1] for r in rows] == sorted([r[1] for r in rows], reverse=True)


def test_collections_made_at_once_both_get_their_static_query(db_dsn, sconn):
    """Two transactions making collections at once: the second waits for the first to commit before it changes
    ml._search_static (otherwise one of them fails, "tuple concurrently updated", or drops the other's branch)."""
    a_name, b_name = f"ca_{secrets.token_hex(3)}", f"cb_{secrets.token_hex(3)}"
    a = psycopg.connect(db_dsn)
    b = psycopg.connect(db_dsn, autocommit=True)
    errors: list[BaseException] = []

    def make_b() -> None:
        try:
            b.execute("select ml.create_collection(%s, model => null, options => '{\"dimensions\": 2}')", [b_name])
        except BaseException as e:  # reported below
            errors.append(e)

    try:
        a.execute("select ml.create_collection(%s, model => null, options => '{\"dimensions\": 2}')", [a_name])
        t = threading.Thread(target=make_b)
        t.start()
        t.join(1.0)
        assert t.is_alive()  # waiting for the first transaction
        a.commit()
        t.join(30)
        assert not errors and not t.is_alive()
        src = static_source(sconn)
        for name in (a_name, b_name):
            assert f"when '{name}' then" in src
            sconn.execute("select ml.add_documents(%s, %s)", [name, Jsonb([{"id": name, "embedding": [1, 0]}])])
            assert sconn.execute("select id from ml.search(%s, '[1,0]'::vector, 3)", [name]).fetchall() == [(name,)]
    finally:
        a.close()
        b.close()
        for name in (a_name, b_name):
            sconn.execute("select ml.drop_collection(%s, if_exists => true)", [name])


def test_the_static_query_is_costed_as_the_hand_written_one(db_dsn, corpus):
    """The static query's plan, once generic (from a session's sixth search on: the vector is a parameter), is
    costed for k rows, as the hand-written `limit 10` query is. A generic `limit k` is costed at 10% of the rows:
    at 1,000,000 documents that passed jit_above_cost (~6 ms of compiling per ~2 ms search), and PostgreSQL would
    keep planning such a query at every call. Asserted: the generic plan costs what the hand-written query costs
    (within 2%; a generic `limit k`: 4% more here, at 2,000 documents of 8 dimensions, 5 times more at 20,000), and
    with jit_above_cost 2% above that cost no search plan is compiled."""
    name, X = corpus[0], corpus[1]
    with psycopg.connect(db_dsn, autocommit=True) as c:
        v = str(X[0].tolist())
        plan = c.execute(
            f"explain (format json) select id, 1 - (embedding <=> %s::vector) from collections.{name} "
            "order by embedding <=> %s::vector limit 10",
            [v, v],
        ).fetchone()[0]
        hand = plan[0]["Plan"]["Total Cost"]
        logs = explain_everything(c)
        c.execute("set jit = on")
        c.execute(f"set jit_above_cost = {1.02 * hand}")
        for q in X[:8]:
            rows = c.execute("select id from ml.search(%s, %s::vector, 10)", [name, str(q.tolist())]).fetchall()
            assert len(rows) == 10
        static = [m for m in logs if "plan:" in m and f"from collections.{name} t " in m]
        # (the generic plan casts its parameter: ($2)::public.vector(8), pgvector's type named with its schema)
        generic = [m for m in static if re.search(r"::(\w+\.)?vector\(", m) and "$2" in m]
        assert len(static) == 8 and len(generic) >= 2  # the static query answered; custom plans, then the generic
        costs = [float(re.search(r"Limit  \(cost=[0-9.]+\.\.([0-9.]+) ", m).group(1)) for m in generic]
        assert max(costs) <= 1.02 * hand, (costs, hand)
        assert not [m for m in logs if "JIT:" in m], "a search plan was compiled"


def test_the_static_queries_are_capped_the_oldest_make_room(db_dsn, sconn):
    """ml._search_static is compiled again in every session after each change (~0.16 ms a branch): at most
    indb.search_static_max branches (default 64). Beyond it the oldest branch makes room, and its collection is
    still searched exactly (the prepared path)."""
    names = [f"cap{i}_{secrets.token_hex(3)}" for i in range(3)]
    with psycopg.connect(db_dsn, autocommit=True) as c:
        c.execute("set indb.search_static_max = 2")
        try:
            for name in names:
                c.execute("select ml.create_collection(%s, model => null, options => '{\"dimensions\": 2}')", [name])
                c.execute("select ml.add_documents(%s, %s)", [name, Jsonb([{"id": name, "embedding": [1, 0]}])])
            src = static_source(sconn)
            assert src.count("    -- collection ") == 2 * 2  # two branches, a begin and an end line each
            assert f"when '{names[0]}' then" not in src and all(f"when '{n}' then" in src for n in names[1:])
            for name in names:  # the evicted one too
                assert c.execute("select id from ml.search(%s, '[1,0]'::vector, 3)", [name]).fetchall() == [(name,)]
        finally:
            c.execute("reset indb.search_static_max")
            for name in names:
                c.execute("select ml.drop_collection(%s, if_exists => true)", [name])
            # the other collections' branches back, the newest last (as `indb install` does)
            c.execute(
                "do $$ declare x ml.collections; begin for x in select * from ml.collections order by id loop "
                "perform ml._search_static_set(x, true); end loop; end $$"
            )
