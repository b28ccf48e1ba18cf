"""BM25 keyword search equals a hand computation (and stays right as rows change); hybrid search fuses
vector and keyword ranks by RRF or by min-max normalized weights and returns the expected documents."""

from __future__ import annotations

import math
import secrets

import psycopg
import pytest
from psycopg.types.json import Jsonb

ZOO = {"d1": "zebra zebra lion", "d2": "lion tiger", "d3": "tiger tiger tiger zebra hawk", "d4": "hawk falcon"}


def bm25(docs: dict[str, str], query: list[str], k1=1.2, b=0.75) -> dict[str, float]:
    toks = {i: t.split() for i, t in docs.items()}
    n = len(toks)
    avgdl = sum(len(t) for t in toks.values()) / n
    out = {}
    for i, t in toks.items():
        s = 0.0
        for q in set(query):
            df = sum(1 for u in toks.values() if q in u)
            tf = t.count(q)
            if tf:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                s += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(t) / avgdl))
        if s:
            out[i] = s
    return out


@pytest.fixture()
def zoo(sconn):
    name = f"zoo_{secrets.token_hex(3)}"
    sconn.execute("select ml.create_collection(%s, model => null, options => '{\"dimensions\": 2}')", [name])
    sconn.execute(
        "select ml.add_documents(%s, %s)",
        [name, Jsonb([{"id": i, "content": t, "embedding": [1, 0]} for i, t in ZOO.items()])],
    )
    # each word is its own lexeme under the english configuration (so the hand computation counts the same tokens)
    for w in ["zebra", "lion", "tiger", "hawk", "falcon"]:
        assert sconn.execute("select tsvector_to_array(to_tsvector('english', %s))", [w]).fetchone()[0] == [w]
    return name


def scores(sconn, name, q, **opts):
    return dict(
        sconn.execute(
            "select id, score from ml.keyword_search(%s, %s, 10, null, %s)", [name, q, Jsonb(opts)]
        ).fetchall()
    )


def test_bm25_scores_equal_a_hand_computation(sconn, zoo):
    got = scores(sconn, zoo, "zebra tiger")
    want = bm25(ZOO, ["zebra", "tiger"])
    assert got.keys() == want.keys() == {"d1", "d2", "d3"}
    for i in want:
        assert got[i] == pytest.approx(want[i], rel=1e-12)
    # ranking, and k1/b options
    assert [r[0] for r in sconn.execute("select id from ml.keyword_search(%s, 'zebra tiger', 2)", [zoo])] == sorted(
        want, key=lambda i: -want[i]
    )[:2]
    got = scores(sconn, zoo, "tigers hawks", k1=2.0, b=0.3)
    want = bm25(ZOO, ["tiger", "hawk"], k1=2.0, b=0.3)
    assert got == pytest.approx(want, rel=1e-12)


def test_bm25_statistics_follow_inserts_updates_and_deletes(sconn, zoo):
    t = f"collections.{zoo}"
    docs = dict(ZOO)
    sconn.execute(f"delete from {t} where id = 'd4'")
    del docs["d4"]
    sconn.execute(f"update {t} set content = 'lion lion lion lion' where id = 'd2'")
    docs["d2"] = "lion lion lion lion"
    sconn.execute(
        f"insert into {t} (id, content, embedding) values ('d5', 'zebra falcon', '[0,1]'), ('d6', 'hawk', '[0,1]')"
    )
    docs.update({"d5": "zebra falcon", "d6": "hawk"})
    for q in ["zebra lion", "hawk falcon tiger"]:
        assert scores(sconn, zoo, q) == pytest.approx(bm25(docs, q.split()), rel=1e-12)
    sconn.execute(f"truncate {t}")
    assert scores(sconn, zoo, "zebra") == {}
    st = sconn.execute(
        "select n_docs, total_len from ml.collection_stats s join ml.collections c on c.id = s.collection_id "
        "where c.name = %s",
        [zoo],
    ).fetchone()
    assert st == (0, 0)


def test_keyword_search_filters_and_bad_input(sconn, zoo):
    sconn.execute(f"update collections.{zoo} set metadata = jsonb_build_object('odd', right(id, 1)::int % 2 = 1)")
    assert set(scores(sconn, zoo, "zebra tiger")) == {"d1", "d2", "d3"}
    got = [
        r[0] for r in sconn.execute("select id from ml.keyword_search(%s, 'zebra tiger', 10, '{\"odd\": true}')", [zoo])
    ]
    assert sorted(got) == ["d1", "d3"]
    assert scores(sconn, zoo, "the and of") == {}  # only stop words: nothing matches
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="empty query"):
        sconn.execute("select * from ml.keyword_search(%s, '  ')", [zoo])
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="option b must be between 0 and 1"):
        sconn.execute("select * from ml.keyword_search(%s, 'zebra', 5, null, '{\"b\": 2}')", [zoo])
    # BM25 parameters are JSON numbers: "NaN" (and "Infinity") would make every score NaN
    for opts in ['{"k1": "NaN"}', '{"b": "NaN"}', '{"k1": "Infinity"}', '{"k1": -1}']:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="option (k1|b) must be"):
            sconn.execute("select * from ml.keyword_search(%s, 'zebra', 5, null, %s)", [zoo, opts])
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="option (k1|b) must be"):
            sconn.execute("select * from ml.hybrid_search(%s, 'zebra', 5, options => %s)", [zoo, opts])


PETS = {
    "cat": "The cat sat on the warm mat.",
    "kitten": "A young feline naps in the sunshine.",
    "doormat": "Doormat sale: buy one mat, get one free.",
    "dog": "The dog barked at the mailman.",
    "stars": "Galaxies contain billions of stars.",
}


