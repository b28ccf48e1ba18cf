"""ml.search's plan caches, attacked by real logins. A filter-free ANN search runs the collection's static query in
ml._search_static (planned once per session), or for a collection without one a prepared statement that its
session keeps: a statement the session prepared itself under ml.search's name is never run (replaced when the
prepared path runs); the cached plan follows the session's tenant when it switches, on either path; other
sessions never see a session's statements; no working role can change the static queries."""

from __future__ import annotations

import secrets

import psycopg
import pytest
from helpers import login_name, static_branch, static_source
from psycopg.types.json import Jsonb


@pytest.fixture
def shared_collection(sconn):
    """A shared collection with acme, globex and shared rows, all near [1, 0]."""
    name = f"pc_{secrets.token_hex(3)}"
    sconn.execute(
        "select ml.create_collection(%s, model => null, options => '{\"dimensions\": 2}')",
        [name],
    )
    docs = [
        {"id": f"{t or 'shared'}_{i}", "tenant": t, "content": f"row {i}", "embedding": [1, 0.1 * i + (t == "acme")]}
        for t in ("acme", "globex", None)
        for i in range(3)
    ]
    sconn.execute("select ml.add_documents(%s, %s)", [name, Jsonb(docs)])
    return name


@pytest.fixture(params=["static", "prepared"])
def path(request, sconn, shared_collection):
    """Which fast path answers: the static query, or (its branch removed) the prepared statement."""
    if request.param == "prepared":
        static_branch(sconn, shared_collection, False)
    yield request.param
    static_branch(sconn, shared_collection, True)


def _statement_name(sconn, collection: str, k: int) -> str:
    return sconn.execute(
        "select 'indb_search_' || md5(ml._collection_vtype(c) || ' ' || ml._search_ann_sql(c, 'true', %s)) "
        "from ml.collections c where c.name = %s",
        [str(k), collection],
    ).fetchone()[0]


@pytest.mark.parametrize("who", ["acme_reader", "acme_app", "reader"])
def test_a_statement_prepared_under_ml_searchs_name_is_never_run(connect_as, sconn, shared_collection, path, who):
    c = connect_as(who)
    honest = sorted(r[0] for r in c.execute(f"select id from collections.{shared_collection}"))
    stmt = _statement_name(sconn, shared_collection, 10)
    c.execute(
        f"prepare \"{stmt}\"(vector) as select array['planted'], array[1::float8], array['x'], array['{{}}'::jsonb]"
    )
    got = sorted(r[0] for r in c.execute("select id from ml.search(%s, '[1,0]'::vector, 10)", [shared_collection]))
    assert got == honest and "planted" not in got
    text = c.execute("select statement from pg_prepared_statements where name = %s", [stmt]).fetchone()[0]
    if path == "prepared":  # the session's statement of that name is now ml.search's
        assert f"from collections.{shared_collection} t " in text and "planted" not in text
    else:  # the static query answered; the session's own statement was left alone, unused
        assert "planted" in text


def test_the_cached_plan_follows_the_sessions_tenant(db_dsn, sconn, shared_collection, path):
    """A reader of two tenants switching indb.tenant in one session: every ml.search answers as plain SQL does in
    that state, through the same cached plan (static query or prepared statement), also once it is the generic
    plan."""
    role = login_name("two_tenants_reader")
    if not sconn.execute("select 1 from pg_roles where rolname = %s", [role]).fetchone():
        sconn.execute(f'create role "{role}" login')
    sconn.execute(f'grant indb_reader to "{role}"')
    for t in ("acme", "globex"):
        sconn.execute("select ml.create_tenant(%s)", [t])
        sconn.execute("select ml.create_tenant(%s, %s)", [t, role])
    with psycopg.connect(psycopg.conninfo.make_conninfo(db_dsn, user=role), autocommit=True) as a:
        seen = {}
        for _ in range(4):
            for tenant in ("acme", "globex", None):
                if tenant:
                    a.execute("select set_config('indb.tenant', %s, false)", [tenant])
                else:
                    a.execute("reset indb.tenant")
                plain = sorted(r[0] for r in a.execute(f"select id from collections.{shared_collection}"))
                got = sorted(
                    r[0] for r in a.execute("select id from ml.search(%s, '[1,0]'::vector, 10)", [shared_collection])
                )
                assert got == plain
                seen[tenant] = got
        # the switch changes what is visible, so the test can fail
        assert "acme_0" in seen["acme"] and "acme_0" not in seen["globex"] and "globex_0" in seen["globex"]
        plans = a.execute(
            "select generic_plans, custom_plans from pg_prepared_statements where statement like %s",
            [f"%from collections.{shared_collection} t %"],
        ).fetchone()
        if path == "prepared":
            assert plans[0] >= 1 and plans[0] + plans[1] == 12
        else:  # the static query (a generic plan from the first call) answered all twelve
            assert plans is None


