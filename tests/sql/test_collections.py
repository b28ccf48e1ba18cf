"""Collections: creation, writes through ml.add_documents and plain SQL (embedded by the statement trigger),
partitions, row-level security, index health. Real Postgres, real pgvector, real MiniLM."""

from __future__ import annotations

import secrets

import numpy as np
import psycopg
import pytest
from helpers import ensure_tenant, one_row, seq_scans, watch_progress
from psycopg.types.json import Jsonb


def name(prefix="c"):
    return f"{prefix}_{secrets.token_hex(3)}"


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return (v / np.linalg.norm(v)).tolist()


def one(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


def test_create_collection_makes_the_table_indexes_and_catalog_row(sconn):
    n = name()
    info = one_row(sconn, "select * from ml.create_collection(%s)", [n])
    assert info["table_name"] == f"collections.{n}" and info["dimensions"] == 384 and info["index"] == "hnsw"
    cols = dict(
        sconn.execute(
            "select attname, format_type(atttypid, atttypmod) from pg_attribute "
            "where attrelid = %s::regclass and attnum > 0 and not attisdropped",
            [info["table_name"]],
        ).fetchall()
    )
    assert cols["id"] == "text" and cols["embedding"] == "vector(384)" and cols["tsv"] == "tsvector"
    assert cols["metadata"] == "jsonb" and cols["tenant"] == "text" and cols["created_at"] == "timestamp with time zone"
    ams = {
        r[0]: r[1]
        for r in sconn.execute(
            "select ic.relname, am.amname from pg_index x join pg_class ic on ic.oid = x.indexrelid "
            "join pg_am am on am.oid = ic.relam where x.indrelid = %s::regclass",
            [info["table_name"]],
        ).fetchall()
    }
    assert ams[f"{n}_ann"] == "hnsw" and ams[f"{n}_tsv"] == "gin" and ams[f"{n}_metadata"] == "gin"
    row = sconn.execute("select model, metric, index_type from ml.collections where name = %s", [n]).fetchone()
    assert row == ("all-MiniLM-L6-v2", "cosine", "hnsw")


@pytest.mark.parametrize("bad", ["Bad-Name", "x; drop table ml.collections", 'a"b', "a'b", "", "9abc", "x" * 49])
def test_collection_names_with_metacharacters_are_refused(sconn, bad):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="invalid collection name"):
        sconn.execute("select ml.create_collection(%s)", [bad])
    assert one(sconn, "select to_regclass('ml.collections') is not null")


def test_bad_create_arguments_are_clear_errors(sconn):
    n = name()
    for args, words in [
        ({"index": "btree"}, "unknown index type"),
        ({"metric": "manhattan"}, "unknown metric"),
        ({"partition_by": "region"}, "unknown partition_by"),
        ({"options": Jsonb({"m": 1})}, "option m must be an integer between 2 and 100"),
        ({"options": Jsonb({"color": 1})}, "unknown option(s) color"),
        ({"options": Jsonb({"text_search_config": "klingon"})}, "unknown text search configuration"),
        ({"model": "no-such-model"}, 'embedding model "no-such-model"'),
        ({"model": None}, "needs options"),
    ]:
        keys = ", ".join(f"{k} => %({k})s" for k in args)
        with pytest.raises(psycopg.Error) as e:
            sconn.execute(f"select ml.create_collection(%(n)s, {keys})", {"n": n, **args})
        assert words in str(e.value), (args, str(e.value))
    assert one(sconn, "select count(*) from ml.collections where name = %s", [n]) == 0
    sconn.execute("select ml.create_collection(%s)", [n])
    with pytest.raises(psycopg.errors.DuplicateObject, match="already exists"):
        sconn.execute("select ml.create_collection(%s)", [n])


def test_unknown_collection_is_undefined_object(sconn):
    for fn in [
        "ml.search(%s, 'x')",
        "ml.keyword_search(%s, 'x')",
        "ml.hybrid_search(%s, 'x')",
        "ml.add_documents(%s, '[]')",
        "ml.collection_health(%s)",
        "ml.reindex_collection(%s)",
    ]:
        with pytest.raises(psycopg.errors.UndefinedObject, match='collection "no\'pe; --" does not exist'):
            sconn.execute(f"select * from {fn}", ["no'pe; --"])


