"""Sharded collections: two extra local clusters (indb installed, started here, stopped and deleted at the end)
are the shards of collections made with ml.create_collection(..., shards => ...). Every answer is compared with
a single-node collection of the test database holding the same documents: exact search, BM25 scores (1e-9),
hybrid search, filters and tenants; ANN recall@10 against exact; INSERT/COPY/add_documents routing (embedding
on the shard); the attacks of a tenant and of a writer; a shard that is down (IXS01, or allow_partial with a
WARNING, never silently partial)."""

from __future__ import annotations

import json
import random
import re
import secrets
from pathlib import Path

import psycopg
import pytest
from helpers import act_as, ensure_tenant

DIM = 16
N_DOCS = 2000
_VOCABULARY = (
    "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river mountain forest ocean desert "
    "city village market harbor bridge tower castle garden meadow valley storm rain snow wind sun moon star "
    "planet comet galaxy atom cell gene protein enzyme virus bacteria immune neuron brain heart lung liver "
    "blood bone muscle skin vector search index query shard replica table column row database server "
    "network packet socket thread process memory cache disk file kernel compiler parser token grammar"
)
WORDS = _VOCABULARY.split()
REPO = Path(__file__).resolve().parents[2]


def _doc(i: int, rng: random.Random) -> dict:
    n = rng.randint(4, 30)
    words = [
        WORDS[min(int(rng.paretovariate(1.2)) - 1, len(WORDS) - 1)] if rng.random() < 0.5 else rng.choice(WORDS)
        for _ in range(n)
    ]
    vec = [round(rng.gauss(0, 1), 6) for _ in range(DIM)]
    tenant = (None, "acme", "globex")[i % 3]
    return {
        "id": f"d{i:05d}",
        "content": " ".join(words),
        "metadata": {"grp": i % 5, "n": i},
        "tenant": tenant,
        "embedding": vec,
    }


def _vec(rng: random.Random) -> str:
    return "[" + ",".join(str(round(rng.gauss(0, 1), 6)) for _ in range(DIM)) + "]"


@pytest.fixture(scope="module")
def shard_clusters(cluster):
    """Two extra local clusters with indb installed and a link role each (a member of their indb_admin)."""
    from indb.localdb import SmallCluster

    tok = secrets.token_hex(3)
    made = []
    dsns = {}
    try:
        for n in ("s1", "s2"):
            st = cluster.state / "test-shards" / f"{tok}_{n}"
            c = SmallCluster.at(st)
            made.append(c)
            dsns[n] = c.start_as_shard()
        yield {"clusters": dict(zip(("s1", "s2"), made, strict=True)), "dsns": dsns, "tok": tok}
    finally:
        for c in made:
            c.remove()
            assert not c.state.exists()


@pytest.fixture(scope="module")
def shards(shard_clusters, sconn):
    """The two clusters registered as shards of the test database (names unique per test session)."""
    tok = shard_clusters["tok"]
    names = [f"t{tok}_s1", f"t{tok}_s2"]
    for name, key in zip(names, ("s1", "s2"), strict=True):
        sconn.execute("select * from ml.add_shard(%s, %s)", [name, shard_clusters["dsns"][key]])
    yield names
    for c in sconn.execute("select c.name from ml.collections c where c.shards && %s::text[]", [names]).fetchall():
        sconn.execute("select ml.drop_collection(%s)", [c[0]])
    for name in names:
        sconn.execute("select ml.remove_shard(%s)", [name])


def shard_conn(shard_clusters, key: str) -> psycopg.Connection:
    return psycopg.connect(shard_clusters["clusters"][key].dsn(), autocommit=True)


@pytest.fixture(scope="module")
def corpus(shards, sconn):
    """The same 2,000 documents (3 tenant groups: shared, acme, globex; bring-your-own 16-d vectors) in a
    single-node collection and in a collection sharded over the two shards."""
    ensure_tenant(sconn, "acme")
    ensure_tenant(sconn, "globex")
    rng = random.Random(15)
    docs = [_doc(i, rng) for i in range(N_DOCS)]
    tok = secrets.token_hex(3)
    one, sh = f"one_{tok}", f"sh_{tok}"
    sconn.execute(
        "select ml.create_collection(%s, model => null, options => %s)", [one, json.dumps({"dimensions": DIM})]
    )
    sconn.execute(
        "select ml.create_collection(%s, model => null, options => %s, shards => %s)",
        [sh, json.dumps({"dimensions": DIM}), shards],
    )
    for i in range(0, N_DOCS, 500):
        part = json.dumps(docs[i : i + 500])
        assert sconn.execute("select ml.add_documents(%s, %s)", [one, part]).fetchone()[0] == len(docs[i : i + 500])
        assert sconn.execute("select ml.add_documents(%s, %s)", [sh, part]).fetchone()[0] == len(docs[i : i + 500])
    queries = [_vec(rng) for _ in range(20)]
    texts = [" ".join(rng.sample(WORDS[:40], 2)) for _ in range(10)] + ["river gene", "compiler token grammar"]
    return {"one": one, "sh": sh, "docs": docs, "queries": queries, "texts": texts}


