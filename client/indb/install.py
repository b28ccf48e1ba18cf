"""`indb install`: bring a database to the current schema version in one transaction.

1. check that the server is PostgreSQL 15+ and that pgvector and plpython3u are available;
2. `alembic upgrade head` (stateful changes: schemas, tables, indexes), then ALTER EXTENSION vector UPDATE
   when the server has a newer pgvector than the database;
3. re-apply every sql/*.sql file in order (stateless objects: create or replace functions, views, grants);
4. record the runtime venv in ml.installs (the only place PL/Python's ml._activate reads it from: a setting
   any role could change) and check, inside the server, that PL/Python can import the runtime package at the
   same version.
Any failure rolls everything back: nothing is half-installed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psycopg
from psycopg import sql as pgsql

from . import __version__
from .errors import InstallError
from .localdb import repo_root

MIN_SERVER_VERSION = 150000
REQUIRED_EXTENSIONS = {
    "vector": "pgvector is not available on this server. On Debian/Ubuntu build it for your PostgreSQL "
    "(`bash docker/install-system.sh` does this for PostgreSQL 15), or install the "
    "postgresql-<major>-pgvector package; in Docker use this repository's docker/Dockerfile.",
    "plpython3u": "plpython3u is not available on this server. Install it with "
    "`apt-get install postgresql-<major>-plpython3` (PostgreSQL 15: postgresql-plpython3-15).",
}

# indb's own C functions (sql/c, the audit log's append path): built with PGXS into the server's library folder
C_LIBRARY = "indb_audit"


def sql_files() -> list[Path]:
    return sorted((repo_root() / "sql").glob("*.sql"))


def render_sql(path: Path, vector_schema: str = "public") -> str:
    """The text of a sql/ file as installed: @INDB_VERSION@ filled in, and @VS@ replaced by the quoted name of the
    schema that holds the vector extension (wherever the database already has pgvector, usually public).

    Every pgvector type, function, operator and operator class in indb's SQL is written with @VS@ in front: the
    pinned ``search_path = pg_catalog, pg_temp`` of indb's functions does not hold that schema, so a function or
    operator another role makes there (everyone may create in public in many databases) is never picked by name
    resolution inside indb's functions, which run as indb_owner."""
    quoted = '"' + vector_schema.replace('"', '""') + '"'
    return path.read_text().replace("@INDB_VERSION@", __version__).replace("@VS@", quoted)


def alembic_config():
    from alembic.config import Config

    cfg = Config(str(repo_root() / "migrations" / "alembic.ini"))
    cfg.set_main_option("script_location", str(repo_root() / "migrations"))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise InstallError("the migrations folder has no head revision")
    return head


def check_server(conn: psycopg.Connection) -> None:
    version = conn.info.server_version
    if version < MIN_SERVER_VERSION:
        raise InstallError(f"indb needs PostgreSQL 15 or newer; this server is {version // 10000}.")
    rows = conn.execute(
        "select name from pg_available_extensions where name = any(%s)", [list(REQUIRED_EXTENSIONS)]
    ).fetchall()
    have = {r[0] for r in rows}
    missing = [e for e in REQUIRED_EXTENSIONS if e not in have]
    if missing:
        raise InstallError(
            f"cannot install indb: extension(s) {', '.join(missing)} not available on the server; nothing was changed.",
            sqlstate="58P01",
            hint=" ".join(REQUIRED_EXTENSIONS[m] for m in missing),
        )


def _revision(sa) -> str | None:
    from sqlalchemy import text

    if not sa.execute(text("select to_regclass('ml.alembic_version')")).scalar():
        return None
    return sa.execute(text("select version_num from ml.alembic_version")).scalar()


