"""Read replicas: a hot standby of the project's cluster (`indb db replica add`) answers every read path
exactly as the primary does at the same LSN; a prediction of a project that logs its predictions is refused
there (never served unlogged); writes fail with PostgreSQL's read-only error; the client routes reads to the
replica and writes to the primary, optionally waiting for its own writes to be replayed."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time

import psycopg
import pytest

NOW_ROWS = 40


def _replica_dsn(replica, db_dsn: str) -> str:
    base = psycopg.conninfo.conninfo_to_dict(db_dsn)
    base.update(host=str(replica.run), port=str(replica.port))
    return psycopg.conninfo.make_conninfo(**base)


def wait_replayed(primary_conn, replica_conn, timeout: float = 60) -> str:
    lsn = primary_conn.execute("select pg_current_wal_insert_lsn()::text").fetchone()[0]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if replica_conn.execute("select pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn]).fetchone()[0]:
            return lsn
        time.sleep(0.05)
    raise AssertionError(f"the replica did not replay {lsn} within {timeout} s")


@pytest.fixture(scope="module")
def world(sconn):
    """Data for every read path, written on the primary: a collection (vector + BM25), a vectorizer, a
    deployed model with logging off and one with logging on, a feature view materialized online and
    offline, a tracked run with metrics."""
    c = sconn
    c.execute("select ml.create_collection('rep_docs')")
    docs = [
        {"id": f"d{i}", "content": text}
        for i, text in enumerate(
            [
                "Gut bacteria shape the immune system of newborns.",
                "The printer on floor 3 is out of toner.",
                "Replication keeps a standby server in step with the primary.",
                "Vector search finds neighbours by cosine distance.",
                "BM25 ranks documents by term frequency and rarity.",
                "Hot standby servers answer read-only queries.",
            ]
        )
    ]
    c.execute("select ml.add_documents('rep_docs', %s)", [json.dumps(docs)])
    c.execute("create table rep_papers (id int primary key, title text)")
    c.execute("insert into rep_papers values (1, 'standby replicas'), (2, 'gradient boosting'), (3, 'immune cells')")
    c.execute("select * from ml.create_vectorizer('rep_papers', array['title'])")
    c.execute("create table rep_train (x1 float8, x2 float8, y float8, label int)")
    c.execute(
        "insert into rep_train select i, (i * 7) % 13, 3 * i - 2 * ((i * 7) % 13) + 1, (i % 2) from generate_series(1, 200) i"
    )
    c.execute("create view rep_reg_v as select x1, x2, y from rep_train")
    c.execute(
        "select * from ml.train('rep_reg', task => 'regression', relation => 'rep_reg_v', target => 'y', algorithm => 'linear')"
    )
    c.execute("create view rep_cls as select x1, x2, label from rep_train")
    c.execute(
        "select * from ml.train('rep_cls', task => 'classification', relation => 'rep_cls', target => 'label', "
        "algorithm => 'xgboost', hyperparams => '{\"n_estimators\": 10}')"
    )
    c.execute("select ml.set_prediction_logging('rep_cls', true)")
    c.execute("create table rep_orders (customer_id int, ts timestamptz, amount float8)")
    c.execute(
        "insert into rep_orders select i %% 3 + 1, now() - make_interval(hours => i), 10 + i from generate_series(1, %s) i",
        [NOW_ROWS],
    )
    c.execute("select features.create_entity('rep_customer', array['customer_id'], 'a customer')")
    c.execute(
        "select features.create_feature_view('rep_stats', 'rep_customer', 'rep_orders', 'ts', "
        '\'[{"name": "amount", "type": "float8"}]\', ttl => \'30 days\')'
    )
    c.execute("select * from features.materialize('rep_stats', now() - interval '10 days', now() + interval '1 hour')")
    run = c.execute("select registry.start_run('rep-exp', run_name => 'r1', tags => '{\"team\": \"rep\"}')").fetchone()[
        0
    ]
    c.execute("select registry.log_metric(%s, 'rmse', 1.25)", [run])
    c.execute("select registry.end_run(%s)", [run])
    t = c.execute("select now()::text").fetchone()[0]
    return {"run": str(run), "spine": f"select 2 as customer_id, '{t}'::timestamptz as event_timestamp"}


@pytest.fixture(scope="module")
def replica(cluster):
    """A hot standby of the test cluster, made the way `indb db replica add` makes one; removed at the end."""
    from indb.localdb import Replica

    rep = Replica.of(cluster, f"pytest_{secrets.token_hex(3)}")
    rep.create()
    rep.runtime_start()
    yield rep
    rep.remove()
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as c:
        assert (
            c.execute("select count(*) from pg_replication_slots where slot_name = %s", [rep.slot]).fetchone()[0] == 0
        )
    assert not rep.state.exists()


@pytest.fixture(scope="module")
def rconn(replica, db_dsn, world, sconn):
    from indb.client import register_types

    conn = psycopg.connect(_replica_dsn(replica, db_dsn), autocommit=True)
    register_types(conn)
    assert conn.execute("select pg_is_in_recovery()").fetchone()[0] is True
    wait_replayed(sconn, conn)
    yield conn
    conn.close()


READS = [
    ("search", "select * from ml.search('rep_docs', 'standby server replication', 3)"),
    ("keyword_search", "select * from ml.keyword_search('rep_docs', 'standby replication', 3)"),
    ("hybrid_search", "select * from ml.hybrid_search('rep_docs', 'standby replication', 3)"),
    ("vectorizer_search", "select * from ml.vectorizer_search('rep_papers', 'read replicas', 2)"),
    ("embed", "select ml.embed('all-MiniLM-L6-v2', 'a sentence on a replica')::text"),
    ("predict", "select ml.predict('rep_reg', array[5, 9]::float8[])"),
    ("predict_batch", "select * from ml.predict_batch('rep_reg', 'rep_reg_v') order by 1"),
    ("explain", "select * from ml.explain('rep_reg', '{\"x1\": 5, \"x2\": 9}'::jsonb)"),
    ("get_online", "select features.get_online(array['rep_stats:amount'], '{\"customer_id\": 2}')"),
    (
        "get_online_batch",
        "select features.get_online_batch(array['rep_stats:amount'], '[{\"customer_id\": 1}, {\"customer_id\": 3}]')",
    ),
    (
        "get_historical",
        "select * from features.get_historical(%(spine)s, array['rep_stats:amount'], '100 years')",
    ),
    ("search_runs", "select run_name, status, metrics from registry.search_runs(array['rep-exp'])"),
    ("get_run", "select run_name, experiment, status, params, metrics, tags from registry.get_run(%(run)s)"),
    ("lineage", "select * from registry.lineage('model_version', 'rep_reg@1', 'both') order by 1, 2, 3, 4, 5, 6, 7"),
    ("audit_verify", "select ok, events_checked, broken_id, last_id, last_hash from audit.verify()"),
]


def _answer(conn, sql, params):
    try:
        return ("rows", conn.execute(sql, params).fetchall())
    except psycopg.Error as e:
        return ("error", e.sqlstate, e.diag.message_primary)


@pytest.mark.parametrize("name,sql", READS, ids=[r[0] for r in READS])
def test_read_path_on_the_replica_equals_the_primary(sconn, rconn, world, name, sql):
    wait_replayed(sconn, rconn)
    on_primary = _answer(sconn, sql, world)
    on_replica = _answer(rconn, sql, world)
    assert on_primary[0] == "rows" and on_primary[1], on_primary
    assert on_replica == on_primary


def test_predict_proba_equal_when_logging_is_off(sconn, rconn):
    sconn.execute("select ml.set_prediction_logging('rep_cls', false)")
    try:
        wait_replayed(sconn, rconn)
        sql = "select ml.predict_proba('rep_cls', array[5, 9]::float8[])"
        p = sconn.execute(sql).fetchone()[0]
        assert len(p) == 2 and abs(sum(p) - 1) < 1e-9
        assert rconn.execute(sql).fetchone()[0] == p
    finally:
        sconn.execute("select ml.set_prediction_logging('rep_cls', true)")


def test_logged_prediction_is_refused_on_the_replica_never_unlogged(sconn, rconn):
    wait_replayed(sconn, rconn)
    before = sconn.execute("select count(*) from registry.prediction_log").fetchone()[0]
    for sql in (
        "select ml.predict('rep_cls', array[5, 9]::float8[])",
        "select ml.predict('rep_cls', '{\"x1\": 5, \"x2\": 9}'::jsonb)",
    ):
        with pytest.raises(psycopg.Error) as ei:
            rconn.execute(sql)
        e = ei.value
        assert e.sqlstate == "25006", (e.sqlstate, str(e))
        assert "set_prediction_logging" in e.diag.message_primary and "primary" in (e.diag.message_hint or "")
    # the same prediction on the primary is served and logged
    sconn.execute("select ml.predict('rep_cls', array[5, 9]::float8[])")
    assert sconn.execute("select count(*) from registry.prediction_log").fetchone()[0] == before + 1


@pytest.mark.parametrize(
    "sql",
    [
        'select ml.add_documents(\'rep_docs\', \'[{"id": "w1", "content": "written on a standby"}]\')',
        "select registry.start_run('rep-exp', run_name => 'on-replica')",
        "select * from features.materialize('rep_stats', now() - interval '1 day', now())",
        "insert into rep_papers values (9, 'nope')",
    ],
)
def test_a_write_on_the_replica_fails_read_only(rconn, sql):
    with pytest.raises(psycopg.Error) as ei:
        rconn.execute(sql)
    assert ei.value.sqlstate == "25006", (ei.value.sqlstate, str(ei.value))
    assert "read-only" in ei.value.diag.message_primary


def test_a_reader_role_gets_the_same_answer_and_no_more(sconn, rconn):
    """indb_reader on the standby sees what it sees on the primary (roles, grants and tenancy are replicated),
    and may not write there either: the standby's read-only error comes before any privilege check."""
    from helpers import acting_role

    role = acting_role(sconn, "indb_reader")
    wait_replayed(sconn, rconn)
    answers = []
    for conn in (sconn, rconn):
        with conn.transaction():
            conn.execute(f'set local role "{role}"')
            answers.append(_answer(conn, "select id, score from ml.search('rep_docs', 'standby', 2)", None))
    assert answers[0][0] == "rows" and len(answers[0][1]) == 2
    assert answers[1] == answers[0]
    with pytest.raises(psycopg.Error) as ei, rconn.transaction():
        rconn.execute(f'set local role "{role}"')
        rconn.execute('select ml.add_documents(\'rep_docs\', \'[{"id": "x", "content": "y"}]\')')
    assert ei.value.sqlstate in ("25006", "42501")