def rows(conn, sql, params=None):
    return conn.execute(sql, params).fetchall()


# ---------------------------------------------------------------------------------------------- shards


def test_add_shard_checks_the_remote_and_is_audited(shard_clusters, shards, sconn):
    listed = {r[0]: r for r in rows(sconn, "select shard, port, remote_user, revision from ml.list_shards()")}
    assert set(shards) <= set(listed)
    here = sconn.execute("select version_num from ml.alembic_version").fetchone()[0]
    assert listed[shards[0]][3] == here
    # audited (the row, never the password)
    ev = rows(
        sconn, "select new_values from audit.events where object = 'ml.shards' and row_key ->> 'name' = %s", [shards[0]]
    )
    assert ev and "password" not in json.dumps(ev[0][0]) and ev[0][0]["remote_user"] == "indb_link"
    # unreachable: IXS01 naming it
    with pytest.raises(psycopg.Error) as e:
        sconn.execute("select ml.add_shard('t_nowhere', 'host=127.0.0.1 port=1 dbname=indb user=x password=y')")
    assert e.value.sqlstate == "IXS01" and '"t_nowhere"' in str(e.value) and "Connection refused" in str(e.value)
    # a database without indb: IXS02
    dsn = shard_clusters["dsns"]["s1"].replace("dbname=indb", "dbname=postgres")
    with pytest.raises(psycopg.Error) as e:
        sconn.execute("select ml.add_shard('t_noindb', %s)", [dsn])
    assert e.value.sqlstate == "IXS02" and "has no indb installed" in str(e.value)
    # a remote role that is not an admin there: 42501 with the GRANT to run
    with shard_conn(shard_clusters, "s1") as c:
        c.execute("drop role if exists t_plain")
        c.execute("create role t_plain login password 'pw-plain-1' in role indb_reader")
    dsn = re.sub(r"user=\S+ password=\S+", "user=t_plain password=pw-plain-1", shard_clusters["dsns"]["s1"])
    with pytest.raises(psycopg.Error) as e:
        sconn.execute("select ml.add_shard('t_plain', %s)", [dsn])
    assert e.value.sqlstate == "42501" and "GRANT indb_admin TO t_plain" in e.value.diag.message_hint
    # nothing is left of the failed attempts
    assert not rows(sconn, "select 1 from pg_foreign_server where srvname in ('t_nowhere', 't_noindb', 't_plain')")
    # bad input
    for bad, state in [
        ("select ml.add_shard('Bad Name', 'host=x dbname=y user=u password=p')", "22023"),
        ("select ml.add_shard('t_x', 'postgresql://u:p@h/db')", "22023"),
        ("select ml.add_shard('t_x', 'host=x dbname=y user=u')", "22023"),
        ("select ml.add_shard('t_x', 'host=x dbname=y user=u password=p sslfoo=1')", "22023"),
        (f"select ml.add_shard('{shards[0]}', 'host=x dbname=y user=u password=p')", "42710"),
    ]:
        with pytest.raises(psycopg.Error) as e:
            sconn.execute(bad)
        assert e.value.sqlstate == state, bad


def test_only_admins_add_or_remove_shards(shards, conn):
    for group in ("indb_writer", "indb_reader"):
        act_as(conn, group)
        for sql in (
            "select ml.add_shard('t_evil', 'host=127.0.0.1 dbname=indb user=x password=y')",
            f"select ml.remove_shard('{shards[0]}')",
        ):
            with pytest.raises(psycopg.Error) as e:
                conn.execute(sql)
            assert e.value.sqlstate == "42501"
    act_as(conn, "indb_reader")
    assert {r[0] for r in rows(conn, "select shard from ml.list_shards()")} >= set(shards)


# ---------------------------------------------------------------------------------------------- equality


