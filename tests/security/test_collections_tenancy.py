"""Tenants of collections, attacked by real logins (issue 10, items 4 and 7): a tenant-bound writer makes a
collection and writes it without setting anything; plain SELECT on collections.<name> shows only the session's
tenant (and shared rows); naming another tenant in indb.tenant fails with 42501 for tenant logins and for
indb_app; the BM25 statistics of a tenant's collection are the tenant's; another tenant cannot write into it."""

from __future__ import annotations

import secrets

import psycopg
import pytest
from helpers import login_name, one_row
from psycopg.types.json import Jsonb


@pytest.fixture
def acme_collection(connect_as, sconn):
    """A tenant-partitioned collection made by acme's writer (no SET indb.tenant), with acme rows, and globex
    rows and shared rows written by an admin."""
    w = connect_as("acme_writer")
    name = f"ten_{secrets.token_hex(3)}"
    info = one_row(
        w,
        "select * from ml.create_collection(%s, model => null, partition_by => 'tenant', options => '{\"dimensions\": 2}')",
        [name],
    )
    assert info["tenant"] == "acme"  # the catalog row is acme's, without any setting
    w.execute(
        "select ml.add_documents(%s, %s)",
        [name, Jsonb([{"id": "a1", "content": "acme merger plan", "embedding": [1, 0]}])],
    )
    sconn.execute(
        "select ml.add_documents(%s, %s)",
        [name, Jsonb([{"id": "g1", "tenant": "globex", "content": "globex secret plan", "embedding": [1, 0]}])],
    )
    return name


def test_a_tenant_bound_writer_needs_no_setting_and_its_rows_are_its_tenants(connect_as, acme_collection, sconn):
    name = acme_collection
    assert sconn.execute(f"select tenant from collections.{name} where id = 'a1'").fetchone()[0] == "acme"
    assert sconn.execute("select tenant, created_by from ml.collections where name = %s", [name]).fetchone() == (
        "acme",
        login_name("acme_writer"),
    )


@pytest.mark.parametrize("who", ["acme_reader", "acme_app", "acme_writer"])
def test_plain_select_shows_only_the_sessions_tenant(connect_as, acme_collection, who):
    c = connect_as(who)
    assert [r[0] for r in c.execute(f"select id from collections.{acme_collection} order by id")] == ["a1"]
    assert [r[0] for r in c.execute("select id from ml.search(%s, '[1,0]'::vector, 10)", [acme_collection])] == ["a1"]
    assert [r[0] for r in c.execute("select id from ml.keyword_search(%s, 'plan', 10)", [acme_collection])] == ["a1"]


@pytest.mark.parametrize("who", ["acme_reader", "acme_app", "acme_writer"])
def test_a_tenant_login_naming_another_tenant_is_refused(connect_as, acme_collection, who):
    c = connect_as(who)
    c.execute("set indb.tenant = 'globex'")
    for sql in [
        f"select id from collections.{acme_collection}",
        f"select id from ml.search('{acme_collection}', '[1,0]'::vector, 10)",
        "select count(*) from ml.collection_terms",
    ]:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            c.execute(sql)
        assert 'may not act as tenant "globex"' in str(e.value)


@pytest.mark.parametrize("who", ["app", "reader", "writer"])
def test_an_unbound_role_naming_a_tenant_is_refused_and_sees_only_shared_rows(connect_as, acme_collection, who):
    c = connect_as(who)
    c.execute("set indb.tenant = 'globex'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute(f"select id from collections.{acme_collection}")
    c.execute("reset indb.tenant")
    assert c.execute(f"select count(*) from collections.{acme_collection}").fetchone()[0] == 0
    # the collection itself is acme's: invisible, so its search functions say it does not exist
    with pytest.raises(psycopg.errors.UndefinedObject):
        c.execute("select * from ml.search(%s, '[1,0]'::vector, 10)", [acme_collection])


def test_other_tenants_see_neither_rows_nor_statistics(connect_as, acme_collection, sconn):
    g = connect_as("globex_reader")
    assert g.execute(f"select array_agg(id) from collections.{acme_collection}").fetchone()[0] == ["g1"]
    cid = sconn.execute("select id from ml.collections where name = %s", [acme_collection]).fetchone()[0]
    # the words of acme's documents (BM25 statistics) are acme's too
    assert g.execute("select count(*) from ml.collection_terms where collection_id = %s", [cid]).fetchone()[0] == 0
    assert g.execute("select count(*) from ml.collection_stats where collection_id = %s", [cid]).fetchone()[0] == 0
    a = connect_as("acme_reader")
    assert a.execute("select count(*) from ml.collection_terms where collection_id = %s", [cid]).fetchone()[0] > 0
    assert sconn.execute("select n_docs from ml.collection_stats where collection_id = %s", [cid]).fetchone()[0] == 2


def test_another_tenant_cannot_write_into_a_tenants_collection(connect_as, acme_collection, sconn):
    g = connect_as("globex_writer")
    # not through indb's functions (the collection is invisible to it) ...
    with pytest.raises(psycopg.errors.UndefinedObject):
        g.execute(
            "select ml.add_documents(%s, %s)",
            [acme_collection, Jsonb([{"id": "x", "content": "planted", "embedding": [0, 1]}])],
        )
    # ... nor with plain SQL: rows of its own tenant, but the collection's trigger refuses the statement
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
        g.execute(
            f"insert into collections.{acme_collection} (id, content, embedding) values ('x', 'planted', '[0,1]')"
        )
    assert "may not write" in str(e.value)
    with pytest.raises(psycopg.errors.UndefinedObject):  # acme's collection is invisible to globex
        g.execute("select ml.drop_collection(%s)", [acme_collection])
    assert sconn.execute(f"select count(*) from collections.{acme_collection} where id = 'x'").fetchone()[0] == 0


def test_an_admin_sees_every_tenant(connect_as, acme_collection):
    a = connect_as("admin")
    assert sorted(r[0] for r in a.execute(f"select id from collections.{acme_collection}")) == ["a1", "g1"]


@pytest.mark.parametrize("kind", ["tenant", None])
def test_ties_by_id_never_bring_in_another_tenants_rows(connect_as, sconn, kind):
    """Keyword search breaks ties by id and reads candidates in that order (since 0027): in a collection where the
    first 200 ids of a tie are globex's, acme's logins get acme's five smallest ids, and globex's its own; the
    rounds that skip the other tenant's candidates continue until k of one's own are found."""
    name = f"tie_{secrets.token_hex(3)}"
    sconn.execute(
        "select ml.create_collection(%s, model => null, partition_by => %s, options => '{\"dimensions\": 2}')",
        [name, kind],
    )
    docs = [{"id": f"a{i:03d}", "tenant": "globex", "content": "merger plan", "embedding": [1, 0]} for i in range(200)]
    docs += [{"id": f"b{i:03d}", "tenant": "acme", "content": "merger plan", "embedding": [1, 0]} for i in range(50)]
    sconn.execute("select ml.add_documents(%s, %s)", [name, Jsonb(docs)])
    for who, want in (("acme_reader", "b"), ("acme_app", "b"), ("globex_reader", "a")):
        c = connect_as(who)
        got = [r[0] for r in c.execute("select id from ml.keyword_search(%s, 'plan', 5)", [name])]
        assert got == [f"{want}{i:03d}" for i in range(5)], (who, got)
