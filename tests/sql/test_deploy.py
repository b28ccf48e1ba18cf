"""Deployment: automatic deploy only on a better key metric, best_score / most_recent / rollback / specific,
cache refresh across backends, failures and cancels keep the deployed model, concurrent ml.train on one
project and ml.predict during deploys never see a half-written model, prediction logging."""

from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest
from test_train import PRE, load_housing, train

GOOD = json.dumps({"n_estimators": 60, "max_depth": 5})
BAD = json.dumps({"n_estimators": 2, "max_depth": 1})
ROW = json.dumps(
    {
        "longitude": -122.23,
        "latitude": 37.88,
        "housing_median_age": 41,
        "total_rooms": 880,
        "total_bedrooms": 129,
        "population": 322,
        "households": 126,
        "median_income": 8.3252,
        "ocean_proximity": "NEAR BAY",
    }
)


@pytest.fixture(scope="module")
def db(sconn, data_dir):
    load_housing(sconn, data_dir)
    return sconn


def deployed(conn, project):
    return conn.execute("select model_id from ml.deployments where project = %s and active", [project]).fetchone()[0]


def predict(conn, project):
    return conn.execute("select ml.predict(%s, %s::jsonb)", [project, ROW]).fetchone()[0]


def test_strategies_and_rollback(db, db_dsn):
    p = "dep_strat"
    good = train(
        db,
        p,
        task="regression",
        relation="housing_feats",
        target="median_house_value",
        preprocess=PRE,
        hyperparams=GOOD,
    )
    bad = train(db, p, preprocess=PRE, hyperparams=BAD)
    assert good["deployed"] and not bad["deployed"]  # worse r2: not deployed automatically
    assert deployed(db, p) == good["model_id"]
    v_good = predict(db, p)
    with psycopg.connect(db_dsn, autocommit=True) as other:
        assert predict(other, p) == v_good  # other backend caches the good model
        r = db.execute("select * from ml.deploy(%s, 'most_recent')", [p]).fetchone()
        assert r[1] == bad["model_id"] and r[3] is True
        v_bad = predict(other, p)  # the other backend sees the new deployment at once
        assert v_bad != v_good and predict(db, p) == v_bad
        r = db.execute("select * from ml.deploy(%s, 'rollback')", [p]).fetchone()
        assert r[1] == good["model_id"] and predict(other, p) == v_good
        db.execute("select ml.deploy(%s, model_id => %s)", [p, bad["model_id"]])
        assert deployed(db, p) == bad["model_id"]
        r = db.execute("select * from ml.deploy(%s, 'best_score')", [p]).fetchone()
        assert r[1] == good["model_id"] and predict(other, p) == v_good
    hist = db.execute("select strategy from ml.deployments where project = %s order by deployment_id", [p]).fetchall()
    assert [h[0] for h in hist] == ["automatic", "most_recent", "rollback", "specific", "best_score"]
    # deploying what is already deployed changes nothing, and the result says so
    again = db.execute("select model_id, deployed, status from ml.deploy(%s, 'best_score')", [p]).fetchone()
    assert again == (good["model_id"], True, "already deployed")
    assert len(db.execute("select 1 from ml.deployments where project = %s", [p]).fetchall()) == 5


