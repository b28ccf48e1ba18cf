"""The `indb` command line.

Core commands live here (db, psql, dsn, install, info, demo). Feature areas add their own commands in
modules named ``indb/cmd_*.py`` exposing ``register(subparsers)``; they are found automatically.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import shutil
import sys

import psycopg

from . import __version__
from .errors import ClusterError, IndbError, translate
from .localdb import Cluster, Replica, replicas


def _cmd_replica(cluster: Cluster, args) -> int:
    action = args.replica_action or "list"
    if action == "list":
        print(json.dumps([r.status() for r in replicas(cluster)], indent=2))
        return 0
    name = args.name or args.replica_name or ("r1" if action == "add" else None)
    if not name:
        raise ClusterError("name the replica to remove: indb db replica remove <name>")
    rep = Replica.of(cluster, name)
    if action == "add":
        print(f"indb db replica: {rep.create()} (replica {name}, {rep.data}, port {rep.port})")
        print(f"indb db replica: {rep.runtime_start()}")
    elif action == "remove":
        if not rep.initialized() and not rep.state.exists():
            raise ClusterError(f"there is no replica {name!r}; see indb db replica list")
        print(f"indb db replica: {rep.remove()}")
    else:
        raise ClusterError(f"unknown replica action {action!r}: use add, list or remove")
    return 0


def _cmd_db(args) -> int:
    cluster = Cluster.local()
    if args.action == "replica":
        return _cmd_replica(cluster, args)
    if args.action == "start":
        print(f"indb db: {cluster.start()} ({cluster.data}, port {cluster.port})")
        print(f"indb db: {cluster.runtime_start()}")
        for rep in replicas(cluster):
            print(f"indb db: replica {rep.name}: {rep.start()} (port {rep.port})")
            print(f"indb db: replica {rep.name}: {rep.runtime_start()}")
    elif args.action == "stop":
        for rep in replicas(cluster):
            print(f"indb db: replica {rep.name}: {rep.stop()}")
        print(f"indb db: {cluster.stop()}")
    else:
        st = cluster.status()
        print(json.dumps(st, indent=2))
        return 0 if st["running"] else 3
    return 0


def _pgvector(v: dict) -> str:
    if v["from"] != v["to"]:
        return f"{v['from']} -> {v['to']} (ALTER EXTENSION vector UPDATE)"
    return str(v["to"])


def psql_argv(cluster: Cluster, dbname: str, rest: list[str]) -> list[str]:
    """psql's command line: the cluster's connection, then the user's own arguments (a leading ``--``,
    which argparse keeps, is dropped so that ``indb psql -- -c 'select 1'`` reaches psql as ``-c``)."""
    if rest[:1] == ["--"]:
        rest = rest[1:]
    return cluster.psql_args(dbname) + rest


def _pick_replica(cluster: Cluster, name: str) -> Replica:
    pick = [r for r in replicas(cluster) if name in ("", r.name)]
    if not pick:
        raise ClusterError(
            f"no replica {name!r}; make one with indb db replica add"
            if name
            else "this cluster has no replica; make one with indb db replica add"
        )
    return pick[0]


def _cmd_psql(args) -> int:
    dsn = os.environ.get("INDB_DSN")
    if args.replica is not None:
        argv = psql_argv(_pick_replica(Cluster.local(), args.replica), args.dbname or "indb", list(args.rest))
    elif dsn and args.dbname is None:  # the database the other indb commands use
        rest = list(args.rest)[1:] if list(args.rest)[:1] == ["--"] else list(args.rest)
        argv = [shutil.which("psql") or "psql", dsn, *rest]
    else:
        argv = psql_argv(Cluster.local(), args.dbname or "indb", list(args.rest))
    os.execv(argv[0], argv)
    return 0  # not reached


def _cmd_dsn(args) -> int:
    cluster = Cluster.local()
    if args.replica is not None:
        cluster = _pick_replica(cluster, args.replica)
    print(cluster.dsn(args.dbname, tcp=args.tcp))
    return 0


def _cmd_install(args) -> int:
    from .install import install

    dsn = args.dsn or os.environ.get("INDB_DSN")
    if not dsn:
        cluster = Cluster.local()
        if not cluster.running():
            print(f"indb install: {cluster.start()}", file=sys.stderr)
        dsn = cluster.dsn()
    if args.venv is None:
        from .localdb import ensure_server_can_reach, repo_root

        ensure_server_can_reach([__import__("pathlib").Path(sys.prefix), repo_root() / "plpython"])
    summary = install(dsn, venv=args.venv, target=args.revision, check_runtime=not args.no_runtime_check)
    print(
        f"indb install: schema at revision {summary['to']} (was {summary['from'] or 'empty'}), "
        f"{len(summary['sql_files'])} sql files applied, pgvector {_pgvector(summary['pgvector'])}, "
        f"runtime venv {summary['venv']}, "
        f"{summary['seconds']} s"
    )
    return 0


def _cmd_info(args) -> int:
    from .client import connect

    with connect(args.dsn) as c:
        print(json.dumps(c.runtime_info(), indent=2))
    return 0


def _cmd_demo(args) -> int:
    from .demo import run

    return run(args.dsn, only=args.only)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="indb", description="indb: machine learning inside PostgreSQL")
    p.add_argument("--version", action="version", version=f"indb {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    db = sub.add_parser(
        "db",
        help="start, stop or check the project's local PostgreSQL cluster",
        description="The project's own PostgreSQL cluster, in .state/ (INDB_STATE_DIR): data, socket, logs. "
        "As root it runs as the postgres OS user. The port is derived from the folder (INDB_PORT overrides).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="actions:\n  start   create the cluster if needed (initdb, settings sized from RAM) and start it,\n"
        "          with the shared runtime service (restarted by its supervisor when it dies;\n"
        "          INDB_RUNTIME_SERVICE=0: none)\n"
        "          and the replicas that exist\n"
        "  stop    stop them all, replicas first (fast shutdown)\n"
        "  status  print their state as JSON; exit status 3 when it is not running\n"
        "  replica add [--name N] | list | remove N\n"
        "          a hot standby (pg_basebackup -R, physical slot indb_replica_N) in .state/replicas/N/,\n"
        "          its own port and runtime service; reads only (indb dsn --replica N)",
    )
    db.add_argument(
        "action", choices=["start", "stop", "status", "replica"], help="start, stop, status or replica (see below)"
    )
    db.add_argument("replica_action", nargs="?", help="replica: add, list or remove")
    db.add_argument("replica_name", nargs="?", help="replica remove: the replica's name")
    db.add_argument("--name", help="replica add/remove: the replica's name (default r1)")
    db.set_defaults(func=_cmd_db)

    ps = sub.add_parser(
        "psql",
        help="psql into the local database (arguments after -- go to psql)",
        description="Run psql on the project's database, e.g. indb psql -- -c 'select ml.version()'",
    )
    ps.add_argument("--dbname", default=None, help="database of the local cluster (default: $INDB_DSN, else indb)")
    ps.add_argument(
        "--replica", nargs="?", const="", default=None, metavar="N", help="psql into a read replica (the first, or N)"
    )
    ps.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for psql, after --")
    ps.set_defaults(func=_cmd_psql)

    dsn = sub.add_parser("dsn", help="print a libpq connection string for the local database")
    dsn.add_argument("--dbname", default="indb", help="database name (default indb)")
    dsn.add_argument(
        "--tcp", action="store_true", help="TCP on 127.0.0.1 with the cluster's password instead of the socket"
    )
    dsn.add_argument(
        "--replica",
        nargs="?",
        const="",
        default=None,
        metavar="N",
        help="a read replica's connection (the first one, or replica N)",
    )
    dsn.set_defaults(func=_cmd_dsn)

    ins = sub.add_parser("install", help="install or upgrade the indb schema (alembic upgrade + sql/)")
    ins.add_argument("--dsn", help="target database (default: $INDB_DSN, else the local cluster)")
    ins.add_argument("--venv", help="runtime venv path as the server sees it (default: this Python's venv)")
    ins.add_argument("--revision", default="head", help="alembic revision to upgrade to (default head)")
    ins.add_argument("--no-runtime-check", action="store_true", help="do not check the runtime from inside the server")
    ins.set_defaults(func=_cmd_install)

    info = sub.add_parser("info", help="print ml.runtime_info() of the database")
    info.add_argument("--dsn", help="database (default: $INDB_DSN, else the local cluster)")
    info.set_defaults(func=_cmd_info)

    demo = sub.add_parser("demo", help="run the end-to-end demo on real data")
    demo.add_argument("--dsn", help="database (default: $INDB_DSN, else the local cluster)")
    demo.add_argument("--only", action="append", help="run only these demo steps (repeatable)")
    demo.set_defaults(func=_cmd_demo)

    pkg = importlib.import_module("indb")
    for mod in sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("cmd_")):
        importlib.import_module(f"indb.{mod}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except IndbError as e:
        print(f"indb {args.command}: error: {e}", file=sys.stderr)
        return 1
    except psycopg.Error as e:  # one the command did not translate: its message, not a traceback
        print(f"indb {args.command}: error: {translate(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
