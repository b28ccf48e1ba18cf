"""docker/compose.yaml as a user runs it: `docker compose` on a Docker host, `podman-compose` with podman."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

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
