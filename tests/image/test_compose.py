"""docker/compose.yaml as a user runs it: `docker compose` on a Docker host, `podman-compose` with podman."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from indb_image import ENGINE, IMAGE, NETWORK, Indb, docker_client, free_port

import indb

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILES = [REPO / "docker" / "compose.yaml"]
if NETWORK == "host":
    COMPOSE_FILES.append(REPO / "docker" / "compose.host-network.yaml")


def compose_command() -> list[str]:
    if ENGINE == "docker" and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    podman_compose = Path(sys.prefix) / "bin" / "podman-compose"
    if ENGINE == "podman" and podman_compose.exists():
        return [str(podman_compose)]
    found = shutil.which("docker-compose") or shutil.which("podman-compose")
    if not found:
        pytest.fail(f"no compose command for {ENGINE}: install the docker compose plugin or podman-compose")
    return [found]


@pytest.fixture(scope="module")
def project(image):
    name = f"indbtest{secrets.token_hex(3)}"
    port = free_port() if NETWORK == "host" else 5432 + 10000 + secrets.randbelow(5000)
    env = {
        **os.environ,
        "INDB_IMAGE": IMAGE,
        "INDB_PASSWORD": f"pw-{secrets.token_hex(8)}",
        "INDB_PORT": str(port),
    }
    cmd = [*compose_command(), "-p", name, *[arg for f in COMPOSE_FILES for arg in ("-f", str(f))]]

    def compose(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=600)

    up = compose("up", "-d")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        containers = docker_client().containers.list(all=True, filters={"label": f"com.docker.compose.project={name}"})
        assert len(containers) == 1, f"one service expected, got {[c.name for c in containers]}"
        db = Indb(_Handle(containers[0]), f"{name}_indb-data", env["INDB_PASSWORD"], port, env)
        db.wait_healthy()
        yield db, compose
    finally:
        compose("down", "-v")  # the last test does it and checks it; this is for a run that stopped early


class _Handle:
    """What Indb needs of a testcontainers container, for a container that compose started."""

    def __init__(self, container):
        self._container = container

    def get_wrapped_container(self):
        return self._container


def test_compose_up_serves_indb(project):
    db, compose = project
    with indb.connect(db.dsn()) as c:
        assert c.version() == indb.__version__
        assert c.scalar("select count(*) from ml.installs") >= 1
    assert db.volume in [v.name for v in docker_client().volumes.list()]
    ps = compose("ps")
    assert ps.returncode == 0 and db.wrapped.name in ps.stdout, ps.stdout + ps.stderr


def test_compose_stop_is_clean_and_down_removes_everything(project):
    db, compose = project
    stop = compose("stop")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    db.wrapped.reload()
    assert db.wrapped.attrs["State"]["ExitCode"] == 0
    assert "database system is shut down" in db.logs()
    down = compose("down", "-v")
    assert down.returncode == 0, down.stdout + down.stderr
    assert db.volume not in [v.name for v in docker_client().volumes.list()]
    assert not docker_client().containers.list(all=True, filters={"name": db.wrapped.name})


# ------------------------------------------------------------------------------------------- the replica


@pytest.fixture(scope="module")
def replicated(image):
    """compose.yaml with the profile `replica`: db and a hot standby of it, the replication password the user's."""
    name = f"indbtest{secrets.token_hex(3)}"
    if NETWORK == "host":
        port, rport = free_port(), free_port()
    else:
        port, rport = (15432 + secrets.randbelow(5000)), (20432 + secrets.randbelow(5000))
    env = {
        **os.environ,
        "INDB_IMAGE": IMAGE,
        "INDB_PASSWORD": f"pw-{secrets.token_hex(8)}",
        "INDB_REPLICATION_PASSWORD": f"rp-{secrets.token_hex(8)}:x",  # a ':' must survive the passfile
        "INDB_PORT": str(port),
        "INDB_REPLICA_PORT": str(rport),
    }
    cmd = [*compose_command(), "-p", name, *[arg for f in COMPOSE_FILES for arg in ("-f", str(f))]]

    def compose(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*cmd, "--profile", "replica", *args], env=env, capture_output=True, text=True, timeout=900
        )

    up = compose("up", "-d")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        found = docker_client().containers.list(all=True, filters={"label": f"com.docker.compose.project={name}"})
        by_service = {c.labels.get("com.docker.compose.service"): c for c in found}
        assert set(by_service) == {"db", "replica"}, by_service
        db = Indb(_Handle(by_service["db"]), f"{name}_indb-data", env["INDB_PASSWORD"], port, env)
        rep = Indb(_Handle(by_service["replica"]), f"{name}_indb-replica-data", env["INDB_PASSWORD"], rport, env)
        db.wait_healthy()
        rep.wait_healthy()
        yield db, rep, env
    finally:
        compose("down", "-v")


def test_the_replica_streams_what_the_primary_writes(replicated):
    db, rep, _ = replicated
    with db.connect() as p, rep.connect() as r:
        assert r.execute("select pg_is_in_recovery()").fetchone()[0] is True
        p.execute("create table notes (id int primary key, body text)")
        p.execute("insert into notes values (1, 'written on the primary')")
        lsn = p.execute("select pg_current_wal_insert_lsn()::text").fetchone()[0]
        deadline = time.time() + 60
        while not r.execute("select pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn]).fetchone()[0]:
            assert time.time() < deadline, "the replica did not replay the primary's insert within 60 s"
            time.sleep(0.2)
        assert r.execute("select body from notes where id = 1").fetchone()[0] == "written on the primary"
        # read-only, and the read paths work there: its own runtime service embeds as the primary does
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            r.execute("insert into notes values (2, 'on the replica')")
        primary_vec = p.execute("select ml.embed('all-MiniLM-L6-v2', 'a hot standby')::text").fetchone()[0]
        assert (
            r.execute("select ml.embed('all-MiniLM-L6-v2', 'a hot standby') <=> %s::vector", [primary_vec]).fetchone()[
                0
            ]
            < 1e-6
        )
        # streaming through its slot, under its name
        st = p.execute(
            "select s.application_name, s.state, l.active from pg_stat_replication s "
            "join pg_replication_slots l on l.active_pid = s.pid where l.slot_name = 'indb_replica_r1'"
        ).fetchone()
        assert st == ("r1", "streaming", True)


def test_the_replication_role_only_replicates(replicated):
    db, _, env = replicated
    with db.connect() as p:
        assert p.execute(
            "select rolreplication, rolcanlogin, rolsuper, (select count(*) from pg_auth_members m where m.member = r.oid) "
            "from pg_roles r where rolname = 'indb_replicator'"
        ).fetchone() == (True, True, False, 0)
    dsn = (
        db.dsn()
        .replace("user=postgres", "user=indb_replicator")
        .replace(f"password={db.password}", f"password='{env['INDB_REPLICATION_PASSWORD']}'")
    )
    with pytest.raises(psycopg.OperationalError, match="pg_hba.conf rejects connection"):
        psycopg.connect(dsn).close()


def test_a_replica_without_the_replication_password_says_what_to_set(image):
    env = {"INDB_PRIMARY_HOST": "127.0.0.1", "INDB_PRIMARY_PORT": "1"}
    kw = {"network_mode": "host"} if NETWORK == "host" else {}
    c = docker_client().containers.run(image, environment=env, detach=True, **kw)
    try:
        assert c.wait(timeout=120)["StatusCode"] == 1
        logs = c.logs().decode(errors="replace")
        assert "INDB_REPLICATION_PASSWORD" in logs and "Traceback" not in logs, logs
    finally:
        c.remove(force=True, v=True)
