"""Question: how fast are registry.search_runs (3-condition MLflow filter, target p99 <= 50 ms at 100,000 runs,
<= 150 ms at 1,000,000) and registry.lineage walks on a registry of many runs?

Population (bulk SQL, audit/lineage triggers off while loading): N_RUNS runs in one experiment, each with
10 params and 20 metrics (latest values; the search reads registry.latest_metrics), tags team/stage, plus
lineage chains dataset -> run -> model_version -> deployment -> prediction_log and feature_view_version -> run.
The issue asks for 100,000 runs with 20 metrics x 100 steps; the 200 M history points do not fit the
~10 minute budget on this shared machine and search never reads history, so history is left out here
(logging throughput is registry_logging.py). N_RUNS = 100,000 is kept.

search_runs reads registry.run_search (0.3.0: params, latest metrics and tags as jsonb per run); the run fills
it from the loaded tables exactly as migration 0018 backfills an existing registry, and times the same queries
through the 0.2.0 SQL (EXISTS over registry.params / latest_metrics, indb_runtime.search_runs with mirror=False,
prepared once like PL/Python's plan cache) beside it.

The searches also run as a LOGIN role granted indb_reader (row security applies to it, not to the superuser):
by default (below 200,000 runs: the general query, which reaches the GIN index of params and tags through the
leakproof ml.@>, migration 0024), with the metric walk forced, and with the general query forced.

INDB_BENCH_RUNS=1000000 scales up. With INDB_BENCH_MIRROR_ONLY=1 the 1M run loads registry.runs,
registry.run_search and the rmse rows of registry.latest_metrics (the metric the searches order by: an order_by
on a metric walks its (key, value) index), all with the same seeded values, not the 10 M params and other 19 M
latest-metric rows, which the search does not read; the 0.2.0 side and lineage are then skipped.
"""

from __future__ import annotations

import os
import random
import secrets
import statistics
import time

import psycopg

from indb_runtime import search_runs as sr

from .common import percentile
from .registry_common import Timer, drop_db, fresh_db, save

N_RUNS = int(os.environ.get("INDB_BENCH_RUNS", "100000"))
MIRROR_ONLY = os.environ.get("INDB_BENCH_MIRROR_ONLY") == "1"
PARAM_VALUE = """case when k = 0 then (2 + (hashint4(r.id::int) & 1023) % 9)::text
                      else ((hashint4(r.id::int * 31 + k) & 65535) % 100)::text end"""
METRIC_VALUE = "((hashint4(r.id::int * 7 + k) & 1048575) / 1048575.0)"
N_CHAINS = 2_000
QUERIES = 200

FILTER = "metrics.rmse < {t} and params.depth = '{d}' and tags.team = '{team}'"


