"""Helpers shared by the benchmark scripts: where results go, machine facts, percentiles."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# the shared data sets (../shared/data beside the checkout), used in place; INDB_DATA names another folder
DATA = Path(os.environ.get("INDB_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


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


def proc_rollup_kib(pid: int | str) -> dict[str, int]:
    """The memory fields of /proc/<pid>/smaps_rollup (Pss, Private_Clean, Private_Dirty, ...) in KiB; empty if
    the process is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return {ln.split(":")[0]: int(ln.split()[1]) for ln in f if ln.endswith(" kB\n")}
    except OSError:
        return {}


def run_together(n: int, body: Callable[[int, Callable[[], None]], None]) -> float:
    """Run ``body(i, ready)`` in n threads at once. Each calls ``ready()`` once it is set up (connected, warm); the
    clock starts when all have, and stops when the last one returns: the wall seconds. The first error of a thread
    is raised here, and a thread that fails before ``ready()`` releases the others instead of leaving them waiting."""
    start = threading.Barrier(n + 1)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            body(i, start.wait)
        except threading.BrokenBarrierError:
            pass  # another thread failed before it was ready: its error is the one raised
        except BaseException as e:
            errors.append(e)
            start.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


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


def reference_bm25(
    conn, table: str, queries: dict[str, str], where: str = "true", top: int = 10, k1: float = 1.2, b: float = 0.75
) -> dict[str, list[tuple[str, float]]]:
    """The reference BM25 (Lucene's idf ln(1 + (N - df + 0.5) / (df + 0.5)), k1, b) over the same tokens as
    indb (each row's tsvector), with the statistics of the whole table, computed in plain Python: per query the
    ``top`` (id, score) of the rows matching ``where``, best first (ties by id). tests/sql/test_bm25_index.py
    checks ml.keyword_search against it; benchmarks/search_quality.py ranks with it."""
    import math
    from collections import Counter, defaultdict

    tf: dict[str, dict[str, int]] = defaultdict(dict)
    for did, lex, n in conn.execute(
        f"select id, u.lexeme, coalesce(array_length(u.positions, 1), 1) from {table}, unnest(tsv) u"
    ):
        tf[did][lex] = n
    ids = [r[0] for r in conn.execute(f"select id from {table}")]
    keep = {r[0] for r in conn.execute(f"select id from {table} where {where}")}
    dl = {d: sum(tf[d].values()) for d in ids}
    n_docs = len(ids)
    avgdl = sum(dl.values()) / n_docs
    df = Counter(lex for d in ids for lex in tf[d])
    postings: dict[str, list[str]] = defaultdict(list)
    for d in ids:
        for lex in tf[d]:
            postings[lex].append(d)
    out = {}
    for qid, text in queries.items():
        terms = set(
            conn.execute("select array(select lexeme from unnest(to_tsvector('english', %s)))", [text]).fetchone()[0]
        )
        scores: dict[str, float] = defaultdict(float)
        for t in terms:
            if t not in df:
                continue
            idf = math.log(1 + (n_docs - df[t] + 0.5) / (df[t] + 0.5))
            for d in postings[t]:
                if d in keep:
                    f = tf[d][t]
                    scores[d] += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * dl[d] / avgdl))
        out[qid] = sorted(scores.items(), key=lambda x: (-x[1], x[0]))[:top]
    return out
