"""Training and prediction as the documented roles and tenants (trust issue, items 4, 7 and 8 for the
registry): rows get the right tenant and no tenant sees another's through any path; stored relation SQL runs
only for a role that may run its author's code; each role can do its documented work; bad input fails
before anything runs, with a clean error."""

from __future__ import annotations

import os
import secrets

import psycopg
import pytest
from helpers import watch_progress

REL = "select g::float8 as x, (g % 7)::float8 as z, g * 2.0 + (g % 5) as y from generate_series(1, 80) g"


def uid(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(3)}"


def train(conn, project: str, relation: str | None = REL, algorithm: str = "linear", **kw):
    args = "".join(f", {k} => %({k})s" for k in kw)
    return conn.execute(
        f"select * from ml.train(%(p)s, task => 'regression', relation => %(r)s, target => 'y', "
        f"algorithm => %(a)s{args})",
        dict(p=project, r=relation, a=algorithm, **kw),
    ).fetchone()


def clean(e: psycopg.Error) -> None:
    """The error is what indb raised on purpose: no Python traceback, no PL/Python prefix, no 'None'."""
    assert "Traceback" not in (e.diag.context or "") and "PL/Python" not in (e.diag.context or "")
    assert not e.diag.message_primary.startswith(("plpy.", "spiexceptions."))
    assert "None" not in e.diag.message_primary and "None" not in (e.diag.message_hint or "")


def test_a_tenant_bound_writer_trains_without_setting_its_tenant(connect_as, sconn):
    w = connect_as("acme_writer")  # no SET indb.tenant
    p = uid("acme")
    train(w, p, search=None)
    w.execute(
        "select * from ml.train(%s, algorithm => 'ridge', search => 'grid', search_params => '{\"alpha\": [0.1, 1]}')",
        [p],
    )
    w.execute("select ml.set_prediction_logging(%s, true)", [p])
    connect_as("acme_app").execute("select ml.predict(%s, array[1.0, 2.0])", [p])
    tenants = sconn.execute(
        """select array_agg(distinct t) from (
             select tenant from registry.registered_models where name = %(p)s
             union all select s.tenant from registry.training_projects s join registry.registered_models m
                       on m.id = s.model_id where m.name = %(p)s
             union all select r.tenant from registry.runs r join registry.experiments e on e.id = r.experiment_id
                       where e.name = %(p)s
             union all select t.tenant from registry.training_trials t join registry.runs r on r.id = t.run_id
                       join registry.experiments e on e.id = r.experiment_id where e.name = %(p)s
             union all select v.tenant from registry.model_versions v join registry.registered_models m
                       on m.id = v.model_id where m.name = %(p)s
             union all select d.tenant from registry.deployments d join registry.registered_models m
                       on m.id = d.model_id where m.name = %(p)s
             union all select l.tenant from registry.prediction_log l join registry.registered_models m
                       on m.id = l.project_id where m.name = %(p)s) x(t)""",
        dict(p=p),
    ).fetchone()[0]
    assert tenants == ["acme"]


def test_the_other_tenant_sees_nothing_of_a_project_through_any_path(connect_as):
    w = connect_as("acme_writer")
    p = uid("secret")
    train(w, p, relation=REL + " where g > 1", search="grid", search_params='{"fit_intercept": [true, false]}')
    w.execute("select ml.set_prediction_logging(%s, true)", [p])
    connect_as("acme_app").execute("select ml.predict(%s, array[1.0, 2.0])", [p])
    for who in ("globex_reader", "globex_writer"):
        g = connect_as(who)
        for sql in (
            "select count(*) from registry.training_projects where relation like '%%g > 1%%'",
            "select count(*) from ml.projects_overview where project = %(p)s",
            "select count(*) from ml.models where project = %(p)s",
            "select count(*) from registry.training_trials t join registry.runs r on r.id = t.run_id "
            "where r.name is not null and r.tenant = 'acme'",
            "select count(*) from registry.training_trials where tenant = 'acme'",
            "select count(*) from registry.prediction_log where tenant = 'acme'",
            "select count(*) from registry.datasets where name = %(p)s",
        ):
            assert g.execute(sql, dict(p=p)).fetchone()[0] == 0, (who, sql)
        for sql in (
            "select ml.predict(%(p)s, array[1.0, 2.0])",
            "select * from ml.predict_batch(%(p)s, 'select 1.0 as x, 2.0 as z')",
            "select * from ml.explain(%(p)s, array[1.0, 2.0])",
            "select * from ml.evaluate(%(p)s, 'select 1.0 as x, 2.0 as z, 3.0 as y')",
            "select * from ml.feature_importance(%(p)s)",
        ):
            with pytest.raises(psycopg.errors.UndefinedObject, match="does not exist") as e:
                g.execute(sql, dict(p=p))
            clean(e.value)
    g = connect_as("globex_writer")
    for sql in (
        "select * from ml.deploy(%(p)s, 'most_recent')",
        "select ml.set_prediction_logging(%(p)s, false)",
        "select * from ml.train(%(p)s)",
    ):
        with pytest.raises(psycopg.Error) as e:
            g.execute(sql, dict(p=p))
        assert e.value.sqlstate in ("42704", "42710"), (sql, e.value)
    # the app of the other tenant cannot read the registry at all
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        connect_as("globex_app").execute("select artifact from registry.model_versions limit 1")