def test_documents_are_spread_over_both_shards_by_hash_of_id(corpus, shard_clusters, sconn):
    sh = corpus["sh"]
    per = dict(rows(sconn, f"select tableoid::regclass::text, count(*) from collections.{sh} group by 1"))
    assert sum(per.values()) == N_DOCS and len(per) == 2 and min(per.values()) > N_DOCS * 0.4
    for i, key in enumerate(("s1", "s2")):
        with shard_conn(shard_clusters, key) as c:
            ids = [r[0] for r in rows(c, f"select id from collections.{sh}")]
            assert len(ids) == list(per.values())[i] or len(ids) in per.values()
            # the shard's own HNSW index and BM25 statistics
            assert (
                c.execute(f"select count(*) from pg_indexes where tablename = '{sh}' and indexdef ~ 'hnsw'").fetchone()[
                    0
                ]
                == 1
            )
            assert c.execute(
                "select s.n_docs from ml.collection_stats s join ml.collections c on c.id = s.collection_id "
                "where c.name = %s",
                [sh],
            ).fetchone()[0] == len(ids)
        bad = sconn.execute(
            f"select count(*) from unnest(%s::text[]) x where not satisfies_hash_partition('collections.{sh}'::regclass, 2, %s, x)",
            [ids, i],
        ).fetchone()[0]
        assert bad == 0


def test_exact_search_equals_single_node(corpus, sconn):
    for q in corpus["queries"]:
        for k in (1, 10, 37):
            a = rows(
                sconn,
                "select id, score from ml.search(%s, %s::vector, %s, options => '{\"exact\": true}')",
                [corpus["one"], q, k],
            )
            b = rows(
                sconn,
                "select id, score from ml.search(%s, %s::vector, %s, options => '{\"exact\": true}')",
                [corpus["sh"], q, k],
            )
            assert a == b and len(a) == k


def test_ann_recall_at_10_against_exact(corpus, sconn):
    hits = total = 0
    for q in corpus["queries"]:
        exact = {
            r[0]
            for r in rows(
                sconn,
                "select id from ml.search(%s, %s::vector, 10, options => '{\"exact\": true}')",
                [corpus["one"], q],
            )
        }
        ann = [r[0] for r in rows(sconn, "select id from ml.search(%s, %s::vector, 10)", [corpus["sh"], q])]
        assert len(ann) == 10
        hits += len(exact & set(ann))
        total += 10
    assert hits / total >= 0.95, hits / total


def _shard_ann(shard_conns: list, name: str, q: str, kk: int, ef: int | None) -> list:
    """The top kk of an ANN ml.search run on each shard itself (ef None: the shard's default ef_search, 40),
    merged as the coordinator merges (score desc, id), best 10."""
    got = []
    for c in shard_conns:
        got += rows(
            c,
            "select id, score from ml.search(%s, %s::vector, %s, options => %s)",
            [name, q, kk, json.dumps({} if ef is None else {"ef_search": ef})],
        )
    return sorted(got, key=lambda r: (-r[1], r[0]))[:10]


def test_shards_search_with_a_larger_ef_search_unless_the_caller_names_one(corpus, shard_clusters, sconn):
    """Without an ef_search option the coordinator asks each shard for its top k' = 20 at ef_search 5 x 20 =
    100 (not the shard's own default 40), also when this session's hnsw.ef_search is lower; an explicit
    ef_search option reaches the shards as given. Observed on queries where the shards' answer at their default
    ef_search differs from their answer at 100 (a 16-d random set is hard enough for that)."""
    sh = corpus["sh"]
    rng = random.Random(1515)
    with shard_conn(shard_clusters, "s1") as c1, shard_conn(shard_clusters, "s2") as c2:
        on = [c1, c2]
        hard = []
        # such queries are rare on 1,000 points a shard (how rare depends on the graph each build makes): look
        # through up to 3,000, and stop once 5 are found
        for q in (_vec(rng) for _ in range(3000)):
            at100 = _shard_ann(on, sh, q, 20, 100)
            if _shard_ann(on, sh, q, 20, None) != at100:
                hard.append((q, at100))
                if len(hard) == 5:
                    break
        assert hard, "no query where the shards' default and ef_search 100 differ: the test could not tell them apart"
        with sconn.transaction():
            sconn.execute("set local hnsw.ef_search = 20")
            for q, at100 in hard:
                assert rows(sconn, "select id, score from ml.search(%s, %s::vector, 10)", [sh, q]) == at100
                asked = rows(
                    sconn,
                    "select id, score from ml.search(%s, %s::vector, 10, options => '{\"ef_search\": 40}')",
                    [sh, q],
                )
                assert asked == _shard_ann(on, sh, q, 20, 40) != at100
    # a session's larger hnsw.ef_search wins over 5 x k'; a filter takes at least 100; pgvector's limit is 1000
    with sconn.transaction():
        sconn.execute("set local hnsw.ef_search = 400")
        assert sconn.execute("select ml._shard_ef_search(20, null)").fetchone()[0] == 400
    assert sconn.execute(
        "select ml._shard_ef_search(20, null), ml._shard_ef_search(11, '{\"grp\": 1}'), ml._shard_ef_search(400, null)"
    ).fetchone() == (100, 100, 1000)


