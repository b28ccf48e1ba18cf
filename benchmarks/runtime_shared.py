"""One model copy per server: the shared runtime service against embedding in every backend, in one run.

Both modes on the same database, texts and model (indb.runtime = 'shared' and 'backend', set per connection):
  1. memory: summed PSS (/proc/<pid>/smaps_rollup) of N backends that each embedded once, plus the service
     (and its supervisor) in shared mode, for N = 1, 8, 32. Backend mode holds ~0.4 GB per backend: it is
     measured up to the N whose estimate fits in INDB_BENCH_MEM_GB (default 9) and the rest is reported as not
     measured, never extrapolated;
  2. concurrency: 8 clients, each inserting single rows into one sync vectorizer for INDB_BENCH_SECONDS (60):
     rows/s and p50/p99 statement latency (and the service's mean batch size); the two modes alternate in
     INDB_BENCH_BLOCKS (4) blocks, so that load from outside falls on both alike;
  3. single-row latency: SELECT ml.embed(model, text), warm, p50/p99 (the two modes' calls alternate);
  4. bulk: one 10,000-row INSERT into a sync vectorizer, rows/s;
  5. the first call in a new connection: its latency (median of 9 in shared mode, 3 in backend mode), the
     service warm.
Each measurement runs in both modes back to back. Texts: SciFact sentences (as benchmarks/embeddings_throughput.py). Run under `flock -x /work/heavy.lock`.
"""

from __future__ import annotations

import os
import statistics
import threading
import time

import psycopg

from . import common
from .embeddings_throughput import texts

MODEL = "all-MiniLM-L6-v2"
DB = "indb_bench_runtime"
MODES = ("shared", "backend")
SECONDS = float(os.environ.get("INDB_BENCH_SECONDS", "60"))
BULK = int(os.environ.get("INDB_BENCH_BULK", "10000"))
MEM_GB = float(os.environ.get("INDB_BENCH_MEM_GB", "9"))
NS = (1, 8, 16, 32)
BLOCKS = int(os.environ.get("INDB_BENCH_BLOCKS", "4"))


def connect(dsn: str, mode: str) -> psycopg.Connection:
    c = psycopg.connect(dsn, autocommit=True)
    c.execute(f"set indb.runtime = '{mode}'")
    return c


def pss(pid: int) -> int:
    return common.proc_rollup_kib(pid).get("Pss", 0) * 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (/proc/<pid>/stat), all its threads."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_pids(cluster) -> list[int]:
    st = cluster.runtime_stats()
    pids = [int(st["pid"])] if st else []
    sup = cluster.runtime_socket.parent / "supervisor.pid"
    if sup.exists():
        pids.append(int(sup.read_text()))
    return pids


