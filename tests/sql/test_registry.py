"""Tracking and the model registry through the SQL API: round trips, batches, bad input leaves nothing
behind, atomic alias moves, lineage both ways, search_runs with MLflow filters."""

from __future__ import annotations

import secrets
import threading

import psycopg
import pytest


def one(conn, sql, params=None):
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def row(conn, sql, params=None) -> dict:
    """The one row of a typed result, as a dict."""
    cur = conn.execute(sql, params)
    r = cur.fetchone()
    assert r is not None, sql
    return dict(zip([d.name for d in cur.description], r))


def run_info(conn, rid) -> dict:
    return row(conn, "select * from registry.get_run(%s)", [rid])


def uid(prefix="t"):
    return f"{prefix}_{secrets.token_hex(4)}"


@pytest.fixture
def run(conn):
    exp = uid("exp")
    rid = one(conn, "select registry.start_run(%s, 'r1', '{\"team\": \"a\"}')", [exp])
    return exp, str(rid)


def test_run_round_trip(conn, run):
    exp, rid = run
    conn.execute("select registry.log_params(%s, %s)", [rid, '{"depth": "6", "lr": 0.1}'])
    n = one(
        conn,
        "select registry.log_batch(%s, %s, %s, %s)",
        [rid, ["rmse", "rmse", "rmse", "acc"], [0.9, 0.5, 0.7, 0.8], [0, 1, 2, 0]],
    )
    assert n == 4
    conn.execute("select registry.set_tag(%s, 'stage', 'dev')", [rid])
    art = row(conn, "select * from registry.log_artifact(%s, 'notes/readme.txt', %s)", [rid, b"hello"])
    assert art == {
        "path": "notes/readme.txt",
        "sha256": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        "size_bytes": 5,
        "uri": None,
    }
    uri = row(conn, "select * from registry.log_artifact(%s, 'data/big.parquet', uri => 's3://b/k')", [rid])
    assert uri == {"path": "data/big.parquet", "sha256": None, "size_bytes": None, "uri": "s3://b/k"}
    conn.execute("select registry.end_run(%s)", [rid])
    info = run_info(conn, rid)
    assert list(info) == [
        "run_id",
        "run_name",
        "experiment",
        "status",
        "user_name",
        "parent_run_id",
        "start_time",
        "end_time",
        "tenant",
        "tags",
        "params",
        "metrics",
    ]
    assert str(info["run_id"]) == rid and info["run_name"] == "r1" and info["user_name"] == "postgres"
    assert info["experiment"] == exp and info["status"] == "FINISHED" and info["end_time"]
    assert info["params"] == {"depth": "6", "lr": "0.1"}
    # latest = highest step, not last logged
    assert info["metrics"] == {"rmse": 0.7, "acc": 0.8}
    assert info["tags"] == {"team": "a", "stage": "dev"}
    arts = conn.execute("select path, size_bytes, uri from registry.list_artifacts(%s)", [rid]).fetchall()
    assert arts == [("data/big.parquet", None, "s3://b/k"), ("notes/readme.txt", 5, None)]
    hist = conn.execute("select step, value from registry.metric_history(%s, 'rmse')", [rid]).fetchall()
    assert hist == [(0, 0.9), (1, 0.5), (2, 0.7)]
    assert bytes(one(conn, "select registry.get_artifact(%s, 'notes/readme.txt')", [rid])) == b"hello"


def test_nested_runs_and_inputs(conn, run):
    exp, parent = run
    child = one(conn, "select registry.start_run(%s, 'child', parent_run => %s)", [exp, parent])
    info = run_info(conn, child)
    assert str(info["parent_run_id"]) == parent
    did = one(conn, "select registry.log_input(%s, 'iris', 'sha256abc', 'training', 'iris.csv', 150)", [child])
    one(conn, "select registry.log_input(%s, 'iris_test', 'sha256def', 'evaluation')", [child])
    inputs = conn.execute("select * from registry.list_inputs(%s)", [child]).fetchall()
    assert inputs[0] == (did, "iris", "sha256abc", "training", "dataset", "iris.csv", 150)
    assert inputs[1][1:] == ("iris_test", "sha256def", "evaluation", "dataset", None, None)
    with pytest.raises(psycopg.errors.UndefinedObject, match="not found"):
        conn.execute("select * from registry.list_inputs('00000000-0000-0000-0000-000000000000')")


