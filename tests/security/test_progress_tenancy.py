"""Progress of long calls (ml.progress) names what is being worked on: a collection, a vectorizer, a project, a
feature view. Another tenant, or a role with no indb rights, must not learn those names, whether it reads the
view or calls the function behind it: a session sees the calls of roles it is a member of (admins see all),
in its own database only. Before, ml._progress(), which any indb role may execute, returned every call of every
role in every database of the cluster (it reads the server's progress files, not a table row security guards)."""

from __future__ import annotations

import secrets

import psycopg
import pytest


@pytest.fixture
def acme_call(connect_as):
    """acme's writer in the middle of a long call: its progress entry names an acme collection."""
    w = connect_as("acme_writer")
    target = f"acme_patients_{secrets.token_hex(3)}"
    w.execute(
        "select ml._report_progress('collections.add_documents', %s, 'embedding', 10, 100, 'documents')", [target]
    )
    yield w, target
    w.execute("select ml._report_progress(null)")


def targets(conn: psycopg.Connection, sql: str) -> set[str]:
    """The targets ``sql`` shows; none when the role may not read it at all (indb_app has no SELECT on the
    view)."""
    try:
        return {r[0] for r in conn.execute(sql).fetchall()}
    except psycopg.errors.InsufficientPrivilege:
        return set()


@pytest.mark.parametrize("who", ["globex_reader", "globex_writer", "reader", "acme_reader", "app"])
def test_other_roles_do_not_see_a_tenants_long_call(connect_as, acme_call, who):
    _, target = acme_call
    c = connect_as(who)
    assert target not in targets(c, "select target from ml.progress")
    assert target not in targets(c, "select target from ml._progress()")


def test_the_caller_and_an_admin_see_it(connect_as, acme_call):
    w, target = acme_call
    assert target in targets(w, "select target from ml.progress")
    assert target in targets(connect_as("admin"), "select target from ml.progress")
    assert target in targets(connect_as("admin"), "select target from ml._progress()")


def test_a_role_without_indb_rights_cannot_read_progress(connect_as, acme_call):
    c = connect_as("norights")
    for sql in ("select target from ml.progress", "select target from ml._progress()"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(sql).fetchall()


def test_another_database_does_not_see_it(acme_call, empty_db):
    """An admin of another database of the same cluster (its own superuser here) sees none of this one's calls."""
    import sys

    from indb.install import install

    _, target = acme_call
    dsn = empty_db("indb_progress_other")
    install(dsn, venv=sys.prefix)
    with psycopg.connect(dsn, autocommit=True) as c:
        assert target not in targets(c, "select target from ml.progress")
        assert target not in targets(c, "select target from ml._progress()")