def _apply_sql(cur) -> list[str]:
    """Re-apply every sql/ file in order, with @VS@ rendered as the vector extension's schema (render_sql)."""
    cur.execute(
        "select n.nspname from pg_extension e join pg_namespace n on n.oid = e.extnamespace where e.extname = 'vector'"
    )
    vector_schema = cur.fetchone()[0]
    applied = []
    for f in sql_files():
        try:
            cur.execute(render_sql(f, vector_schema))
        except psycopg.Error as e:
            if e.sqlstate == "58P01" and C_LIBRARY in str(e):
                raise InstallError(
                    f"cannot install indb: its C library {C_LIBRARY}.so is not in this server's library folder "
                    "(pg_config --pkglibdir); nothing was changed.",
                    sqlstate="58P01",
                    hint="Build and install it on the database server: `make c-functions` in this repository (as "
                    "root, or with sudo), or `make -C sql/c install PG_CONFIG=<the server's pg_config>`; the "
                    "docker/Dockerfile image has it.",
                ) from e
            raise InstallError(
                f"applying {f.relative_to(repo_root())} failed: {e}", sqlstate=getattr(e, "sqlstate", None)
            ) from e
        applied.append(f.name)
    return applied


def _check_vector_schema(cur) -> None:
    """Refuse (42501, the whole install rolled back) while a role other than a superuser may create objects in the
    vector extension's schema, which every indb function searches (ml._vector_schema_creators, sql/000-runtime.sql):
    a function or operator made there could be picked by one of indb's and run as indb_owner."""
    cur.execute(
        "select ml._vector_schema_creators(), n.nspname, n.nspowner = 'pg_database_owner'::regrole, "
        "(select d.datdba::regrole::text from pg_database d where d.datname = current_database()) "
        "from pg_extension e join pg_namespace n on n.oid = e.extnamespace where e.extname = 'vector'"
    )
    creators, schema, db_owner_owns, db_owner = cur.fetchone()
    if not creators:
        cur.execute("select ml._vector_schema_foreign_routines()")
        foreign = cur.fetchone()[0]
        if foreign:
            shown = ", ".join(foreign[:10]) + (f" and {len(foreign) - 10} more" if len(foreign) > 10 else "")
            raise InstallError(
                f"indb cannot be installed safely: schema {schema}, which holds pgvector and which every indb function "
                f"searches, has functions or operators of roles that are not superusers: {shown}",
                sqlstate="42501",
                detail="one of them could be picked by an indb function over PostgreSQL's own and run as indb_owner; "
                "nothing was installed",
                hint="move them to a schema of their own (ALTER FUNCTION ... SET SCHEMA ...), or, once read, give them "
                "to a superuser (ALTER FUNCTION ... OWNER TO postgres); then run indb install again",
            )
        return
    ident = pgsql.Identifier(schema).as_string(cur)
    who = ", ".join(c if c == "PUBLIC" else pgsql.Identifier(c).as_string(cur) for c in creators)
    hint = f"REVOKE CREATE ON SCHEMA {ident} FROM {who}"
    if db_owner_owns and db_owner in creators:
        hint += (
            f"; the database's owner {db_owner} may create there as a member of pg_database_owner, the schema's "
            f"owner: ALTER SCHEMA {ident} OWNER TO a superuser"
        )
    raise InstallError(
        f"indb cannot be installed safely: {', '.join(creators)} may create objects in schema {schema}, which holds "
        "pgvector and which every indb function searches for pgvector's types and operators",
        sqlstate="42501",
        detail="a function or operator made there could be picked by an indb function over PostgreSQL's own and run "
        "as indb_owner (or as whoever calls it); nothing was installed",
        hint=hint + "; then run indb install again",
    )


