"""Helpers shared by tests that act as indb roles and tenants (importable as `helpers`: tests/ is on sys.path)."""

from __future__ import annotations


def ensure_tenant(conn, tenant: str) -> None:
    """Create tenant ``tenant`` (role indb_tenant_<tenant>) if it is missing; ``conn`` must be a superuser's."""
    conn.execute("reset role")
    conn.execute("select ml.create_tenant(%s)", [tenant])


def acting_role(conn, group: str, tenant: str | None = None) -> str:
    """A role in indb role ``group`` bound to ``tenant`` (or to no tenant), created on first use: roles are
    cluster-wide, so the same name is reused by later test sessions. ``conn`` must be a superuser's."""
    role = f"t_{group.removeprefix('indb_')}_{tenant or 'none'}"
    conn.execute("reset role")
    if tenant:
        ensure_tenant(conn, tenant)
    if not conn.execute("select 1 from pg_roles where rolname = %s", [role]).fetchone():
        conn.execute(f'create role "{role}" nologin in role {group}')
        if tenant:
            conn.execute(f'grant "indb_tenant_{tenant}" to "{role}"')
    return role


def act_as(conn, group: str, tenant: str | None = None) -> str:
    """SET ROLE to a role of ``group`` bound to ``tenant`` (no indb.tenant needed: a bound role acts for it)."""
    role = acting_role(conn, group, tenant)
    conn.execute("reset indb.tenant")
    conn.execute(f'set role "{role}"')
    return role


def login_name(key: str) -> str:
    """The LOGIN role of tests/security's attacker ``key`` (see LOGINS in tests/security/conftest.py)."""
    return f"sec_{key}"


def is_superuser(conn, role: str) -> bool:
    return bool(conn.execute("select rolsuper from pg_roles where rolname = %s", [role]).fetchone()[0])


def own_schema(conn, role: str, prefix: str = "s") -> str:
    """A new schema owned by ``role`` (where a non-superuser makes its own tables); ``conn`` must be a superuser's."""
    import secrets

    name = f"{prefix}_{secrets.token_hex(4)}"
    conn.execute(f'create schema "{name}" authorization "{role}"')
    return name


def sql_error(exc: Exception) -> str:
    """An error as a client shows it (message, detail, hint): for checks that nothing leaks into it."""
    diag = getattr(exc, "diag", None)
    parts = [str(exc)]
    if diag is not None:
        parts += [diag.message_detail or "", diag.message_hint or "", diag.context or ""]
    return "\n".join(parts)


def one_row(conn, sql: str, params=None) -> dict:
    """The one row of a function that returns a table (``select * from ml.f(...)``) as a dict."""
    from psycopg.rows import dict_row

    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    assert len(rows) == 1, f"expected one row, got {len(rows)}: {sql}"
    return rows[0]


def static_branch(conn, collection: str, present: bool) -> None:
    """Add or remove ``collection``'s branch in ml._search_static, as indb's owner does (superuser ``conn``)."""
    conn.execute("select ml._search_static_set(c, %s) from ml.collections c where c.name = %s", [present, collection])


def static_source(conn) -> str:
    """The body of ml._search_static: one branch per collection whose filter-free search it answers."""
    return conn.execute("select prosrc from pg_proc where proname = '_search_static'").fetchone()[0]


def seq_scans(conn, rel: str) -> int:
    """Sequential scans of ``rel`` so far (pg_stat_user_tables), with ``conn``'s own statements counted: its
    statistics are flushed first."""
    conn.execute("select pg_stat_force_next_flush()")
    conn.execute("select pg_stat_clear_snapshot()")
    return conn.execute("select seq_scan from pg_stat_user_tables where relid = %s::regclass", [rel]).fetchone()[0]


def explain_everything(conn) -> list[str]:
    """Make ``conn`` EXPLAIN ANALYZE every statement it runs, nested ones included (auto_explain, as notices), and
    return the list its messages are collected in (a plan's message contains "plan:", and "JIT:" if it was
    compiled). Needs a superuser connection (LOAD)."""
    logs: list[str] = []
    conn.add_notice_handler(lambda d: logs.append(d.message_primary or ""))
    conn.execute("load 'auto_explain'")
    for setting in ("log_min_duration = 0", "log_analyze = on", "log_nested_statements = on"):
        conn.execute(f"set auto_explain.{setting}")
    conn.execute("set client_min_messages = log")
    return logs


def watch_progress(db_dsn, command, target, call, params, until=None, release=None):
    """Run ``call`` in a new session (a thread) and poll ml.progress from another session while it runs: the
    rows seen for (command, target). ``until(row)``: the row to wait for before ``release()`` lets the call go on."""
    out: dict = {}
    import threading
    import time

    import psycopg

    worker = psycopg.connect(db_dsn, autocommit=True)

    def go():
        try:
            cur = worker.execute(call, params)
            out["rows"] = cur.fetchall() if cur.description else []
        except Exception as e:  # reported below
            out["error"] = e

    seen: list = []
    with psycopg.connect(db_dsn, autocommit=True) as watcher:
        th = threading.Thread(target=go)
        th.start()
        released = release is None
        deadline = time.time() + 120
        while th.is_alive() and time.time() < deadline:
            rows = watcher.execute(
                "select phase, done, total, unit, pid <> pg_backend_pid() from ml.progress "
                "where command = %s and target = %s",
                [command, target],
            ).fetchall()
            seen += rows
            if not released and any(until(r) for r in rows):
                release()
                released = True
            time.sleep(0.05)
        if not released:
            release()
        th.join()
        worker.close()
        assert "error" not in out, out.get("error")
        after = watcher.execute(
            "select count(*) from ml.progress where command = %s and target = %s", [command, target]
        )
        assert after.fetchone()[0] == 0, "the progress of a call that ended is gone"
    return seen