def test_add_documents_embeds_upserts_and_plain_sql_works_too(sconn):
    n = name()
    sconn.execute("select ml.create_collection(%s)", [n])
    docs = [
        {"id": "cat", "content": "The cat sat on the mat", "metadata": {"kind": "pet"}},
        {"id": "hole", "content": "Black holes emit Hawking radiation", "metadata": {"kind": "space"}},
    ]
    assert one(sconn, "select ml.add_documents(%s, %s)", [n, Jsonb(docs)]) == 2
    t = f"collections.{n}"
    # plain INSERT and COPY: the statement trigger embeds them in one model call
    sconn.execute(f"insert into {t} (id, content) values ('dog', 'A puppy plays fetch'), ('empty', null)")
    with sconn.cursor().copy(f"copy {t} (id, content) from stdin") as cp:
        cp.write_row(["soup", "Tomato soup recipe with basil"])
    rows = dict(sconn.execute(f"select id, embedding is not null from {t}").fetchall())
    assert rows == {"cat": True, "hole": True, "dog": True, "empty": False, "soup": True}
    # the trigger's vector is the model's vector
    d = one(
        sconn, f"select embedding <=> ml.embed('all-MiniLM-L6-v2', 'A puppy plays fetch') from {t} where id = 'dog'"
    )
    assert d < 1e-5
    # upsert by id replaces content, metadata and embedding
    before = one(sconn, f"select embedding from {t} where id = 'cat'")
    assert (
        one(
            sconn,
            "select ml.add_documents(%s, %s)",
            [n, Jsonb([{"id": "cat", "content": "Dogs chase cars", "metadata": {"kind": "x"}}])],
        )
        == 1
    )
    row = sconn.execute(f"select content, metadata, embedding from {t} where id = 'cat'").fetchone()
    assert row[0] == "Dogs chase cars" and row[1] == {"kind": "x"}
    assert float(np.dot(row[2].to_numpy(), before.to_numpy())) < 0.9
    # a plain UPDATE of content re-embeds; an UPDATE of metadata only does not touch the embedding
    sconn.execute(f"update {t} set content = 'Hawking radiation from black holes' where id = 'hole'")
    d = one(
        sconn,
        f"select embedding <=> ml.embed('all-MiniLM-L6-v2', 'Hawking radiation from black holes') from {t} where id = 'hole'",
    )
    assert d < 1e-5
    e1 = one(sconn, f"select embedding::text from {t} where id = 'soup'")
    sconn.execute(f"update {t} set metadata = '{{\"a\": 1}}' where id = 'soup'")
    assert one(sconn, f"select embedding::text from {t} where id = 'soup'") == e1
    assert one(sconn, f"select count(*) from {t}") == 5