def populate(conn) -> dict:
    with Timer() as t:
        conn.execute("set session_replication_role = replica")  # bulk load: no audit/lineage row triggers
        conn.execute("insert into registry.experiments(name) values ('bench')")
        conn.execute(f"""
            insert into registry.runs(experiment_id, name, status, start_time, end_time, tags)
            select 1, 'run-' || g, case when g % 10 = 0 then 'FAILED' else 'FINISHED' end,
                   now() - (g || ' seconds')::interval, now() - (g || ' seconds')::interval + interval '5 minutes',
                   jsonb_build_object('team', 't' || (g % 5), 'stage', case when g % 3 = 0 then 'prod' else 'dev' end)
              from generate_series(1, {N_RUNS}) g""")
        if MIRROR_ONLY:
            conn.execute(f"""
                insert into registry.run_search(run_id, experiment_id, start_time, params, metrics, tags, tenant)
                select r.id, r.experiment_id, r.start_time,
                       (select jsonb_object_agg(case when k = 0 then 'depth' else 'p' || k end, {PARAM_VALUE})
                          from generate_series(0, 9) k),
                       (select jsonb_object_agg(case when k = 0 then 'rmse' else 'm' || k end, {METRIC_VALUE}::float8)
                          from generate_series(0, 19) k),
                       r.tags, r.tenant
                  from registry.runs r""")
            # the latest value of the metric the searches order by (0.3.1: an order_by on a metric walks
            # latest_metrics' (key, value) index); the other 19 keys' 19 M rows are not loaded
            conn.execute(f"""
                insert into registry.latest_metrics(run_id, key, value, step, ts, tenant)
                select r.id, 'rmse', {METRIC_VALUE.replace("+ k)", "+ 0)")}, 99, now(), r.tenant
                  from registry.runs r""")
            conn.execute("set session_replication_role = origin")
            conn.execute(
                "vacuum analyze registry.runs, registry.run_search, registry.experiments, registry.latest_metrics"
            )
            return {
                "seconds": round(time.perf_counter() - t.t0, 1),
                "rows": {"runs": N_RUNS, "run_search": N_RUNS, "latest_metrics (rmse only)": N_RUNS},
            }
        conn.execute(f"""
            insert into registry.params(run_id, key, value)
            select r.id, 'p' || k, {PARAM_VALUE}
              from registry.runs r, generate_series(0, 9) k""")
        conn.execute("update registry.params set key = 'depth' where key = 'p0'")
        conn.execute(f"""
            insert into registry.latest_metrics(run_id, key, value, step, ts)
            select r.id, case when k = 0 then 'rmse' else 'm' || k end, {METRIC_VALUE}, 99, now()
              from registry.runs r, generate_series(0, 19) k""")
        # the search mirror, filled as migration 0018 backfills an existing registry
        conn.execute("""
            insert into registry.run_search(run_id, experiment_id, start_time, params, metrics, tags, tenant)
            select r.id, r.experiment_id, r.start_time,
                   coalesce((select jsonb_object_agg(p.key, p.value) from registry.params p where p.run_id = r.id), '{}'),
                   coalesce((select jsonb_object_agg(m.key, m.value) from registry.latest_metrics m
                              where m.run_id = r.id), '{}'),
                   r.tags, r.tenant
              from registry.runs r""")
        # lineage chains on the first N_CHAINS runs
        conn.execute(f"""
            insert into registry.datasets(name, digest) select 'ds' || g, md5(g::text) from generate_series(1, {N_CHAINS // 10}) g;
            insert into registry.registered_models(name) select 'model' || g from generate_series(1, {N_CHAINS // 10}) g;
            insert into registry.model_versions(model_id, version, run_id, flavor)
            select 1 + (r.id - 1) / 10, 1 + (r.id - 1) % 10, r.id, 'xgboost' from registry.runs r where r.id <= {N_CHAINS};
            insert into registry.deployments(model_id, version_id, strategy)
            select v.model_id, v.id, 'best' from registry.model_versions v where v.version = 10;
            insert into registry.lineage_edges(src_kind, src_id, dst_kind, dst_id, relation)
            select 'dataset', (1 + (r.id - 1) / 10)::text, 'run', r.id::text, 'input' from registry.runs r where r.id <= {N_CHAINS}
            union all
            select 'feature_view_version', 'fv' || ((r.id - 1) / 100), 'run', r.id::text, 'input:features' from registry.runs r where r.id <= {N_CHAINS}
            union all
            select 'run', v.run_id::text, 'model_version', v.id::text, 'produced' from registry.model_versions v
            union all
            select 'model_version', d.version_id::text, 'deployment', d.id::text, 'deployed' from registry.deployments d
            union all
            select 'deployment', d.id::text, 'prediction_log', (d.id * 1000 + g)::text, 'logged'
              from registry.deployments d, generate_series(1, 5) g;""")
        conn.execute("set session_replication_role = origin")
        conn.execute(
            "vacuum analyze registry.runs, registry.run_search, registry.params, registry.latest_metrics, registry.lineage_edges, "
            "registry.model_versions, registry.deployments, registry.experiments"
        )
    counts = {
        t: conn.execute(f"select count(*) from registry.{t}").fetchone()[0]
        for t in ("runs", "params", "latest_metrics", "lineage_edges", "model_versions")
    }
    return {"seconds": round(t.s, 1), "rows": counts}