def test_client_routes_reads_to_the_replica_and_writes_to_the_primary(db_dsn, replica, rconn, world):
    import indb

    rdsn = _replica_dsn(replica, db_dsn)
    with indb.connect(db_dsn, read_dsn=rdsn, read_your_writes=True, read_your_writes_timeout=30) as client:
        where = "select ml.search('rep_docs', 'x', 1) is not null, pg_is_in_recovery()"
        assert client.call("select pg_is_in_recovery() as r")[0]["r"] is False  # not a read path: primary
        assert client.scalar(where.replace(" is not null, pg_is_in_recovery()", " is not null")) is True
        # a read path lands on the standby
        assert client.call("select ml.version() as v, pg_is_in_recovery() as standby")[0]["standby"] is True
        # read-your-writes: a document added through the primary is found at once through the replica
        client.call("select ml.add_documents('rep_docs', %s)", [json.dumps([{"id": "ryw", "content": "zebra quokka"}])])
        hits = client.call("select id from ml.keyword_search('rep_docs', 'quokka', 1)")
        assert [h["id"] for h in hits] == ["ryw"]
        # a prediction the replica refuses (logging on) is served, and logged, by the primary
        before = client.scalar("select count(*) from registry.prediction_log")
        assert client.scalar("select ml.predict('rep_cls', array[5, 9]::float8[])") is not None
        assert client.scalar("select count(*) from registry.prediction_log") == before + 1


