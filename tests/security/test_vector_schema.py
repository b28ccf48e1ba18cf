"""The schema that holds pgvector (public, usually) is on every indb function's search_path, for pgvector's types
and operators. A role that may create objects there can make a function that an indb function picks over
PostgreSQL's own: a writer's public.to_jsonb(registry.experiments) ran as indb_owner inside the audit trigger of
registry.create_experiment, and indb_owner owns the catalogs and the audit log. In PostgreSQL 15 that role is
the database's owner (through pg_database_owner, the owner of public), anyone granted CREATE there, or everyone in
a database upgraded from PostgreSQL 14 or older. `indb install` refuses while there is such a role (not a
superuser), and ml.runtime_info() warns when one appears later."""

from __future__ import annotations

import sys

import psycopg
import pytest
from helpers import login_name

from indb.errors import InstallError


def install(dsn: str) -> dict:
    from indb.install import install as run

    return run(dsn, venv=sys.prefix)


def installed(dsn: str) -> bool:
    with psycopg.connect(dsn) as c:
        return c.execute("select to_regnamespace('ml') is not null").fetchone()[0]


@pytest.mark.parametrize(
    "grant, named",
    [
        ("grant create on schema public to {writer}", "{writer}"),
        ("grant create on schema public to public", "PUBLIC"),
        ("alter database {db} owner to {writer}", "{writer}"),
    ],
    ids=[
        "a writer granted CREATE",
        "PUBLIC (a database upgraded from PostgreSQL 14)",
        "a non-superuser owns the database",
    ],
)
def test_install_refuses_while_a_role_may_create_in_the_vector_schema(empty_db, logins, grant, named):
    dsn = empty_db("indb_vecschema")
    db = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    writer = login_name("writer")
    with psycopg.connect(dsn, autocommit=True) as su:
        su.execute("create extension if not exists vector")
        su.execute(grant.format(writer=writer, db=db))
    with pytest.raises(InstallError) as e:
        install(dsn)
    assert e.value.sqlstate == "42501"
    assert f"{named.format(writer=writer)} may create objects in schema public" in str(e.value)
    assert "REVOKE CREATE ON SCHEMA" in (e.value.hint or "")
    if "owner" in grant:
        assert "ALTER SCHEMA" in (e.value.hint or "")
    assert not installed(dsn), "a refused install leaves nothing behind"
    # what the hint says, then the install goes through
    with psycopg.connect(dsn, autocommit=True) as su:
        su.execute("revoke create on schema public from public")
        su.execute(f'revoke create on schema public from "{writer}"')
        su.execute(
            "alter schema public owner to current_user"
        )  # the superuser: the owner no longer follows the database's
    assert install(dsn)["to"]
    assert installed(dsn)


def test_runtime_info_warns_when_a_role_may_create_there_after_the_install(empty_db, logins):
    dsn = empty_db("indb_vecschema_late")
    install(dsn)
    writer = login_name("writer")
    reader = psycopg.conninfo.make_conninfo(dsn, user=login_name("reader"))

    def schema_warnings() -> list[str]:
        with psycopg.connect(reader, autocommit=True) as c:
            warnings = c.execute("select ml.runtime_info()->'warnings'").fetchone()[0]
        return [w for w in warnings if "the schema that holds pgvector" in w]

    assert schema_warnings() == []
    with psycopg.connect(dsn, autocommit=True) as su:
        su.execute(f'grant create on schema public to "{writer}"')
    assert [w.split(" may ")[0] for w in schema_warnings()] == [writer]


def test_install_refuses_while_the_vector_schema_holds_a_non_superusers_function(empty_db, logins):
    """One made before the install (by a role that could, then): its owner's code, picked by indb's functions."""
    dsn = empty_db("indb_vecschema_fn")
    writer = login_name("writer")
    with psycopg.connect(dsn, autocommit=True) as su:
        su.execute("create extension if not exists vector")
        su.execute("create function public.to_jsonb(int8range) returns jsonb language sql as $$ select '{}'::jsonb $$")
        su.execute(f'alter function public.to_jsonb(int8range) owner to "{writer}"')
    with pytest.raises(InstallError) as e:
        install(dsn)
    assert e.value.sqlstate == "42501" and "to_jsonb(int8range)" in str(e.value)
    assert not installed(dsn)
    with psycopg.connect(dsn, autocommit=True) as su:
        su.execute("alter function public.to_jsonb(int8range) owner to current_user")
    assert install(dsn)["to"]


def test_a_role_granted_create_later_cannot_put_a_function_there(empty_db, logins):
    """The attack itself, after a grant that came after the install: the writer's function that the audit trigger
    of registry.create_experiment would have run as indb_owner is refused, as is one moved in from the writer's
    own schema, and an operator; a table is still allowed (indb names every relation it reads with its schema)."""
    dsn = empty_db("indb_vecschema_guard")
    install(dsn)
    writer = login_name("writer")
    with psycopg.connect(dsn, autocommit=True) as su:
        su.execute(f'grant create on schema public to "{writer}"')
        su.execute(f'create schema attacker authorization "{writer}"')
    with psycopg.connect(psycopg.conninfo.make_conninfo(dsn, user=writer), autocommit=True) as w:
        for sql in (
            "create function public.to_jsonb(registry.experiments) returns jsonb language plpgsql "
            "as $$ begin raise notice 'ran as %', current_user; return '{}'::jsonb; end $$",
            "create operator public.=== (leftarg = int, rightarg = int, function = int4eq)",
            "create procedure public.p() language sql as $$ select 1 $$",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="only a superuser may put functions"):
                w.execute(sql)
        w.execute(
            "create function attacker.to_jsonb(registry.experiments) returns jsonb language sql as $$ select '{}'::jsonb $$"
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="only a superuser may put functions"):
            w.execute("alter function attacker.to_jsonb(registry.experiments) set schema public")
        w.execute("create table public.notes (x int)")  # allowed
        notices: list[str] = []
        w.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        w.execute("select registry.create_experiment('vecschema_guard')")
        assert not any(n.startswith("ran as") for n in notices)


