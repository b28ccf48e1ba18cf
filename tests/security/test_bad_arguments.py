"""Every public function of indb, called by a login that may execute it with NULLs, with empty values and with
odd ones (a name holding a quote and a comment, a jsonb of the wrong shape, -1, the largest bigint, NaN and
infinities, -infinity as a time), answers or refuses with a clear error: a SQLSTATE of its own class (never
XX000 "internal", 38xxx/39xxx "external routine", which is what an uncaught Python exception becomes), a message,
no Python traceback, and the backend still up. New functions are covered as they are added: the list is read from
the catalog of a fresh install, not written here.

Each call runs in its own transaction, rolled back, on a database that holds only what `indb install` made."""

from __future__ import annotations

import re
import sys

import psycopg
import pytest
from helpers import login_name

# one value per argument type for each kind of call; a type not listed gets NULL
VALUES = {
    "empty": {
        "text": "''",
        "jsonb": "'{}'::jsonb",
        "integer": "0",
        "bigint": "0",
        "text[]": "'{}'::text[]",
        "boolean": "false",
        "double precision": "'NaN'::float8",
        "interval": "'0'::interval",
        "timestamp with time zone": "'infinity'::timestamptz",
        "real[]": "'{}'::real[]",
        "double precision[]": "'{NaN}'::float8[]",
        "jsonb[]": "'{}'::jsonb[]",
        "bigint[]": "'{}'::bigint[]",
        "numeric": "'NaN'::numeric",
        "date": "'infinity'::date",
    },
    "odd": {
        "text": "'a\"b'';--'",
        "jsonb": """'[1, [2, {"a": null}]]'::jsonb""",
        "integer": "-1",
        "bigint": "9223372036854775807",
        "text[]": "array[null, '']::text[]",
        "boolean": "true",
        "double precision": "'-Infinity'::float8",
        "interval": "'-1 day'::interval",
        "timestamp with time zone": "'-infinity'::timestamptz",
        "real[]": "'{NaN,Infinity}'::real[]",
        "double precision[]": "'{Infinity,null}'::float8[]",
        "jsonb[]": "array['null'::jsonb]",
        "bigint[]": "'{-1,null}'::bigint[]",
        "numeric": "'1e1000'::numeric",
        "date": "'-infinity'::date",
    },
}


@pytest.fixture(scope="module")
def fresh(empty_db, logins):
    from indb.install import install

    dsn = empty_db("indb_badargs")
    install(dsn, venv=sys.prefix)
    return dsn


def calls(conn, role: str, kind: str, internal: bool = False) -> list[str]:
    """One statement per public function (no leading underscore) the role may execute; with ``internal``, per
    internal function (a leading underscore) instead."""
    rows = conn.execute(
        "select n.nspname, p.proname, array(select format_type(t, null) from unnest(p.proargtypes) t), "
        "p.prokind, p.proretset from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
        "where n.nspname in ('ml', 'registry', 'features', 'audit') and (p.proname ~ '^_') = %s "
        "and p.prorettype <> 'trigger'::regtype and has_function_privilege(%s, p.oid, 'EXECUTE') "
        "and not exists (select 1 from pg_depend d where d.objid = p.oid and d.deptype = 'e') "
        "order by p.oid::regprocedure::text",
        [internal, role],
    ).fetchall()
    out = []
    for nsp, name, types, prokind, retset in rows:
        args = ", ".join(f"null::{t}" if kind == "null" else VALUES[kind].get(t, f"null::{t}") for t in types)
        call = f"{nsp}.{name}({args})"
        if prokind == "p":
            out.append(f"call {call}")
        elif internal:  # the server's answer only: an internal helper may answer a time psycopg cannot load (infinity)
            out.append(f"select count(*) from {call}" if retset else f"select {call} is null")
        else:
            out.append(f"select * from {call}" if retset else f"select {call}")
    return out


@pytest.mark.parametrize("kind", ["null", "empty", "odd"])
@pytest.mark.parametrize("who", ["writer", "acme_writer", "admin"])
def test_every_public_function_refuses_bad_arguments_with_a_clear_error(fresh, who, kind):
    with psycopg.connect(fresh, autocommit=True) as su:
        statements = calls(su, login_name(who), kind)
    assert len(statements) > 80, "the role should be able to call indb's public functions"
    assert_clear_errors(fresh, login_name(who), statements)


@pytest.mark.parametrize("kind", ["null", "empty", "odd"])
def test_internal_functions_a_writer_may_call_refuse_bad_arguments_without_a_python_error(fresh, kind):
    """The internal functions a writer may execute (the public ones and the triggers call them; nothing stops a
    writer calling them directly) with the same values: an answer or a clear error, never a Python exception
    reported as a bug in indb (38000: ml._bm25_top and ml._vectorizer_apply did for NULLs before they were STRICT,
    and ml._bm25_top for terms and idfs of different lengths, or n < 1, before it checked them). The
    PL/Python bodies behind the wrappers (names ending in _py) are held to the SQLSTATE only: called directly, their
    error's context is PL/Python's own traceback, which the wrapper a user calls leaves out."""
    with psycopg.connect(fresh, autocommit=True) as su:
        statements = calls(su, login_name("writer"), kind, internal=True)
    assert len(statements) > 150, "the writer should be able to call indb's internal functions"
    assert_clear_errors(fresh, login_name("writer"), statements, traceback_in_context=r"\w_py\(")


def assert_clear_errors(fresh: str, role: str, statements: list[str], traceback_in_context: str = "^$") -> None:
    """Every statement answers or fails with a SQLSTATE of its own class (not XX, 38, 39), a primary message and
    no Python traceback (unless the statement matches ``traceback_in_context``); the connection stays up."""
    bad: list[str] = []
    with psycopg.connect(psycopg.conninfo.make_conninfo(fresh, user=role)) as c:
        c.execute("set statement_timeout = '30s'")
        c.commit()
        for sql in statements:
            try:
                cur = c.execute(sql)
                if cur.description:
                    cur.fetchall()
            except psycopg.Error as e:
                if c.broken:
                    pytest.fail(f"{sql}: the connection broke: {e}")
                state = e.sqlstate or ""
                text = " ".join(filter(None, [str(e), e.diag.context or ""]))
                if (
                    state[:2] in ("", "XX", "38", "39")
                    or ("Traceback" in text and not re.search(traceback_in_context, sql))
                    or not e.diag.message_primary
                ):
                    bad.append(f"{sql}\n    {state}: {text[:300]}")
            finally:
                c.rollback()
        assert c.execute("select 1").fetchone() == (1,)
    assert not bad, f"{len(bad)} unclear errors:\n" + "\n".join(bad)