def test_stored_relation_sql_runs_only_for_its_author_or_an_admins(connect_as):
    writer, admin = connect_as("writer"), connect_as("admin")
    p = uid("stored")
    train(writer, p)
    # the admin would run the writer's SQL with admin rights: refused, and asked to pass the relation again
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="written by sec_writer") as e:
        admin.execute("select * from ml.train(%s)", [p])
    assert "pass it again" in e.value.diag.message_hint
    clean(e.value)
    writer.execute("select * from ml.train(%s)", [p])  # its author may
    admin.execute("select * from ml.train(%s, relation => %s)", [p, REL + " where g > 2"])
    # now the admin wrote the relation: everyone who may train the project may run it
    writer.execute("select * from ml.train(%s)", [p])
    assert (
        admin.execute("select relation_author from ml.projects_overview where project = %s", [p]).fetchone()[0]
        == "sec_admin"
    )


def test_a_shared_project_is_read_only_to_a_tenant_and_says_why(connect_as):
    writer = connect_as("writer")
    p = uid("shared")
    train(writer, p)
    a = connect_as("acme_writer")
    assert a.execute("select ml.predict(%s, array[1.0, 2.0])", [p]).fetchone()[0] > 0  # shared: readable
    for sql, args in (
        ("select * from ml.deploy(%s, 'most_recent')", [p]),
        ("select ml.set_prediction_logging(%s, true)", [p]),
        ("select * from ml.train(%s, relation => %s)", [p, REL]),
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="shared") as e:
            a.execute(sql, args)
        assert "admin" in e.value.diag.message_hint
        clean(e.value)


def test_each_role_does_its_documented_work(connect_as):
    writer = connect_as("writer")
    p = uid("roles")
    train(writer, p)
    assert writer.execute("select ml.set_prediction_logging(%s, true)", [p]).fetchone()[0] is True
    app = connect_as("app")
    assert app.execute("select ml.predict(%s, array[1.0, 2.0])", [p]).fetchone()[0] > 0
    assert app.execute('select ml.predict(%s, \'{"x": 1, "z": 2}\'::jsonb)', [p]).fetchone()[0] > 0
    assert len(app.execute("select * from ml.predict_batch(%s, 'select 1.0 as x, 2.0 as z')", [p]).fetchall()) == 1
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app.execute("select * from ml.explain(%s, array[1.0, 2.0])", [p])
    reader = connect_as("reader")
    assert set(reader.execute("select contributions from ml.explain(%s, array[1.0, 2.0])", [p]).fetchone()[0]) == {
        "x",
        "z",
    }
    assert reader.execute("select rows from ml.evaluate(%s, %s)", [p, REL]).fetchone()[0] == 80
    assert len(reader.execute("select * from ml.feature_importance(%s)", [p]).fetchall()) == 2
    for sql in ("select * from ml.deploy(%s)", "select * from ml.train(%s)"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute(sql, [p])
    logged = writer.execute(
        "select count(*) from registry.prediction_log l join registry.registered_models m on m.id = l.project_id "
        "where m.name = %s",
        [p],
    ).fetchone()[0]
    assert logged == 2


def test_bad_input_fails_before_anything_runs_with_a_clean_error(connect_as):
    w = connect_as("writer")
    p = uid("bad")
    with pytest.raises(psycopg.errors.SyntaxError, match="holds several") as e:
        train(w, p, relation="select 1.0 as x, 2.0 as y; select set_config('indb.ran', 'yes', false)")
    clean(e.value)
    assert w.execute("select current_setting('indb.ran', true)").fetchone()[0] in (None, "")
    train(w, p)
    for value, state in (("1e309", "22003"), ('"NaN"', "22023"), ('"Infinity"', "22023"), ('"abc"', "22023")):
        with pytest.raises(psycopg.Error) as e:
            w.execute(f'select ml.predict(%s, \'{{"x": {value}, "z": 1}}\'::jsonb)', [p])
        assert e.value.sqlstate == state, (value, e.value)
        clean(e.value)
    deep = "(" * 5000 + "metrics.r2 > 0" + ")" * 5000
    with pytest.raises(psycopg.errors.StatementTooComplex) as e:
        w.execute("select * from registry.search_runs(null, %s)", [deep])
    clean(e.value)
    # unseen categories: ignored by default, refused when the column asks for it
    rel = "select g::float8 as x, (array['a', 'b'])[g % 2 + 1] as c, g * 2.0 as y from generate_series(1, 60) g"
    q = uid("cats")
    train(w, q, relation=rel, preprocess='{"c": {"encode": "one_hot", "unknown": "error"}}')
    assert w.execute('select ml.predict(%s, \'{"x": 1, "c": "a"}\'::jsonb)', [q]).fetchone()[0] is not None
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="never saw") as e:
        w.execute('select ml.predict(%s, \'{"x": 1, "c": "zz"}\'::jsonb)', [q])
    clean(e.value)
    for sql in ("select * from ml.train(null)", "select ml.predict(null, array[1.0])", "select * from ml.deploy('')"):
        with pytest.raises(psycopg.Error) as e:
            w.execute(sql)
        clean(e.value)


