"""The project's own PostgreSQL cluster: data, socket, logs and config under a git-ignored state folder.

The server runs as the ``postgres`` OS user when we are root (Postgres refuses to run as root), or as
the invoking user otherwise. Nothing here ever deletes a data directory.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ClusterError

PG_MAJOR = os.environ.get("INDB_PG_MAJOR", "15")
PG_BIN = Path(os.environ.get("INDB_PG_BIN", f"/usr/lib/postgresql/{PG_MAJOR}/bin"))
DB_NAME = os.environ.get("INDB_DB", "indb")
SUPERUSER = "postgres"


def repo_root() -> Path:
    """The checkout this package was installed from (client/indb/ -> repo)."""
    env = os.environ.get("INDB_HOME")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2]


def state_dir() -> Path:
    return Path(os.environ.get("INDB_STATE_DIR", repo_root() / ".state")).resolve()


def default_port(state: Path) -> int:
    """A port derived from the state folder, so two checkouts on one machine do not collide."""
    if os.environ.get("INDB_PORT"):
        return int(os.environ["INDB_PORT"])
    digest = hashlib.sha256(str(state).encode()).digest()
    return 54000 + int.from_bytes(digest[:2], "big") % 1000


def port_listened_on(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def port_is_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port and this process could bind it."""
    if port_listened_on(port):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(preferred: int, avoid: Sequence[int] = ()) -> int:
    """``preferred`` if it is free, else the next free port after it in 54000-54999 (wrapping): for the extra
    clusters (replicas, local shards) that indb makes on its own, where another program on the machine may
    already hold the port their folder hashes to."""
    for i in range(1000):
        port = 54000 + (preferred - 54000 + i) % 1000
        if port not in avoid and port_is_free(port):
            return port
    raise ClusterError("no free port in 54000-54999 on 127.0.0.1; stop some local servers and try again")


def configured_port(data: Path) -> int | None:
    """The port an existing cluster folder was set up with (its indb.conf), or None for a new folder."""
    conf = data / "indb.conf"
    if not conf.exists():
        return None
    for line in conf.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "port" and value.strip().isdigit():
            return int(value.strip())
    return None


def port_for(state: Path) -> int:
    """The port of the cluster in ``state``: the one its folder was set up with, else (a new folder) the port the
    folder hashes to or, when another program holds that one, the next free port."""
    return configured_port(state / "pgdata") or free_port(default_port(state))