def parallel(fn, items) -> None:
    threads = [threading.Thread(target=fn, args=(x,)) for x in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def memory(dsn: str, cluster, mode: str) -> list[dict]:
    out = []
    conns: list[psycopg.Connection] = []
    try:
        for n in NS:
            if mode == "backend" and n * 0.45 > MEM_GB:
                out.append(
                    {
                        "n": n,
                        "measured": False,
                        "why": f"{n} backends with their own model need ~{n * 0.45:.0f} GB; budget "
                        f"INDB_BENCH_MEM_GB={MEM_GB:g} on a machine shared with other work",
                    }
                )
                continue
            new = [connect(dsn, mode) for _ in range(n - len(conns))]
            parallel(lambda c: c.execute("select ml.embed(%s, 'one sentence')", [MODEL]), new)
            conns += new
            pids = [c.execute("select pg_backend_pid()").fetchone()[0] for c in conns]
            backends = sum(pss(p) for p in pids)
            svc = sum(pss(p) for p in service_pids(cluster)) if mode == "shared" else 0
            row = {
                "n": n,
                "measured": True,
                "backends_pss_mb": round(backends / 2**20, 1),
                "service_pss_mb": round(svc / 2**20, 1),
                "total_pss_mb": round((backends + svc) / 2**20, 1),
                "per_backend_pss_mb": round(backends / n / 2**20, 1),
            }
            print(f"  memory {mode} N={n}: {row['total_pss_mb']} MB", flush=True)
            out.append(row)
    finally:
        for c in conns:
            c.close()
    return out


def make_vectorizer(dsn: str, name: str) -> str:
    with connect(dsn, "backend") as c:
        c.execute(f"drop table if exists {name} cascade")
        c.execute(f"create table {name} (id bigserial primary key, body text)")
        c.execute(f"select ml.create_vectorizer('{name}', array['body'], name => '{name}')")
    return name


def concurrency(dsn: str, cluster, data: list[str]) -> dict:
    """8 clients per mode, each inserting single rows into its mode's sync vectorizer. The modes alternate in
    BLOCKS blocks (SECONDS in all per mode, the first mode of each block rotating), so that load from outside
    falls on both alike; the 16 connections stay open throughout (8 of them idle at any time: idle pooled
    connections, which must not slow the busy ones)."""
    tables = {mode: make_vectorizer(dsn, f"bench_rt_conc_{mode}") for mode in MODES}
    conns = {mode: [connect(dsn, mode) for _ in range(8)] for mode in MODES}
    for cs in conns.values():
        parallel(lambda c: c.execute("select ml.embed(%s, 'warm')", [MODEL]), cs)
    pids = {mode: [c.execute("select pg_backend_pid()").fetchone()[0] for c in cs] for mode, cs in conns.items()}
    svc = service_pids(cluster)
    lat: dict[str, list[float]] = {mode: [] for mode in MODES}
    wall = dict.fromkeys(MODES, 0.0)
    cpu = dict.fromkeys(MODES, 0.0)
    texts = batches = 0
    k = [0] * 8
    for block in range(BLOCKS):
        order = MODES if block % 2 == 0 else MODES[::-1]
        for mode in order:
            procs = pids[mode] + (svc if mode == "shared" else [])
            before = cluster.runtime_stats() if mode == "shared" else None
            cpu0 = sum(cpu_seconds(p) for p in procs)
            stop = time.time() + SECONDS / BLOCKS

            def work(i: int, mode: str = mode, stop: float = stop) -> None:
                c = conns[mode][i]
                while time.time() < stop:
                    t = time.perf_counter()
                    c.execute(f"insert into {tables[mode]} (body) values (%s)", [data[(i + 8 * k[i]) % len(data)]])
                    lat[mode].append(time.perf_counter() - t)
                    k[i] += 1

            t0 = time.time()
            parallel(work, range(8))
            wall[mode] += time.time() - t0
            cpu[mode] += sum(cpu_seconds(p) for p in procs) - cpu0
            if before is not None:
                after = cluster.runtime_stats()
                texts += after["texts"] - before["texts"]
                batches += after["batches"] - before["batches"]
    for cs in conns.values():
        for c in cs:
            c.close()
    out = {}
    for mode in MODES:
        rows = len(lat[mode])
        res = {
            "clients": 8,
            "blocks": BLOCKS,
            "seconds": round(wall[mode], 1),
            "rows": rows,
            "rows_per_s": round(rows / wall[mode], 1),
            "p50_ms": round(common.percentile(lat[mode], 50) * 1000, 1),
            "p99_ms": round(common.percentile(lat[mode], 99) * 1000, 1),
            # CPU spent per row by everything that serves it (the 8 backends, and the service in shared mode):
            # unlike rows/s it does not depend on what else the shared machine runs; 2 cores / cpu_ms_per_row
            # is the throughput this work allows on 2 cores of its own
            "cpu_ms_per_row": round(cpu[mode] / max(rows, 1) * 1000, 2),
            "rows_per_s_on_2_free_cores": round(2 / (cpu[mode] / max(rows, 1)), 1) if cpu[mode] else None,
        }
        if mode == "shared":
            res["service_mean_batch_size"] = round(texts / batches, 2) if batches else None
        print(f"  concurrency {mode}: {res}", flush=True)
        out[mode] = res
    return out


def latency(dsn: str, data: list[str], n: int = 300) -> dict:
    """Both modes side by side: one connection each, calls alternating, so that the load of a shared machine
    falls on both alike."""
    conns = {mode: connect(dsn, mode) for mode in MODES}
    lat: dict[str, list[float]] = {mode: [] for mode in MODES}
    try:
        for c in conns.values():
            for i in range(20):
                c.execute("select ml.embed(%s, %s)", [MODEL, data[i]])
        for i in range(n):
            for mode, c in conns.items():
                t = time.perf_counter()
                c.execute("select ml.embed(%s, %s)", [MODEL, data[100 + i]])
                lat[mode].append(time.perf_counter() - t)
    finally:
        for c in conns.values():
            c.close()
    out = {}
    for mode in MODES:
        out[mode] = {
            "calls": n,
            "p50_ms": round(common.percentile(lat[mode], 50) * 1000, 2),
            "p99_ms": round(common.percentile(lat[mode], 99) * 1000, 2),
        }
        print(f"  latency {mode}: {out[mode]}", flush=True)
    return out


def bulk(dsn: str, cluster, mode: str, data: list[str]) -> dict:
    table = make_vectorizer(dsn, f"bench_rt_bulk_{mode}")
    with connect(dsn, mode) as c:
        c.execute("select ml.embed(%s, 'warm')", [MODEL])
        pids = [c.execute("select pg_backend_pid()").fetchone()[0]] + (
            service_pids(cluster) if mode == "shared" else []
        )
        cpu0 = sum(cpu_seconds(p) for p in pids)
        t = time.perf_counter()
        c.execute(f"insert into {table} (body) select unnest(%s::text[])", [data[:BULK]])
        took = time.perf_counter() - t
        cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    res = {
        "rows": BULK,
        "seconds": round(took, 1),
        "rows_per_s": round(BULK / took, 1),
        "cpu_ms_per_row": round(cpu / BULK * 1000, 2),
    }
    print(f"  bulk {mode}: {res}", flush=True)
    return res


def first_call(dsn: str, mode: str, tries: int = 3) -> dict:
    took = []
    for i in range(tries):
        with connect(dsn, mode) as c:
            t = time.perf_counter()
            c.execute("select ml.embed(%s, %s)", [MODEL, f"first call {i}"])
            took.append(time.perf_counter() - t)
    res = {
        "tries": tries,
        "median_ms": round(statistics.median(took) * 1000, 1),
        "all_ms": [round(x * 1000) for x in took],
    }
    print(f"  first call {mode}: {res}", flush=True)
    return res


def main() -> None:
    from indb.localdb import Cluster

    cluster = Cluster.local()
    cluster.runtime_start()
    data = texts(max(BULK, 2000))
    res: dict = {
        "model": MODEL,
        "texts": "SciFact sentences (benchmarks/embeddings_throughput.texts)",
        "settings": {"seconds": SECONDS, "bulk_rows": BULK, "backend_memory_budget_gb": MEM_GB},
        "modes": {},
    }
    with common.scratch_database(DB) as dsn:
        with connect(dsn, "shared") as c:  # the service loads the model before anything is measured
            c.execute("select ml.embed(%s, 'warm the service')", [MODEL])
        st = cluster.runtime_stats() or {}
        res["service"] = {k: st.get(k) for k in ("window_ms", "max_batch", "max_request_bytes", "workers")}
        # the service's engine for the model (ONNX Runtime by default, PyTorch with INDB_RUNTIME_ENGINE=torch);
        # backends run PyTorch
        res["service"]["engine"] = next((m.get("engine", "torch") for m in st.get("models", [])), None)
        # each measurement in both modes back to back, so that both see the same machine
        m: dict = {mode: {} for mode in MODES}
        for mode in MODES:
            # 9 tries in shared mode (~0.1 s each: a median of 3 moved by 20 ms with the machine's load), 3 in backend
            # mode (~7 s each)
            m[mode]["first_call"] = first_call(dsn, mode, tries=9 if mode == "shared" else 3)
        for mode, r in latency(dsn, data).items():
            m[mode]["latency"] = r
        for mode in MODES:
            m[mode]["bulk"] = bulk(dsn, cluster, mode, data)
        for mode, r in concurrency(dsn, cluster, data).items():
            m[mode]["concurrency"] = r
        for mode in MODES:
            m[mode]["memory"] = memory(dsn, cluster, mode)
        res["modes"] = m
    s, b = res["modes"]["shared"], res["modes"]["backend"]
    mem32 = next((r for r in s["memory"] if r["n"] == 32), {})
    res["targets"] = {
        "shared_32_connections_total_gb": round(mem32.get("total_pss_mb", 0) / 1024, 2),
        "shared_32_connections_le_1_5_gb": mem32.get("total_pss_mb", 1e9) <= 1.5 * 1024,
        "throughput_8_clients_ratio": round(s["concurrency"]["rows_per_s"] / b["concurrency"]["rows_per_s"], 2),
        "latency_p50_overhead_ms": round(s["latency"]["p50_ms"] - b["latency"]["p50_ms"], 2),
        "throughput_8_clients_cpu_ratio": round(
            b["concurrency"]["cpu_ms_per_row"] / s["concurrency"]["cpu_ms_per_row"], 2
        ),
        "bulk_ratio": round(s["bulk"]["rows_per_s"] / b["bulk"]["rows_per_s"], 2),
        "bulk_cpu_ratio": round(b["bulk"]["cpu_ms_per_row"] / s["bulk"]["cpu_ms_per_row"], 2),
        "first_call_shared_ms": s["first_call"]["median_ms"],
    }
    # INDB_BENCH_RESULT: another results file, e.g. for a run with the service on PyTorch (INDB_RUNTIME_ENGINE=torch)
    path = common.write(os.environ.get("INDB_BENCH_RESULT", "runtime"), res)
    print(f"wrote {path}: {res['targets']}")


if __name__ == "__main__":
    main()