def test_documents_can_bring_their_own_embedding_and_bad_docs_write_nothing(sconn):
    n = name()
    sconn.execute("select ml.create_collection(%s, model => null, options => '{\"dimensions\": 3}')", [n])
    ok = [
        {"id": "a", "content": "alpha", "embedding": [1, 0, 0]},
        {"id": "b", "content": "beta", "embedding": [0, 1, 0]},
    ]
    assert one(sconn, "select ml.add_documents(%s, %s)", [n, Jsonb(ok)]) == 2
    for docs, words in [
        ([{"id": "c", "embedding": [1, 0]}], "embedding of 2 dimensions; collection"),
        ([{"id": "c", "content": "no vector"}], "has no model"),
        ([{"content": "no id"}], 'no usable "id"'),
        ([{"id": "c", "colour": "red"}], "unknown key"),
        ([{"id": "c", "metadata": [1]}], "wrong type"),
        ([{"id": "c", "embedding": [1, 0, 0]}, {"id": "c", "embedding": [1, 0, 0]}], "appears more than once"),
        ({"id": "c"}, "JSON array"),
        # pgvector's own errors name no document (and print all 300 digits of 1e300)
        (
            [{"id": "c", "embedding": [1, "NaN", 0]}],
            'document c has an embedding whose element 2 is not a number: "NaN"',
        ),
        (
            [{"id": "c", "embedding": [1, 0, 1e300]}],
            r"document c has an embedding whose element 3 is out of the range of vector \(1\.000e\+300\)",
        ),
    ]:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=words):
            sconn.execute(
                "select ml.add_documents(%s, %s)",
                [n, Jsonb([{"id": "z", "embedding": [0, 0, 1]}] + docs if isinstance(docs, list) else docs)],
            )
    assert one(sconn, f"select array_agg(id order by id) from collections.{n}") == ["a", "b"]
    # a call of more than 256 documents (written in chunks, with progress): the bad one is in the second chunk
    many = [{"id": f"m{i}", "embedding": [1, 0, 1e300 if i == 290 else i]} for i in range(300)]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="document m290 has an embedding whose element 3"):
        sconn.execute("select ml.add_documents(%s, %s)", [n, Jsonb(many)])
    assert one(sconn, f"select count(*) from collections.{n}") == 2
    h = name()
    sconn.execute(
        'select ml.create_collection(%s, model => null, options => \'{"dimensions": 3, "halfvec": true}\')', [h]
    )
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="element 1 is out of the range of halfvec"):
        sconn.execute("select ml.add_documents(%s, %s)", [h, Jsonb([{"id": "a", "embedding": [70000, 0, 1]}])])
    assert one(sconn, "select ml.add_documents(%s, %s)", [h, Jsonb([{"id": "a", "embedding": [65504, 0, 1]}])]) == 1
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="has no model"):
        sconn.execute(f"insert into collections.{n} (id, content) values ('q', 'text but no vector')")


def test_tenant_partitions_are_created_on_first_use_and_rls_isolates_tenants(sconn, db_dsn):
    n = name("t")
    info = one_row(
        sconn,
        "select * from ml.create_collection(%s, model => null, partition_by => 'tenant', options => '{\"dimensions\": 3}')",
        [n],
    )
    assert info["partition_by"] == "tenant"
    rls = "select relrowsecurity and relforcerowsecurity from pg_class where oid = %s::regclass"
    assert one(sconn, rls, [info["table_name"]]) is True
    t = f"collections.{n}"
    for tenant in ("acme", "globex", "initech"):
        ensure_tenant(sconn, tenant)
    docs = [
        {"id": "1", "tenant": "acme", "content": "acme secret plan", "embedding": [1, 0, 0]},
        {"id": "2", "tenant": "acme", "content": "acme roadmap", "embedding": [0.9, 0.1, 0]},
        {"id": "1", "tenant": "globex", "content": "globex secret plan", "embedding": [1, 0, 0]},
    ]
    assert one(sconn, "select ml.add_documents(%s, %s)", [n, Jsonb(docs)]) == 3
    parts = dict(
        sconn.execute(
            "select pg_get_expr(c.relpartbound, c.oid), (select count(*) from pg_inherits) from pg_inherits i "
            "join pg_class c on c.oid = i.inhrelid where i.inhparent = %s::regclass",
            [t],
        ).fetchall()
    )
    assert set(parts) == {"DEFAULT", "FOR VALUES IN ('acme')", "FOR VALUES IN ('globex')"}
    # a plain INSERT for a new tenant lands in the default partition; add_documents later moves it out
    sconn.execute(
        f"insert into {t} (id, tenant, content, embedding) values ('9', 'initech', 'initech memo', '[0,0,1]')"
    )
    assert one(sconn, f"select count(*) from collections.{n}_default") == 1
    sconn.execute(
        "select ml.add_documents(%s, %s)", [n, Jsonb([{"id": "8", "tenant": "initech", "embedding": [0, 1, 0]}])]
    )
    assert one(sconn, f"select count(*) from collections.{n}_default") == 0
    assert one(sconn, f"select count(*) from {t} where tenant = 'initech'") == 2
    # a non-superuser role sees only its tenant's rows, in search and in plain SELECT
    role = f"indb_t4_{secrets.token_hex(3)}"
    sconn.execute(f"create role {role} login in role indb_writer")
    try:
        # bound to two tenants: it says which one it acts for
        sconn.execute("select ml.create_tenant('acme', %s), ml.create_tenant('globex', %s)", [role, role])
        dsn = psycopg.conninfo.make_conninfo(db_dsn, user=role)
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("set indb.tenant = 'acme'")
            ids = c.execute("select id from ml.search(%s, '[1,0,0]'::vector, 10)", [n]).fetchall()
            assert sorted(r[0] for r in ids) == ["1", "2"]
            texts = [r[0] for r in c.execute("select content from ml.keyword_search(%s, 'secret plan', 10)", [n])]
            assert texts == ["acme secret plan"]
            assert c.execute(f"select count(*) from {t}").fetchone()[0] == 2
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(f"insert into {t} (id, tenant, embedding) values ('x', 'globex', '[1,1,1]')")
            c.execute("set indb.tenant = 'globex'")
            assert [r[0] for r in c.execute("select content from ml.search(%s, '[1,0,0]'::vector, 10)", [n])] == [
                "globex secret plan"
            ]
            # EXPLAIN: only the tenant's partition is scanned (the others are pruned)
            plan = "\n".join(
                r[0]
                for r in c.execute(
                    f"explain (costs off) select id from {t} where tenant = 'globex' order by embedding <=> '[1,0,0]' limit 5"
                )
            )
            import hashlib
            import re

            scanned = set(re.findall(rf"{n}_t_[0-9a-f]{{12}}", plan))
            assert scanned == {f"{n}_t_" + hashlib.md5(b"globex").hexdigest()[:12]}, plan
    finally:
        sconn.execute(f"drop owned by {role}")
        sconn.execute(f"drop role {role}")