def test_keyword_scores_equal_single_node(corpus, sconn):
    nonempty = 0
    for t in corpus["texts"]:
        a = rows(sconn, "select id, score from ml.keyword_search(%s, %s, 20)", [corpus["one"], t])
        b = rows(sconn, "select id, score from ml.keyword_search(%s, %s, 20)", [corpus["sh"], t])
        assert [r[0] for r in a] == [r[0] for r in b], t
        assert all(abs(x[1] - y[1]) <= 1e-9 for x, y in zip(a, b, strict=True)), t
        nonempty += bool(a)
    assert nonempty >= 10
    # other BM25 parameters too
    opts = '{"k1": 2.0, "b": 0.3}'
    a = rows(
        sconn, "select id, score from ml.keyword_search(%s, 'river gene', 15, options => %s)", [corpus["one"], opts]
    )
    b = rows(
        sconn, "select id, score from ml.keyword_search(%s, 'river gene', 15, options => %s)", [corpus["sh"], opts]
    )
    assert (
        a
        and [r[0] for r in a] == [r[0] for r in b]
        and all(abs(x[1] - y[1]) <= 1e-9 for x, y in zip(a, b, strict=True))
    )


def test_hybrid_search_equals_single_node(corpus, sconn, conn):
    # hybrid embeds its text query with the collection's model: a sharded collection with a model, and its
    # single-node twin, with the same texts (embedded on the shards / here)
    tok = secrets.token_hex(3)
    one, sh = f"hy1_{tok}", f"hy2_{tok}"
    shards = [r[0] for r in rows(sconn, "select shards from ml.collections where name = %s", [corpus["sh"]])][0]
    sconn.execute("select ml.create_collection(%s)", [one])
    sconn.execute("select ml.create_collection(%s, shards => %s)", [sh, shards])
    docs = [{"id": d["id"], "content": d["content"], "tenant": d["tenant"]} for d in corpus["docs"][:120]]
    for name in (one, sh):
        assert sconn.execute("select ml.add_documents(%s, %s)", [name, json.dumps(docs)]).fetchone()[0] == 120
    for method in ("rrf", "weighted"):
        for t in ("river gene protein", "compiler token", "storm rain"):
            a = rows(
                sconn,
                "select id, score, vector_rank, keyword_rank from ml.hybrid_search(%s, %s, 10, method => %s, "
                "candidates => 30, options => '{\"exact\": true}')",
                [one, t, method],
            )
            b = rows(
                sconn,
                "select id, score, vector_rank, keyword_rank from ml.hybrid_search(%s, %s, 10, method => %s, "
                "candidates => 30, options => '{\"exact\": true}')",
                [sh, t, method],
            )
            assert [r[0] for r in a] == [r[0] for r in b] and len(a) == 10
            assert [r[2:] for r in a] == [r[2:] for r in b]
            # vectors embedded on each shard vs here: the same model, so the same ranks. The shards here run no
            # runtime service, so their backends embed with PyTorch while this database's service runs ONNX
            # Runtime: the vectors agree to ~2e-7 a component (cosine >= 0.9999998), and the weighted fusion
            # rescales the vector scores by their range over the candidates
            worst = max(abs(x[1] - y[1]) for x, y in zip(a, b, strict=True))
            assert worst <= 1e-5, (method, t, worst)


def test_filters_work_as_on_one_node(corpus, sconn):
    flt = json.dumps({"grp": {"$in": [1, 3]}, "n": {"$gte": 500}})
    for q in corpus["queries"][:5]:
        a = rows(
            sconn,
            "select id, score from ml.search(%s, %s::vector, 10, %s, '{\"exact\": true}')",
            [corpus["one"], q, flt],
        )
        b = rows(
            sconn,
            "select id, score from ml.search(%s, %s::vector, 10, %s, '{\"exact\": true}')",
            [corpus["sh"], q, flt],
        )
        assert a == b and len(a) == 10
        b2 = rows(sconn, "select id, metadata from ml.search(%s, %s::vector, 10, %s)", [corpus["sh"], q, flt])
        assert all(m["grp"] in (1, 3) and m["n"] >= 500 for _, m in b2) and len(b2) == 10
    for t in corpus["texts"][:5]:
        a = rows(sconn, "select id, score from ml.keyword_search(%s, %s, 10, %s)", [corpus["one"], t, flt])
        b = rows(sconn, "select id, score from ml.keyword_search(%s, %s, 10, %s)", [corpus["sh"], t, flt])
        assert [r[0] for r in a] == [r[0] for r in b] and all(
            abs(x[1] - y[1]) <= 1e-9 for x, y in zip(a, b, strict=True)
        )


