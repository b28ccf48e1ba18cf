"""Helpers shared by the benchmark scripts: where results go, machine facts, percentiles."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    load = os.getloadavg()
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in load],
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip(),
    }


def proc_status_kib(pid: int | str, field: str) -> int | None:
    """A memory field of /proc/<pid>/status (VmRSS, VmHWM, RssAnon, ...) in KiB; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def write(area: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    payload = {"machine": machine(), **payload}
    path = RESULTS / f"{area}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def create_scratch_db(name: str) -> str:
    """(Re)create database ``name`` in the project's cluster with indb installed; returns its DSN."""
    import sys

    import psycopg

    from indb.install import install
    from indb.localdb import Cluster

    c = Cluster.local()
    if not c.running():
        c.start()
    with psycopg.connect(c.dsn("postgres"), autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')
        admin.execute(f'create database "{name}"')
    dsn = c.dsn(name)
    install(dsn, venv=sys.prefix)
    return dsn


def drop_scratch_db(name: str) -> None:
    import psycopg

    from indb.localdb import Cluster

    with psycopg.connect(Cluster.local().dsn("postgres"), autocommit=True) as admin:
        admin.execute(f'drop database if exists "{name}" with (force)')


@contextmanager
def scratch_database(name: str):
    """A throwaway database with indb installed, dropped afterwards (kept with INDB_KEEP_BENCH_DB=1)."""
    dsn = create_scratch_db(name)
    try:
        yield dsn
    finally:
        if not os.environ.get("INDB_KEEP_BENCH_DB"):
            drop_scratch_db(name)
