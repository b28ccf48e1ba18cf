"""Shared by the features_* benchmarks: a throwaway database with indb installed, results merged into
benchmarks/results/features.json (one section per script), and peak memory of a Postgres backend."""

from __future__ import annotations

import json
from contextlib import contextmanager

import psycopg

from .common import RESULTS, machine, proc_status_kib, scratch_database


@contextmanager
def bench_database(name: str = "indb_bench_features"):
    """Yield (dsn, install_note). The database is dropped afterwards."""
    with scratch_database(name) as dsn:
        yield dsn, "full indb install"


def backend_peak_kib(conn: psycopg.Connection) -> int | None:
    """VmHWM (peak resident set) of this connection's backend process, in KiB (we run as root, same host)."""
    return proc_status_kib(conn.execute("select pg_backend_pid()").fetchone()[0], "VmHWM")


def self_peak_kib() -> int:
    return proc_status_kib("self", "VmHWM") or 0


def write_section(section: str, payload: dict) -> str:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "features.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[section] = {
        "machine": {
            **machine(),
            "note": "2 CPU cores shared with four other engineers' work; numbers are noisy and pessimistic",
        },
        **payload,
    }
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    try:
        plot()
    except Exception as e:  # a plot must never lose the measured numbers
        print("features.png not drawn:", e)
    return str(path)


def plot() -> str | None:
    """features.png: point-in-time join seconds per side, and online p50/p99 per side (from features.json)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    data = json.loads((RESULTS / "features.json").read_text())
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    pit = data.get("point_in_time_join", {})
    sets = [k for k in pit if k.startswith(("movielens", "synthetic"))]
    if sets:
        sides = [
            ("indb", "indb get_historical"),
            ("pandas_merge_asof", "pandas merge_asof"),
            ("duckdb_asof", "DuckDB ASOF"),
        ]
        w = 0.25
        for i, (key, label) in enumerate(sides):
            axes[0].bar([j + i * w for j in range(len(sets))], [pit[s][key]["median_s"] for s in sets], w, label=label)
        axes[0].set_xticks([j + w for j in range(len(sets))])
        axes[0].set_xticklabels([f"{s}\n{pit[s].get('entity_rows', 0):,} entity rows" for s in sets], fontsize=8)
        axes[0].set_ylabel("seconds (median of 3)")
        axes[0].set_title("point-in-time join")
        axes[0].legend(fontsize=8)
    on = data.get("online_serving", {})
    if on.get("indb") and on.get("redis"):
        rows = [
            ("indb get_online\n1 client", on["indb"]["get_online_1_client"]),
            ("indb get_online\n4 clients", on["indb"]["get_online_4_clients"]),
            ("Redis HGETALL\n1 client", on["redis"]["hgetall_1_client"]),
            ("Redis HGETALL\n4 clients", on["redis"]["hgetall_4_clients"]),
        ]
        xs = range(len(rows))
        axes[1].bar([x - 0.2 for x in xs], [r[1]["p50_ms"] for r in rows], 0.4, label="p50")
        axes[1].bar([x + 0.2 for x in xs], [r[1]["p99_ms"] for r in rows], 0.4, label="p99")
        axes[1].axhline(1.0, color="red", linestyle="--", linewidth=1, label="1 ms target")
        axes[1].set_xticks(list(xs))
        axes[1].set_xticklabels([r[0] for r in rows], fontsize=8)
        axes[1].set_ylabel("ms per call (1 entity x 20 features)")
        axes[1].set_title("online serving")
        axes[1].legend(fontsize=8)
    fig.suptitle("indb feature store (2 shared CPU cores; noisy)", fontsize=10)
    fig.tight_layout()
    path = RESULTS / "features.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
