"""The rules of SECURITY.md that can be read off the catalogs, checked on a fresh install: who owns what, who
may write catalogs, how SECURITY DEFINER functions are set up. Each rule closes a class of holes; a new
object that breaks one fails here before an attacker finds it."""

from __future__ import annotations

ROLES = ("indb_app", "indb_reader", "indb_writer", "indb_admin")
SCHEMAS = ("ml", "registry", "features", "audit", "collections", "embeddings")
DATA_SCHEMAS = ("collections", "embeddings")
DATA_TABLES = {"features.online_store"}  # and every features.fv_<id>_offline table


def rows(conn, sql, params=None):
    return conn.execute(sql, params).fetchall()


def test_indb_owner_owns_everything_and_nobody_can_become_it(sconn):
    strays = rows(
        sconn,
        "select c.oid::regclass::text, c.relowner::regrole::text from pg_class c "
        "join pg_namespace n on n.oid = c.relnamespace where n.nspname = any(%s) and c.relkind in ('r','p','v','m','S') "
        "and c.relowner <> 'indb_owner'::regrole",
        [list(SCHEMAS)],
    )
    assert strays == []
    fns = rows(
        sconn,
        "select p.oid::regprocedure::text, p.proowner::regrole::text from pg_proc p "
        "join pg_namespace n on n.oid = p.pronamespace where n.nspname = any(%s) "
        "and p.proowner not in ('indb_owner'::regrole, 'indb_tenant_manager'::regrole) "
        "and not exists (select 1 from pg_depend d where d.objid = p.oid and d.deptype = 'e')",
        [list(SCHEMAS)],
    )
    assert fns == []
    assert (
        rows(
            sconn,
            "select rolname from pg_roles where rolname in ('indb_owner', 'indb_tenant_manager') "
            "and (rolsuper or rolbypassrls or rolcanlogin)",
        )
        == []
    )
    assert (
        rows(
            sconn,
            "select 1 from pg_auth_members m join pg_roles g on g.oid = m.roleid "
            "where g.rolname in ('indb_owner', 'indb_tenant_manager')",
        )
        == []
    )


def test_no_indb_role_may_write_a_catalog_or_attach_anything(sconn):
    bad = []
    for rel, schema, name, part in rows(
        sconn,
        "select c.oid::regclass::text, n.nspname, c.relname, c.relispartition from pg_class c "
        "join pg_namespace n on n.oid = c.relnamespace where n.nspname = any(%s) and c.relkind in ('r','p')",
        [list(SCHEMAS)],
    ):
        data = (
            schema in DATA_SCHEMAS
            or f"{schema}.{name}" in DATA_TABLES
            or (schema == "features" and name.startswith("fv_") and name.endswith("_offline"))
        )
        for role in ROLES:
            for priv in ("TRUNCATE", "TRIGGER", "REFERENCES") + (
                () if data and not part else ("INSERT", "UPDATE", "DELETE")
            ):
                if sconn.execute("select has_table_privilege(%s, %s, %s)", [role, rel, priv]).fetchone()[0]:
                    bad.append((role, priv, rel))
            if part and sconn.execute("select has_table_privilege(%s, %s, 'SELECT')", [role, rel]).fetchone()[0]:
                bad.append((role, "SELECT on a partition (it has no tenant policy of its own)", rel))
    assert bad == []
    for role in ROLES:
        for s in SCHEMAS:
            assert not sconn.execute("select has_schema_privilege(%s, %s, 'CREATE')", [role, s]).fetchone()[0], (
                role,
                s,
            )


def test_every_security_definer_function_is_pinned_and_not_public(sconn):
    bad = rows(
        sconn,
        "select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
        "where n.nspname = any(%s) and p.prosecdef and ("
        "  not exists (select 1 from unnest(p.proconfig) c where c like 'search\\_path=pg\\_catalog%%')"
        "  or has_function_privilege('public', p.oid, 'EXECUTE'))",
        [list(SCHEMAS)],
    )
    assert bad == []


def test_every_tenant_table_forces_the_one_tenant_policy(sconn):
    bad = rows(
        sconn,
        "select c.oid::regclass::text from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = any(%s) and n.nspname <> 'audit' and c.relkind in ('r','p') and not c.relispartition "
        "and exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'tenant' and not a.attisdropped) "
        "and not (c.relrowsecurity and c.relforcerowsecurity "
        "         and (select count(*) from pg_policy p where p.polrelid = c.oid and p.polname like 'indb\\_tenant\\_%%') = 4 "
        "         and not exists (select 1 from pg_policy p where p.polrelid = c.oid and p.polname not like 'indb\\_%%'))",
        [list(SCHEMAS)],
    )
    assert bad == []


def test_no_plpython_function_is_public_facing(sconn):
    """PL/Python bodies are internal (_..._py or _name); what users call is a plpgsql/SQL face with clean errors."""
    bad = rows(
        sconn,
        "select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
        "join pg_language l on l.oid = p.prolang where n.nspname = any(%s) and l.lanname = 'plpython3u' "
        "and p.proname not like '\\_%%'",
        [list(SCHEMAS)],
    )
    assert bad == []
