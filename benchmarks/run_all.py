"""`make bench`: run every benchmark script in benchmarks/ (modules named <area>_*.py with a main())."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import benchmarks


def main() -> int:
    names = sorted(
        m.name
        for m in pkgutil.iter_modules(benchmarks.__path__)
        if m.name not in ("common", "run_all") and not m.name.startswith("_")
    )
    only = set(sys.argv[1:])
    for name in names:
        if only and not any(name.startswith(o) for o in only):
            continue
        mod = importlib.import_module(f"benchmarks.{name}")
        if not hasattr(mod, "main"):
            continue
        print(f"=== benchmarks.{name}", flush=True)
        t0 = time.time()
        mod.main()
        print(f"--- {name}: {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