# ---------------------------------------------------------------------------------------------- tenants, attacks


def test_a_tenant_sees_exactly_what_one_node_shows_it(corpus, conn):
    act_as(conn, "indb_reader", "acme")
    for q in corpus["queries"][:5]:
        a = rows(
            conn,
            "select id, score, metadata from ml.search(%s, %s::vector, 20, options => '{\"exact\": true}')",
            [corpus["one"], q],
        )
        b = rows(
            conn,
            "select id, score, metadata from ml.search(%s, %s::vector, 20, options => '{\"exact\": true}')",
            [corpus["sh"], q],
        )
        assert a == b and len(b) == 20
        ann = rows(conn, "select id from ml.search(%s, %s::vector, 20)", [corpus["sh"], q])
        assert len(ann) == 20
    for t in corpus["texts"][:5]:
        a = rows(conn, "select id, score from ml.keyword_search(%s, %s, 20)", [corpus["one"], t])
        b = rows(conn, "select id, score from ml.keyword_search(%s, %s, 20)", [corpus["sh"], t])
        assert [r[0] for r in a] == [r[0] for r in b] and all(
            abs(x[1] - y[1]) <= 1e-9 for x, y in zip(a, b, strict=True)
        )
    globex = {d["id"] for d in corpus["docs"] if d["tenant"] == "globex"}
    seen = set()
    for q in corpus["queries"]:
        seen |= {r[0] for r in rows(conn, "select id from ml.search(%s, %s::vector, 50)", [corpus["sh"], q])}
        # asking the shards for another tenant's rows does not widen what the caller reads
        seen |= {
            r[0]
            for r in rows(
                conn,
                "select id from ml.search(%s, %s::vector, 50, options => "
                '\'{"tenant_scope": "globex", "exact": true}\')',
                [corpus["sh"], q],
            )
        }
    for t in corpus["texts"]:
        seen |= {r[0] for r in rows(conn, "select id from ml.keyword_search(%s, %s, 50)", [corpus["sh"], t])}
    assert seen and not (seen & globex)
    # plain SELECT on the parent: the tenant policy, as on one node
    got = rows(conn, f"select tenant, count(*) from collections.{corpus['sh']} group by 1 order by 1")
    want = rows(conn, f"select tenant, count(*) from collections.{corpus['one']} group by 1 order by 1")
    assert got == want and {r[0] for r in got} == {"acme", None}


def test_a_tenant_cannot_reach_the_shards_any_other_way(corpus, shards, conn):
    act_as(conn, "indb_writer", "acme")
    sh = corpus["sh"]
    part = conn.execute(
        "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
        "where i.inhparent = %s::regclass order by 1",
        [f"collections.{sh}"],
    ).fetchall()
    assert len(part) == 2
    attacks = [
        f"select count(*) from collections.{part[0][0]}",  # the foreign partition itself
        f"select * from indb_link.dblink('{shards[0]}', 'select 1') as t(x int)",  # dblink with the server's mapping
        f"select indb_link.dblink_connect('x', '{shards[0]}')",
        f"create foreign table public.t_steal (id text, tenant text) server {shards[0]} "
        f"options (schema_name 'collections', table_name '{sh}')",
        f"create user mapping for current_user server {shards[0]} options (user 'indb_link')",
        f"select ml._shard_open('{shards[0]}')",
        f"alter server {shards[0]} options (set host '10.9.9.9')",
    ]
    for sql in attacks:
        with pytest.raises(psycopg.Error) as e:
            conn.execute(sql)
        assert e.value.sqlstate in ("42501", "3F000", "42P01", "42883"), (sql, e.value.sqlstate, str(e.value))
    # the user mapping's password is not readable
    opts = rows(conn, "select umoptions from pg_user_mappings where srvname = %s", [shards[0]])
    assert opts and all(o[0] is None for o in opts)
    with pytest.raises(psycopg.Error) as e:
        conn.execute("select umoptions from pg_user_mapping")
    assert e.value.sqlstate == "42501"
    # no row of globex by any write path either: add_documents / INSERT of a globex row, or over a globex id
    globex_doc = next(d for d in corpus["docs"] if d["tenant"] == "globex")
    for sql, params in [
        (
            "select ml.add_documents(%s, %s)",
            [sh, json.dumps([{"id": "t_x1", "content": "x", "tenant": "globex", "embedding": [1] * DIM}])],
        ),
        (
            "select ml.add_documents(%s, %s)",
            [sh, json.dumps([{"id": globex_doc["id"], "content": "pwned", "embedding": [1] * DIM}])],
        ),
        (
            f"insert into collections.{sh} (id, content, tenant, embedding) values ('t_x2', 'x', 'globex', %s)",
            ["[" + ",".join(["1"] * DIM) + "]"],
        ),
    ]:
        with pytest.raises(psycopg.Error) as e:
            conn.execute(sql, params)
        assert e.value.sqlstate == "42501", (sql, e.value.sqlstate, str(e.value))
    # an UPDATE or DELETE of a row the tenant cannot see touches nothing
    assert (
        conn.execute(f"update collections.{sh} set content = 'pwned' where id = %s", [globex_doc["id"]]).rowcount == 0
    )
    assert conn.execute(f"delete from collections.{sh} where id = %s", [globex_doc["id"]]).rowcount == 0
    conn.execute("reset role")
    got = conn.execute(f"select content, tenant from collections.{sh} where id = %s", [globex_doc["id"]]).fetchone()
    assert got == (globex_doc["content"], "globex")
    assert not rows(conn, f"select 1 from collections.{sh} where id in ('t_x1', 't_x2')")


