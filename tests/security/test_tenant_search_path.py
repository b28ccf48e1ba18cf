"""The tenant a session acts for is decided by ml.current_tenant, ml.tenants_of and ml.caller, which run with the
caller's search_path (no SET clause, so that their plans are cached or they are inlined into every tenant
policy). A tenant's writer who can create objects in a schema of their own puts that schema first and defines an
`=` operator there. Before the fix, ml.tenants_of compared role oids with an unqualified `=`, so a forged
operator that matched another tenant's writer walked that writer's memberships: ml.current_tenant then said
"globex" to acme's writer, and row-level security showed it globex's rows."""

from __future__ import annotations

import secrets

import pytest
from helpers import login_name


@pytest.fixture
def attacker_schema(sconn):
    """A schema owned by acme's writer (a role that may create objects somewhere, as many application roles may)."""
    name = f"att_{secrets.token_hex(3)}"
    sconn.execute(f'create schema {name} authorization "{login_name("acme_writer")}"')
    yield name
    sconn.execute(f"drop schema {name} cascade")


def test_a_forged_operator_on_the_search_path_does_not_change_the_sessions_tenant(connect_as, attacker_schema):
    secret = f"globex_secret_{secrets.token_hex(3)}"
    g = connect_as("globex_writer")
    g.execute("select registry.create_experiment(%s)", [secret])
    assert g.execute("select count(*) from registry.experiments where name = %s", [secret]).fetchone()[0] == 1

    a = connect_as("acme_writer")
    s = attacker_schema
    victim = login_name("globex_writer")
    # oid = oid that is true for the victim's memberships (and never for the attacker's own), so a membership
    # walk that used it would start from the victim's roles
    a.execute(
        f"create function {s}.eq_oid(x oid, y oid) returns boolean language sql immutable as "
        f"$$ select x operator(pg_catalog.=) '\"{victim}\"'::pg_catalog.regrole::pg_catalog.oid $$"
    )
    a.execute(f"create operator {s}.= (leftarg = oid, rightarg = oid, function = {s}.eq_oid)")
    # text = text and name = name that are always true: a tenant or caller check that used them would pass
    for t in ("text", "name"):
        a.execute(
            f"create function {s}.eq_{t}(x {t}, y {t}) returns boolean language sql immutable as $$ select true $$"
        )
        a.execute(f"create operator {s}.= (leftarg = {t}, rightarg = {t}, function = {s}.eq_{t})")
    a.execute(f"set search_path = {s}, pg_catalog, public")
    # the forged operators are what this session's own queries now use
    assert a.execute("select 'a'::text = 'b'::text").fetchone()[0] is True

    assert a.execute("select ml.caller()").fetchone()[0] == login_name("acme_writer")
    assert a.execute("select ml.tenants_of()").fetchone()[0] == ["acme"]
    assert a.execute("select ml.current_tenant()").fetchone()[0] == "acme"
    # (pg_catalog's = here: this session's own = is the forged one)
    seen = "select count(*) from registry.experiments where {} operator(pg_catalog.=) %s"
    assert a.execute(seen.format("name"), [secret]).fetchone()[0] == 0
    assert a.execute(seen.format("tenant"), ["globex"]).fetchone()[0] == 0


def test_types_of_the_callers_search_path_do_not_reach_the_tenant_functions(connect_as, attacker_schema):
    """plpgsql resolves the types of a function's variables with the search_path of the session's first call: a
    session that puts its own `text` and `name` first, before it ever calls ml.current_tenant, still gets its
    own tenant (before the fix, the variables took the attacker's types: the first call failed, and a cast of
    the attacker's could have chosen what the checks and the result saw)."""
    a = connect_as("acme_writer")
    s = attacker_schema
    for t in ("text", "name"):
        a.execute(f"create type {s}.{t} as (v pg_catalog.text)")
    a.execute(f"set search_path = {s}, pg_catalog, public")
    assert a.execute("select ml.current_tenant()").fetchone()[0] == "acme"
    assert a.execute("select ml.tenants_of()").fetchone()[0] == ["acme"]
    assert a.execute("select count(*) from registry.experiments").fetchone()[0] >= 0  # the tenant policy runs