def explain(conn, built) -> str:
    """EXPLAIN ANALYZE of a search's SQL with its values written in (a plan made for those values, which is
    what search_runs runs for these two shapes)."""
    sql, params = built
    for i in range(len(params), 0, -1):  # $10 before $1
        sql = sql.replace(f"${i}", psycopg.sql.Literal(params[i - 1][0]).as_string(conn) + "::" + params[i - 1][1])
    return "\n".join(r[0] for r in conn.execute("explain analyze " + sql).fetchall())


def timed(conn, sql, params) -> tuple[float, int]:
    with Timer() as t:
        n = len(conn.execute(sql, params).fetchall())
    return t.s * 1000.0, n


def reference(conn, prepared: dict, experiments, filt, order_by, limit) -> tuple[str, list]:
    """A query through the 0.2.0 SQL (mirror=False): prepared once per shape, then EXECUTE with literals."""
    sql, params = sr.build(experiments, filt, order_by, limit, mirror=False)
    if sql not in prepared:
        prepared[sql] = "ref_" + secrets.token_hex(4)
        conn.execute(f"prepare {prepared[sql]}({', '.join(t for _, t in params)}) as {sql}")
    lits = ", ".join(psycopg.sql.Literal(v).as_string(conn) for v, _ in params)
    return f"execute {prepared[sql]}({lits})", None


def reader_login(conn) -> str:
    """A LOGIN role granted indb_reader (made once per cluster, like the tests' attacker logins)."""
    role = "indb_bench_reader"
    if not conn.execute("select 1 from pg_roles where rolname = %s", [role]).fetchone():
        conn.execute(f"create role {role} login")
    conn.execute(f"grant indb_reader to {role}")
    return role


def series(conn, make, n=QUERIES) -> dict:
    rng = random.Random(0)
    for _ in range(10):
        timed(conn, *make(rng))
    lat, rows = [], []
    for _ in range(n):
        ms, k = timed(conn, *make(rng))
        lat.append(ms)
        rows.append(k)
    return {
        "queries": n,
        "p50_ms": round(percentile(lat, 50), 2),
        "p95_ms": round(percentile(lat, 95), 2),
        "p99_ms": round(percentile(lat, 99), 2),
        "max_ms": round(max(lat), 2),
        "mean_rows": round(statistics.mean(rows), 1),
    }


