"""`make demo` / `indb demo`: the main job end to end on real data (../shared/data).

Each feature area adds a step module here with ``TITLE`` and ``run(client, data_dir)``; ``STEPS``
orders them. Steps are idempotent: running the demo again reuses what is already there.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

STEPS = ["runtime", "embeddings", "search", "training", "registry", "features"]


def data_dir() -> Path:
    from ..localdb import repo_root

    env = os.environ.get("INDB_DATA")
    return Path(env) if env else (repo_root().parent / "shared" / "data")


def run(dsn: str | None = None, only: list[str] | None = None) -> int:
    from ..client import connect

    data = data_dir()
    if not data.exists():
        print(f"demo: data folder {data} not found (set INDB_DATA)", file=sys.stderr)
        return 1
    client = connect(dsn)
    try:
        for name in STEPS:
            if only and name not in only:
                continue
            try:
                mod = importlib.import_module(f"indb.demo.{name}")
            except ModuleNotFoundError as e:
                if e.name == f"indb.demo.{name}":
                    continue
                raise
            print(f"\n=== {mod.TITLE} ===", flush=True)
            t0 = time.time()
            mod.run(client, data)
            print(f"--- {name}: {time.time() - t0:.1f} s", flush=True)
    finally:
        client.close()
    return 0
