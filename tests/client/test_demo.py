"""`indb demo` (what `make demo` runs) works on a fresh database and again on the same one. The search step is
left out here: it embeds the whole SciFact corpus (5,183 abstracts, minutes on a CPU) to measure nDCG; the
README's walkthrough (tests/docs) searches a slice of it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

STEPS = ["runtime", "embeddings", "training", "registry", "features"]


def _demo(dsn: str) -> subprocess.CompletedProcess:
    only = [a for s in STEPS for a in ("--only", s)]
    return subprocess.run(
        [str(Path(sys.prefix) / "bin" / "indb"), "demo", "--dsn", dsn, *only],
        env={**os.environ, "INDB_DEMO_SCIFACT_DOCS": "40"},
        capture_output=True,
        text=True,
        timeout=1800,
    )


def test_the_demo_runs_on_a_fresh_database_and_again(empty_db):
    from indb.install import install

    dsn = empty_db("indb_demo")
    install(dsn, venv=sys.prefix, log=lambda *a: None)
    for attempt in ("first", "second"):
        r = _demo(dsn)
        out = r.stdout + r.stderr
        assert r.returncode == 0, f"{attempt} run of the demo failed:\n{out[-4000:]}"
        assert "Traceback" not in out
        for step in STEPS:
            assert f"--- {step}:" in out, f"{attempt} run: step {step} did not finish:\n{out[-3000:]}"
