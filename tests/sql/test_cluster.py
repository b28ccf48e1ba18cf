"""The project's own cluster: start/stop/status, faults (port taken, crash with a stale pid file),
and a state folder below a directory the postgres user cannot enter (mktemp -d is mode 700)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from indb.errors import ClusterError
from indb.localdb import Cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_cluster():
    """A second, throwaway cluster in a mode-700 temp folder (like a CI clone under mktemp -d)."""
    top = Path(tempfile.mkdtemp(prefix="indb-cluster-"))  # mode 0700
    assert oct(top.stat().st_mode & 0o777) == "0o700"
    c = Cluster(top / "repo" / ".state", _free_port())
    yield c
    try:
        c.stop()
    finally:
        subprocess.run(["rm", "-rf", str(top)])


def test_start_status_stop_in_a_folder_postgres_cannot_enter(private_cluster):
    c = private_cluster
    assert "initialized and started" in c.start()
    assert c.status()["running"] is True
    with psycopg.connect(c.dsn()) as conn:
        assert conn.execute("select current_setting('shared_preload_libraries')").fetchone()[0] == "pg_cron"
        assert int(conn.execute("select setting from pg_settings where name = 'shared_buffers'").fetchone()[0]) > 16384
    assert c.start() == "already running"
    assert c.stop() == "stopped"
    assert c.status()["running"] is False
    assert c.stop() == "not running"


def test_port_taken_by_another_program_gives_a_clear_error(private_cluster):
    c = private_cluster
    c.init()
    with socket.socket() as s:
        s.bind(("127.0.0.1", c.port))
        s.listen()
        with pytest.raises(ClusterError, match=rf"port {c.port} .* in use by another program.*INDB_PORT"):
            c.start()
    assert (c.data / "PG_VERSION").exists(), "a failed start must never remove data"


def test_crash_with_stale_pid_file_recovers_and_keeps_data(private_cluster):
    c = private_cluster
    c.start()
    with psycopg.connect(c.dsn(), autocommit=True) as conn:
        conn.execute("create table kept(x int); insert into kept values (42)")
    pid = int((c.data / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)  # crash: postmaster.pid and socket stay behind
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        import time

        time.sleep(0.05)
    assert (c.data / "postmaster.pid").exists()
    # orphaned backends may still hold shared memory for a moment; start must still succeed
    msg = c.start()
    assert "stale postmaster.pid" in msg
    with psycopg.connect(c.dsn()) as conn:
        assert conn.execute("select x from kept").fetchone()[0] == 42


def test_a_non_empty_foreign_data_folder_is_never_touched(tmp_path):
    state = tmp_path / ".state"
    (state / "pgdata").mkdir(parents=True)
    (state / "pgdata" / "precious.txt").write_text("user data")
    with pytest.raises(ClusterError, match="refusing to touch it"):
        Cluster(state, _free_port()).init()
    assert (state / "pgdata" / "precious.txt").read_text() == "user data"


def test_install_on_a_server_without_pgvector_names_it_and_changes_nothing(tmp_path):
    """A real PostgreSQL 15 whose installation lacks pgvector (a relocated copy of the binaries
    without the vector files): `indb install` must fail with a message naming the extension and how
    to get it, and leave the database untouched."""
    import shutil
    import sys

    from indb.errors import InstallError
    from indb.install import install
    from indb.localdb import PG_BIN, ensure_server_can_reach

    root = tmp_path / "pg"
    libdir = PG_BIN.parent  # /usr/lib/postgresql/15
    share = Path(
        subprocess.run([str(PG_BIN / "pg_config"), "--sharedir"], capture_output=True, text=True).stdout.strip()
    )
    shutil.copytree(
        libdir, root / libdir.relative_to("/"), symlinks=True, ignore=shutil.ignore_patterns("vector*", "bitcode")
    )
    shutil.copytree(share, root / share.relative_to("/"), symlinks=True, ignore=shutil.ignore_patterns("vector*"))
    ensure_server_can_reach([root], read_trees=[root])
    c = Cluster(tmp_path / ".state", _free_port(), pg_bin=root / PG_BIN.relative_to("/"))
    c.start()
    try:
        with pytest.raises(InstallError) as ei:
            install(c.dsn(), venv=sys.prefix)
        msg = str(ei.value)
        assert "vector" in msg and "not available" in msg and "nothing was changed" in msg
        assert "install-system.sh" in msg or "pgvector" in msg
        with psycopg.connect(c.dsn()) as conn:
            assert (
                conn.execute(
                    "select count(*) from pg_namespace where nspname in ('ml','registry','audit','features')"
                ).fetchone()[0]
                == 0
            )
    finally:
        c.stop()


def test_a_deep_checkout_still_gets_a_usable_socket(tmp_path):
    deep = tmp_path.joinpath(*["a-deeply-nested-checkout-folder"] * 4) / ".state"
    c = Cluster(deep, _free_port())
    try:
        c.start()
        assert not str(c.run).startswith(str(deep))
        with psycopg.connect(c.dsn()) as conn:
            assert conn.execute("select 1").fetchone()[0] == 1
    finally:
        c.stop()
