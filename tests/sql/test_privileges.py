"""The privilege matrix: for each indb role, each function, table and schema of the indb schemas,
allowed or refused, compared with a golden file; plus spot checks that the database really acts on it.

The golden file is tests/sql/golden/privileges.txt. Other areas add functions; after checking the diff,
regenerate it with:  INDB_UPDATE_GOLDEN=1 .venv/bin/pytest tests/sql/test_privileges.py
"""

from __future__ import annotations

import difflib
import os
import secrets
from pathlib import Path

import psycopg
import pytest

GOLDEN = Path(__file__).resolve().parent / "golden" / "privileges.txt"
ROLES = ["indb_app", "indb_reader", "indb_writer", "indb_admin"]
HEADER = """# indb privilege matrix: X allowed, - refused, for app / reader / writer / admin.
# functions: EXECUTE; tables: SELECT INSERT UPDATE DELETE; schemas: USAGE CREATE.
# Regenerate after reviewing a change: INDB_UPDATE_GOLDEN=1 .venv/bin/pytest tests/sql/test_privileges.py
"""


def matrix(conn) -> str:
    lines = [HEADER]
    cols = ", ".join(f"has_function_privilege('{r}', p.oid, 'EXECUTE')" for r in ROLES)
    for row in conn.execute(
        f"select p.oid::regprocedure::text, {cols} from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
        "where n.nspname in ('ml', 'registry', 'features', 'audit') and p.prokind in ('f', 'p') "
        "and not exists (select 1 from pg_depend d where d.objid = p.oid and d.deptype = 'e') "
        "order by 1"
    ).fetchall():
        lines.append(f"function {row[0]:<70} " + " ".join("X" if x else "-" for x in row[1:]))
    privs = ["SELECT", "INSERT", "UPDATE", "DELETE"]
    cols = ", ".join(f"has_table_privilege('{r}', c.oid, '{p}')" for r in ROLES for p in privs)
    for row in conn.execute(
        f"select c.oid::regclass::text, {cols} from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname in ('ml', 'registry', 'features', 'audit') and c.relkind in ('r', 'p', 'v', 'm') "
        "and not c.relispartition order by 1"
    ).fetchall():
        cells = ["".join("X" if row[1 + i * 4 + j] else "-" for j in range(4)) for i in range(len(ROLES))]
        lines.append(f"table    {row[0]:<70} " + " ".join(cells))
    cols = ", ".join(f"has_schema_privilege('{r}', n.oid, '{p}')" for r in ROLES for p in ("USAGE", "CREATE"))
    for row in conn.execute(
        f"select n.nspname, {cols} from pg_namespace n "
        "where n.nspname in ('ml', 'registry', 'features', 'audit') order by 1"
    ).fetchall():
        cells = ["".join("X" if row[1 + i * 2 + j] else "-" for j in range(2)) for i in range(len(ROLES))]
        lines.append(f"schema   {row[0]:<70} " + " ".join(cells))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def fresh_install(empty_db):
    """The matrix is taken on a database that holds only what `indb install` creates: objects that
    other tests make at run time (feature tables, compiled on-demand features) must not leak in."""
    import sys

    from indb.install import install

    dsn = empty_db("indb_privs")
    install(dsn, venv=sys.prefix)
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


def test_privilege_matrix_matches_golden(fresh_install):
    got = matrix(fresh_install)
    if os.environ.get("INDB_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(got)
    want = GOLDEN.read_text()
    if got != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "golden", "database"))
        pytest.fail("privilege matrix changed; review and regenerate with INDB_UPDATE_GOLDEN=1:\n" + diff)


def test_public_has_no_access(conn):
    assert (
        conn.execute(
            "select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
            "where n.nspname in ('ml', 'registry', 'features', 'audit') "
            "and exists (select 1 from aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a "
            "            where a.grantee = 0)"
        ).fetchone()[0]
        == 0
    )
    assert (
        conn.execute(
            "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname in ('ml', 'registry', 'features', 'audit') and c.relacl is not null "
            "and exists (select 1 from aclexplode(c.relacl) a where a.grantee = 0)"
        ).fetchone()[0]
        == 0
    )


def test_no_role_may_change_the_audit_log(conn):
    for r in ROLES:
        for p in ("INSERT", "UPDATE", "DELETE", "TRUNCATE"):
            assert not conn.execute("select has_table_privilege(%s, 'audit.events', %s)", [r, p]).fetchone()[0]


@pytest.mark.parametrize(
    "role, sql, allowed",
    [
        ("indb_app", "select count(*) from registry.runs", False),
        ("indb_app", "select registry.start_run('{exp}')", False),
        ("indb_app", "select count(*) from registry.model_versions", False),
        ("indb_app", "select count(*) from audit.events", False),
        ("indb_reader", "select count(*) from registry.search_runs(null, '')", True),
        ("indb_reader", "select count(*) from registry.runs", True),
        ("indb_reader", "select registry.start_run('{exp}')", False),
        ("indb_reader", "insert into registry.experiments(name) values ('{exp}')", False),
        ("indb_reader", "select ok from audit.verify()", True),
        ("indb_reader", "select count(*) from audit.events", False),
        ("indb_writer", "select registry.start_run('{exp}')", True),
        ("indb_writer", "select count(*) from audit.events", False),
        ("indb_writer", "select ml.create_tenant('x{hex}')", False),
        ("indb_writer", "select audit.apply_retention('30 days')", False),
        ("indb_admin", "select count(*) from audit.events", True),
        ("indb_admin", "select registry.start_run('{exp}')", True),
    ],
)
def test_roles_act_as_the_matrix_says(conn, role, sql, allowed):
    h = secrets.token_hex(3)
    conn.execute(f"set role {role}")
    try:
        q = sql.format(exp=f"exp_{h}", hex=h)
        if allowed:
            conn.execute(q)
        else:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(q)
    finally:
        conn.execute("reset role")
