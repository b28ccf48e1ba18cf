"""ml.search's plan cache (a filter-free ANN search runs a prepared statement that its session keeps), attacked
by real logins: a statement the session prepared itself under ml.search's name is replaced, never run; the
cached plan follows the session's tenant when it switches; other sessions never see a session's statements."""

from __future__ import annotations

import secrets

import psycopg
import pytest
from helpers import login_name
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


def _statement_name(sconn, collection: str, k: int) -> str:
    return sconn.execute(
        "select 'indb_search_' || md5(ml._collection_vtype(c) || ' ' || ml._search_ann_sql(c, 'true', %s)) "
        "from ml.collections c where c.name = %s",
        [str(k), collection],
    ).fetchone()[0]


@pytest.mark.parametrize("who", ["acme_reader", "acme_app", "reader"])
def test_a_statement_prepared_under_ml_searchs_name_is_replaced_never_run(connect_as, sconn, shared_collection, who):
    c = connect_as(who)
    honest = sorted(r[0] for r in c.execute(f"select id from collections.{shared_collection}"))
    stmt = _statement_name(sconn, shared_collection, 10)
    c.execute(
        f"prepare \"{stmt}\"(vector) as select array['planted'], array[1::float8], array['x'], array['{{}}'::jsonb]"
    )
    got = sorted(r[0] for r in c.execute("select id from ml.search(%s, '[1,0]'::vector, 10)", [shared_collection]))
    assert got == honest and "planted" not in got
    # the session's statement of that name is now ml.search's
    text = c.execute("select statement from pg_prepared_statements where name = %s", [stmt]).fetchone()[0]
    assert f"from collections.{shared_collection} t " in text and "planted" not in text


def test_the_cached_plan_follows_the_sessions_tenant(db_dsn, sconn, shared_collection):
    """A reader of two tenants switching indb.tenant in one session: every ml.search answers as plain SQL does in
    that state, through the same prepared statement, also once PostgreSQL uses its generic plan."""
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
        generic, custom = a.execute(
            "select generic_plans, custom_plans from pg_prepared_statements where statement like %s",
            [f"%from collections.{shared_collection} t %"],
        ).fetchone()
        assert generic >= 1 and generic + custom == 12


def test_a_sessions_statements_are_its_own(connect_as, shared_collection):
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
