"""registry.search_runs reads registry.run_search (one row per run: params, latest metrics and tags as jsonb,
kept by registry.start_run and registry.log_batch). The mirror must always equal the tables it mirrors, and
every search must return exactly what the 0.2.0 SQL over registry.params / latest_metrics returns (kept in
indb_runtime.search_runs as the reference, mirror=False)."""

from __future__ import annotations

import json
import math
import random
import secrets

import psycopg
import pytest

from indb_runtime import search_runs as sr

KEYS_P = ["depth", "lr", "model", "note"]
KEYS_M = ["rmse", "acc", "loss"]
TEAMS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def runs(sconn):
    """Two experiments of 60 runs written only through the API: params (one null, numbers given as JSON
    numbers), metric histories logged out of step order (NaN, infinities, negatives), tags set and overwritten,
    some keys missing."""
    rng = random.Random(16)
    exps = [f"mir_{secrets.token_hex(3)}", f"mir_{secrets.token_hex(3)}"]
    c = sconn
    for i in range(120):
        exp = exps[i % 2]
        rid = c.execute(
            "select registry.start_run(%s, %s, %s)", [exp, f"run{i}", json.dumps({"team": rng.choice(TEAMS)})]
        ).fetchone()[0]
        params = {k: rng.choice(["2", "4", "6", "x%y", None, 6]) for k in KEYS_P if rng.random() < 0.7}
        if params:
            c.execute("select registry.log_params(%s, %s)", [rid, json.dumps(params)])
        keys, vals, steps = [], [], []
        for k in KEYS_M:
            if rng.random() < 0.8:
                for step in rng.sample(range(5), rng.randint(1, 4)):
                    keys.append(k)
                    vals.append(rng.choice([rng.uniform(-1, 1), rng.uniform(0, 1), 0.5, math.nan, math.inf, -math.inf]))
                    steps.append(step)
        if keys:
            half = len(keys) // 2  # two batches: the latest point may come in either
            for lo, hi in ((0, half), (half, len(keys))):
                if hi > lo:
                    c.execute(
                        "select registry.log_batch(%s, %s, %s, %s)", [rid, keys[lo:hi], vals[lo:hi], steps[lo:hi]]
                    )
        if rng.random() < 0.5:
            c.execute("select registry.set_tag(%s, 'team', %s)", [rid, rng.choice(TEAMS)])
        if rng.random() < 0.3:
            c.execute("select registry.set_tag(%s, 'stage', 'prod')", [rid])
    return exps


def test_the_mirror_equals_the_tables(runs, sconn):
    diff = sconn.execute("""
        select count(*) from registry.runs r join registry.run_search s on s.run_id = r.id
         where s.params is distinct from coalesce((select jsonb_object_agg(p.key, p.value) from registry.params p
                                                    where p.run_id = r.id), '{}')
            or s.metrics is distinct from coalesce((select jsonb_object_agg(m.key, m.value) from registry.latest_metrics m
                                                     where m.run_id = r.id), '{}')
            or s.tags is distinct from r.tags or s.start_time <> r.start_time
            or s.experiment_id <> r.experiment_id or s.tenant is distinct from r.tenant""").fetchone()[0]
    assert diff == 0
    missing = sconn.execute(
        "select count(*) from registry.runs r where not exists (select 1 from registry.run_search s where s.run_id = r.id)"
    ).fetchone()[0]
    assert missing == 0
    # the latest point by step wins, and NaN / infinities survive the jsonb round trip
    assert (
        sconn.execute(
            "select count(*) from registry.latest_metrics m join registry.run_search s on s.run_id = m.run_id "
            "where (s.metrics ->> m.key)::float8 is distinct from m.value"
        ).fetchone()[0]
        == 0
    )


def reference(conn, experiments, filt, order_by, limit):
    """The 0.2.0 SQL (EXISTS over registry.params / latest_metrics), run with its $n parameters."""
    sql, params = sr.build(experiments, filt, order_by, limit, mirror=False)
    name = "ref_" + secrets.token_hex(4)
    conn.execute(f"prepare {name}({', '.join(t for _, t in params)}) as {sql}")
    try:
        with psycopg.ClientCursor(conn) as cur:  # EXECUTE takes literals: bind on the client
            cur.execute(f"execute {name}({', '.join(['%s'] * len(params))})", [v for v, _ in params])
            return cur.fetchall()
    finally:
        conn.execute(f"deallocate {name}")


