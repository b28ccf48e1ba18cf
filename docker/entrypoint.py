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

A hot standby (INDB_PRIMARY_HOST set): steps 2 and 4 are replaced by, on an empty volume only, a base backup
of the primary (pg_basebackup over the replication protocol as INDB_REPLICATION_USER, WAL streamed, a physical
replication slot ``indb_replica_<INDB_REPLICA_NAME>`` made on the primary so that it keeps the WAL the standby
still needs); every start writes the settings (step 3), the standby's connection to the primary (its password
in a file under /var/run/postgresql, never in the volume or in the settings) and serves (step 5: the server
read-only, and its own runtime service beside it). The primary makes the replication role, and lets it connect
for replication, only when it is given the same replication password.

Settings (environment):
  INDB_PASSWORD or INDB_PASSWORD_FILE   password of the ``postgres`` role over TCP (required on a primary; a
                                        secret file at /run/secrets/indb_password is used when neither is set;
                                        a standby has the primary's roles and passwords)
  INDB_DB (indb), INDB_PORT (5432), INDB_LISTEN ('*'), INDB_STATE_DIR (/var/lib/indb: the volume)
  INDB_REPLICATION_PASSWORD or INDB_REPLICATION_PASSWORD_FILE
                                        password of the replication role (a secret file at
                                        /run/secrets/indb_replication_password when neither is set). On a
                                        primary: optional, makes/updates the role (without it, the role cannot
                                        log in); on a standby: required
  INDB_REPLICATION_USER (indb_replicator)
  INDB_PRIMARY_HOST, INDB_PRIMARY_PORT (5432)   set on a standby: the primary to stream from
  INDB_REPLICA_NAME (r1)                 a standby's name: its slot and application_name on the primary
  INDB_PRIMARY_WAIT (600)                seconds a standby's first start waits for the primary to accept it
Arguments after the image name go to postgres itself, e.g. ``-c work_mem=128MB``.
"""

from __future__ import annotations

import os
import pwd
import re
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
REPLICATION_SECRET_FILE = Path("/run/secrets/indb_replication_password")
REPLICATION_USER = os.environ.get("INDB_REPLICATION_USER", "indb_replicator")
PRIMARY_HOST = os.environ.get("INDB_PRIMARY_HOST", "")
PRIMARY_PORT = int(os.environ.get("INDB_PRIMARY_PORT", "5432"))
REPLICA_NAME = os.environ.get("INDB_REPLICA_NAME", "r1")
PASSFILE = SOCKET_DIR / "indb-replication.pgpass"  # the container's own tmpfs-like run folder, not the volume


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


def secret(var: str, default_file: Path) -> str | None:
    """The value of $VAR, else of the file $VAR_FILE names, else of the default secret file, else None."""
    if os.environ.get(var):
        return os.environ[var]
    path = os.environ.get(f"{var}_FILE") or (str(default_file) if default_file.exists() else "")
    if path:
        try:
            pw = Path(path).read_text().strip()
        except OSError as e:
            fail(f"cannot read the password file {path}: {e}")
        if pw:
            return pw
        fail(f"the password file {path} is empty")
    return None


def password() -> str:
    pw = secret("INDB_PASSWORD", SECRET_FILE)
    if pw is None:
        fail("set INDB_PASSWORD or INDB_PASSWORD_FILE (a secret file): the password of the postgres role over TCP")
    return pw  # type: ignore[return-value]


def replication_password() -> str | None:
    return secret("INDB_REPLICATION_PASSWORD", REPLICATION_SECRET_FILE)


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


def install(cluster: ImageCluster, pw: str, rpw: str | None = None) -> None:
    """On a server that listens on the socket alone: password, database, `indb install`."""
    pg_ctl(cluster, "start", "-w", "-t", "300", "-o", "-c listen_addresses=''")
    try:
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as c:
            c.execute(sql.SQL("alter role {} password {}").format(sql.Identifier(localdb.SUPERUSER), sql.Literal(pw)))
            if not c.execute("select 1 from pg_database where datname = %s", [DB]).fetchone():
                log(f"creating database {DB}")
                c.execute(sql.SQL("create database {}").format(sql.Identifier(DB)))
            replication_role(c, rpw)
        subprocess.run(
            [str(Path(VENV) / "bin" / "indb"), "install", "--dsn", cluster.dsn(DB), "--venv", VENV],
            check=True,
            stdout=sys.stderr,
        )
    finally:
        pg_ctl(cluster, "stop", "-m", "fast", "-w", "-t", "300")


def replication_role(c: psycopg.Connection, pw: str | None) -> None:
    """The role a standby streams as: REPLICATION and LOGIN with the password the user set, member of nothing;
    without a password it exists (if it did) but cannot log in."""
    role = sql.Identifier(REPLICATION_USER)
    exists = c.execute("select 1 from pg_roles where rolname = %s", [REPLICATION_USER]).fetchone()
    if pw is None:
        if exists:
            c.execute(sql.SQL("alter role {} nologin").format(role))
        return
    if not exists:
        log(f"creating the replication role {REPLICATION_USER}")
        c.execute(sql.SQL("create role {} replication").format(role))
    c.execute(sql.SQL("alter role {} login replication password {}").format(role, sql.Literal(pw)))


def allow_replication(cluster: ImageCluster) -> None:
    """pg_hba.conf, first lines: the replication role may connect for replication with its password (scram),
    from any address, and to no database (`all` in pg_hba's database column does not cover replication)."""
    hba = cluster.data / "pg_hba.conf"
    lines = [
        f"host replication {REPLICATION_USER} all scram-sha-256",
        f"host all {REPLICATION_USER} all reject",
        f"local all {REPLICATION_USER} reject",
    ]
    text = hba.read_text()
    if lines[0] not in text.splitlines():
        head = "# indb image: streaming replication for the standbys (compose.yaml, service replica)\n"
        hba.write_text(head + "\n".join(lines) + "\n\n" + text)


# -- 2b. a standby: base backup of the primary ---------------------------------------------------
def write_passfile(pw: str) -> None:
    """The replication password where libpq reads it (pg_basebackup, the standby's WAL receiver)."""
    esc = pw.replace("\\", "\\\\").replace(":", "\\:")
    PASSFILE.write_text(f"*:*:*:{REPLICATION_USER}:{esc}\n")
    PASSFILE.chmod(0o600)


def primary_conninfo() -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(
        host=PRIMARY_HOST,
        port=str(PRIMARY_PORT),
        user=REPLICATION_USER,
        passfile=str(PASSFILE),
        application_name=REPLICA_NAME,
        connect_timeout="10",
    )


def slot() -> str:
    return f"indb_replica_{REPLICA_NAME}"


def base_backup(cluster: ImageCluster) -> bool:
    """On an empty volume: pg_basebackup of the primary with a new slot (or the slot a removed standby of the
    same name left), waiting up to INDB_PRIMARY_WAIT seconds for the primary to accept the connection."""
    if cluster.initialized():
        return False
    data = cluster.data
    if data.exists() and any(data.iterdir()):
        fail(f"{data} is not empty but holds no cluster (no PG_VERSION); refusing to touch it")
    env = {**os.environ, "PGPASSFILE": str(PASSFILE), "PGCONNECT_TIMEOUT": "10"}
    base = [str(PG_BIN / "pg_basebackup"), "-h", PRIMARY_HOST, "-p", str(PRIMARY_PORT), "-U", REPLICATION_USER]
    base += ["-D", str(data), "-X", "stream", "-S", slot(), "--checkpoint=fast", "--no-password"]
    deadline = time.time() + float(os.environ.get("INDB_PRIMARY_WAIT", "600"))
    log(f"base backup of the primary {PRIMARY_HOST}:{PRIMARY_PORT} as {REPLICATION_USER}, slot {slot()}")
    why = ""
    while time.time() < deadline and not STOP_REQUESTED:
        r = subprocess.run([*base, "-C"], env=env, capture_output=True, text=True)
        if r.returncode != 0 and "already exists" in r.stderr:
            log(f"the slot {slot()} exists on the primary (a standby of this name was removed): using it")
            r = subprocess.run(base, env=env, capture_output=True, text=True)
        if r.returncode == 0:
            break
        why = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
        if "password authentication failed" in r.stderr or "no pg_hba.conf entry" in r.stderr:
            fail(
                f"the primary refused the replication role {REPLICATION_USER}: {why}. Give the primary the same "
                "INDB_REPLICATION_PASSWORD (or secret indb_replication_password) as this standby, and restart it"
            )
        log(f"the primary does not accept the base backup yet ({why}); trying again")
        if data.exists():
            subprocess.run(["rm", "-rf", str(data)], check=False)
        time.sleep(3)
    else:
        fail(f"no base backup of the primary {PRIMARY_HOST}:{PRIMARY_PORT}: {why or 'stop requested'}")
    (data / "standby.signal").touch()
    data.chmod(0o700)
    log(f"base backup done ({data})")
    return True


def write_standby_settings(cluster: ImageCluster) -> None:
    """After write_settings: the standby's own lines (rewritten at every start, so a changed primary or name
    applies at the next start)."""
    conninfo = primary_conninfo().replace("'", "''")
    with (cluster.data / "indb-image.conf").open("a") as f:
        f.write(
            "# a hot standby of the primary (INDB_PRIMARY_HOST)\n"
            "hot_standby = on\n"
            "hot_standby_feedback = on\n"
            f"primary_conninfo = '{conninfo}'\n"
            f"primary_slot_name = '{slot()}'\n"
        )


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
    for var, value in (("INDB_REPLICATION_USER", REPLICATION_USER), ("INDB_REPLICA_NAME", REPLICA_NAME)):
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,39}", value):
            fail(f"{var}={value!r}: use 1-40 lower-case letters, digits or _, starting with a letter or _")
    if PRIMARY_HOST:
        return standby(argv)
    pw = password()  # before dropping root: a secret file may be readable by root alone
    rpw = replication_password()
    become_postgres()
    READY.unlink(missing_ok=True)
    cluster = ImageCluster(STATE, PORT)
    created = initdb(cluster, pw)
    write_settings(cluster)
    if rpw is not None:
        allow_replication(cluster)
    if (cluster.data / "postmaster.pid").exists():
        log("postmaster.pid left by an unclean stop: PostgreSQL will recover from its WAL")
    install(cluster, pw, rpw)
    if created:
        log("new cluster initialized and indb installed")
    if STOP_REQUESTED:
        log("stop requested during start-up: the server was stopped cleanly")
        return 0
    return serve(cluster, argv)


def standby(argv: list[str]) -> int:
    """A hot standby of INDB_PRIMARY_HOST: base backup on an empty volume, then settings and serve."""
    rpw = replication_password()  # before dropping root, as the primary's password
    if rpw is None:
        fail(
            "a standby (INDB_PRIMARY_HOST is set) needs the replication password: set INDB_REPLICATION_PASSWORD or "
            "INDB_REPLICATION_PASSWORD_FILE (a secret file), the same as the primary's"
        )
    become_postgres()
    READY.unlink(missing_ok=True)
    write_passfile(rpw)  # type: ignore[arg-type]
    cluster = ImageCluster(STATE, PORT)
    base_backup(cluster)
    if STOP_REQUESTED:
        return 0
    write_settings(cluster)
    if (cluster.data / "standby.signal").exists():
        write_standby_settings(cluster)
        log(f"hot standby {REPLICA_NAME} of {PRIMARY_HOST}:{PRIMARY_PORT} (read-only)")
    else:
        log("this volume's server was promoted (no standby.signal): serving it as a primary, not streaming")
    return serve(cluster, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