def test_time_partitions_by_month_and_tiering(sconn):
    n = name("m")
    sconn.execute(
        "select ml.create_collection(%s, model => null, partition_by => 'time', options => '{\"dimensions\": 3}')", [n]
    )
    docs = [
        {"id": str(i), "created_at": f"2024-0{m}-1{i % 9}T00:00:00Z", "embedding": [1, i, m]}
        for m in (1, 2, 3)
        for i in range(3 * m, 3 * m + 3)
    ]
    assert one(sconn, "select ml.add_documents(%s, %s)", [n, Jsonb(docs)]) == 9
    parts = sorted(
        r[0]
        for r in sconn.execute(
            "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid where i.inhparent = %s::regclass",
            [f"collections.{n}"],
        )
    )
    assert parts == [f"{n}_default", f"{n}_m_202401", f"{n}_m_202402", f"{n}_m_202403"]
    # a date-range filter prunes partitions
    plan = "\n".join(
        r[0]
        for r in sconn.execute(
            f"explain (costs off) select id from collections.{n} where created_at >= '2024-03-01' "
            "order by embedding <=> '[1,0,0]' limit 3"
        )
    )
    assert f"{n}_m_202403" in plan and f"{n}_m_202401" not in plan
    tiered = sconn.execute(
        "select partition, index from ml.tier_partition(%s, interval '1 day', 'none')", [n]
    ).fetchall()
    assert {p[0] for p in tiered} == {f"{n}_m_202401", f"{n}_m_202402", f"{n}_m_202403"}
    assert {p[1] for p in tiered} == {"none"}
    # tiered (index-less) partitions are still searched, exactly
    exact = [
        r[0]
        for r in sconn.execute(
            "select id from ml.search(%s, '[1,0,3]'::vector, 3, options => '{\"exact\": true}')", [n]
        )
    ]
    got = [r[0] for r in sconn.execute("select id from ml.search(%s, '[1,0,3]'::vector, 3)", [n])]
    assert got == exact and len(got) == 3
    # upsert by id keeps the row in its month when no created_at is given
    sconn.execute("select ml.add_documents(%s, %s)", [n, Jsonb([{"id": "3", "content": "x", "embedding": [1, 0, 1]}])])
    assert one(sconn, f"select count(*) from collections.{n}_m_202401 where id = '3' and content = 'x'") == 1
    # a new document without created_at is now(): in this month's partition, not in the default one
    sconn.execute("select ml.add_documents(%s, %s)", [n, Jsonb([{"id": "new", "embedding": [1, 1, 1]}])])
    assert one(sconn, f"select count(*) from collections.{n}_default") == 0
    month = one(sconn, "select to_char(now() at time zone 'UTC', 'YYYYMM')")
    assert one(sconn, f"select count(*) from collections.{n}_m_{month} where id = 'new'") == 1
    # a document given another month moves there (ids are unique across months)
    sconn.execute(
        "select ml.add_documents(%s, %s)",
        [n, Jsonb([{"id": "3", "created_at": "2024-02-01T00:00:00Z", "embedding": [1, 0, 1]}])],
    )
    assert one(sconn, f"select count(*) from collections.{n} where id = '3'") == 1
    assert one(sconn, f"select count(*) from collections.{n}_m_202402 where id = '3'") == 1


