"""Helpers of the training benchmarks: the housing table, the preprocessing, merging results into
benchmarks/results/training.json (one section per script)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .common import DATA, RESULTS, write

COLUMNS = (
    "longitude float8, latitude float8, housing_median_age float8, total_rooms float8, "
    "total_bedrooms float8, population float8, households float8, median_income float8, "
    "median_house_value float8, ocean_proximity text"
)
FEATURES = [
    "longitude",
    "latitude",
    "housing_median_age",
    "total_rooms",
    "total_bedrooms",
    "population",
    "households",
    "median_income",
    "ocean_proximity",
]
PREPROCESS = {"ocean_proximity": {"encode": "one_hot"}, "total_bedrooms": {"impute": "median"}}
NOTE = (
    "measured on a shared machine: 2 CPU cores used by five engineers at once, so absolute times are noisy; "
    "all sides of one question run back to back in one process"
)


def connect():
    import indb

    return indb.connect(os.environ.get("INDB_DSN"))


def load_housing(conn) -> int:
    if not conn.execute("select to_regclass('public.bench_housing')").fetchone()[0]:
        conn.execute(f"create table public.bench_housing ({COLUMNS})")
        with conn.cursor().copy("copy public.bench_housing from stdin with (format csv, header true)") as cp:
            cp.write((DATA / "california_housing" / "housing.csv").read_bytes())
        conn.execute("analyze public.bench_housing")
    return conn.execute("select count(*) from public.bench_housing").fetchone()[0]


def load_titanic(conn) -> int:
    if not conn.execute("select to_regclass('public.bench_titanic')").fetchone()[0]:
        conn.execute(
            'create table public.bench_titanic ("PassengerId" int, "Survived" int, "Pclass" int, '
            '"Name" text, "Sex" text, "Age" float8, "SibSp" int, "Parch" int, "Ticket" text, "Fare" float8, '
            '"Cabin" text, "Embarked" text)'
        )
        with conn.cursor().copy("copy public.bench_titanic from stdin with (format csv, header true)") as cp:
            cp.write((DATA / "titanic" / "train.csv").read_bytes())
    return conn.execute("select count(*) from public.bench_titanic").fetchone()[0]


def save(section: str, payload: dict) -> Path:
    """Merge one script's results into training.json (other sections are kept)."""
    path = RESULTS / "training.json"
    merged = {}
    if path.exists():
        merged = json.loads(path.read_text())
        merged.pop("machine", None)
    merged[section] = {"note": NOTE, **payload}
    out = write("training", merged)
    plot()
    return out


def plot(path: Path | None = None) -> Path | None:
    """training.png from training.json: training time per side, batch prediction time, single-row latency."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    data = json.loads((RESULTS / "training.json").read_text())
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    sp = data.get("training_speed", {}).get("results", {})
    if sp:
        sides = ["ml.train", "plain_python", "client_pipeline"]
        for i, side in enumerate(sides):
            axes[0].bar(
                [j + i * 0.27 for j in range(len(sp))], [sp[a]["seconds_median"][side] for a in sp], 0.27, label=side
            )
        axes[0].set_xticks([j + 0.27 for j in range(len(sp))], list(sp))
        axes[0].set_ylabel("seconds (median of 3)")
        axes[0].set_title("training on California housing (20,640 rows)")
        axes[0].legend()
    bp = data.get("batch_prediction")
    if bp:
        labels = ["ml.predict_batch", "client pipeline", "SELECT ml.predict\n(extrapolated)"]
        vals = [
            bp["ml.predict_batch_seconds"],
            bp["client_pipeline_seconds"],
            bp["select_ml_predict_seconds_for_all_rows_extrapolated"],
        ]
        axes[1].bar(labels, vals, color=["tab:blue", "tab:green", "tab:gray"])
        axes[1].set_yscale("log")
        axes[1].set_ylabel("seconds (log)")
        axes[1].set_title(f"batch prediction, {bp['rows']:,} rows")
    lat = data.get("single_row_latency")
    if lat:
        forms = ["float8[]", "jsonb", "select_1_baseline"]
        short = {"float8[]": "float8[]", "jsonb": "jsonb", "select_1_baseline": "select 1"}
        axes[2].bar(
            [short[f] + "\np50" for f in forms], [lat[f]["p50_ms"] for f in forms], color="tab:blue", label="p50"
        )
        axes[2].bar(
            [short[f] + "\np99" for f in forms], [lat[f]["p99_ms"] for f in forms], color="tab:orange", label="p99"
        )
        axes[2].axhline(2.0, color="red", linestyle="--", label="p99 target 2 ms")
        axes[2].set_ylabel("ms")
        axes[2].set_title("single-row ml.predict latency")
        axes[2].legend()
    fig.suptitle("indb training benchmarks (shared 2-core machine)")
    fig.tight_layout()
    out = path or RESULTS / "training.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