def test_deployments_view_is_ordered_and_explains_its_numbers(db):
    """Issue 12: ml.deployments was unordered, and model_id and version were two numbers nobody explained."""
    p = "dep_view"
    first = train(
        db, p, task="regression", relation="housing_feats", target="median_house_value", preprocess=PRE, hyperparams=BAD
    )
    second = train(db, p, preprocess=PRE, hyperparams=GOOD)
    db.execute("select ml.deploy(%s, 'rollback')", [p])
    cur = db.execute("select * from ml.deployments")  # no ORDER BY: the view orders by project, deployment
    cols = [d.name for d in cur.description]
    assert cols == [
        "deployment_id",
        "project",
        "model_id",
        "version",
        "algorithm",
        "strategy",
        "previous_deployment_id",
        "deployed_at",
        "deployed_by",
        "active",
    ]
    rows = cur.fetchall()
    assert [(r[1], r[0]) for r in rows] == sorted((r[1], r[0]) for r in rows)
    mine = [r for r in rows if r[1] == p]
    assert [(r[2], r[3], r[5], r[9]) for r in mine] == [
        (first["model_id"], 1, "automatic", False),
        (second["model_id"], 2, "automatic", False),
        (first["model_id"], 1, "rollback", True),
    ]
    assert [r[6] for r in mine] == [None, mine[0][0], mine[1][0]]
    # every column says what it is; model_id and version are explained the same way in ml.models
    for view in ("ml.deployments", "ml.models"):
        for col in ("model_id", "version"):
            comment = db.execute(
                "select col_description(%s::regclass, attnum) from pg_attribute "
                "where attrelid = %s::regclass and attname = %s",
                [view, view, col],
            ).fetchone()[0]
            assert comment and ("across all projects" in comment or "within" in comment), (view, col)
    overview = db.execute(
        "select deployed_model_id, deployed_version from ml.projects_overview where project = %s", [p]
    ).fetchone()
    assert overview == (first["model_id"], 1)


def test_deploy_errors(db):
    p = "dep_err"
    train(
        db, p, task="regression", relation="housing_feats", target="median_house_value", preprocess=PRE, hyperparams=BAD
    )
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="no previous deployment"):
        db.execute("select ml.deploy(%s, 'rollback')", [p])
    with pytest.raises(psycopg.errors.InvalidParameterValue, match='unknown deploy strategy "newest"'):
        db.execute("select ml.deploy(%s, 'newest')", [p])
    with pytest.raises(psycopg.errors.UndefinedObject, match='project "nope" does not exist'):
        db.execute("select ml.deploy('nope')")
    other = db.execute("select min(model_id) from ml.models where project <> %s", [p]).fetchone()[0]
    if other is not None:
        with pytest.raises(psycopg.errors.UndefinedObject, match="does not belong"):
            db.execute("select ml.deploy(%s, model_id => %s)", [p, other])
    with pytest.raises(psycopg.errors.UndefinedObject, match='project "nope" does not exist'):
        db.execute("select ml.predict('nope', array[1.0]::float8[])")


def test_failed_and_cancelled_training_keep_the_deployment(db, db_dsn):
    p = "dep_fail"
    first = train(
        db,
        p,
        task="regression",
        relation="housing_feats",
        target="median_house_value",
        preprocess=PRE,
        hyperparams=GOOD,
    )
    before = predict(db, p)
    counts = lambda: db.execute(  # noqa: E731
        "select (select count(*) from ml.models where project = %s), (select count(*) from registry.runs r "
        "join registry.experiments e on e.id = r.experiment_id where e.name = %s), (select count(*) from "
        "registry.datasets where name = %s)",
        [p, p, p],
    ).fetchone()
    c0 = counts()
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        train(db, p, preprocess=PRE, hyperparams=json.dumps({"learning_rate": "fast"}))
    # a long training cancelled by statement_timeout (on the full 20,640 rows, many trees)
    with psycopg.connect(db_dsn, autocommit=True) as c:
        c.execute("set statement_timeout = '1500ms'")
        t0 = time.time()
        with pytest.raises(psycopg.errors.QueryCanceled):
            train(
                c,
                p,
                relation="housing",
                preprocess=PRE,
                algorithm="random_forest",
                hyperparams=json.dumps({"n_estimators": 2000}),
            )
        assert time.time() - t0 < 15  # the cancel lands between chunks, not after the whole fit
    assert counts() == c0
    assert deployed(db, p) == first["model_id"] and predict(db, p) == before