def test_a_reader_cannot_write_and_a_stranger_cannot_search(corpus, conn):
    act_as(conn, "indb_reader", "acme")
    with pytest.raises(psycopg.Error) as e:
        conn.execute(
            "select ml.add_documents(%s, %s)",
            [corpus["sh"], json.dumps([{"id": "r1", "content": "x", "embedding": [1] * DIM}])],
        )
    assert e.value.sqlstate == "42501"
    with pytest.raises(psycopg.Error) as e:
        conn.execute(f"insert into collections.{corpus['sh']} (id, content) values ('r2', 'x')")
    assert e.value.sqlstate == "42501"
    conn.execute("reset role")
    conn.execute("drop role if exists t_stranger")
    conn.execute("create role t_stranger")
    conn.execute("set role t_stranger")
    with pytest.raises(psycopg.Error) as e:
        conn.execute(
            "select * from ml._shard_search(%s, %s::vector, 5, null, '{}')", [corpus["sh"], corpus["queries"][0]]
        )
    assert e.value.sqlstate == "42501"
    conn.execute("reset role")
    conn.execute("drop role t_stranger")


# ---------------------------------------------------------------------------------------------- writes


def test_insert_copy_and_add_documents_route_rows_and_embed_where_they_land(shards, shard_clusters, sconn, conn):
    tok = secrets.token_hex(3)
    name = f"emb_{tok}"
    sconn.execute("select ml.create_collection(%s, shards => %s)", [name, shards])
    act_as(conn, "indb_writer", "acme")
    texts = {f"i{i}": f"document number {i} about {w}" for i, w in enumerate(WORDS[:20])}
    with conn.transaction():
        for k, v in texts.items():
            conn.execute(f"insert into collections.{name} (id, content) values (%s, %s)", [k, v])
    conn.execute("reset role")
    copied = {f"c{i}": f"copied row {i} on {w}" for i, w in enumerate(WORDS[20:40])}
    with sconn.cursor().copy(f"copy collections.{name} (id, content, tenant) from stdin") as cp:
        for k, v in copied.items():
            cp.write_row((k, v, "acme"))
    added = {f"a{i}": f"added document {i} of {w}" for i, w in enumerate(WORDS[40:60])}
    n = sconn.execute(
        "select ml.add_documents(%s, %s)",
        [name, json.dumps([{"id": k, "content": v, "tenant": "acme"} for k, v in added.items()])],
    ).fetchone()[0]
    assert n == 20
    every = {**texts, **copied, **added}
    on = {}
    for i, key in enumerate(("s1", "s2")):
        with shard_conn(shard_clusters, key) as c:
            got = rows(
                c, f"select id, content, tenant, embedding is not null, vector_dims(embedding) from collections.{name}"
            )
            on[key] = {r[0] for r in got}
            assert all(r[2] == "acme" and r[3] and r[4] == 384 for r in got)
            for r in got:
                assert r[1] == every[r[0]]
            # embedded on the shard by its trigger: the same vector the coordinator's model gives
            one = got[0]
            v_shard = c.execute(f"select embedding::text from collections.{name} where id = %s", [one[0]]).fetchone()[0]
            v_here = sconn.execute("select ml.embed('all-MiniLM-L6-v2', %s)::text", [one[1]]).fetchone()[0]
            a = json.loads(v_shard)
            b = json.loads(v_here)
            assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5
        bad = sconn.execute(
            f"select count(*) from unnest(%s::text[]) x where not satisfies_hash_partition('collections.{name}'::regclass, 2, %s, x)",
            [sorted(on[key]), i],
        ).fetchone()[0]
        assert bad == 0
    assert on["s1"] | on["s2"] == set(every) and not (on["s1"] & on["s2"]) and on["s1"] and on["s2"]
    # searchable right away: the vector leg and BM25 (statistics kept by each shard's trigger)
    act_as(conn, "indb_reader", "acme")
    assert rows(conn, "select id from ml.search(%s, 'copied row on galaxy', 1)", [name])[0][0] in copied
    kw = rows(conn, "select id from ml.keyword_search(%s, 'copied', 30)", [name])
    assert {r[0] for r in kw} == set(copied)
    # add_documents again: an upsert on the shard, not a second row
    conn.execute("reset role")
    sconn.execute(
        "select ml.add_documents(%s, %s)",
        [name, json.dumps([{"id": "a1", "content": "changed text", "tenant": "acme"}])],
    )
    assert sconn.execute(f"select count(*), max(content) from collections.{name} where id = 'a1'").fetchone() == (
        1,
        "changed text",
    )


