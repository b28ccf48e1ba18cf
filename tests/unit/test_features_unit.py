"""Feature store Python pieces without a database: drift statistics (PSI, KS) and describe's errors.
(Entity-key kinds live in SQL only: features._key_kind, tested in tests/sql/test_features_store.py.)"""

from __future__ import annotations

import numpy as np
import pytest


def test_psi_and_ks_quiet_on_same_distribution():
    from indb_runtime import drift

    rng = np.random.default_rng(0)
    r = drift.drift(rng.normal(0, 1, 5000).tolist(), rng.normal(0, 1, 5000).tolist())
    assert r["drift"] is False and r["psi"] < 0.02 and r["ks"] < 0.05 and r["ks_pvalue"] > 0.01


def test_psi_and_ks_flag_a_mean_shift_and_a_scale_change():
    from indb_runtime import drift

    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, 5000)
    shifted = drift.drift(base, rng.normal(0.5, 1, 5000))
    assert shifted["drift"] is True and shifted["psi"] > 0.2 and shifted["ks"] > 0.15
    wider = drift.drift(base, rng.normal(0, 2, 5000))
    assert wider["drift"] is True


def test_ks_matches_scipy_when_available():
    scipy_stats = pytest.importorskip("scipy.stats")
    from indb_runtime import drift

    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, 300), rng.normal(0.2, 1, 400)
    d, p = drift.ks(a, b)
    ref = scipy_stats.ks_2samp(a, b)
    assert abs(d - ref.statistic) < 1e-12
    assert abs(p - ref.pvalue) < 0.02


def test_psi_handles_discrete_values_and_nulls():
    from indb_runtime import drift

    r = drift.drift([1, 1, 1, 2, 2, None, 3] * 100, [1, 2, 3, None] * 100)
    assert r["baseline"]["n"] == 600 and r["current"]["n"] == 300 and r["psi"] > 0


def test_drift_needs_values():
    from indb_runtime import drift
    from indb_runtime.errors import IndbRuntimeError

    with pytest.raises(IndbRuntimeError) as ei:
        drift.drift([None, None], [1.0, 2.0])
    assert ei.value.sqlstate == "22000" and "baseline" in ei.value.message


def test_describe_reports_bad_sql_with_its_sqlstate():
    from fakeplpy import FakePlpy

    from indb_runtime import features
    from indb_runtime.errors import IndbRuntimeError

    class Boom(Exception):
        sqlstate = "42P01"

    class P(FakePlpy):
        def execute(self, query, args=None):
            raise Boom('relation "nope" does not exist')

    with pytest.raises(IndbRuntimeError) as ei:
        features.describe(P(), "select * from nope", "entity query")
    assert ei.value.sqlstate == "42P01" and ei.value.message.startswith("entity query:")
    with pytest.raises(IndbRuntimeError) as ei:
        features.describe(P(), "  ", "entity query")
    assert ei.value.sqlstate == "22023"


def test_report_keeps_one_progress_per_backend_and_ends_it(tmp_path, monkeypatch):
    """indb_runtime.progress.report, the one SQL face of progress for long plpgsql calls (ml._report_progress):
    collections' add_documents and reindex, the feature store's materialize and push."""
    import json
    import os

    from fakeplpy import FakePlpy

    from indb_runtime import progress

    monkeypatch.chdir(tmp_path)  # progress files live in the backend's working directory
    plpy = FakePlpy({"pg_backend_pid": [{"pid": 4242, "db": "d", "who": "alice", "started": 1.0}]})
    path = os.path.join(progress.folder(), "4242.json")

    def state() -> dict:
        with open(path) as f:
            return json.load(f)

    progress.report(plpy, None, phase="ignored")  # nothing started: nothing to do
    assert not os.path.exists(path)
    progress.report(plpy, "features.materialize", "v@1", "reading the source")
    assert state()["phase"] == "reading the source" and state()["target"] == "v@1" and state()["total"] is None
    progress.report(plpy, None, phase="writing the offline store", done=0, total=300)
    progress.report(plpy, None, phase="writing the online store", done=300)
    progress.report(plpy, None, phase="computing statistics")  # done stays
    s = state()
    assert (s["phase"], s["done"], s["total"], s["unit"]) == ("computing statistics", 300, 300, "rows")
    # the same command and target move it on; another one (a call that failed before its end) replaces it
    progress.report(plpy, "add_documents", "c", "embedding", 10, 50, "documents")
    progress.report(plpy, "add_documents", "c", "writing", 20, 50, "documents")
    s = state()
    assert (s["command"], s["phase"], s["done"], s["total"], s["unit"]) == (
        "add_documents",
        "writing",
        20,
        50,
        "documents",
    )
    progress.report(plpy, "features.push", "v@1", "reading the pushed rows", total=10)
    assert state()["command"] == "features.push" and state()["done"] == 0
    progress.report(plpy, None)
    assert not os.path.exists(path)
    progress.report(plpy, None)  # twice is fine
