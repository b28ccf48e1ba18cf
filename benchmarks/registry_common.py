"""Shared by the registry_* benchmarks: a fresh benchmark database with indb installed, and results
merged into benchmarks/results/registry.json (one section per script)."""

from __future__ import annotations

import json
import time

from .common import RESULTS, create_scratch_db, drop_scratch_db, machine

DBNAME = "indb_bench_registry"
NOTE = (
    "machine shared with four other engineers' builds/tests/benchmarks (2 CPU cores): absolute numbers are "
    "pessimistic and noisy; sides of one comparison were measured in the same run, interleaved where possible"
)


def fresh_db(name: str = DBNAME) -> str:
    return create_scratch_db(name)


def drop_db(name: str = DBNAME) -> None:
    drop_scratch_db(name)


def save(section: str, payload: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "registry.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data["note"] = NOTE
    data[section] = {"machine": machine(), **payload}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"wrote {path} [{section}]")
    plot()


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *a):
        self.s = time.perf_counter() - self.t0


def plot() -> None:
    """benchmarks/results/registry.png from whatever sections registry.json holds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # pragma: no cover - plotting is optional
        return
    data = json.loads((RESULTS / "registry.json").read_text())
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if "logging" in data:
        r = data["logging"]["results"]
        axes[0].bar(list(r), [v["points_per_s"] for v in r.values()], color="tab:blue")
        axes[0].axhline(50000, color="red", ls="--", label="target 50k/s")
        axes[0].set_title("metric logging, points/s")
        axes[0].tick_params(axis="x", rotation=20, labelsize=7)
        axes[0].legend()
    if "search_and_lineage" in data:
        res = data["search_and_lineage"]["results"]
        r = {k: v for k, v in res.items() if isinstance(v, dict) and "p50_ms" in v}
        r |= {f"reader: {k}": v for k, v in res.get("as_reader", {}).items() if isinstance(v, dict) and "p50_ms" in v}
        xs = range(len(r))
        axes[1].bar([x - 0.2 for x in xs], [v["p50_ms"] for v in r.values()], 0.4, label="p50")
        axes[1].bar([x + 0.2 for x in xs], [v["p99_ms"] for v in r.values()], 0.4, label="p99")
        axes[1].axhline(50, color="red", ls="--", label="search target 50 ms")
        axes[1].set_xticks(list(xs), list(r), rotation=20, fontsize=6)
        axes[1].set_title("search_runs / lineage latency, ms (100k runs)")
        axes[1].legend(fontsize=7)
    if "audit" in data:
        o = data["audit"]["overhead"]
        axes[2].bar(["audit off", "audit on"], [o["median_ms_off"], o["median_ms_on"]], color=["gray", "tab:orange"])
        axes[2].set_title(f"registry write workload, ms/iteration (+{o['overhead_pct']}%)")
    fig.suptitle("indb registry benchmarks (shared 2-core machine)")
    fig.tight_layout()
    fig.savefig(RESULTS / "registry.png", dpi=90)
