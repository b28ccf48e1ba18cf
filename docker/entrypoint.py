"""Entrypoint of the indb image: one PostgreSQL cluster on the data volume, indb installed, clean stops.

Every start:
1. as root (the image's default): read the password (a secret file may be root's alone), give the data
   volume to the ``postgres`` user (uid 999), then drop to it for good; started as any other user, it runs
   as that user;
2. on an empty volume: initdb with the same options as ``indb db start`` (UTF8, C.UTF-8, scram over TCP);
3. write the server settings with the same code as ``indb db start`` (indb.localdb.Cluster.write_config:
   memory sized from the machine, here the container's memory limit; pg_cron preloaded), then this image's
   overrides (listen on the network, the socket in /var/run/postgresql, logs to stderr);
4. start the server on the socket alone, set the password of ``postgres``, create the database and run
   ``indb install`` (idempotent: alembic upgrade + sql/ re-applied in one transaction), stop it;
5. start the server for real, then the shared runtime service beside it (indb_runtime.service under its own
   supervisor, which restarts it when it dies; started again here if the supervisor itself ends), and wait.
   SIGTERM or SIGINT: a fast shutdown (clients are disconnected, a
   checkpoint is written), so the next start needs no crash recovery. SIGQUIT: an immediate stop.

Settings (environment):
  INDB_PASSWORD or INDB_PASSWORD_FILE   password of the ``postgres`` role over TCP (required; a secret file
                                        at /run/secrets/indb_password is used when neither is set)
  INDB_DB (indb), INDB_PORT (5432), INDB_LISTEN ('*'), INDB_STATE_DIR (/var/lib/indb: the volume)
Arguments after the image name go to postgres itself, e.g. ``-c work_mem=128MB``.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from psycopg import sql

from indb import __version__, localdb

PG_BIN = localdb.PG_BIN
STATE = Path(os.environ.get("INDB_STATE_DIR", "/var/lib/indb"))
PORT = int(os.environ.get("INDB_PORT", "5432"))
LISTEN = os.environ.get("INDB_LISTEN", "*")
DB = localdb.DB_NAME
VENV = os.environ.get("INDB_VENV", sys.prefix)
SOCKET_DIR = Path("/var/run/postgresql")
READY = SOCKET_DIR / "indb.ready"  # read by docker/healthcheck.sh
SECRET_FILE = Path("/run/secrets/indb_password")


STOP_REQUESTED = False


def _stop_before_serving(signum, _frame) -> None:
    """A stop asked for while the schema is installed: finish the step, stop the server cleanly, leave."""
    global STOP_REQUESTED
    STOP_REQUESTED = True
    log(f"{signal.Signals(signum).name} received: stopping after the current start-up step")


def log(msg: str) -> None:
    print(f"indb-entrypoint: {msg}", file=sys.stderr, flush=True)


def fail(msg: str) -> None:
    log(f"error: {msg}")
    sys.exit(1)


class ImageCluster(localdb.Cluster):
    """The local cluster's layout and settings, with the socket where Debian's libpq looks for it."""

    @property
    def run(self) -> Path:
        return SOCKET_DIR


def container_mem_gib() -> float:
    """The machine's memory, or the container's memory limit (cgroup v2 or v1) when that is lower."""
    host = _host_mem_gib()
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(f).read_text().strip()
        except OSError:
            continue
        if raw.isdigit():
            return min(host, int(raw) / 1024**3)
    return host


_host_mem_gib = localdb._mem_gib
# The settings code reads /proc/meminfo, which shows the host's memory inside a container.
localdb._mem_gib = container_mem_gib


# -- 1. users -----------------------------------------------------------------------------------
def become_postgres() -> None:
    if os.geteuid() != 0:
        return
    pw = pwd.getpwnam("postgres")
    for d in (STATE, SOCKET_DIR):
        d.mkdir(parents=True, exist_ok=True)
    # The volume may come from elsewhere (a host folder, another image): only what is not postgres's changes.
    for root, dirs, files in os.walk(STATE):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            st = os.lstat(name)
            if st.st_uid != pw.pw_uid or st.st_gid != pw.pw_gid:
                os.lchown(name, pw.pw_uid, pw.pw_gid)
    os.chown(SOCKET_DIR, pw.pw_uid, pw.pw_gid)
    os.initgroups("postgres", pw.pw_gid)
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    os.environ.update(HOME=pw.pw_dir, USER="postgres", LOGNAME="postgres")


def password() -> str:
    if os.environ.get("INDB_PASSWORD"):
        return os.environ["INDB_PASSWORD"]
    path = os.environ.get("INDB_PASSWORD_FILE") or (str(SECRET_FILE) if SECRET_FILE.exists() else "")
    if path:
        try:
            pw = Path(path).read_text().strip()
        except OSError as e:
            fail(f"cannot read the password file {path}: {e}")
        if pw:
            return pw
        fail(f"the password file {path} is empty")
    fail("set INDB_PASSWORD or INDB_PASSWORD_FILE (a secret file): the password of the postgres role over TCP")
    raise AssertionError  # not reached


# -- 2. initdb ----------------------------------------------------------------------------------
def initdb(cluster: ImageCluster, pw: str) -> bool:
    if cluster.initialized():
        return False
    data = cluster.data
    if data.exists() and any(data.iterdir()):
        fail(f"{data} is not empty but holds no cluster (no PG_VERSION); refusing to touch it")
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    pwfile = STATE / ".initpw"
    pwfile.write_text(pw + "\n")
    pwfile.chmod(0o600)
    log(f"initializing a new cluster in {data}")
    try:
        subprocess.run(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(data),
                "-U",
                localdb.SUPERUSER,
                "--pwfile",
                str(pwfile),
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ],
            check=True,
            stdout=sys.stderr,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    with (data / "postgresql.conf").open("a") as f:
        f.write(
            "\n# indb: settings of `indb db start`, then this image's; both rewritten on every start\n"
            "include_if_exists = 'indb.conf'\n"
            "include_if_exists = 'indb-image.conf'\n"
        )
    # The database exists before the first start, so that pg_cron (preloaded) finds it at once.
    subprocess.run(
        [str(PG_BIN / "postgres"), "--single", "-D", str(data), "postgres"],
        input=f"create database {sql.Identifier(DB).as_string(None)}\n",
        text=True,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with (data / "pg_hba.conf").open("a") as f:
        f.write(
            "\n# indb image: a password (scram) from any address; the socket is only reachable inside\n"
            "host all all 0.0.0.0/0 scram-sha-256\n"
            "host all all ::/0 scram-sha-256\n"
        )
    return True


# -- 3. settings --------------------------------------------------------------------------------
def write_settings(cluster: ImageCluster) -> None:
    cluster.write_config()
    (cluster.data / "indb-image.conf").write_text(
        "# written by the image's entrypoint at every start; after indb.conf, so these win\n"
        f"listen_addresses = '{LISTEN}'\n"
        f"port = {PORT}\n"
        f"unix_socket_directories = '{SOCKET_DIR}'\n"
        "logging_collector = off\n"
        "log_destination = 'stderr'\n"
    )


# -- 4. install ---------------------------------------------------------------------------------
def server_env() -> dict[str, str]:
    """The postmaster's environment, as `indb db start` gives it (the runtime's variables, a UTF-8 locale)."""
    return {**os.environ, **localdb.server_environment()}


def pg_ctl(cluster: ImageCluster, *args: str) -> None:
    subprocess.run(
        [str(PG_BIN / "pg_ctl"), "-D", str(cluster.data), *args], check=True, stdout=sys.stderr, env=server_env()
    )


def install(cluster: ImageCluster, pw: str) -> None:
    """On a server that listens on the socket alone: password, database, `indb install`."""
    pg_ctl(cluster, "start", "-w", "-t", "300", "-o", "-c listen_addresses=''")
    try:
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as c:
            c.execute(sql.SQL("alter role {} password {}").format(sql.Identifier(localdb.SUPERUSER), sql.Literal(pw)))
            if not c.execute("select 1 from pg_database where datname = %s", [DB]).fetchone():
                log(f"creating database {DB}")
                c.execute(sql.SQL("create database {}").format(sql.Identifier(DB)))
        subprocess.run(
            [str(Path(VENV) / "bin" / "indb"), "install", "--dsn", cluster.dsn(DB), "--venv", VENV],
            check=True,
            stdout=sys.stderr,
        )
    finally:
        pg_ctl(cluster, "stop", "-m", "fast", "-w", "-t", "300")


# -- 5. serve -----------------------------------------------------------------------------------
def start_runtime(cluster: ImageCluster) -> subprocess.Popen | None:
    """The shared inference runtime (one model copy for every connection), logging to stderr like the server."""
    if os.environ.get("INDB_RUNTIME_SERVICE", "1") == "0":
        return None
    argv = [str(Path(VENV) / "bin" / "python"), "-m", "indb_runtime.service", "supervise", "--data", str(cluster.data)]
    argv += ["--log", "-", "--preload", f"{DB}/all-MiniLM-L6-v2"]
    return subprocess.Popen(argv, env=server_env(), cwd="/")


def serve(cluster: ImageCluster, extra: list[str]) -> int:
    postmaster = subprocess.Popen([str(PG_BIN / "postgres"), "-D", str(cluster.data), *extra], env=server_env())
    forward = {signal.SIGTERM: signal.SIGINT, signal.SIGINT: signal.SIGINT, signal.SIGQUIT: signal.SIGQUIT}
    runtime: subprocess.Popen | None = None
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True
        READY.unlink(missing_ok=True)
        log(f"{signal.Signals(signum).name}: stopping the server ({signal.Signals(forward[signum]).name})")
        if runtime is not None and runtime.poll() is None:
            runtime.terminate()
        try:
            postmaster.send_signal(forward[signum])
        except ProcessLookupError:
            pass

    for s in forward:
        signal.signal(s, on_signal)
    if STOP_REQUESTED:
        on_signal(signal.SIGTERM, None)
    deadline = time.time() + 300
    while postmaster.poll() is None and time.time() < deadline:
        ok = subprocess.run(
            [str(PG_BIN / "pg_isready"), "-q", "-h", str(SOCKET_DIR), "-p", str(PORT), "-d", DB]
        ).returncode
        if ok == 0:
            runtime = start_runtime(cluster)
            READY.write_text(f"{postmaster.pid}\n")
            log(f"ready: database {DB} on port {PORT}")
            break
        time.sleep(0.2)
    if postmaster.returncode is not None:
        log(f"the server exited during start-up with status {postmaster.returncode}")
        return 1
    # PID 1 reaps every orphan; it leaves when the postmaster does, with its exit status.
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 1
        if runtime is not None and pid == runtime.pid and not stopping:
            log("the runtime supervisor ended; starting it again")
            runtime = start_runtime(cluster)
            continue
        if pid == postmaster.pid:
            if runtime is not None and runtime.poll() is None:
                runtime.terminate()
            READY.unlink(missing_ok=True)
            code = os.waitstatus_to_exitcode(status)
            log(f"server exited with status {code}")
            return code if code >= 0 else 128 - code


def main(argv: list[str]) -> int:
    log(f"starting indb {__version__}")
    signal.signal(signal.SIGTERM, _stop_before_serving)
    signal.signal(signal.SIGINT, _stop_before_serving)
    pw = password()  # before dropping root: a secret file may be readable by root alone
    become_postgres()
    READY.unlink(missing_ok=True)
    cluster = ImageCluster(STATE, PORT)
    created = initdb(cluster, pw)
    write_settings(cluster)
    if (cluster.data / "postmaster.pid").exists():
        log("postmaster.pid left by an unclean stop: PostgreSQL will recover from its WAL")
    install(cluster, pw)
    if created:
        log("new cluster initialized and indb installed")
    if STOP_REQUESTED:
        log("stop requested during start-up: the server was stopped cleanly")
        return 0
    return serve(cluster, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