def test_finished_run_refuses_data_but_takes_tags(conn, run):
    _, rid = run
    conn.execute("select registry.end_run(%s, 'FAILED')", [rid])
    for sql, args in [
        ("select registry.log_metric(%s, 'x', 1)", [rid]),
        ("select registry.log_param(%s, 'x', '1')", [rid]),
        ("select registry.log_artifact(%s, 'a', 'x'::bytea)", [rid]),
        ("select registry.end_run(%s)", [rid]),
    ]:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="FAILED"):
            conn.execute(sql, args)
    conn.execute("select registry.set_tag(%s, 'reviewed', 'yes')", [rid])
    assert run_info(conn, rid)["tags"]["reviewed"] == "yes"


def test_bad_batches_write_nothing(conn, run):
    _, rid = run
    cases = [
        (["a", "b"], [1.0], None, "differ in length"),
        (["a", "bad;key"], [1.0, 2.0], None, "invalid metric name"),
        (["a", ""], [1.0, 2.0], None, "name is empty"),
        (["a", "b"], [1.0, None], None, "is null"),
    ]
    for keys, vals, steps, msg in cases:
        with pytest.raises(psycopg.Error, match=msg):
            conn.execute(
                "select registry.log_batch(%s, %s::text[], %s::float8[], %s::bigint[])", [rid, keys, vals, steps]
            )
    assert (
        one(
            conn,
            "select count(*) from registry.metrics m join registry.runs r on r.id = m.run_id where r.run_uuid = %s",
            [rid],
        )
        == 0
    )
    # params are immutable: a conflicting batch is refused as a whole
    conn.execute('select registry.log_params(%s, \'{"depth": "6"}\')', [rid])
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="already logged"):
        conn.execute(
            'select registry.log_batch(%s, array[\'m\'], array[1.0], params => \'{"new": "1", "depth": "7"}\')', [rid]
        )
    info = run_info(conn, rid)
    assert info["params"] == {"depth": "6"} and info["metrics"] == {}
    conn.execute("select registry.log_param(%s, 'depth', '6')", [rid])  # same value again: fine


def test_metric_points_must_name_a_run_and_keep_it(db_dsn, conn, run):
    """registry.metrics checks its runs per statement (migration 0023), with the guarantees its foreign key
    gave: no point of a run that does not exist, no delete of a run that has points (its id is generated
    always: never updated), and a run that a transaction is logging to cannot be deleted under it."""
    _, rid = run
    run_pk = one(conn, "select id from registry.runs where run_uuid = %s", [rid])
    missing = one(conn, "select coalesce(max(id), 0) + 1000 from registry.runs")
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match=f"run id {missing}, which is not a run"):
        conn.execute(
            "insert into registry.metrics (run_id, key, value) values (%s, 'a', 1), (%s, 'b', 2)",
            [run_pk, missing],
        )
    assert one(conn, "select count(*) from registry.metrics where run_id in (%s, %s)", [run_pk, missing]) == 0
    conn.execute("select registry.log_batch(%s, array['a', 'b'], array[1.0, 2.0])", [rid])
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="append-only history"):
        conn.execute("delete from registry.runs where id = %s", [run_pk])
    assert one(conn, "select count(*) from registry.metrics where run_id = %s", [run_pk]) == 2
    # a run without points goes as before
    bare = one(conn, "select registry.start_run(%s, 'bare')", [uid("exp")])
    conn.execute("delete from registry.runs where run_uuid = %s", [bare])
    assert one(conn, "select count(*) from registry.runs where run_uuid = %s", [bare]) == 0
    # a transaction that logs to a run holds it: a delete waits for it (and would then find the points)
    other = one(conn, "select registry.start_run(%s, 'held')", [uid("exp")])
    other_pk = one(conn, "select id from registry.runs where run_uuid = %s", [other])
    with psycopg.connect(db_dsn) as writer, psycopg.connect(db_dsn, autocommit=True) as deleter:
        writer.execute("select registry.log_batch(%s, array['a'], array[1.0])", [other])
        deleter.execute("set lock_timeout = '300ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            deleter.execute("delete from registry.runs where id = %s", [other_pk])
        writer.commit()
    assert one(conn, "select count(*) from registry.metrics where run_id = %s", [other_pk]) == 1


def test_unknown_run_and_injection_in_names(conn):
    with pytest.raises(psycopg.errors.UndefinedObject, match="not found"):
        conn.execute("select registry.log_metric('00000000-0000-0000-0000-000000000000', 'x', 1)")
    evil = "x'); drop table registry.runs; --"
    rid = one(conn, "select registry.start_run(%s, %s)", [evil, evil])
    assert run_info(conn, rid)["run_name"] == evil
    assert one(conn, "select to_regclass('registry.runs') is not null")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="invalid tag name"):
        conn.execute("select registry.set_tag(%s, %s, 'v')", [rid, evil])
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="invalid artifact path"):
        conn.execute("select registry.log_artifact(%s, '../../etc/passwd', 'x'::bytea)", [rid])


