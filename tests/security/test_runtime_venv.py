"""Which Python the server runs is not a session's choice. PL/Python's ml._activate put "the runtime venv" on
sys.path with site.addsitedir, which runs the import lines of the venv's .pth files, and then imported indb's
runtime from it: all as the server's OS user (a superuser's rights over every database). It took the venv from
the setting indb.venv, and any role may SET a custom setting. An application login pointed it at a folder of its
own and ran its code. (PostgreSQL 15 refuses a non-superuser's ALTER ROLE ... SET of a custom setting, even for
itself: tried, 42501.) The venv is now the one `indb install` recorded in
ml.installs, which only the installer writes."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def planted_venv():
    """A venv-shaped folder the server can read, whose .pth file writes a marker when Python processes it (as
    site.addsitedir does), and the marker's path (in a folder the server's OS user may write)."""
    root = Path(tempfile.mkdtemp(prefix="indb-planted-", dir="/tmp"))
    marker = root / "out" / "ran"
    sp = root / "venv" / "lib" / "python3.11" / "site-packages"
    sp.mkdir(parents=True)
    (root / "out").mkdir()
    (sp / "planted.pth").write_text(f"import os; open({str(marker)!r}, 'w').write(str(os.getuid()))\n")
    for d, _dirs, files in os.walk(root):
        os.chmod(d, 0o777 if d == str(root / "out") else 0o755)
        for f in files:
            os.chmod(os.path.join(d, f), 0o644)
    yield root / "venv", marker
    shutil.rmtree(root, ignore_errors=True)


def test_a_session_setting_cannot_choose_the_python_the_server_runs(connect_as, planted_venv):
    venv, marker = planted_venv
    app = connect_as("app")  # a new backend: it has not loaded the runtime yet
    app.execute("select set_config('indb.venv', %s, false)", [str(venv)])
    v = app.execute("select ml.embed('all-MiniLM-L6-v2', 'planted') is not null").fetchone()[0]
    assert v is True  # the installed runtime answered
    assert not marker.exists(), "the planted .pth ran in the server"
    recorded = app.execute("select ml._runtime_venv()").fetchone()[0]
    assert recorded != str(venv) and Path(recorded, "lib").is_dir()
