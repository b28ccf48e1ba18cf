"""Containers of the production image for tests/image: start, wait for health, stop, remove.

`docker/image.sh test` builds the image once, then runs these tests with INDB_IMAGE (its tag),
INDB_ENGINE (docker or podman) and INDB_IMAGE_NETWORK (bridge, or host where the machine is a nested
sandbox) set, and DOCKER_HOST pointing at the engine's Docker API. Containers are started with
testcontainers on named volumes made for them, and removed with their volumes.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

IMAGE = os.environ.get("INDB_IMAGE", "indb:latest")
ENGINE = os.environ.get("INDB_ENGINE", "docker")
NETWORK = os.environ.get("INDB_IMAGE_NETWORK", "bridge")
DATA_DIR = "/var/lib/indb"
START_TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Indb:
    """One running container of the image: its testcontainers handle, port and password."""

    container: object  # testcontainers DockerContainer
    volume: str
    password: str
    port: int = 0
    env: dict = field(default_factory=dict)

    @property
    def wrapped(self):
        return self.container.get_wrapped_container()

    def dsn(self, password: str | None = None, dbname: str = "indb") -> str:
        pw = self.password if password is None else password
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user=postgres password={pw} connect_timeout=10"

    def connect(self, **kw) -> psycopg.Connection:
        return psycopg.connect(self.dsn(**kw), autocommit=True)

    def exec(self, cmd: list[str], user: str = "postgres") -> tuple[int, str]:
        code, out = self.wrapped.exec_run(cmd, user=user, demux=False)
        return code, (out or b"").decode(errors="replace")

    def logs(self) -> str:
        return self.wrapped.logs().decode(errors="replace")

    def health(self) -> str:
        self.wrapped.reload()
        return ((self.wrapped.attrs.get("State") or {}).get("Health") or {}).get("Status", "none")

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> float:
        """Seconds until the engine reports the image's HEALTHCHECK healthy. Docker runs the check on its
        own; podman needs systemd timers for that, which a sandbox lacks, so it is run through podman."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            self.wrapped.reload()
            state = self.wrapped.attrs["State"]
            if state.get("Status") in ("exited", "dead"):
                raise AssertionError(f"the container exited ({state.get('ExitCode')}):\n{self.logs()[-4000:]}")
            if ENGINE == "podman":
                subprocess.run(["podman", "healthcheck", "run", self.wrapped.id], capture_output=True)
            if self.health() == "healthy":
                return time.time() - t0
            time.sleep(1)
        raise AssertionError(f"not healthy after {timeout} s ({self.health()}):\n{self.logs()[-4000:]}")

    def stop(self, signal: str = "SIGTERM", timeout: float = 120) -> int:
        """Send ``signal`` to the container's PID 1 and wait for it to exit; returns its exit code."""
        self.wrapped.kill(signal=signal)
        return self.wrapped.wait(timeout=timeout)["StatusCode"]

    def start_again(self) -> float:
        self.wrapped.start()
        return self.wait_healthy()


def docker_client():
    import docker

    return docker.from_env()


def run_once(image: str, cmd: list[str], *, timeout: float = 120, **run_kwargs) -> str:
    """Output of ``cmd`` run in a one-off container of ``image``. Started detached and waited for with a
    timeout: podman's Docker API can leave an attached stream open after the container has exited, and
    docker-py's attached ``containers.run`` then blocks on it for good."""
    c = docker_client().containers.run(image, entrypoint=cmd, detach=True, **run_kwargs)
    try:
        code = c.wait(timeout=timeout)["StatusCode"]
        out = c.logs(stdout=True, stderr=True).decode(errors="replace")
        assert code == 0, f"{cmd[0]} exited with {code}:\n{out[-2000:]}"
        return out
    finally:
        c.remove(force=True)


def start_indb(
    image: str, tmp_path: Path, *, password_file: bool = False, env: dict | None = None, **run_kwargs
) -> Indb:
    """Start a container of the image on a new named volume and wait until it is healthy. ``run_kwargs``
    go to the engine (docker-py's containers.run), e.g. mem_limit."""
    from testcontainers.core.container import DockerContainer

    password = f"pw-{secrets.token_hex(8)}"
    volume = f"indb-test-{secrets.token_hex(4)}"
    docker_client().volumes.create(volume)
    c = DockerContainer(image).with_volume_mapping(volume, DATA_DIR, "rw")
    full_env = dict(env or {})
    if password_file:
        # a secret file readable by root alone, as compose and swarm mount them
        secret = tmp_path / f"{volume}.password"
        secret.write_text(password + "\n")
        secret.chmod(0o400)
        c = c.with_volume_mapping(str(secret), "/run/secrets/indb_password", "ro")
    else:
        full_env["INDB_PASSWORD"] = password
    port = 5432
    if NETWORK == "host":
        port = free_port()
        full_env.update(INDB_PORT=str(port), INDB_LISTEN="127.0.0.1")
        run_kwargs["network_mode"] = "host"
    else:
        c = c.with_exposed_ports(5432)
    for k, v in full_env.items():
        c = c.with_env(k, v)
    c = c.with_kwargs(**run_kwargs)
    c.start()
    db = Indb(c, volume, password, port, full_env)
    try:
        db.wait_healthy()
        if NETWORK != "host":
            db.port = int(c.get_exposed_port(5432))
    except BaseException:
        remove(db)
        raise
    return db


def remove(db: Indb) -> None:
    try:
        db.container.stop()
    finally:
        try:
            docker_client().volumes.get(db.volume).remove(force=True)
        except Exception:
            pass


def starts_since(logs: str, marker: str = "indb-entrypoint: starting") -> list[str]:
    """The container's log split at each start of the entrypoint (engines keep the logs of every start)."""
    parts = re.split(re.escape(marker), logs)
    return [marker + p for p in parts[1:]]