@dataclass(frozen=True)
class Cluster:
    state: Path
    port: int
    pg_bin: Path = PG_BIN

    @classmethod
    def local(cls) -> Cluster:
        """This checkout's cluster: on INDB_PORT if set, else on port_for(its folder)."""
        st = state_dir()
        return cls(st, default_port(st) if os.environ.get("INDB_PORT") else port_for(st))

    # -- paths -------------------------------------------------------------------------------
    @property
    def data(self) -> Path:
        return self.state / "pgdata"

    @property
    def run(self) -> Path:
        """The socket folder: .state/run, or a short folder in /tmp when a deep checkout would make the
        socket path longer than a Unix socket allows (107 bytes)."""
        here = self.state / "run"
        if len(str(here / f".s.PGSQL.{self.port}")) <= 100:
            return here
        return Path("/tmp") / f"indb-{hashlib.sha256(str(self.state).encode()).hexdigest()[:12]}"

    @property
    def logdir(self) -> Path:
        return self.state / "log"

    @property
    def logfile(self) -> Path:
        return self.logdir / "postgresql.log"

    @property
    def password_file(self) -> Path:
        return self.state / "password"

    def dsn(self, dbname: str = DB_NAME, tcp: bool = False) -> str:
        if tcp:
            pw = self.password_file.read_text().strip() if self.password_file.exists() else ""
            return f"host=127.0.0.1 port={self.port} dbname={dbname} user={SUPERUSER} password={pw}"
        return f"host={self.run} port={self.port} dbname={dbname} user={SUPERUSER}"

    # -- running commands as the server's user ----------------------------------------------
    @staticmethod
    def server_user() -> str:
        return "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name

    def _as_server(self, args: list[str], **kw) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env.update(server_environment())
        if os.geteuid() == 0:
            args = [
                "runuser",
                "-u",
                "postgres",
                "--",
                "env",
                *[f"{k}={v}" for k, v in server_environment().items()],
                *args,
            ]
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(args, env=env, cwd="/", **kw)

    def _own(self, path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, "postgres", "postgres")

    # -- lifecycle ----------------------------------------------------------------------------
    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def init(self) -> bool:
        """initdb once; returns True when a new cluster was made."""
        self.state.mkdir(parents=True, exist_ok=True)
        ensure_server_can_reach([self.state, repo_root()])
        for d in (self.run, self.logdir):
            d.mkdir(exist_ok=True)
            self._own(d)
            d.chmod(0o700 if d == self.run else 0o755)
        if self.initialized():
            return False
        if self.data.exists() and any(self.data.iterdir()):
            raise ClusterError(
                f"{self.data} exists and is not empty but has no PG_VERSION; refusing to touch it. "
                "Move it away or set INDB_STATE_DIR to another folder."
            )
        self.data.mkdir(exist_ok=True)
        self._own(self.data)
        self.data.chmod(0o700)
        pw = secrets.token_urlsafe(18)
        pwfile = self.state / ".initpw"
        pwfile.write_text(pw + "\n")
        self._own(pwfile)
        pwfile.chmod(0o600)
        try:
            r = self._as_server(
                [
                    str(self.pg_bin / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    SUPERUSER,
                    "--pwfile",
                    str(pwfile),
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if r.returncode != 0:
            raise ClusterError(f"initdb failed:\n{r.stdout}\n{r.stderr}")
        self.password_file.write_text(pw + "\n")
        self.password_file.chmod(0o600)
        conf = self.data / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                "\n# indb: settings of the project's cluster, rewritten on every start\n"
                "include_if_exists = 'indb.conf'\n"
            )
        return True

    def write_config(self) -> None:
        mem_gib = _mem_gib()
        shared = max(128, int(mem_gib * 1024 * 0.15))  # ~15%: backends also hold models (~0.5-1 GiB each)
        conf = f"""# written by `indb db start`; edit INDB_* environment variables instead
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.run}'
shared_preload_libraries = 'pg_cron'
cron.database_name = '{DB_NAME}'
max_connections = 100
shared_buffers = {shared}MB
effective_cache_size = {int(mem_gib * 1024 * 0.5)}MB
maintenance_work_mem = {min(4096, int(mem_gib * 1024 * 0.08))}MB
work_mem = 64MB
max_parallel_maintenance_workers = {max(1, (os.cpu_count() or 2))}
max_wal_size = 4GB
checkpoint_timeout = 15min
log_line_prefix = '%m [%p] %q%u@%d '
log_min_messages = warning
lc_messages = 'C.UTF-8'
"""
        path = self.data / "indb.conf"
        path.write_text(conf)
        self._own(path)

    def running(self) -> bool:
        if not self.initialized():
            return False
        r = self._as_server([str(self.pg_bin / "pg_ctl"), "status", "-D", str(self.data)])
        return r.returncode == 0

    def start(self) -> str:
        created = self.init()
        if self.running():
            self._wait_ready()
            return "already running"
        self._check_port_free()
        self.write_config()
        pidfile = self.data / "postmaster.pid"
        if pidfile.exists():
            # pg_ctl status says not running: a stale pid file from a crash. Postgres itself checks
            # that the pid is not alive before it takes over; recovery replays the WAL. No data is removed.
            stale = "a stale postmaster.pid (left by a crash) - Postgres will recover"
        else:
            stale = ""
        compile_runtime()
        r = self._as_server(
            [str(self.pg_bin / "pg_ctl"), "start", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "120"]
        )
        if r.returncode != 0:
            tail = _tail(self.logfile, 20)
            raise ClusterError(
                f"the server did not start (pg_ctl exit {r.returncode}).\n{r.stdout}{r.stderr}\n"
                f"last lines of {self.logfile}:\n{tail}"
            )
        self._wait_ready()
        self._ensure_database()
        msg = "initialized and started" if created else "started"
        return f"{msg}{' after ' + stale if stale else ''}"

    # -- the shared runtime service (plpython/indb_runtime/service.py) --------------------------------
    @property
    def runtime_socket(self) -> Path:
        from indb_runtime import wire

        return wire.runtime_dir(self.data) / wire.SOCKET_NAME

    def runtime_stats(self) -> dict | None:
        """The service's statistics, or None when it does not answer."""
        from indb_runtime import wire

        try:
            return wire.stats(self.runtime_socket)
        except (wire.Unavailable, ValueError, OSError):
            return None

    def _supervisor_pid(self) -> int | None:
        try:
            pid = int((self.runtime_socket.parent / "supervisor.pid").read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def runtime_start(self, timeout: float = 60) -> str:
        """Start the supervised runtime service unless it runs (restart-on-start: a supervisor that died is
        started again here; a service that died is restarted by its supervisor)."""
        if os.environ.get("INDB_RUNTIME_SERVICE", "1") == "0":
            return "runtime service disabled (INDB_RUNTIME_SERVICE=0)"
        st = self.runtime_stats()
        if st is not None:
            return f"runtime service running (pid {st['pid']})"
        rdir = self.runtime_socket.parent
        rdir.mkdir(mode=0o700, parents=True, exist_ok=True)  # only the server's OS user may enter it
        self._own(rdir)
        rdir.chmod(0o700)
        if self._supervisor_pid() is None:
            preload = os.environ.get("INDB_RUNTIME_PRELOAD", f"{DB_NAME}/all-MiniLM-L6-v2")
            argv = [sys.executable, "-m", "indb_runtime.service", "supervise", "--data", str(self.data)]
            for p in filter(None, preload.split(",")):
                argv += ["--preload", p.strip()]
            env = {**os.environ, **server_environment()}
            if os.geteuid() == 0:
                argv = [
                    "runuser",
                    "-u",
                    "postgres",
                    "--",
                    "env",
                    *[f"{k}={v}" for k, v in server_environment().items()],
                    *argv,
                ]
            self.logdir.mkdir(exist_ok=True)
            # what the supervisor writes before its own logging starts (a bad --engine or --workers in
            # INDB_RUNTIME_*, an import error) goes to the same log, which stays the server's OS user's
            log = self.logdir / "runtime.log"
            log.touch(mode=0o600)
            self._own(log)
            with open(log, "ab") as early:
                proc = subprocess.Popen(
                    argv,
                    env=env,
                    cwd="/",
                    stdin=subprocess.DEVNULL,
                    stdout=early,
                    stderr=early,
                    start_new_session=True,
                )
        else:
            proc = None
        deadline = time.time() + timeout
        while time.time() < deadline:
            st = self.runtime_stats()
            if st is not None:
                return f"runtime service started (pid {st['pid']}, socket {self.runtime_socket})"
            if proc is not None and proc.poll() is not None:
                raise ClusterError(
                    f"the runtime service's supervisor exited with status {proc.returncode}; the end of "
                    f"{self.logdir / 'runtime.log'}:\n{_tail(self.logdir / 'runtime.log', 5)}"
                )
            time.sleep(0.2)
        raise ClusterError(f"the runtime service did not answer within {timeout} s; see {self.logdir / 'runtime.log'}")

    def runtime_stop(self, timeout: float = 30) -> str:
        pids = [p for p in (self._supervisor_pid(),) if p]
        st = self.runtime_stats()
        if st is not None:
            pids.append(int(st["pid"]))
        if not pids:
            return "runtime service not running"
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        deadline = time.time() + timeout
        while time.time() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        return "runtime service stopped"

    def stop(self) -> str:
        self.runtime_stop()
        if not self.running():
            return "not running"
        r = self._as_server(
            [str(self.pg_bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "120"]
        )
        if r.returncode != 0:
            raise ClusterError(f"pg_ctl stop failed: {r.stdout}{r.stderr}")
        return "stopped"

    def status(self) -> dict:
        return {
            "state_dir": str(self.state),
            "data": str(self.data),
            "initialized": self.initialized(),
            "running": self.running(),
            "port": self.port,
            "socket_dir": str(self.run),
            "log": str(self.logfile),
            "dsn": self.dsn(),
            "runtime_service": self.runtime_stats(),
        }

    # -- helpers ------------------------------------------------------------------------------
    def _check_port_free(self) -> None:
        if port_listened_on(self.port):
            raise ClusterError(
                f"port {self.port} on 127.0.0.1 is already in use by another program, and this project's "
                f"cluster ({self.data}) is not running. Stop that program or choose another port: "
                f"INDB_PORT=<port> indb db start"
            )
        sock = self.run / f".s.PGSQL.{self.port}"
        if sock.exists():
            # A socket file without a running server is left by a crash; Postgres replaces it.
            pass

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = subprocess.run([str(self.pg_bin / "pg_isready"), "-h", str(self.run), "-p", str(self.port), "-q"])
            if r.returncode == 0:
                return
            time.sleep(0.2)
        raise ClusterError(f"server not ready after {timeout}s; see {self.logfile}")

    def psql_args(self, dbname: str = DB_NAME) -> list[str]:
        return [str(self.pg_bin / "psql"), "-h", str(self.run), "-p", str(self.port), "-U", SUPERUSER, "-d", dbname]

    def _ensure_database(self) -> None:
        r = subprocess.run(
            self.psql_args("postgres") + ["-tAc", f"select 1 from pg_database where datname = '{DB_NAME}'"],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise ClusterError(r.stderr)
        if r.stdout.strip() != "1":
            r = subprocess.run(
                [str(self.pg_bin / "createdb"), "-h", str(self.run), "-p", str(self.port), "-U", SUPERUSER, DB_NAME],
                capture_output=True,
                text=True,
            )
            if r.returncode != 0:
                raise ClusterError(f"createdb {DB_NAME} failed: {r.stderr}")


def compile_runtime() -> None:
    """Byte-compile the runtime package (plpython/indb_runtime) where the server imports it from, as the user who
    starts the cluster. Backends run as the server's OS user, which cannot write bytecode into a checkout it does
    not own (an editable install): without this every new connection compiled the package's source again, ~10 ms
    of its first embedding. A file edited later is compiled again in memory (Python checks the source's mtime), as
    before. Where the folder cannot be written (a read-only install, whose installer compiled it) nothing changes."""
    import compileall

    import indb_runtime

    try:
        compileall.compile_dir(Path(indb_runtime.__file__).parent, quiet=2, workers=1)
    except OSError:
        pass


def server_environment() -> dict[str, str]:
    """Environment of the postmaster (inherited by every backend and so by PL/Python): the runtime's own
    variables, from their one definition in indb_runtime.bootstrap, and a UTF-8 locale."""
    from indb_runtime.bootstrap import RUNTIME_ENV

    return {**RUNTIME_ENV, "LC_ALL": "C.UTF-8"}


def ensure_server_can_reach(paths: list[Path], read_trees: Sequence[Path] = ()) -> list[str]:
    """Let the server's OS user traverse to ``paths`` (and read ``read_trees``) with ACLs.

    A checkout may sit below a folder that ``postgres`` cannot enter (``mktemp -d`` makes mode 700
    folders). We grant only search (x) on those ancestors, for that one user, with setfacl; nothing else
    changes. Returns the folders that were changed.
    """
    if os.geteuid() != 0:
        return []
    changed: list[str] = []
    for p in paths:
        p = p.resolve()
        for d in [*reversed(p.parents), p]:
            if not d.exists():
                continue
            if subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(d)]).returncode != 0:
                r = subprocess.run(["setfacl", "-m", "u:postgres:x", str(d)], capture_output=True, text=True)
                if r.returncode != 0:
                    raise ClusterError(
                        f"the postgres user cannot enter {d} and setfacl failed: {r.stderr.strip()}. "
                        f"Run `chmod o+x {d}` or move the checkout."
                    )
                changed.append(str(d))
    for t in read_trees:
        if subprocess.run(["runuser", "-u", "postgres", "--", "test", "-r", str(t)]).returncode != 0:
            subprocess.run(["setfacl", "-R", "-m", "u:postgres:rX", str(t)], check=True)
            changed.append(str(t))
    return changed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie child of ours is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][:1] != "Z"
    except (OSError, IndexError):
        return False


def _mem_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 8.0


def _tail(path: Path, n: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# -- read replicas (hot standbys) ----------------------------------------------------------------------------
REPLICA_NAME_OK = "abcdefghijklmnopqrstuvwxyz0123456789_"


def replica_port(state: Path) -> int:
    """A port derived from the replica's folder (54000-54999 like the primary, never the primary's own)."""
    digest = hashlib.sha256(("replica:" + str(state)).encode()).digest()
    return 54000 + int.from_bytes(digest[:2], "big") % 1000


@dataclass(frozen=True)
class Replica(Cluster):
    """A hot standby of a primary Cluster: its own data, port, socket, logs and runtime service under
    ``<primary state>/replicas/<name>/``, streaming from the primary through a physical replication slot."""

    name: str = "r1"
    primary_state: Path = Path()
    primary_port: int = 0

    @classmethod
    def of(cls, primary: Cluster, name: str) -> Replica:
        check_replica_name(name)
        st = primary.state / "replicas" / name
        port = configured_port(st / "pgdata")  # (a fresh base backup holds the primary's own indb.conf)
        if port is None or port == primary.port:  # a new replica: the port its folder hashes to, or the next free one
            port = free_port(replica_port(st), avoid=[primary.port])
        return cls(st, port, primary.pg_bin, name, primary.state, primary.port)

    @property
    def primary(self) -> Cluster:
        return Cluster(self.primary_state, self.primary_port, self.pg_bin)

    @property
    def password_file(self) -> Path:  # the standby's roles are the primary's, passwords included
        return self.primary_state / "password"

    @property
    def slot(self) -> str:
        return f"indb_replica_{self.name}"

    def init(self) -> bool:
        if not self.initialized():
            raise ClusterError(
                f"replica {self.name!r} does not exist ({self.data}); "
                f"make it with `indb db replica add --name {self.name}`"
            )
        for d in (self.run, self.logdir):
            d.mkdir(exist_ok=True)
            self._own(d)
            d.chmod(0o700 if d == self.run else 0o755)
        return False

    def _ensure_database(self) -> None:  # a standby has the primary's databases, and cannot create one
        return None

    def create(self) -> str:
        """pg_basebackup of the running primary (-R: standby.signal + primary_conninfo, -C -S: a physical
        slot so that the primary keeps the WAL the standby still needs), then start it."""
        primary = self.primary
        if not primary.running():
            raise ClusterError("the primary is not running; start it first: indb db start")
        if self.initialized():
            raise ClusterError(f"replica {self.name!r} exists already ({self.data}); remove it first")
        self.state.mkdir(parents=True, exist_ok=True)
        self._own(self.state.parent)
        self._own(self.state)
        for d in (self.run, self.logdir):
            d.mkdir(exist_ok=True)
            self._own(d)
            d.chmod(0o700 if d == self.run else 0o755)
        r = self._as_server(
            [
                str(self.pg_bin / "pg_basebackup"),
                "-h",
                str(primary.run),
                "-p",
                str(primary.port),
                "-U",
                SUPERUSER,
                "-D",
                str(self.data),
                "-R",
                "-X",
                "stream",
                "-C",
                "-S",
                self.slot,
                "--checkpoint=fast",
                "--no-password",
            ]
        )
        if r.returncode != 0:
            raise ClusterError(
                f"pg_basebackup failed (exit {r.returncode}): {r.stderr.strip()}. If the slot {self.slot} is left "
                f"over from an earlier replica, drop it on the primary: select pg_drop_replication_slot('{self.slot}')"
            )
        (self.data / "postmaster.pid").unlink(missing_ok=True)
        return self.start()

    def write_config(self) -> None:
        super().write_config()
        with (self.data / "indb.conf").open("a") as f:
            f.write("hot_standby = on\nhot_standby_feedback = on\n")

    def replay_lsn(self) -> str | None:
        r = subprocess.run(
            self.psql_args("postgres") + ["-tAc", "select pg_last_wal_replay_lsn()"], capture_output=True, text=True
        )
        return r.stdout.strip() or None if r.returncode == 0 else None

    def remove(self) -> str:
        """Stop the standby, drop its slot on the primary and delete its folder (only a standby's: the folder
        must hold standby.signal)."""
        if self.initialized() and not (self.data / "standby.signal").exists():
            raise ClusterError(f"{self.data} has no standby.signal (promoted?); refusing to delete it")
        if self.initialized():
            self.stop()
        primary = self.primary
        if primary.running():
            subprocess.run(
                primary.psql_args("postgres")
                + [
                    "-tAc",
                    "select pg_drop_replication_slot(slot_name) from pg_replication_slots "
                    f"where slot_name = '{self.slot}'",
                ],
                capture_output=True,
                text=True,
            )
        if self.state.exists():
            shutil.rmtree(self.state)
        run = self.run
        if run.exists() and run.is_relative_to(Path("/tmp")):
            shutil.rmtree(run, ignore_errors=True)
        return f"replica {self.name} removed"

    def status(self) -> dict:
        st = super().status()
        st.update(name=self.name, slot=self.slot, replay_lsn=self.replay_lsn() if st["running"] else None)
        return st


def check_replica_name(name: str) -> None:
    if not name or len(name) > 40 or any(ch not in REPLICA_NAME_OK for ch in name):
        raise ClusterError(f"invalid replica name {name!r}: use 1-40 lower-case letters, digits or _ (e.g. --name r2)")


def replicas(primary: Cluster) -> list[Replica]:
    folder = primary.state / "replicas"
    if not folder.is_dir():
        return []
    return [Replica.of(primary, p.name) for p in sorted(folder.iterdir()) if (p / "pgdata" / "PG_VERSION").exists()]


@dataclass(frozen=True)
class SmallCluster(Cluster):
    """A cluster with PostgreSQL's default memory settings (shared_buffers 128MB, work_mem 4MB): the extra local
    clusters that tests and benchmarks start as shards of a sharded collection, several per machine."""

    MARK = ".indb-small-cluster"

    @classmethod
    def at(cls, state: Path) -> SmallCluster:
        """The small cluster in ``state``: its configured port when it exists, else a free one (starting from the
        port the folder hashes to). ``remove()`` deletes only folders made this way."""
        port = port_for(state)
        state.mkdir(parents=True, exist_ok=True)
        (state / cls.MARK).touch()
        return cls(state, port)

    def write_config(self) -> None:
        conf = f"""# written by indb.localdb.SmallCluster (a local shard for tests and benchmarks)
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.run}'
max_connections = 40
log_line_prefix = '%m [%p] %q%u@%d '
log_min_messages = warning
lc_messages = 'C.UTF-8'
"""
        path = self.data / "indb.conf"
        path.write_text(conf)
        self._own(path)

    def start_as_shard(self, link_user: str = "indb_link", venv: str | None = None) -> str:
        """Start it, install indb into its database, and make (or re-key) a login role that is a member of its
        indb_admin, with a new password. Returns the key=value DSN to give ml.add_shard (TCP, password)."""
        import psycopg

        from .install import install

        self.start()
        install(self.dsn(), venv=venv or sys.prefix)
        pw = secrets.token_urlsafe(18)
        with psycopg.connect(self.dsn(), autocommit=True) as c:
            if not c.execute("select 1 from pg_roles where rolname = %s", [link_user]).fetchone():
                c.execute(f'create role "{link_user}" login')
            c.execute(f"alter role \"{link_user}\" password '{pw}'")
            c.execute(f'grant indb_admin to "{link_user}"')
        return f"host=127.0.0.1 port={self.port} dbname={DB_NAME} user={link_user} password={pw}"

    def remove(self) -> None:
        """Stop it and delete its state folder (only a folder this class made: it holds pgdata/indb.conf)."""
        if self.running():
            self.stop()
        if (self.state / self.MARK).exists():
            shutil.rmtree(self.state)