def test_without_the_guard_nothing_a_writer_makes_there_is_picked_by_indb(empty_db, logins):
    """The second line of defence: indb's functions search pg_catalog and pg_temp only, and name pgvector's types,
    functions and operators with their schema. With the event trigger disabled and CREATE granted, a writer's
    functions and operators in public that would match indb's calls more exactly than PostgreSQL's own (the audit
    trigger's to_jsonb, the `1 - distance` of a score, a text overload of vector_dims, a `<=>` with a text
    operand) never run: not in the registry, not in a vector, hybrid or explained search, not in a write."""
    dsn = empty_db("indb_vecschema_narrow")
    install(dsn)
    writer = login_name("writer")
    with psycopg.connect(dsn, autocommit=True) as su:
        su.execute("alter event trigger indb_guard_vector_schema disable")
        su.execute(f'grant create on schema public to "{writer}"')
    body = "language plpgsql as $$ begin raise notice 'ran as %', current_user; return {}; end $$"
    with psycopg.connect(psycopg.conninfo.make_conninfo(dsn, user=writer), autocommit=True) as w:
        notices: list[str] = []
        w.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        w.execute(f"create function public.to_jsonb(registry.experiments) returns jsonb {body.format(repr('{}'))}")
        w.execute(f"create function public.minus(integer, double precision) returns double precision {body.format(0)}")
        w.execute("create operator public.- (leftarg = integer, rightarg = double precision, function = public.minus)")
        w.execute(f"create function public.vector_dims(text) returns integer {body.format(3)}")
        w.execute(f"create function public.dist(public.vector, text) returns double precision {body.format(0)}")
        w.execute("create operator public.<=> (leftarg = public.vector, rightarg = text, function = public.dist)")
        w.execute("select registry.create_experiment('vecschema_narrow')")
        w.execute("select ml.create_collection('narrow_c', model => null, options => '{\"dimensions\": 3}')")
        w.execute(
            'select ml.add_documents(\'narrow_c\', \'[{"id": "a", "content": "red fox", "embedding": [1, 0, 0]},'
            ' {"id": "b", "content": "blue fox", "embedding": [0, 1, 0]}]\')'
        )
        top = w.execute("select id, score from ml.search('narrow_c', '[1, 0.1, 0]'::vector, 2)").fetchall()
        assert [r[0] for r in top] == ["a", "b"] and top[0][1] > 0.99
        w.execute("select * from ml.search('narrow_c', '[1, 0.1, 0]'::vector, 2, '{\"id\": \"a\"}')").fetchall()
        w.execute("select * from ml.search_explain('narrow_c', '[1, 0.1, 0]'::vector, 2)").fetchall()
        w.execute("select * from ml.keyword_search('narrow_c', 'fox', 2)").fetchall()
        w.execute("update collections.narrow_c set content = 'red foxes' where id = 'a'")
        assert not [n for n in notices if n.startswith("ran as")], notices


# The SECURITY INVOKER functions that run a caller's own SQL, table names or type names (USER_SQL_PATH in
# sql/000-runtime.sql): they search the vector extension's schema after pg_catalog, as the caller's session would.
USER_SQL_FUNCTIONS = {
    "features._check_skew",
    "features._create_training_set",
    "features._describe",
    "features._describe_py",
    "features._materialize",
    "features.create_feature_view",
    "features.get_historical",
    "features.get_historical_cursor",
    "features.historical_query",
}


def test_only_invoker_functions_that_run_the_callers_sql_search_the_vector_schema(db_dsn):
    """Every other indb function searches pg_catalog and pg_temp alone; no SECURITY DEFINER function and no trigger
    function searches the schema where other roles may create objects, and no definer function calls one that
    does (so nothing that runs as indb_owner resolves a name there)."""
    with psycopg.connect(db_dsn) as c:
        rows = c.execute(
            """select p.oid::regprocedure::text, p.oid::regproc::text, p.prosecdef, p.prorettype = 'trigger'::regtype,
                      c.cfg, p.prosrc
                 from pg_proc p cross join lateral unnest(p.proconfig) c(cfg)
                where p.pronamespace in ('ml'::regnamespace, 'registry'::regnamespace, 'features'::regnamespace,
                                         'audit'::regnamespace)
                  and c.cfg like 'search_path=%'"""
        ).fetchall()
    assert len(rows) > 300
    wide = {r[1]: r for r in rows if r[4] != "search_path=pg_catalog, pg_temp"}
    assert set(wide) == USER_SQL_FUNCTIONS, sorted(wide)
    for sig, _, definer, trigger, cfg, _src in wide.values():
        assert cfg.replace('"', "") == "search_path=pg_catalog, public, pg_temp", (sig, cfg)
        assert not definer and not trigger, sig
    for sig, _, definer, _, _, src in rows:
        if definer:
            called = [n for n in USER_SQL_FUNCTIONS if f"{n}(" in src]
            assert not called, f"{sig} runs as indb_owner and calls {called}"