def test_time_partitions_refuse_an_infinite_time(sconn):
    """A document at created_at = infinity has no month: a clear 22008 (it was "null values cannot be formatted as
    an SQL identifier"), and nothing is written."""
    n = name("inf")
    sconn.execute(
        "select ml.create_collection(%s, model => null, partition_by => 'time', options => '{\"dimensions\": 3}')", [n]
    )
    for t in ("infinity", "-infinity"):
        with pytest.raises(psycopg.Error) as e:
            sconn.execute(
                "select ml.add_documents(%s, %s)",
                [n, Jsonb([{"id": "a", "created_at": t, "embedding": [1, 2, 3]}, {"id": "b", "embedding": [1, 2, 4]}])],
            )
        assert e.value.sqlstate == "22008" and "not a finite time" in str(e.value)
        assert "created_at out" in e.value.diag.message_hint
    assert one(sconn, f"select count(*) from collections.{n}") == 0


def test_ivfflat_is_built_once_data_exists_and_health_reports_recall(sconn):
    n = name("ivf")
    sconn.execute(
        "select ml.create_collection(%s, model => null, index => 'ivfflat', options => '{\"dimensions\": 8}')", [n]
    )
    assert one(sconn, f"select count(*) from pg_indexes where tablename = '{n}' and indexdef ilike '%%ivfflat%%'") == 0
    rng = np.random.default_rng(0)
    docs = [{"id": f"d{i}", "embedding": unit(rng.normal(size=8))} for i in range(300)]
    sconn.execute("select ml.add_documents(%s, %s)", [n, Jsonb(docs)])
    assert one(sconn, f"select count(*) from pg_indexes where tablename = '{n}' and indexdef ilike '%%ivfflat%%'") == 1
    out = one_row(sconn, "select * from ml.reindex_collection(%s, false)", [n])
    assert out["rows"] == 300 and out["built"] == [f"{n}_ann"]
    h = one_row(sconn, "select * from ml.collection_health(%s, 10)", [n])
    assert h["rows"] == 300 and h["rows_missing_embedding"] == 0
    assert any(i["am"] == "ivfflat" and i["bytes"] > 0 for i in h["indexes"])
    assert 0.0 <= h["sampled_recall_at_10"] <= 1.0 and h["recall_sample_queries"] == 10