def test_read_your_writes_times_out_with_a_clear_error(sconn, db_dsn, replica, rconn):
    import indb

    rdsn = _replica_dsn(replica, db_dsn)
    with indb.connect(db_dsn, read_dsn=rdsn, read_your_writes=True, read_your_writes_timeout=0.5) as client:
        client.call("select ml.add_documents('rep_docs', %s)", [json.dumps([{"id": "lag", "content": "lagging"}])])
        rconn.execute("select pg_wal_replay_pause()")
        try:
            client.call("select ml.add_documents('rep_docs', %s)", [json.dumps([{"id": "lag2", "content": "later"}])])
            with pytest.raises(indb.ReplicaLagError) as ei:
                client.call("select id from ml.keyword_search('rep_docs', 'later', 1)")
            assert "0.5 s" in str(ei.value) and "read_your_writes_timeout" in (ei.value.hint or "")
        finally:
            rconn.execute("select pg_wal_replay_resume()")
        assert [h["id"] for h in client.call("select id from ml.keyword_search('rep_docs', 'later', 1)")] == ["lag2"]


def test_cli_lists_the_replica_and_prints_its_dsn(replica):
    out = subprocess.run([sys.executable, "-m", "indb.cli", "db", "replica", "list"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    listed = {r["name"]: r for r in json.loads(out.stdout)}
    assert listed[replica.name]["running"] is True and listed[replica.name]["replay_lsn"]
    dsn = subprocess.run(
        [sys.executable, "-m", "indb.cli", "dsn", "--replica", replica.name], capture_output=True, text=True
    )
    assert dsn.returncode == 0 and f"port={replica.port}" in dsn.stdout
    tcp = subprocess.run(
        [sys.executable, "-m", "indb.cli", "dsn", "--replica", replica.name, "--tcp", "--dbname", "postgres"],
        capture_output=True,
        text=True,
    )
    with psycopg.connect(tcp.stdout.strip()) as c:  # password authentication over TCP, as on the primary
        assert c.execute("select pg_is_in_recovery()").fetchone()[0] is True
    psql = subprocess.run(
        [
            sys.executable,
            "-m",
            "indb.cli",
            "psql",
            "--replica",
            replica.name,
            "--",
            "-tAc",
            "select pg_is_in_recovery()",
        ],
        capture_output=True,
        text=True,
    )
    assert psql.returncode == 0 and psql.stdout.strip() == "t", psql.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "indb.cli", "dsn", "--replica", "no_such"], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "indb db replica add" in bad.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "indb.cli", "db", "replica", "add", "--name", "Bad-Name"], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "invalid replica name" in bad.stderr


def test_a_stopped_replica_catches_up_when_started_again(sconn, rconn, replica, db_dsn):
    """What `indb db stop` / `indb db start` do to each replica: the slot keeps the WAL it missed."""
    replica.stop()
    assert not replica.running()
    sconn.execute("select ml.add_documents('rep_docs', %s)", [json.dumps([{"id": "gap", "content": "while away"}])])
    assert "started" in replica.start()
    with psycopg.connect(_replica_dsn(replica, db_dsn), autocommit=True) as again:
        wait_replayed(sconn, again)
        assert again.execute("select id from ml.keyword_search('rep_docs', 'while away', 1)").fetchone()[0] == "gap"