def test_oversized_artifact_is_refused_whole(conn, run):
    _, rid = run
    conn.execute("set indb.max_artifact_bytes = 1000")
    try:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="over the limit of 1000 bytes") as e:
            conn.execute("select registry.log_artifact(%s, 'big.bin', %s)", [rid, b"x" * 1001])
        assert "indb.max_artifact_bytes" in e.value.diag.message_hint
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            conn.execute("select registry.register_model(%s, artifact => %s)", [uid("m"), b"x" * 1001])
        conn.execute("select registry.log_artifact(%s, 'ok.bin', %s)", [rid, b"x" * 1000])
    finally:
        conn.execute("reset indb.max_artifact_bytes")
    assert conn.execute("select path from registry.list_artifacts(%s)", [rid]).fetchall() == [("ok.bin",)]


def test_versions_increment_and_aliases(conn, run):
    _, rid = run
    name = uid("model")
    v = [
        conn.execute(
            "select version from registry.register_model(%s, %s, %s, flavor => 'sklearn')",
            [name, rid, f"bytes{i}".encode()],
        ).fetchone()[0]
        for i in range(3)
    ]
    assert v == [1, 2, 3]
    conn.execute("select registry.set_alias(%s, 'champion', 1)", [name])
    conn.execute("select registry.set_alias(%s, 'challenger', 3)", [name])
    conn.execute("select registry.set_alias(%s, 'champion', 2)", [name])  # move
    got = conn.execute(
        "select version, artifact, aliases from registry.get_model_version(%s, 'champion')", [name]
    ).fetchone()
    assert got[0] == 2 and bytes(got[1]) == b"bytes1" and got[2] == ["champion"]
    assert one(conn, "select version from registry.get_model_version(%s, 'latest')", [name]) == 3
    assert one(conn, "select version from registry.get_model_version(%s, '1')", [name]) == 1
    # moving an alias to a missing version fails and leaves the alias where it was
    with pytest.raises(psycopg.errors.UndefinedObject, match="has no version 9") as e:
        conn.execute("select registry.set_alias(%s, 'champion', 9)", [name])
    assert "versions: 1, 2, 3" in e.value.diag.message_detail
    assert one(conn, "select version from registry.get_model_version(%s, 'champion')", [name]) == 2
    for bad in ["latest", "v3", "1abc", "a b", "x'--"]:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="invalid alias"):
            conn.execute("select registry.set_alias(%s, %s, 1)", [name, bad])
    with pytest.raises(psycopg.errors.UndefinedObject, match="no alias"):
        conn.execute("select * from registry.get_model_version(%s, 'nope')", [name])