def test_search_runs_walk_and_custom_plan_keep_tenants_apart(connect_as, sconn):
    """search_runs' two large-registry plans (the metric walk over latest_metrics and the custom plan without
    order_by; indb.search_runs_walk_from = 0 turns them on for a small registry) run with the caller's rights:
    a tenant's reader finds exactly its own runs, the same as through the general query, never the other
    tenant's, and the same as by default (a small registry: the general query, whose params and tags conditions
    reach their index through the leakproof ml.@>). A role with no indb grant cannot search at all."""
    w = {t: connect_as(f"{t}_writer") for t in ("acme", "globex")}
    for t, c in w.items():
        for i in range(12):
            rid = c.execute("select registry.start_run(%s, %s)", [f"walk_{t}", f"{t}{i}"]).fetchone()[0]
            c.execute(
                "select registry.log_batch(%s, array['rmse', 'acc'], array[%s, %s]::float8[], null, null, %s)",
                [rid, (i * 7 % 12) / 12 + (0.001 if t == "globex" else 0), i / 12, f'{{"depth": "{i % 3}"}}'],
            )
    searches = [
        ("", ["metrics.rmse ASC"], 5),
        ("params.depth = '1'", ["metrics.rmse DESC"], 2),
        ("metrics.acc > 0.2", ["metrics.acc"], 3),
        ("params.depth != '2'", None, 4),
    ]
    for t in ("acme", "globex"):
        r = connect_as(f"{t}_reader")
        for filt, order, limit in searches:
            q = "select run_name from registry.search_runs(array['walk_acme', 'walk_globex'], %s, %s, %s)"
            by_default = r.execute(q, [filt, order, limit]).fetchall()
            r.execute("set indb.search_runs_walk_from = 1000000000")  # the general query only
            general = r.execute(q, [filt, order, limit]).fetchall()
            r.execute("set indb.search_runs_walk_from = 0")
            walked = r.execute(q, [filt, order, limit]).fetchall()
            r.execute("reset indb.search_runs_walk_from")
            assert walked == general == by_default and len(walked) == limit, (t, filt, order)
            assert all(name.startswith(t) for (name,) in walked)
    sconn.execute("drop role if exists walk_nobody")
    sconn.execute("create role walk_nobody nologin")
    try:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), sconn.transaction():
            sconn.execute("set local role walk_nobody")
            sconn.execute("set local indb.search_runs_walk_from = 0")
            sconn.execute("select * from registry.search_runs(array['walk_acme'], '', array['metrics.rmse'], 5)")
    finally:
        sconn.execute("drop role walk_nobody")