def _update_vector(cur) -> dict:
    """ALTER EXTENSION vector UPDATE when the server has a newer pgvector than the database (a system upgrade
    of pgvector leaves existing databases on the old SQL version until this runs). Returns {from, to}."""
    cur.execute(
        "select e.extversion, a.default_version from pg_extension e "
        "join pg_available_extensions a on a.name = e.extname where e.extname = 'vector'"
    )
    row = cur.fetchone()
    if row is None:
        return {"from": None, "to": None}
    before, default = row
    if before != default:
        try:
            cur.execute("alter extension vector update")
        except psycopg.Error as e:
            raise InstallError(
                f"ALTER EXTENSION vector UPDATE (from {before} to {default}) failed: {e.diag.message_primary or e}",
                sqlstate=getattr(e, "sqlstate", None),
                hint="Run indb install as the owner of the vector extension or as a superuser.",
            ) from e
        cur.execute("select extversion from pg_extension where extname = 'vector'")
        return {"from": before, "to": cur.fetchone()[0]}
    return {"from": before, "to": before}


def _check_runtime(cur, venv: str) -> dict:
    """ml.runtime_check() inside the server: the venv must be usable by PL/Python, at this version."""
    try:
        cur.execute("select ml.runtime_check()")
        return cur.fetchone()[0]
    except psycopg.Error as e:
        raise InstallError(
            f"the database cannot load the indb runtime from {venv}: {e.diag.message_primary or e}",
            sqlstate=getattr(e, "sqlstate", None),
            hint=(e.diag.message_hint or "") + " Use --venv to give the runtime venv's path "
            "as the database server sees it.",
        ) from e


def install(
    dsn: str,
    venv: str | None = None,
    target: str = "head",
    apply_sql: bool = True,
    check_runtime: bool = True,
    log=print,
) -> dict:
    """Upgrade the database at ``dsn`` to ``target`` and re-apply sql/, in one transaction under an advisory
    lock: alembic upgrade, a row in ml.installs (the runtime venv), the sql/ files, the runtime check. Returns a
    summary."""
    from alembic import command
    from sqlalchemy import create_engine, text

    venv = venv or sys.prefix
    t0 = time.time()
    try:
        raw = psycopg.connect(dsn)
    except psycopg.Error as e:  # a server that is down, a database that does not exist, a malformed DSN
        raise InstallError(
            f"cannot connect to the database: {str(e).strip()}",
            sqlstate=e.sqlstate,
            hint="start the project's cluster with `indb db start`, or name another database with --dsn (or INDB_DSN)",
        ) from None
    with raw:
        check_server(raw)
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))
    cfg = alembic_config()
    try:
        with engine.begin() as sa:
            sa.execute(text("select pg_advisory_xact_lock(hashtext('indb install'))"))
            before = _revision(sa)
            cfg.attributes["connection"] = sa
            command.upgrade(cfg, target)
            after = _revision(sa)
            dbapi = sa.connection.dbapi_connection
            assert isinstance(dbapi, psycopg.Connection)
            with dbapi.cursor() as cur:
                # first: ml._activate takes the runtime venv from the newest row (sql/000-runtime.sql), and a
                # sql/ file or the runtime check may run PL/Python
                cur.execute(
                    "insert into ml.installs(version, revision, venv) values (%s, %s, %s)", [__version__, after, venv]
                )
                pgvector = _update_vector(cur)
                applied = _apply_sql(cur) if apply_sql else []
                if apply_sql:
                    _check_vector_schema(cur)
                runtime = _check_runtime(cur, venv) if apply_sql and check_runtime else None
    except InstallError:
        raise
    except psycopg.Error as e:
        raise InstallError(f"install failed and was rolled back: {e}", sqlstate=getattr(e, "sqlstate", None)) from e
    except Exception as e:  # alembic wraps driver errors in SQLAlchemy ones
        orig = getattr(e, "orig", None)
        sqlstate = getattr(orig, "sqlstate", None)
        raise InstallError(f"install failed and was rolled back: {orig or e}", sqlstate=sqlstate) from e
    finally:
        engine.dispose()
    return {
        "from": before,
        "to": after,
        "sql_files": applied,
        "pgvector": pgvector,
        "venv": venv,
        "runtime": runtime,
        "version": __version__,
        "seconds": round(time.time() - t0, 2),
    }