def test_a_sessions_statements_are_its_own(connect_as, shared_collection, path):
    a, g = connect_as("acme_reader"), connect_as("globex_reader")
    a.execute("select id from ml.search(%s, '[1,0]'::vector, 10)", [shared_collection]).fetchall()
    assert g.execute("select count(*) from pg_prepared_statements where name like 'indb_search_%'").fetchone()[0] == 0
    assert sorted(
        r[0] for r in g.execute("select id from ml.search(%s, '[1,0]'::vector, 10)", [shared_collection])
    ) == [
        "globex_0",
        "globex_1",
        "globex_2",
        "shared_0",
        "shared_1",
        "shared_2",
    ]


@pytest.mark.parametrize("who", ["writer", "admin", "acme_app", "norights"])
def test_no_working_role_can_change_the_static_queries(connect_as, sconn, shared_collection, who):
    """ml._search_static runs as every searcher: only indb_owner may make its body (ml._search_static_set, from
    ml.create_collection and ml.drop_collection). A working role can neither call the setter nor replace the
    function with a query of its own."""
    c = connect_as(who)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute("select ml._search_static_set(c, true) from ml.collections c where c.name = %s", [shared_collection])
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute(
            "create or replace function ml._search_static(collection text, query vector, k int, filter jsonb, "
            "options jsonb) returns table(id text, score float8, content text, metadata jsonb) "
            "language sql as $$ select 'planted', 1::float8, 'x', '{}'::jsonb $$"
        )
    src = static_source(sconn)
    assert "planted" not in src and f"from collections.{shared_collection} t " in src


def test_a_writer_cannot_lower_the_cap_to_evict_other_tenants_static_queries(connect_as, sconn, shared_collection):
    """indb.search_static_max is honoured for indb_admin only: a tenant's writer who sets it to 1 and makes a
    collection gets its own branch, and every other collection keeps its own."""
    name = f"ev_{secrets.token_hex(3)}"
    w = connect_as("acme_writer")
    w.execute("set indb.search_static_max = 1")
    try:
        w.execute("select ml.create_collection(%s, model => null, options => '{\"dimensions\": 2}')", [name])
        src = static_source(sconn)
        assert f"from collections.{name} t " in src
        assert f"from collections.{shared_collection} t " in src, "another collection's branch was evicted"
    finally:
        sconn.execute("select ml.drop_collection(%s, if_exists => true)", [name])


def test_another_tenants_collection_is_not_searched_through_its_static_query(connect_as, sconn):
    """ml._search_static answers by collection name, before the catalog lookup of the full path: its branch checks
    that the caller sees the collection's catalog row (row security on ml.collections). A collection that acme owns
    is, for globex, a collection that does not exist (42704, as on the full path), even though its table holds
    shared rows that globex's row security would let it read; acme searches it through the static query."""
    name = f"own_{secrets.token_hex(3)}"
    a = connect_as("acme_writer")
    a.execute("select ml.create_collection(%s, model => null, options => '{\"dimensions\": 2}')", [name])
    try:
        # rows without a tenant in acme's collection (an admin's load): row security alone would show them to globex
        sconn.execute(
            "select ml.add_documents(%s, %s)",
            [name, Jsonb([{"id": f"shared_{i}", "tenant": None, "embedding": [1, 0.1 * i]} for i in range(3)])],
        )
        src = static_source(sconn)
        assert f"when '{name}' then" in src
        for who in ("globex_reader", "globex_app"):
            g = connect_as(who)
            for opts in ("{}", '{"ef_search": 40}'):
                with pytest.raises(psycopg.errors.UndefinedObject, match=f'collection "{name}" does not exist'):
                    g.execute("select * from ml.search(%s, '[1,0]'::vector, 3, null, %s)", [name, opts])
        r = connect_as("acme_reader")
        assert [x[0] for x in r.execute("select id from ml.search(%s, '[1,0]'::vector, 3)", [name])] == [
            "shared_0",
            "shared_1",
            "shared_2",
        ]
        assert not r.execute("select 1 from pg_prepared_statements").fetchall()  # the static query answered
    finally:
        sconn.execute("select ml.drop_collection(%s, if_exists => true)", [name])