def test_predict_batch_over_a_tenant_table_reads_only_the_callers_rows(connect_as, logins, sconn):
    """predict_batch reads a plain table by ranges of its blocks. Under the table's row security a tenant's app
    gets predictions for its own rows only, numbered in block order, and the ranges stay index-like TID range
    scans (tid comparisons are leakproof, so the policy does not push them into a filter over every block)."""
    t = uid("batch_rows")
    sconn.execute(f"create table public.{t} (tenant text not null, x float8, z float8)")
    sconn.execute(
        f"insert into public.{t} select case when g % 3 = 0 then 'globex' else 'acme' end, g, g % 7 "
        "from generate_series(1, 3000) g"
    )
    sconn.execute(f"alter table public.{t} enable row level security")
    sconn.execute(f"create policy tenant_rows on public.{t} using (tenant = any (ml.tenants_of()))")
    sconn.execute(f"grant select on public.{t} to indb_app, indb_writer")
    try:
        w = connect_as("acme_writer")
        p = uid("acme_batch")
        train(w, p)
        app = connect_as("acme_app")
        app.execute("set indb.predict_batch_chunk = 300")
        got = app.execute(f"select row_number, prediction from ml.predict_batch(%s, 'public.{t}')", [p]).fetchall()
        want = app.execute(
            f"select row_number() over (order by ctid), ml.predict(%s, array[x, z]) from public.{t} order by ctid",
            [p],
        ).fetchall()
        assert len(got) == 2000 and [r[0] for r in got] == [r[0] for r in want]
        assert all(abs(a[1] - b[1]) <= 1e-9 * abs(b[1]) for a, b in zip(got, want))  # a linear model: BLAS order
        assert app.execute(f"select count(*) from public.{t} where tenant <> 'acme'").fetchone()[0] == 0
        # the total ml.progress shows is counted under the same row security: the tenant's 2,000 rows, never the
        # table's 3,000 (acme's writer, which may read the progress of its own calls; small chunks, so that the
        # call lasts long enough to be seen)
        seen = watch_progress(
            psycopg.conninfo.make_conninfo(logins["acme_writer"], options="-c indb.predict_batch_chunk=10"),
            "ml.predict_batch",
            p,
            f"select count(*) from ml.predict_batch(%s, 'public.{t}')",
            [p],
        )
        totals = {r[2] for r in seen if r[2] is not None}
        assert totals == {2000}, seen
        plan = "\n".join(
            r[0]
            for r in app.execute(
                f"explain (costs off) select x from public.{t} where ctid >= '(2,0)'::tid and ctid < '(4,0)'::tid"
            ).fetchall()
        )
        assert "Tid Range Scan" in plan, plan
    finally:
        sconn.execute(f"drop table public.{t}")


def test_lightgbm_parameters_that_open_the_network_or_files_are_refused(connect_as):
    """LightGBM takes any native parameter through its scikit-learn wrapper. Given machines and a data-parallel
    tree_learner, a writer's ml.train listened on a port of the database server and waited for the listed
    machines (LightGBM's time_out: 120 minutes); its file parameters name paths the server's OS user would
    open. Each is refused, under its aliases, before anything is fitted."""
    w = connect_as("writer")
    for hp in (
        '{"machines": "127.0.0.1:12400,127.0.0.1:12401", "num_machines": 2, "tree_learner": "data"}',
        '{"tree_learner": "voting"}',
        '{"workers": "127.0.0.1:12400"}',
        '{"local_listen_port": 12400}',
        '{"mlist": "/etc/hosts"}',
        '{"forcedsplits_filename": "/etc/passwd"}',
        '{"fs": "/dev/zero"}',
        '{"output_model": "/tmp/indb-lightgbm-model.txt"}',
        '{"config": "/etc/passwd"}',
    ):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="of lightgbm is not allowed") as e:
            train(w, uid("lgb"), algorithm="lightgbm", hyperparams=hp)
        clean(e.value)
    # LightGBM's parameters that are neither files nor the network, under their names and aliases, still train
    row = train(
        w,
        uid("lgb_ok"),
        algorithm="lightgbm",
        hyperparams='{"min_data_in_leaf": 5, "tree": "serial", "n_estimators": 20}',
    )
    assert row[2] == "lightgbm"


def test_a_thread_count_above_the_servers_cores_is_refused(connect_as):
    """n_jobs / nthread / num_threads are OS threads of the database server: a writer asking for 100,000 would
    take the process table that new connections need. Above the cores they are refused before fitting."""
    w = connect_as("writer")
    cores = os.cpu_count() or 1
    for alg, hp in (
        ("xgboost", '{"n_jobs": 100000}'),
        ("lightgbm", '{"nthreads": 100000}'),
        ("random_forest", '{"n_jobs": 5000}'),
    ):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=f"must be at most {cores}") as e:
            train(w, uid("threads"), algorithm=alg, hyperparams=hp)
        clean(e.value)
    row = train(w, uid("threads_ok"), algorithm="xgboost", hyperparams=f'{{"n_jobs": {cores}, "n_estimators": 10}}')
    assert row[2] == "xgboost"