def main() -> None:
    dsn = fresh_db()
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            pop = populate(conn)
            print("populated", pop)

            prepared: dict = {}

            def q(order, old=False):
                def make(rng):
                    f = FILTER.format(
                        t=round(rng.uniform(0.2, 0.8), 3), d=rng.randint(2, 10), team=f"t{rng.randint(0, 4)}"
                    )
                    if old:
                        return reference(conn, prepared, ["bench"], f, order, 100)
                    return ("select * from registry.search_runs(array['bench'], %s, %s, 100)", [f, order])

                return make

            res = {
                "filter": FILTER.format(t="<0.2..0.8>", d="<2..10>", team="<t0..t4>"),
                "search_default_order_limit_100": series(conn, q(None)),
                "search_order_by_metric_limit_100": series(conn, q(["metrics.rmse ASC"])),
            }
            if not MIRROR_ONLY:
                res["v020_sql_default_order_limit_100"] = series(conn, q(None, old=True))
                res["v020_sql_order_by_metric_limit_100"] = series(conn, q(["metrics.rmse ASC"], old=True))
            res |= {
                "search_4_conditions_with_status": series(
                    conn,
                    lambda rng: (
                        "select * from registry.search_runs(array['bench'], %s, null, 100)",
                        [
                            FILTER.format(
                                t=round(rng.uniform(0.2, 0.8), 3), d=rng.randint(2, 10), team=f"t{rng.randint(0, 4)}"
                            )
                            + " and attributes.status = 'FINISHED'"
                        ],
                    ),
                ),
            }
            # the same searches as a LOGIN role granted indb_reader, which row security applies to (the sides
            # above run as the superuser, whom it skips): its general query reaches the GIN index of params and
            # tags through the leakproof ml.@> (migration 0024; before, PostgreSQL's @> kept it out of reach and
            # readers took the metric walk at any size). Default, the walk forced, the general query forced.
            reader = reader_login(conn)
            with psycopg.connect(psycopg.conninfo.make_conninfo(dsn, user=reader), autocommit=True) as rconn:
                res["as_reader"] = {
                    "role": "a LOGIN role granted indb_reader (row security applies)",
                    "search_default_order_limit_100": series(rconn, q(None)),
                    "search_order_by_metric_limit_100": series(rconn, q(["metrics.rmse ASC"])),
                }
                rconn.execute("set indb.search_runs_walk_from = 0")  # the metric walk
                res["as_reader"]["search_order_by_metric_limit_100_walk"] = series(rconn, q(["metrics.rmse ASC"]))
                rconn.execute("set indb.search_runs_walk_from = 1000000000")  # the general query
                res["as_reader"]["search_order_by_metric_limit_100_general_query"] = series(
                    rconn, q(["metrics.rmse ASC"])
                )
            print("as reader", res["as_reader"], flush=True)
            if not MIRROR_ONLY:
                n_versions = conn.execute("select count(*) from registry.model_versions").fetchone()[0]
                res["lineage_model_version_both"] = series(
                    conn,
                    lambda rng: (
                        "select * from registry.lineage('model_version', %s)",
                        [str(rng.randint(1, n_versions))],
                    ),
                )
                res["lineage_dataset_down"] = series(
                    conn,
                    lambda rng: (
                        "select * from registry.lineage('dataset', %s, 'down')",
                        [str(rng.randint(1, N_CHAINS // 10))],
                    ),
                )
                res["lineage_prediction_log_up"] = series(
                    conn,
                    lambda rng: (
                        "select * from registry.lineage('prediction_log', %s, 'up')",
                        [str(rng.randint(1, N_CHAINS // 10) * 1000 + rng.randint(1, 5))],
                    ),
                )
            plans = {
                "default_order": explain(conn, sr.build(["bench"], FILTER.format(t=0.5, d=6, team="t1"), None, 100)),
                "order_by_metric_walk": explain(
                    conn,
                    sr.build_walk(
                        ["bench"], FILTER.format(t=0.5, d=6, team="t1"), ["metrics.rmse ASC"], 100, "rmse", "asc", 10000
                    ),
                ),
            }
        save(
            "search_and_lineage" if N_RUNS == 100_000 and not MIRROR_ONLY else f"search_{N_RUNS}",
            {
                "question": "search_runs 3-condition filter p99 (target <= 50 ms at 100,000 runs, <= 150 ms at 1M) "
                "and lineage walk p99 on many runs",
                "population": pop,
                "scaled": f"{N_RUNS:,} runs with 10 params and 20 metrics (latest values); the 100-step metric history "
                "is not loaded: search reads run_search (latest values) only"
                + ("; loaded into runs + run_search only (INDB_BENCH_MIRROR_ONLY)" if MIRROR_ONLY else ""),
                "results": res,
                "plan_examples": plans,
            },
        )
        for k, v in res.items():
            if isinstance(v, dict) and "p50_ms" in v:
                print(f"{k:40} p50 {v['p50_ms']:8.2f} ms  p99 {v['p99_ms']:8.2f} ms  rows {v['mean_rows']}")
    finally:
        drop_db()


if __name__ == "__main__":
    main()
