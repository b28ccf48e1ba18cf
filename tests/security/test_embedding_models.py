"""Embedding models are code the server loads (issue 10, item 8): only admins register them, a package source is
only a model package of the runtime venv (``package:os`` imported any module), a bad path does not tell which
server paths exist, and errors are clean (no Python traceback, no plpy prefix, never "None")."""

from __future__ import annotations

import psycopg
import pytest
from helpers import sql_error


@pytest.mark.parametrize("who", ["app", "reader", "writer", "acme_writer"])
def test_only_admins_register_models(connect_as, who):
    c = connect_as(who)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute("select ml.register_embedding_model('evil', 'package:os', dimensions => 3)")
    if who in ("writer", "acme_writer"):  # the internal writer is executable by writers, and checks the caller
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            c.execute("select ml._embedding_model_save('evil', 'package:os', 3, null, true, true)")
        assert "only indb_admin" in str(e.value)


@pytest.mark.parametrize(
    "source, state",
    [
        ("package:os", "58P01"),  # not a distribution of the venv: refused before it is imported
        ("package:subprocess", "58P01"),
        ("package:pip", "58P01"),  # a distribution, but not a model package
        ("package:os.path", "22023"),
        ("package:x; import os", "22023"),
        ("/nonexistent", "58P01"),
        ("/etc/passwd", "58P01"),
        ("../../etc", "58P01"),
    ],
)
def test_admins_register_only_real_model_packages_and_folders(connect_as, sconn, source, state):
    a = connect_as("admin")
    with pytest.raises(psycopg.Error) as e:
        a.execute("select ml.register_embedding_model('evil', %s, dimensions => 3, replace => true)", [source])
    assert e.value.sqlstate == state, sql_error(e.value)
    text = sql_error(e.value)
    assert "Traceback" not in text and "plpy." not in text and "None" not in text
    assert sconn.execute("select count(*) from ml.embedding_models where name = 'evil'").fetchone()[0] == 0


def test_a_path_error_does_not_tell_which_paths_exist(connect_as):
    a = connect_as("admin")
    msgs = set()
    for p in ("/nonexistent/folder", "/etc", "/etc/hostname", "/root", "/proc/1"):
        with pytest.raises(psycopg.errors.UndefinedFile) as e:
            a.execute("select ml.register_embedding_model('evil', %s, dimensions => 3)", [p])
        msgs.add(e.value.diag.message_primary.replace(p, "<path>"))
    assert len(msgs) == 1


def test_runtime_info_warns_a_session_that_skips_row_level_security(connect_as, sconn):
    info = connect_as("reader").execute("select ml.runtime_info()").fetchone()[0]
    assert info["warnings"] == [] and info["session"]["superuser"] is False
    notices: list[str] = []

    def handler(d):
        notices.append(d.message_primary)

    sconn.add_notice_handler(handler)
    try:
        info = sconn.execute("select ml.runtime_info()").fetchone()[0]
    finally:
        sconn.remove_notice_handler(handler)
    assert info["session"]["superuser"] is True and "row-level security does not apply" in info["warnings"][0]
    assert any("row-level security does not apply" in n for n in notices)