@pytest.fixture(scope="module")
def pets(sconn):
    name = f"pets_{secrets.token_hex(3)}"
    sconn.execute("select ml.create_collection(%s)", [name])
    sconn.execute(
        "select ml.add_documents(%s, %s)",
        [
            name,
            Jsonb(
                [
                    {"id": i, "content": t, "metadata": {"animal": i in ("cat", "kitten", "dog")}}
                    for i, t in PETS.items()
                ]
            ),
        ],
    )
    return name


def test_hybrid_returns_the_expected_documents_and_rrf_scores(sconn, pets):
    rows = sconn.execute(
        "select id, score, vector_rank, keyword_rank from ml.hybrid_search(%s, 'cat on a mat', 5)", [pets]
    ).fetchall()
    ids = [r[0] for r in rows]
    assert ids[0] == "cat"  # first in both lists
    assert set(ids[:3]) == {"cat", "kitten", "doormat"}  # the best of each side follow
    vec = [r[0] for r in sconn.execute("select id from ml.search(%s, 'cat on a mat', 100)", [pets])]
    kw = [r[0] for r in sconn.execute("select id from ml.keyword_search(%s, 'cat on a mat', 100)", [pets])]
    for i, score, vr, kr in rows:
        assert vr == (vec.index(i) + 1 if i in vec else None) and kr == (kw.index(i) + 1 if i in kw else None)
        assert score == pytest.approx((1 / (60 + vr) if vr else 0) + (1 / (60 + kr) if kr else 0), rel=1e-12)
    # weights: keyword only reproduces the keyword order first
    rows = sconn.execute(
        "select id from ml.hybrid_search(%s, 'cat on a mat', 2, vector_weight => 0)", [pets]
    ).fetchall()
    assert [r[0] for r in rows] == kw[:2]


def test_weighted_fusion_and_filters(sconn, pets):
    rows = sconn.execute(
        "select id, score, vector_rank, keyword_rank from ml.hybrid_search(%s, 'cat on a mat', 5, "
        "method => 'weighted')",
        [pets],
    ).fetchall()
    assert rows[0][0] == "cat" and rows[0][1] == pytest.approx(2.0)  # top of both lists: 1 + 1
    assert all(0 <= r[1] <= 2 for r in rows)
    rows = sconn.execute(
        "select id from ml.hybrid_search(%s, 'cat on a mat', 5, '{\"animal\": true}')", [pets]
    ).fetchall()
    assert {r[0] for r in rows} <= {"cat", "kitten", "dog"} and rows[0][0] == "cat"


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"method": "borda"}, "unknown fusion method"),
        ({"k": 0}, "k must be between 1 and 10000"),
        ({"candidates": 0}, "candidates must be between 1 and 10000"),
        ({"rrf_k": -1}, "rrf_k must be >= 0"),
        ({"vector_weight": -1.0}, "weights must be >= 0"),
        ({"query": ""}, "empty query"),
    ],
)
def test_hybrid_bad_input(sconn, pets, kw, words):
    args = {"query": "cat", **kw}
    named = ", ".join(f"{k} => %({k})s" for k in args)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=words):
        sconn.execute(f"select * from ml.hybrid_search(%(c)s, {named})", {"c": pets, **args})


def test_bm25_top_k_is_exact_on_a_skewed_corpus(sconn):
    """Common and rare terms mixed (Zipf): the MaxScore shortcut must give exactly the full BM25 top k."""
    import numpy as np

    rng = np.random.default_rng(3)
    docs = {
        f"z{i}": " ".join(f"w{int(x) % 300}" for x in rng.zipf(1.2, size=int(rng.integers(3, 30)))) for i in range(400)
    }
    name = f"zipf_{secrets.token_hex(3)}"
    sconn.execute("select ml.create_collection(%s, model => null, options => '{\"dimensions\": 1}')", [name])
    sconn.execute(
        "select ml.add_documents(%s, %s)",
        [name, Jsonb([{"id": i, "content": t, "embedding": [1]} for i, t in docs.items()])],
    )
    for q, k in [("w1 w2 w57", 10), ("w0 w1 w2 w3 w250", 5), ("w1 w4", 50), ("w9 w1 w133", 1)]:
        want = bm25(docs, q.split())
        top = sorted(want, key=lambda i: (-want[i], i))[:k]
        got = sconn.execute("select id, score from ml.keyword_search(%s, %s, %s)", [name, q, k]).fetchall()
        assert [g[1] for g in got] == pytest.approx([want[i] for i in top], rel=1e-9)
        assert {g[0] for g in got} == set(top) or len({round(want[i], 9) for i in top}) < k  # ties may swap ids


def test_hybrid_search_explain_shows_each_step_and_the_index_paths(sconn, pets):
    rows = sconn.execute(
        "select step, strategy, reason, ms, detail, plan from ml.explain_hybrid_search(%s, 'cat on a mat', 3)", [pets]
    ).fetchall()
    by = {r[0]: r for r in rows}
    assert [r[0] for r in rows] == ["embed", "vector", "keyword", "fusion"]
    assert all(r[3] >= 0 for r in rows)
    assert by["vector"][1] in ("exact", "ann", "ann_iterative") and by["vector"][5]
    kw = by["keyword"]
    assert kw[1] == "bm25_index" and set(kw[4]["terms"]) == {"cat", "mat"}
    assert kw[4]["merged_postings"] + kw[4]["delta_postings"] == 3  # cat: 1 document, mat: 2
    assert "bm25_postings_pkey" in kw[5] and "bm25_delta_term" in kw[5]  # the index paths, not a table scan
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="empty query"):
        sconn.execute("select * from ml.explain_hybrid_search(%s, ' ')", [pets])