FILTERS = [
    "",
    "metrics.rmse < 0.5",
    "metrics.rmse >= 0.5 and params.depth = '6'",
    "metrics.rmse < 0.8 and params.depth = '6' and tags.team = 'a'",
    "metrics.acc != 0.5",
    "metrics.acc = 0.5 or metrics.loss > 0.9",
    "metrics.loss IN (0.5, 1)",
    "metrics.loss NOT IN (0.5)",
    "metrics.rmse IS NULL",
    "metrics.rmse IS NOT NULL and params.note IS NULL",
    "params.depth != '6'",
    "params.model LIKE 'x%'",
    "params.lr ILIKE '%4%'",
    "params.depth IN ('2', '4')",
    "params.depth NOT IN ('2')",
    "params.note IS NOT NULL",
    "params.model = 'x%y' and tags.stage = 'prod'",
    "tags.team != 'b' and (metrics.rmse > 0 or params.lr = '2')",
    "tags.stage IS NULL and metrics.acc <= 0",
    "attributes.run_name LIKE 'run1%' and metrics.rmse > -2",
    "attributes.status = 'RUNNING' and params.depth = '4'",
]
ORDERS = [None, ["metrics.rmse ASC"], ["metrics.acc DESC", "params.depth"], ["tags.team", "metrics.loss desc"]]


@pytest.mark.parametrize("filt", FILTERS)
def test_search_results_identical_to_the_tables(runs, sconn, filt):
    for order in ORDERS:
        for exps, limit in ((runs, 1000), ([runs[0]], 7)):
            got = sconn.execute(
                "select * from registry.search_runs(%s, %s, %s, %s)", [exps, filt, order, limit]
            ).fetchall()
            want = reference(sconn, exps, filt, order, limit)
            assert got == want, (filt, order, limit)
            if limit == 1000 and filt == "" and order is None:
                assert len(got) == 120


WALK = """do language plpython3u $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import search_runs as sr
sr.WALK_MIN, sr.WALK_PER_RESULT, sr.LARGE = {min}, {per}, {large}
if {reset}: sr.WALK_STATS.update(exact=0, general=0)
plpy.notice('walk ' + json.dumps(sr.WALK_STATS))
$$"""


def test_metric_walk_cut_short_stays_identical(runs, sconn):
    """An order_by on a metric walks latest_metrics' (key, value) index and reads only the first runs of that
    order (from LARGE runs on; 0 here); with the walk cut after 5x and 40x max_results runs (the data puts
    ties, NaN and infinities at the cut, and filters reject most runs), every answer is still exactly the
    tables' answer: the walk's own when it can prove it complete, the general query's otherwise. Both
    happen. Without order_by (a plan made for the values there) the answers are the tables' too."""
    notes: list[str] = []
    sconn.add_notice_handler(lambda d: notes.append(d.message_primary))
    sconn.execute(WALK.format(min=1, per=5, large=0, reset=True))
    try:
        for per in (5, 40):
            sconn.execute(WALK.format(min=1, per=per, large=0, reset=False))
            for filt in FILTERS:
                for order in (None, ["metrics.rmse ASC"], ["metrics.acc DESC", "params.depth"], ["metrics.loss"]):
                    for limit in (1, 3, 7):
                        got = sconn.execute(
                            "select * from registry.search_runs(%s, %s, %s, %s)", [runs, filt, order, limit]
                        ).fetchall()
                        assert got == reference(sconn, runs, filt, order, limit), (filt, order, limit, per)
        sconn.execute(WALK.format(min=1, per=40, large=0, reset=False))
    finally:
        sconn.execute(WALK.format(min=1000, per=100, large=200_000, reset=False))
    stats = json.loads(notes[-2].split(" ", 1)[1])
    assert stats["exact"] > 20 and stats["general"] > 20, stats


def test_the_mirror_follows_the_runs_tenant(runs, sconn):
    """RLS applies to the mirror like to registry.runs: it has a tenant column with the same policies."""
    rel = sconn.execute(
        "select relrowsecurity and relforcerowsecurity from pg_class where oid = 'registry.run_search'::regclass"
    ).fetchone()[0]
    assert rel
    with pytest.raises(psycopg.errors.InsufficientPrivilege), sconn.transaction():
        sconn.execute("set local role indb_writer")
        sconn.execute("update registry.run_search set params = '{}'")