def test_halfvec_and_binary_rerank_collections_search_correctly(sconn):
    rng = np.random.default_rng(1)
    vecs = [unit(rng.normal(size=16)) for _ in range(200)]
    q = unit(rng.normal(size=16))
    exact = [f"d{i}" for i in np.argsort([-np.dot(v, q) for v in vecs])[:5]]
    for opts, vtype in [
        ({"dimensions": 16, "halfvec": True}, "halfvec(16)"),
        ({"dimensions": 16, "binary_rerank": True}, "vector(16)"),
    ]:
        n = name("q")
        sconn.execute("select ml.create_collection(%s, model => null, options => %s)", [n, Jsonb(opts)])
        assert (
            one(
                sconn,
                "select format_type(atttypid, atttypmod) from pg_attribute where attrelid = %s::regclass "
                "and attname = 'embedding'",
                [f"collections.{n}"],
            )
            == vtype
        )
        sconn.execute(
            "select ml.add_documents(%s, %s)", [n, Jsonb([{"id": f"d{i}", "embedding": v} for i, v in enumerate(vecs)])]
        )
        got = [
            r[0]
            for r in sconn.execute(
                "select id from ml.search(%s, %s::vector, 5, options => '{\"rerank_candidates\": 200}')", [n, str(q)]
            )
        ]
        assert got == exact, opts
        if opts.get("binary_rerank"):
            idx = one(sconn, f"select indexdef from pg_indexes where indexname = '{n}_ann'")
            assert "binary_quantize" in idx and "bit_hamming_ops" in idx


def test_cluster_roles_can_search_and_write_new_collections(sconn, db_dsn):
    """With the security area's roles (sql/005-roles.sql): indb_app searches, indb_writer writes."""
    n = name("r")
    sconn.execute("select ml.create_collection(%s, model => null, options => '{\"dimensions\": 2}')", [n])
    app, writer = f"indb_t4a_{secrets.token_hex(3)}", f"indb_t4w_{secrets.token_hex(3)}"
    sconn.execute(f"create role {app} login in role indb_app")
    sconn.execute(f"create role {writer} login in role indb_writer")
    ensure_tenant(sconn, "globex")
    try:
        with psycopg.connect(psycopg.conninfo.make_conninfo(db_dsn, user=writer), autocommit=True) as c:
            c.execute(
                "select ml.add_documents(%s, %s)",
                [n, Jsonb([{"id": "a", "content": "hello world", "embedding": [1, 0]}])],
            )
        with psycopg.connect(psycopg.conninfo.make_conninfo(db_dsn, user=app), autocommit=True) as c:
            assert c.execute("select id from ml.search(%s, '[1,0]'::vector, 1)", [n]).fetchone()[0] == "a"
            assert c.execute("select id from ml.keyword_search(%s, 'hello', 1)", [n]).fetchone()[0] == "a"
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(f"delete from collections.{n}")
        # tenant partitions made on first use by a writer that does not own the table, for its own tenant only
        tn = name("rt")
        sconn.execute(
            "select ml.create_collection(%s, model => null, partition_by => 'tenant', "
            "options => '{\"dimensions\": 2}')",
            [tn],
        )
        # both are bound to tenant acme from here on: they need no setting
        sconn.execute("select ml.create_tenant('acme', %s), ml.create_tenant('acme', %s)", [writer, app])
        with psycopg.connect(psycopg.conninfo.make_conninfo(db_dsn, user=writer), autocommit=True) as c:
            c.execute(
                "select ml.add_documents(%s, %s)",
                [tn, Jsonb([{"id": "a", "content": "acme doc", "embedding": [1, 0]}])],
            )
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not this session's tenant"):
                c.execute(
                    "select ml.add_documents(%s, %s)",
                    [tn, Jsonb([{"id": "b", "tenant": "globex", "embedding": [1, 0]}])],
                )
        sconn.execute(
            "select ml.add_documents(%s, %s)", [tn, Jsonb([{"id": "g", "tenant": "globex", "embedding": [1, 0]}])]
        )
        with psycopg.connect(psycopg.conninfo.make_conninfo(db_dsn, user=app), autocommit=True) as c:
            assert c.execute("select array_agg(id) from ml.search(%s, '[1,0]'::vector, 5)", [tn]).fetchone()[0] == ["a"]
    finally:
        for r in (app, writer):
            sconn.execute(f"drop owned by {r}")
            sconn.execute(f"drop role {r}")