def test_alias_move_is_atomic_for_concurrent_readers(db_dsn, conn):
    name = uid("model")
    for _ in range(2):
        conn.execute("select registry.register_model(%s, artifact => %s, flavor => 'sklearn')", [name, b"v"])
    conn.execute("select registry.set_alias(%s, 'champion', 1)", [name])
    stop = threading.Event()
    seen, errors = set(), []

    def reader():
        with psycopg.connect(db_dsn, autocommit=True) as c:
            while not stop.is_set():
                try:
                    seen.add(
                        c.execute("select version from registry.get_model_version(%s, 'champion')", [name]).fetchone()[
                            0
                        ]
                    )
                except psycopg.Error as e:  # pragma: no cover - the assertion below reports it
                    errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    try:
        with psycopg.connect(db_dsn) as w:
            for i in range(30):
                w.execute("select registry.set_alias(%s, 'champion', %s)", [name, 2 if i % 2 == 0 else 1])
                w.commit()
    finally:
        stop.set()
        t.join()
    assert not errors and seen <= {1, 2} and seen


def test_concurrent_registrations_get_distinct_versions(db_dsn):
    name = uid("model")
    out, errors = [], []

    def register():
        try:
            with psycopg.connect(db_dsn, autocommit=True) as c:
                for _ in range(5):
                    out.append(
                        c.execute(
                            "select version from registry.register_model(%s, artifact => 'x'::bytea,"
                            " flavor => 'sklearn')",
                            [name],
                        ).fetchone()[0]
                    )
        except psycopg.Error as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=register) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and sorted(out) == list(range(1, 16))


def test_lineage_walks_both_directions(conn):
    exp = uid("exp")
    rid = one(conn, "select registry.start_run(%s, 'train')", [exp])
    did = one(conn, "select registry.log_input(%s, 'housing', 'd1g3st', 'training')", [rid])
    did2 = one(conn, "select registry.register_dataset('housing_raw', 'r4w')")
    name = uid("model")
    vid = conn.execute(
        "select version_id from registry.register_model(%s, %s, 'x'::bytea, flavor => 'xgboost')", [name, rid]
    ).fetchone()[0]
    conn.execute("select ml.deploy(%s, model_id => %s)", [name, vid])
    dep = one(conn, "select id from registry.deployments where version_id = %s", [vid])
    conn.execute("select registry.add_lineage('deployment', %s, 'prediction_log', '42', 'logged')", [str(dep)])
    conn.execute("select registry.add_lineage('dataset', %s, 'dataset', %s, 'cleaned_into')", [str(did2), str(did)])

    # "what data trained the deployed model?"
    up = conn.execute(
        "select src_kind, src_id, dst_kind, depth from registry.lineage('deployment', %s, 'up')", [str(dep)]
    ).fetchall()
    assert ("dataset", str(did), "run", 3) in up and ("dataset", str(did2), "dataset", 4) in up
    assert ("model_version", str(vid), "deployment", 1) in up
    # one edge per fact: the deployment is linked once
    assert conn.execute(
        "select relation from registry.lineage('deployment', %s, 'up') where depth = 1", [str(dep)]
    ).fetchall() == [("deployed",)]
    # "what models used this data set?" -- and down to the logged predictions
    down = conn.execute(
        "select dst_kind, dst_id, dst_label from registry.lineage('dataset', %s, 'down')", [str(did)]
    ).fetchall()
    assert ("model_version", str(vid), f"{name}/1") in down
    # a run's label: name, status and uuid, separated by spaces
    assert [lbl for k, _, lbl in down if k == "run"] == [f"train RUNNING run {rid}"]
    assert ("prediction_log", "42", None) in [(k, i, lbl) for k, i, lbl in down]
    # a model version can be named model/version or model@alias; a run by its uuid
    conn.execute("select registry.set_alias(%s, 'champion', 1)", [name])
    a = conn.execute("select * from registry.lineage('model_version', %s)", [f"{name}@champion"]).fetchall()
    b = conn.execute("select * from registry.lineage('model_version', %s)", [f"{name}/1"]).fetchall()
    assert a == b and {r[0] for r in a} == {"up", "down"}
    assert conn.execute("select count(*) from registry.lineage('run', %s)", [str(rid)]).fetchone()[0] >= 4
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown lineage kind"):
        conn.execute("select * from registry.lineage('table', '1')")
    # an unknown node is an error, not an empty answer; edges need existing nodes at both ends
    for kind, node in [
        ("model_version", "999999999"),
        ("run", "00000000-0000-0000-0000-000000000000"),
        ("prediction_log", "nope"),
        ("feature_view_version", "999999999"),
    ]:
        with pytest.raises(psycopg.errors.UndefinedObject, match="not found"):
            conn.execute("select * from registry.lineage(%s, %s)", [kind, node])
    with pytest.raises(psycopg.errors.UndefinedObject, match="not found"):
        conn.execute("select registry.add_lineage('dataset', '999999999', 'dataset', %s)", [str(did)])
    # the registry writes its own facts' edges: a hand-made duplicate is refused
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="written by the registry itself"):
        conn.execute("select registry.add_lineage('dataset', %s, 'run', %s, 'input')", [str(did2), str(rid)])