def test_readme_commands(shard_clusters, sconn):
    """The sharding blocks of README.md "## Scaling out" (skipped by the README runner: they need shards), with
    the two test clusters' DSNs in place of the example ones."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Scaling out") :]
    section = section[: section.index("\n## ", 5)] if "\n## " in section[5:] else section
    blocks = re.findall(
        r"<!-- test: skip -- tests/scale_out/test_shards.py::test_readme_commands -->\n```sql\n(.*?)```", section, re.S
    )
    assert blocks, "README has no sharding blocks"
    dsns = iter([shard_clusters["dsns"]["s1"], shard_clusters["dsns"]["s2"]])
    sql = "\n".join(blocks)
    sql = re.sub(r"'host=[^']*'", lambda m: "'" + next(dsns) + "'", sql)
    out = []
    try:
        for stmt in [s.strip() for s in sql.split(";\n") if s.strip()]:
            cur = sconn.execute(stmt)
            out.append(cur.fetchall() if cur.description else None)
    finally:
        sconn.execute("select ml.drop_collection('papers_sharded', true)")
        for s in ("shard1", "shard2"):
            if sconn.execute("select 1 from ml.shards where name = %s", [s]).fetchone():
                sconn.execute("select ml.remove_shard(%s)", [s])
    selects = [r for r in out if r is not None]
    assert selects[0][0][0] == "shard1" and selects[1][0][0] == "shard2"
    assert selects[2][0] == ("papers_sharded", ["shard1", "shard2"]) and selects[3][0][0] == 3
    assert selects[4] == [("p2",)]
    assert {r[0] for r in selects[5]} == {"p2", "p3"}
    assert selects[6] == [("p1",)]


def test_drop_collection_and_remove_shard(shards, shard_clusters, sconn):
    tok = secrets.token_hex(3)
    name = f"drop_{tok}"
    sconn.execute(
        "select ml.create_collection(%s, model => null, options => '{\"dimensions\": 3}', shards => %s)", [name, shards]
    )
    with pytest.raises(psycopg.Error) as e:
        sconn.execute("select ml.remove_shard(%s)", [shards[0]])
    assert e.value.sqlstate == "2BP01" and name in str(e.value)
    # a name the shard already holds: the error names the shard, nothing is left behind here or on the other
    with shard_conn(shard_clusters, "s1") as c:
        c.execute("select ml.create_collection(%s, model => null, options => '{\"dimensions\": 3}')", [name + "x"])
    with pytest.raises(psycopg.Error) as e:
        sconn.execute(
            "select ml.create_collection(%s, model => null, options => '{\"dimensions\": 3}', shards => %s)",
            [name + "x", [shards[1], shards[0]]],
        )
    assert e.value.sqlstate == "42710" and f'shard "{shards[0]}"' in str(e.value)
    assert not rows(sconn, "select 1 from ml.collections where name = %s", [name + "x"])
    with shard_conn(shard_clusters, "s2") as c:
        assert not rows(c, "select 1 from ml.collections where name = %s", [name + "x"])
    with shard_conn(shard_clusters, "s1") as c:
        c.execute("select ml.drop_collection(%s)", [name + "x"])
    # refused: partition_by, unknown shard; functions of one node's table
    for sql in (
        f"select ml.create_collection('bad_{tok}', model => null, options => '{{\"dimensions\": 3}}', "
        f"partition_by => 'tenant', shards => array['{shards[0]}'])",
        f"select ml.create_collection('bad_{tok}', model => null, options => '{{\"dimensions\": 3}}', "
        "shards => array['no_such_shard'])",
    ):
        with pytest.raises(psycopg.Error) as e:
            sconn.execute(sql)
        assert e.value.sqlstate in ("22023", "42704")
    with pytest.raises(psycopg.Error) as e:
        sconn.execute("select * from ml.reindex_collection(%s)", [name])
    assert e.value.sqlstate == "0A000"
    assert sconn.execute("select ml.drop_collection(%s)", [name]).fetchone()[0] is True
    for key in ("s1", "s2"):
        with shard_conn(shard_clusters, key) as c:
            assert not rows(c, "select 1 from ml.collections where name = %s", [name])


# ---------------------------------------------------------------------------------------------- shard down (last)


def test_a_shard_that_is_down_is_never_silently_left_out(corpus, shards, shard_clusters, sconn, db_dsn):
    q = corpus["queries"][0]
    full = rows(
        sconn, "select id from ml.search(%s, %s::vector, 10, options => '{\"exact\": true}')", [corpus["sh"], q]
    )
    shard_clusters["clusters"]["s2"].stop()
    try:
        with psycopg.connect(db_dsn, autocommit=True) as c:
            notes = []
            c.add_notice_handler(lambda d: notes.append((d.severity_nonlocalized, d.message_primary)))
            for sql, params in [
                ("select * from ml.search(%s, %s::vector, 10)", [corpus["sh"], q]),
                ("select * from ml.keyword_search(%s, 'river gene', 10)", [corpus["sh"]]),
                (
                    "select * from ml.add_documents(%s, %s)",
                    [corpus["sh"], json.dumps([{"id": f"z{i}", "embedding": [1] * DIM} for i in range(20)])],
                ),
            ]:
                with pytest.raises(psycopg.Error) as e:
                    c.execute(sql, params)
                assert e.value.sqlstate == "IXS01", str(e.value)
                assert f'"{shards[1]}"' in str(e.value) and "allow_partial" in (e.value.diag.message_hint or "")
            # nothing of the failed add_documents landed on the shard that is up
            with shard_conn(shard_clusters, "s1") as s1:
                assert (
                    s1.execute(f"select count(*) from collections.{corpus['sh']} where id like 'z%'").fetchone()[0] == 0
                )
            # plain SELECT through the parent fails too, naming the server
            with pytest.raises(psycopg.Error) as e:
                c.execute(f"select count(*) from collections.{corpus['sh']}")
            assert shards[1] in str(e.value)
            # allow_partial: the other shard's rows and a WARNING naming the missing one
            got = rows(
                c,
                'select id from ml.search(%s, %s::vector, 10, options => \'{"exact": true, "allow_partial": true}\')',
                [corpus["sh"], q],
            )
            # exactly the single node's exact answer restricted to the documents of the shard that answered
            top = [
                r[0]
                for r in rows(
                    c,
                    "select id from ml.search(%s, %s::vector, 100, options => '{\"exact\": true}')",
                    [corpus["one"], q],
                )
            ]
            mine = [
                x
                for x in top
                if c.execute(
                    f"select satisfies_hash_partition('collections.{corpus['sh']}'::regclass, 2, 0, %s::text)", [x]
                ).fetchone()[0]
            ]
            assert [r[0] for r in got] == mine[:10]
            warn = [m for sev, m in notes if sev == "WARNING"]
            assert warn and f'shard "{shards[1]}"' in warn[-1] and "allow_partial" in warn[-1]
            kw = rows(
                c,
                "select id from ml.keyword_search(%s, 'river gene', 10, options => '{\"allow_partial\": true}')",
                [corpus["sh"]],
            )
            assert len(warn) < len([m for sev, m in notes if sev == "WARNING"]) and len(kw) > 0
            # the rows it returns all live on the shard that answered
            bad = c.execute(
                f"select count(*) from unnest(%s::text[]) x where not satisfies_hash_partition('collections.{corpus['sh']}'::regclass, 2, 0, x)",
                [[r[0] for r in got] + [r[0] for r in kw]],
            ).fetchone()[0]
            assert bad == 0
    finally:
        shard_clusters["clusters"]["s2"].start()
    # back: the same session's cached connection is re-opened, the answer is whole again
    again = rows(
        sconn, "select id from ml.search(%s, %s::vector, 10, options => '{\"exact\": true}')", [corpus["sh"], q]
    )
    assert again == full