def test_reindex_add_documents_and_big_inserts_are_seen_from_another_session(db_dsn, sconn):
    n = name("prog")
    sconn.execute("select ml.create_collection(%s, model => null, options => '{\"dimensions\": 3}')", [n])
    cid = sconn.execute("select id from ml.collections where name = %s", [n]).fetchone()[0]
    docs = [{"id": f"d{i}", "content": f"doc {i}", "embedding": [1, (i % 7) + 1, i + 1]} for i in range(300)]
    # ml.add_documents of more than 256 documents: held at the collection's write lock by another writer
    blocker = psycopg.connect(db_dsn)
    blocker.execute("select pg_advisory_xact_lock(hashtext('indb.collection'), %s::int)", [cid])
    seen = watch_progress(
        db_dsn,
        "add_documents",
        n,
        "select ml.add_documents(%s, %s)",
        [n, Jsonb(docs)],
        until=lambda r: r[0] == "waiting for the collection's write lock",
        release=blocker.rollback,
    )
    blocker.close()
    assert any(r[0] == "waiting for the collection's write lock" and r[2] == 300 and r[3] == "documents" for r in seen)
    assert one(sconn, f"select count(*) from collections.{n}") == 300
    # ml.reindex_collection: held while it builds (a writer's open transaction holds ROW EXCLUSIVE)
    blocker = psycopg.connect(db_dsn)
    blocker.execute(f"lock table collections.{n} in row exclusive mode")
    seen = watch_progress(
        db_dsn,
        "reindex_collection",
        n,
        "select * from ml.reindex_collection(%s)",
        [n],
        until=lambda r: r[0].startswith("building index"),
        release=blocker.rollback,
    )
    blocker.close()
    assert any(r[0] == f"building index {n}_ann" and r[2] == 300 and r[3] == "rows" for r in seen), seen
    # a failed call leaves nothing behind either
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        sconn.execute("select ml.add_documents(%s, %s)", [n, Jsonb(docs[:280] + [{"id": "z", "embedding": [1, 2]}])])
    assert one(sconn, "select count(*) from ml.progress where target = %s", [n]) == 0


def test_a_big_insert_into_a_collection_reports_its_embedding(db_dsn, sconn):
    n = name("progi")
    sconn.execute("select ml.create_collection(%s)", [n])
    sconn.execute("select ml.warmup()")
    seen = watch_progress(
        db_dsn,
        "collection write",
        n,
        f"insert into collections.{n} (id, content) select 'r' || g, 'row number ' || g || ' of a big insert' "
        "from generate_series(1, 600) g",
        None,
    )
    assert any(r[0] == "embedding" and r[2] == 600 for r in seen), seen
    assert one(sconn, f"select count(*) from collections.{n} where embedding is not null") == 600


def test_a_single_row_write_finds_its_row_by_key_not_by_scanning_the_collection(sconn, db_dsn):
    """The trigger writes a new row's embedding back by its key. The embedding function is a set-returning
    function, which PostgreSQL estimates at 1,000 rows: every single-row INSERT hash-joined a scan of the whole
    collection (3,000 documents: 2 ms of it, growing with the collection) until the collection was large enough
    for 1,000 index probes to look cheaper."""
    c = sconn
    n = name("scan")
    c.execute("select ml.create_collection(%s)", [n])
    c.execute(
        f"insert into collections.{n} (id, content, embedding) "
        "select 'd' || g, 'document ' || g, array_fill(0.05::real, array[384])::vector from generate_series(1, 3000) g"
    )
    c.execute(f"analyze collections.{n}")
    before = seq_scans(c, f"collections.{n}")
    with psycopg.connect(db_dsn, autocommit=True) as fresh:
        fresh.execute(f"insert into collections.{n} (id, content) values ('new', 'a document about the immune system')")
        assert seq_scans(fresh, f"collections.{n}") == before, "a single-row write scanned the collection"
    got = c.execute(f"select embedding is not null, content from collections.{n} where id = 'new'").fetchone()
    assert got == (True, "a document about the immune system")