def test_concurrent_train_on_one_project(db, db_dsn):
    p = "dep_conc"
    train(
        db, p, task="regression", relation="housing_feats", target="median_house_value", preprocess=PRE, hyperparams=BAD
    )
    results, errors = [], []

    def worker(depth):
        try:
            with psycopg.connect(db_dsn, autocommit=True) as c:
                results.append(
                    train(c, p, preprocess=PRE, hyperparams=json.dumps({"n_estimators": 40, "max_depth": depth}))
                )
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(d,)) for d in (3, 4, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    versions = db.execute("select version, model_id from ml.models where project = %s order by version", [p]).fetchall()
    assert [v[0] for v in versions] == [1, 2, 3, 4]
    # every model is complete: each one deploys and predicts
    for _, mid in versions:
        db.execute("select ml.deploy(%s, model_id => %s)", [p, mid])
        assert predict(db, p) > 0
    best = db.execute(
        "select model_id from ml.models where project = %s order by (metrics->>'r2')::float8 desc limit 1", [p]
    ).fetchone()[0]
    assert db.execute("select model_id from ml.deploy(%s, 'best_score')", [p]).fetchone()[0] == best


def test_predict_during_deploys_sees_whole_models(db, db_dsn):
    p = "dep_race"
    a = train(
        db,
        p,
        task="regression",
        relation="housing_feats",
        target="median_house_value",
        preprocess=PRE,
        hyperparams=GOOD,
    )
    b = train(db, p, preprocess=PRE, hyperparams=BAD)
    va = predict(db, p)
    db.execute("select ml.deploy(%s, model_id => %s)", [p, b["model_id"]])
    vb = predict(db, p)
    seen, errors, stop, warm = [], [], threading.Event(), threading.Event()

    def reader():
        try:
            with psycopg.connect(db_dsn, autocommit=True) as c:
                predict(c, p)  # warm this backend (imports, model cache) before the deploys start
                warm.set()
                while not stop.is_set():
                    seen.append(predict(c, p))
        except Exception as e:  # pragma: no cover
            errors.append(e)
            warm.set()

    t = threading.Thread(target=reader)
    t.start()
    assert warm.wait(60)
    with psycopg.connect(db_dsn) as w:  # deploys in transactions that stay open a moment before commit
        for i in range(6):
            w.execute("select ml.deploy(%s, model_id => %s)", [p, (a if i % 2 == 0 else b)["model_id"]])
            time.sleep(0.1)
            w.commit()
            time.sleep(0.05)
    stop.set()
    t.join()
    assert not errors, errors
    assert len(seen) > 10 and set(seen) <= {va, vb} and {va, vb} <= set(seen)


def test_prediction_logging(db):
    p = "dep_log"
    r = train(
        db, p, task="regression", relation="housing_feats", target="median_house_value", preprocess=PRE, hyperparams=BAD
    )
    predict(db, p)
    pid = db.execute("select id from registry.registered_models where name = %s", [p]).fetchone()[0]
    assert db.execute("select count(*) from registry.prediction_log where project_id = %s", [pid]).fetchone()[0] == 0
    db.execute("select ml.set_prediction_logging(%s, true)", [p])
    v = [predict(db, p) for _ in range(3)]
    rows = db.execute(
        "select model_id, prediction, latency_ms, inputs_hash, tableoid::regclass::text "
        "from registry.prediction_log where project_id = %s",
        [pid],
    ).fetchall()
    assert len(rows) == 3 and all(x[0] == r["model_id"] and x[1] == v[0] and x[2] > 0 for x in rows)
    assert len({x[3] for x in rows}) == 1  # same inputs, same hash
    assert rows[0][4].startswith("registry.prediction_log_")  # a monthly partition
    assert db.execute("select log_predictions from ml.projects_overview where project = %s", [p]).fetchone()[0] is True
    db.execute("select ml.set_prediction_logging(%s, false)", [p])
    predict(db, p)
    assert db.execute("select count(*) from registry.prediction_log where project_id = %s", [pid]).fetchone()[0] == 3