def test_search_runs_filters_orders_and_reports_positions(conn):
    exp = uid("exp")
    ids = {}
    for i, (rmse, depth, team) in enumerate([(0.3, "6", "x"), (0.4, "6", "y"), (0.6, "6", "x"), (0.2, "4", "x")]):
        rid = one(conn, "select registry.start_run(%s, %s, %s)", [exp, f"run{i}", f'{{"team": "{team}"}}'])
        conn.execute(
            "select registry.log_batch(%s, array['rmse'], array[%s::float8], params => %s)",
            [rid, rmse, f'{{"depth": "{depth}"}}'],
        )
        if i != 1:
            conn.execute("select registry.end_run(%s)", [rid])
        ids[i] = str(rid)
    rows = conn.execute(
        "select run_name from registry.search_runs(%s, %s, array['metrics.rmse DESC'])",
        [[exp], "metrics.rmse < 0.5 and params.depth = '6' and tags.team = 'x' and attributes.status = 'FINISHED'"],
    ).fetchall()
    assert rows == [("run0",)]
    rows = conn.execute(
        "select run_name from registry.search_runs(%s, 'metrics.rmse < 0.5', array['metrics.rmse ASC'])", [[exp]]
    ).fetchall()
    assert rows == [("run3",), ("run0",), ("run1",)]
    rows = conn.execute(
        "select run_name, metrics, params from registry.search_runs(%s, "
        "'params.depth IN (''4'') or tags.team = ''y''', array['attributes.run_name'])",
        [[exp]],
    ).fetchall()
    assert [r[0] for r in rows] == ["run1", "run3"] and rows[1][1] == {"rmse": 0.2} and rows[1][2] == {"depth": "4"}
    assert conn.execute("select count(*) from registry.search_runs(%s, '', null, 2)", [[exp]]).fetchone()[0] == 2
    # an injection attempt is just a value that matches nothing
    assert (
        conn.execute(
            "select count(*) from registry.search_runs(%s, %s)", [[exp], "params.depth = '6'' or ''1''=''1'"]
        ).fetchone()[0]
        == 0
    )
    with pytest.raises(psycopg.errors.SyntaxError) as e:
        conn.execute("select * from registry.search_runs(%s, 'metrics.rmse < 0.5 and params.depth = 6')", [[exp]])
    assert "position 39" in e.value.diag.message_primary
    assert e.value.diag.message_detail.endswith("^")
    with pytest.raises(psycopg.errors.SyntaxError, match="unknown entity"):
        conn.execute("select * from registry.search_runs(null, 'metric.x < 1 and foo.bar = ''1''')")
