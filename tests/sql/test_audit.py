"""The audit log: every change to an audited table is an event with who/what/diff (bytes as their sha256);
events are appended without a lock and sealed into a hash chain in commit order; audit.verify() (read-only)
reports an edited, deleted or inserted event, sealed or pending; UPDATE/DELETE/TRUNCATE are refused for
every role, owner included; history tables (metrics, params, trials, the prediction log) refuse changes;
retention drops whole partitions, keeps the chain verifiable and logs itself; GRANTs on indb's objects are
logged."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

ROLES = ["indb_app", "indb_reader", "indb_writer", "indb_admin"]
REPO = Path(__file__).resolve().parents[2]

# the tables audit.attach() must have covered (sql/810-audit-api.sql), by kind
AUDITED_ROW = [
    "registry.experiments",
    "registry.runs",
    "registry.artifacts",
    "registry.datasets",
    "registry.run_inputs",
    "registry.registered_models",
    "registry.model_versions",
    "registry.aliases",
    "registry.deployments",
    "registry.lineage_edges",
    "registry.training_projects",
    "ml.embedding_models",
    "ml.vectorizers",
    "ml.collections",
    "ml.shards",
    "features.entities",
    "features.feature_views",
    "features.on_demand_features",
]
AUDITED_HISTORY = ["registry.params", "registry.metrics", "registry.training_trials"]
# tables of ml, registry and features that are deliberately not audited (data, queues, derived counters)
NOT_AUDITED = {
    "ml.installs",
    "ml.alembic_version",
    "ml.vectorizer_queue",
    "ml.vectorizer_failed",
    "ml.vectorizer_stats",
    "ml.collection_stats",
    "ml.collection_terms",
    "features.online_store",
    "features.quarantine",
    "features.materialization_runs",
    "features.statistics",
    "registry.run_search",  # derived: params, latest metrics and tags of audited tables, for search_runs
    # the BM25 index: derived from the collections' rows (like collection_stats and collection_terms), rebuilt
    # from them by ml._bm25_build; written only by indb's definers
    "ml.bm25_docs",
    "ml.bm25_postings",
    "ml.bm25_delta",
    "ml.bm25_deleted",
}


def one(conn, sql, params=None):
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def verify(conn):
    return conn.execute("select ok, broken_id, reason from audit.verify()").fetchone()


def fresh(empty_db, prefix: str) -> str:
    """A database of its own (these tests break or count its chain on purpose)."""
    from indb.install import install

    dsn = empty_db(prefix)
    install(dsn, venv=sys.prefix)
    return dsn


def test_changes_are_events_with_who_and_diff(conn):
    conn.execute("set application_name = 'audit-test'")
    exp = f"exp_{secrets.token_hex(4)}"
    rid = str(one(conn, "select registry.start_run(%s, 'r')", [exp]))
    conn.execute("select registry.log_batch(%s, array['a','b'], array[1.0, 2.0])", [rid])
    conn.execute("select registry.set_tag(%s, 'stage', 'prod')", [rid])
    run_pk = one(conn, "select id from registry.runs where run_uuid = %s", [rid])
    ev = conn.execute(
        "select action, row_key, old_values, new_values, session_user_name, current_user_name, application_name "
        "from audit.events where object = 'registry.runs' and row_key = %s order by id",
        [psycopg.types.json.Jsonb({"id": run_pk})],
    ).fetchall()
    assert [e[0] for e in ev] == ["INSERT", "UPDATE"]
    assert ev[0][3]["run_uuid"] == rid and ev[0][4] == "postgres" and ev[0][6] == "audit-test"
    # an UPDATE stores only what changed
    assert ev[1][2] == {"tags": {}} and ev[1][3] == {"tags": {"stage": "prod"}}
    batch = conn.execute(
        "select new_values from audit.events where action = 'INSERT_BATCH' "
        "and object = 'registry.metrics' order by id desc limit 1"
    ).fetchone()[0]
    assert batch["rows"] == 2 and sorted(batch["keys"]) == ["a", "b"] and len(batch["sha256"]) == 64
    # bytes are recorded as their sha256, never copied into the log (0.2.0: "artifact" is in the event)
    conn.execute(
        "select registry.register_model(%s, artifact => 'secret-bytes'::bytea, flavor => 'sklearn')",
        [f"m_{secrets.token_hex(3)}"],
    )
    new = conn.execute(
        "select new_values from audit.events where object = 'registry.model_versions' order by id desc limit 1"
    ).fetchone()[0]
    assert new["artifact"] == "sha256:" + hashlib.sha256(b"secret-bytes").hexdigest()
    assert len(new["artifact_sha256"]) == 64
    conn.execute("select audit.seal()")
    assert verify(conn) == (True, None, "ok")


def test_a_change_of_the_bytes_alone_is_an_event(conn):
    """Reproduction 5 of the trust issue: an artifact-only UPDATE made no event (bytea columns were dropped
    before the diff). Now old and new bytes are in the event as their sha256."""
    name = f"m_{secrets.token_hex(3)}"
    conn.execute("select registry.register_model(%s, artifact => 'honest'::bytea, flavor => 'sklearn')", [name])
    vid = one(
        conn,
        "select v.id from registry.model_versions v join registry.registered_models m on m.id = v.model_id "
        "where m.name = %s",
        [name],
    )
    before = one(conn, "select max(id) from audit.events")
    conn.execute("update registry.model_versions set artifact = 'evil'::bytea where id = %s", [vid])
    ev = conn.execute(
        "select action, row_key, old_values, new_values from audit.events where id > %s "
        "and object = 'registry.model_versions'",
        [before],
    ).fetchall()
    assert ev == [
        (
            "UPDATE",
            {"id": vid},
            {"artifact": "sha256:" + hashlib.sha256(b"honest").hexdigest()},
            {"artifact": "sha256:" + hashlib.sha256(b"evil").hexdigest()},
        )
    ]
    # an UPDATE of other columns does not hash (or mention) the unchanged bytes
    conn.execute("update registry.model_versions set description = 'x' where id = %s", [vid])
    last = one(conn, "select new_values from audit.events order by id desc limit 1")
    assert last == {"description": "x"}


def test_bytea_columns_are_recorded_by_hash_on_every_kind_of_change(conn):
    """A table with two bytea columns: an INSERT records each as its sha256 (null as null); an UPDATE records
    only the bytes that changed (set to null included) and none when they did not; a DELETE records the old
    hashes; the rest of the row is plain jsonb."""
    t = f"public.audit_bytes_{secrets.token_hex(3)}"
    conn.execute(f"create table {t}(id int primary key, tenant text, a bytea, b bytea, note text)")
    conn.execute("select audit.attach(%s)", [t])

    def sha(x: bytes) -> str:
        return "sha256:" + hashlib.sha256(x).hexdigest()

    before = one(conn, "select coalesce(max(id), 0) from audit.events")
    for sql in (
        f"insert into {t} values (1, 'acme', 'x', null, 'n1')",
        f"update {t} set note = 'n2' where id = 1",
        f"update {t} set a = null, b = 'y' where id = 1",
        f"update {t} set a = a, b = b where id = 1",
        f"delete from {t} where id = 1",
    ):
        conn.execute(sql)
    ev = conn.execute(
        "select action, row_key, old_values, new_values, tenant from audit.events where id > %s and object = %s "
        "order by id",
        [before, t],
    ).fetchall()
    row = {"id": 1, "tenant": "acme"}
    assert ev == [
        ("INSERT", {"id": 1}, None, {**row, "a": sha(b"x"), "b": None, "note": "n1"}, "acme"),
        ("UPDATE", {"id": 1}, {"note": "n1"}, {"note": "n2"}, "acme"),
        ("UPDATE", {"id": 1}, {"a": sha(b"x"), "b": None}, {"a": None, "b": sha(b"y")}, "acme"),
        ("DELETE", {"id": 1}, {**row, "a": None, "b": sha(b"y"), "note": "n2"}, None, "acme"),
    ]


class _Undo(Exception):
    pass


def test_events_of_a_rolled_back_savepoint_vanish_and_the_lane_stays_linked(conn):
    """The lane a transaction holds, and where its row's newest version is, live in the backend's memory: a
    savepoint rolled back takes back its events and its moves of the lane, also when the transaction claimed
    its lane inside it, and when a PL/pgSQL exception block rolls back. The events that stay are consecutive
    in one lane, each linked to the one before, and the log verifies."""
    tag = secrets.token_hex(4)
    insert = "insert into registry.experiments(name) values (%s)"
    before = one(conn, "select coalesce(max(id), 0) from audit.events")
    with conn.transaction():
        with pytest.raises(_Undo), conn.transaction():  # the transaction's first event, rolled back
            conn.execute(insert, [f"a_{tag}"])
            raise _Undo
        conn.execute(insert, [f"b_{tag}"])
        with pytest.raises(_Undo), conn.transaction():
            conn.execute(insert, [f"c_{tag}"])
            conn.execute(insert, [f"c2_{tag}"])
            raise _Undo
        conn.execute(insert, [f"d_{tag}"])
        conn.execute(
            f"do $$ begin insert into registry.experiments(name) values ('e_{tag}'); raise exception 'undo'; "
            "exception when others then null; end $$"
        )
        conn.execute(insert, [f"f_{tag}"])
    rows = conn.execute(
        "select new_values ->> 'name', lane, lane_pos, lane_prev, hash from audit.events "
        "where id > %s and object = 'registry.experiments' and new_values ->> 'name' like %s order by id",
        [before, f"%_{tag}"],
    ).fetchall()
    assert [r[0] for r in rows] == [f"b_{tag}", f"d_{tag}", f"f_{tag}"]
    assert len({r[1] for r in rows}) == 1
    assert [r[2] - rows[0][2] for r in rows] == [0, 1, 2]
    assert rows[1][3] == rows[0][4] and rows[2][3] == rows[1][4]
    # the lane's row points at the newest event
    assert one(conn, "select last_hash from audit.lanes where lane = %s", [rows[0][1]]) == rows[2][4]
    conn.execute("select audit.seal()")
    assert verify(conn) == (True, None, "ok")


def test_a_transaction_of_many_events_stays_linked(conn):
    """5,000 events in one transaction: each moves the lane's row by its place (no walk over the versions the
    transaction made), and the lane links them all."""
    tag = secrets.token_hex(4)
    before = one(conn, "select coalesce(max(id), 0) from audit.events")
    conn.execute(
        "insert into registry.experiments(name) select 'many_' || %s || '_' || g from generate_series(1, 5000) g",
        [tag],
    )
    n, lanes, span = conn.execute(
        "select count(*), count(distinct lane), max(lane_pos) - min(lane_pos) from audit.events "
        "where id > %s and object = 'registry.experiments' and new_values ->> 'name' like %s",
        [before, f"many_{tag}_%"],
    ).fetchone()
    assert (n, lanes, span) == (5000, 1, 4999)
    conn.execute("select audit.seal()")
    assert verify(conn) == (True, None, "ok")


@pytest.mark.parametrize("role", [None] + ROLES)
def test_update_delete_truncate_refused_for_every_role(conn, role):
    conn.execute("select registry.start_run(%s)", [f"exp_{secrets.token_hex(4)}"])
    conn.execute("select audit.seal()")
    if role:
        conn.execute(f"set role {role}")
    try:
        stmts = [
            "update audit.events set action = 'X' where id = (select max(id) from audit.events)",
            "delete from audit.events where id = (select max(id) from audit.events)",
            "truncate audit.events",
            "update audit.chain set seq = 0 where seq = (select max(seq) from audit.chain)",
            "delete from audit.chain where seq = (select max(seq) from audit.chain)",
            "truncate audit.chain",
            "update audit.chain_head set last_id = 0",
            "delete from audit.lanes",
            "truncate audit.lanes",
            "truncate audit.anchors",
            "truncate audit.chain_head",
        ]
        if role:  # the owner may insert (a superuser can always write); no indb role can
            stmts.append(
                "insert into audit.events(id, ts, action, object, session_user_name, current_user_name,"
                " txid, hash) values (0, now(), 'X', 'x', 'x', 'x', 0, ''::bytea)"
            )
            stmts.append("update audit.lanes set pos = 0")
        for stmt in stmts:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(stmt)
    finally:
        conn.execute("reset role")
    assert verify(conn)[0] is True


@pytest.mark.parametrize(
    "stmt",
    [
        "update registry.metrics set value = 0.0001",
        "delete from registry.metrics",
        "truncate registry.metrics",
        "update registry.params set value = 'x'",
        "delete from registry.params",
        "update registry.latest_metrics set value = 0.0001",
        "insert into registry.latest_metrics(run_id, key, value, step, ts) "
        "select id, 'forged', 0.0001, 0, now() from registry.runs limit 1",
        "delete from registry.latest_metrics",
        "truncate registry.latest_metrics",
        "delete from registry.training_trials",
        "delete from registry.prediction_log",
        "update registry.prediction_log set prediction = 0",
        "truncate registry.prediction_log",
    ],
)
def test_history_is_refused_for_everyone_the_owner_and_superuser_included(history_dsn, stmt):
    """metrics, params, training trials and the prediction log are history; latest_metrics mirrors metrics.
    A trigger refuses their changes for every role; the superuser too (short of disabling the trigger)."""
    with psycopg.connect(history_dsn, autocommit=True) as c:
        before = one(c, "select count(*) from audit.events")
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            c.execute(stmt)
        assert e.value.diag.message_hint
        assert one(c, "select count(*) from audit.events") == before


@pytest.fixture(scope="module")
def history_dsn(empty_db) -> str:
    """A database with a run, metrics, params, a trial and a prediction-log row."""
    dsn = fresh(empty_db, "indb_audit_history")
    with psycopg.connect(dsn, autocommit=True) as c:
        rid = one(c, "select registry.start_run('hist')")
        c.execute("select registry.log_batch(%s, array['rmse'], array[0.5], params => '{\"depth\": 3}')", [rid])
        c.execute(
            "insert into registry.training_trials(run_id, trial, params, metric, score) "
            "select id, 1, '{}', 'rmse', 0.5 from registry.runs"
        )
        c.execute(
            "insert into registry.prediction_log(project_id, model_id, inputs_hash, prediction) values (1, 1, 'h', 1.0)"
        )
    return dsn


def test_latest_metrics_follow_logged_points(conn):
    """registry.log_batch keeps latest_metrics (an upsert) and passes the mirror check; no event of its own."""
    rid = one(conn, "select registry.start_run(%s)", [f"exp_{secrets.token_hex(4)}"])
    conn.execute("select registry.log_batch(%s, array['loss'], array[1.0], array[1::bigint])", [rid])
    conn.execute("select registry.log_batch(%s, array['loss', 'loss'], array[0.5, 0.25], array[2, 3]::bigint[])", [rid])
    assert (
        one(
            conn,
            "select value from registry.latest_metrics l join registry.runs r on r.id = l.run_id "
            "where r.run_uuid = %s and key = 'loss'",
            [rid],
        )
        == 0.25
    )
    assert one(conn, "select count(*) from audit.events where object = 'registry.latest_metrics'") == 0


def test_every_catalog_is_audited_or_deliberately_not(conn):
    """Each audited table carries its triggers; every other table of ml, registry and features is named in
    NOT_AUDITED (data, queues, derived counters). A new catalog without audit fails here."""
    trig = {
        (t, g)
        for t, g in conn.execute(
            "select tgrelid::regclass::text, tgname from pg_trigger where not tgisinternal and tgparentid = 0"
        ).fetchall()
    }
    for t in AUDITED_ROW:
        assert (t, "indb_audit") in trig and (t, "indb_audit_truncate") in trig, t
    for t in AUDITED_HISTORY:
        assert {(t, "indb_audit_batch"), (t, "indb_append_only"), (t, "indb_append_only_truncate")} <= trig, t
    assert ("registry.latest_metrics", "indb_audit_mirror_update") in trig
    assert ("registry.prediction_log", "indb_append_only") in trig
    tables = {
        r[0]
        for r in conn.execute(
            "select c.oid::regclass::text from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname in ('ml', 'registry', 'features') and c.relkind in ('r', 'p') and not c.relispartition "
            "and c.relname !~ '^fv_[0-9]+_offline$'"
        ).fetchall()
    }
    covered = set(AUDITED_ROW) | set(AUDITED_HISTORY) | {"registry.latest_metrics", "registry.prediction_log"}
    assert tables - covered - NOT_AUDITED == set(), "tables neither audited nor listed as not audited"
    assert covered - tables == set()


def test_a_missing_audited_table_is_an_install_error(conn):
    """The old to_regclass guard skipped a missing audited table silently (features.feature_view_versions,
    which no migration creates); now the install fails and says which."""
    from indb.install import render_sql

    sql = render_sql(REPO / "sql" / "810-audit-api.sql")
    with psycopg.connect(conn.info.dsn) as c:  # one transaction, rolled back
        c.execute("alter table registry.training_trials rename to training_trials_gone")
        with pytest.raises(psycopg.errors.UndefinedTable, match="registry.training_trials"):
            c.execute(sql)
        c.rollback()


def test_seal_is_idempotent_and_sealers_never_wait(db_dsn, conn):
    conn.execute("select registry.start_run(%s)", [f"exp_{secrets.token_hex(4)}"])
    assert one(conn, "select pending from audit.verify()") >= 1
    with psycopg.connect(db_dsn) as other:  # a sealer holding the lock in an open transaction
        other.execute("select audit.seal()")
        conn.execute("set lock_timeout = '2s'")
        t0 = time.monotonic()
        assert one(conn, "select audit.seal()") == 0  # skipped, not waited
        assert time.monotonic() - t0 < 1.5
        other.commit()
    conn.execute("select audit.seal()")
    assert one(conn, "select audit.seal()") == 0
    ok, pending = conn.execute("select ok, pending from audit.verify()").fetchone()
    assert ok and pending == 0
    # sealing at REPEATABLE READ could miss another sealer's work: refused
    with psycopg.connect(db_dsn) as rr:
        rr.execute("set transaction isolation level repeatable read")
        with pytest.raises(psycopg.errors.InvalidTransactionState):
            rr.execute("select audit.seal()")


def test_verify_is_read_only_and_counts_pending(db_dsn, conn):
    conn.execute("select audit.seal()")
    conn.execute("select registry.start_run(%s)", [f"exp_{secrets.token_hex(4)}"])
    with psycopg.connect(db_dsn) as ro:  # as on a read replica
        ro.execute("set transaction read only")
        ok, checked, pending = ro.execute("select ok, events_checked, pending from audit.verify()").fetchone()
        assert ok and checked > 0 and pending >= 1


def test_four_concurrent_writers_end_with_a_verified_chain(empty_db):
    """4 threads with their own connections write audited registry rows while a 5th seals: nothing waits on a
    chain lock, every event is sealed exactly once, and each writer's events are chained in its commit order."""
    dsn = fresh(empty_db, "indb_audit_concurrent")
    n, writers = 12, 4
    runs: dict[int, list[str]] = {k: [] for k in range(writers)}
    errors: list[BaseException] = []
    done = threading.Event()

    def write(k: int) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True, application_name=f"writer{k}") as c:
                for i in range(n):
                    rid = str(one(c, "select registry.start_run(%s, %s)", [f"exp{k}", f"r{i}"]))
                    c.execute("select registry.log_batch(%s, array['m'], array[%s::float8])", [rid, float(i)])
                    c.execute("select registry.set_tag(%s, 'i', %s)", [rid, str(i)])
                    c.execute("select registry.end_run(%s)", [rid])
                    runs[k].append(rid)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    sealed_while_writing: list[int] = []
    sealing = threading.Event()  # the writers start once the sealer is connected (a loaded machine may take a while)

    def seal() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                sealing.set()
                while not done.is_set():
                    sealed_while_writing.append(one(c, "select audit.seal()"))
                    time.sleep(0.05)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    sealer = threading.Thread(target=seal)
    sealer.start()
    assert sealing.wait(60), errors
    threads = [threading.Thread(target=write, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    sealer.join()
    assert not errors, errors
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("select audit.seal()")
        ok, checked, reason, pending = c.execute(
            "select ok, events_checked, reason, pending from audit.verify()"
        ).fetchone()
        assert ok, reason
        assert pending == 0
        # every event sealed exactly once
        assert one(c, "select count(*) from audit.chain") == checked
        assert one(c, "select count(distinct event_id) from audit.chain") == checked
        assert one(c, "select max(seq) - min(seq) + 1 from audit.chain") == checked
        for k in range(writers):
            # no event lost: each run's INSERT and its two UPDATEs (tag, end)
            got = c.execute(
                "select r.run_uuid::text, count(e.id) from registry.runs r join audit.events e "
                "on e.object = 'registry.runs' and e.row_key = jsonb_build_object('id', r.id) "
                "where r.run_uuid::text = any(%s) group by 1",
                [runs[k]],
            ).fetchall()
            assert sorted(got) == sorted((r, 3) for r in runs[k])
            # chained in the order this writer committed them
            ids, seqs = zip(
                *c.execute(
                    "select e.id, c.seq from audit.events e join audit.chain c on c.event_id = e.id "
                    "where e.application_name = %s order by e.id",
                    [f"writer{k}"],
                ).fetchall()
            )
            assert list(seqs) == sorted(seqs) and len(ids) >= 4 * n
        # the sealer sealed while the writers wrote (not only at the end)
        assert sum(sealed_while_writing) > 0
        # in every lane, positions are gap-free and the chain holds them in lane order: a transaction that took a
        # lane after another committed is sealed after it
        assert (
            one(
                c,
                "select count(*) from (select e.lane_pos - lag(e.lane_pos) over w as step, "
                "ch.seq - lag(ch.seq) over w as seq_step from audit.events e "
                "join audit.chain ch on ch.event_id = e.id and ch.event_ts = e.ts "
                "window w as (partition by e.lane order by e.lane_pos)) x where x.step <> 1 or x.seq_step <= 0",
            )
            == 0
        )
        # lanes are claimed again, not made per transaction: at most one per session that appended at once
        assert one(c, "select count(*) from audit.lanes") <= writers + 2


def test_an_open_audited_transaction_does_not_hold_up_other_writers(db_dsn):
    """0.1.0 held the chain head's row lock from an event to commit: every audited write of the database
    waited for the slowest transaction."""
    with psycopg.connect(db_dsn) as slow, psycopg.connect(db_dsn, autocommit=True) as fast:
        slow.execute("select registry.start_run(%s)", [f"exp_{secrets.token_hex(4)}"])  # open, not committed
        fast.execute("set lock_timeout = '3s'")
        fast.execute("set statement_timeout = '5s'")
        t0 = time.monotonic()
        fast.execute("select registry.start_run(%s)", [f"exp_{secrets.token_hex(4)}"])
        assert time.monotonic() - t0 < 2.5
        slow.rollback()
    with psycopg.connect(db_dsn, autocommit=True) as c:
        c.execute("select audit.seal()")
        assert verify(c)[0] is True


# -- tampering, as a superuser (the attacker PostgreSQL cannot stop): each case in a transaction, rolled back --


@pytest.fixture(scope="module")
def tamper_dsn(empty_db):
    """Events 1..k sealed, then a few pending ones, in a database of its own."""
    dsn = fresh(empty_db, "indb_audit_tamper")
    with psycopg.connect(dsn, autocommit=True) as c:
        for i in range(3):
            rid = one(c, "select registry.start_run('tamper', %s)", [f"sealed{i}"])
            c.execute("select registry.end_run(%s)", [rid])
        c.execute("select audit.seal()")
        for i in range(3):
            c.execute("select registry.start_run('tamper', %s)", [f"pending{i}"])
        ok, pending = c.execute("select ok, pending from audit.verify()").fetchone()
        assert ok and pending >= 3
    return dsn


def _sealed(c, newest: bool = True) -> int:
    return one(
        c,
        "select e.id from audit.events e join audit.chain ch on ch.event_id = e.id "
        f"where e.object = 'registry.runs' order by e.id {'desc' if newest else 'asc'} limit 1",
    )


def _pending(c, newest: bool = False) -> int:
    return one(
        c,
        "select e.id from audit.events e where not exists (select 1 from audit.chain ch where ch.event_id = e.id) "
        f"and e.object = 'registry.runs' order by e.id {'desc' if newest else 'asc'} limit 1",
    )


FORGE = """insert into audit.events(id, ts, action, object, row_key, old_values, new_values, session_user_name,
           current_user_name, application_name, client_addr, txid, tenant, hash, lane, lane_pos, lane_prev)
    select {id}, e.ts, e.action, e.object, e.row_key, e.old_values,
           jsonb_set(e.new_values, '{{name}}', '"forged"'), e.session_user_name, e.current_user_name,
           e.application_name, e.client_addr, e.txid, e.tenant,
           audit._content_hash({id}, e.ts, e.action, e.object, e.row_key, e.old_values,
                               jsonb_set(e.new_values, '{{name}}', '"forged"'), e.session_user_name,
                               e.current_user_name, e.application_name, e.client_addr, e.txid, e.tenant,
                               e.lane, e.lane_pos, e.lane_prev),
           e.lane, e.lane_pos, e.lane_prev
      from audit.events e where e.id = %s"""

REHASH = """update audit.events e set hash = audit._content_hash(e.id, e.ts, e.action, e.object, e.row_key,
           e.old_values, e.new_values, e.session_user_name, e.current_user_name, e.application_name,
           e.client_addr, e.txid, e.tenant, e.lane, e.lane_pos, e.lane_prev) where id = %s"""


def _edit(c, eid: int, rehash: bool) -> int:
    c.execute("update audit.events set new_values = jsonb_set(new_values, '{name}', '\"forged\"') where id = %s", [eid])
    if rehash:
        c.execute(REHASH, [eid])
    return eid


def _delete(c, eid: int, with_chain: bool = False) -> int:
    if with_chain:
        c.execute("delete from audit.chain where event_id = %s", [eid])
    c.execute("delete from audit.events where id = %s", [eid])
    return eid


def _forge_copy(c, of: int) -> int:
    """A forged event with a correct content hash that claims the lane position of event `of`."""
    new = one(c, "select nextval('audit.events_id_seq')")
    c.execute(FORGE.format(id=new), [of])
    return of  # the event whose lane position is taken twice: the smaller id of the two


def _reorder_sealed(c) -> int:
    """Two sealed events swap their chain positions (the chain rows keep their links)."""
    a, b = (
        r[0]
        for r in c.execute(
            "select ch.seq from audit.chain ch join audit.events e on e.id = ch.event_id and e.lane is not null "
            "order by ch.seq limit 2"
        ).fetchall()
    )
    ea, ta = c.execute("select event_id, event_ts from audit.chain where seq = %s", [a]).fetchone()
    eb, tb = c.execute("select event_id, event_ts from audit.chain where seq = %s", [b]).fetchone()
    c.execute("update audit.chain set event_id = -1 where seq = %s", [a])  # (event_id, event_ts) is unique
    c.execute("update audit.chain set event_id = %s, event_ts = %s where seq = %s", [ea, ta, b])
    c.execute("update audit.chain set event_id = %s, event_ts = %s where seq = %s", [eb, tb, a])
    return min(ea, eb)


def _reorder_pending(c) -> int:
    """The first two pending events of a lane swap places, with their links and hashes recomputed so that each
    is consistent on its own (what someone who knows the hash formula would do)."""
    a, b, lane = c.execute(
        "select x.id, x.nid, x.lane from (select e.id, e.lane, lead(e.id) over w as nid, lead(e.lane_pos) over w "
        "as npos, e.lane_pos from audit.events e where not exists (select 1 from audit.chain ch "
        "where ch.event_id = e.id) and e.lane is not null window w as (partition by e.lane order by e.lane_pos)) x "
        "where x.npos = x.lane_pos + 1 order by x.id limit 1"
    ).fetchone()
    pa, prev_a = c.execute("select lane_pos, lane_prev from audit.events where id = %s", [a]).fetchone()
    c.execute("update audit.events set lane_pos = %s, lane_prev = %s where id = %s", [pa, prev_a, b])
    c.execute(REHASH, [b])
    c.execute(
        "update audit.events set lane_pos = %s, lane_prev = (select hash from audit.events where id = %s) "
        "where id = %s",
        [pa + 1, b, a],
    )
    c.execute(REHASH, [a])
    return max(a, b)


def _forge_sealed_tail(c) -> int:
    """A forged event appended after the sealed tail with its chain row, consistently at the end of a lane
    (its head row moved too), but without moving the chain head."""
    last = one(c, "select max(seq) from audit.chain")
    src = _sealed(c)
    new = one(c, "select nextval('audit.events_id_seq')")
    c.execute(FORGE.format(id=new), [src])
    c.execute(
        "update audit.events e set lane_pos = l.pos + 1, lane_prev = l.last_hash from audit.lanes l "
        "where e.id = %s and l.lane = e.lane",
        [new],
    )
    c.execute(REHASH, [new])
    c.execute(
        "update audit.lanes l set pos = e.lane_pos, last_id = e.id, prev_hash = l.last_hash, last_hash = e.hash "
        "from audit.events e where e.id = %s and l.lane = e.lane",
        [new],
    )
    c.execute(
        "insert into audit.chain(seq, event_id, event_ts, prev_hash, hash) "
        "select %s + 1, e.id, e.ts, ch.hash, audit._link_hash(ch.hash, %s + 1, e.id, e.hash) "
        "from audit.events e, audit.chain ch where e.id = %s and ch.seq = %s",
        [last, last, new, last],
    )
    return new


@pytest.mark.parametrize(
    "case, want",
    [
        ("sealed: edit", "altered"),
        ("sealed: edit and recompute its hash", "its hash changed"),
        ("sealed: delete the event", "is missing"),
        ("sealed: delete the event and its chain row", "missing"),
        ("sealed: insert an event after the tail", "beyond the chain head"),
        ("sealed: reorder two events", "is not what was sealed"),
        ("pending: edit", "altered"),
        ("pending: edit and recompute its hash", "does not link to the previous event"),
        ("pending: delete (not the newest)", "missing"),
        ("pending: delete the newest", "removed from the end"),
        ("pending: insert a copy with a correct hash", "hold the same position"),
        ("pending: reorder two events, hashes and links recomputed", "does not link to the previous event"),
    ],
)
def test_tampering_is_reported(tamper_dsn, case, want):
    with psycopg.connect(tamper_dsn) as c:
        for t in ("events", "chain"):
            c.execute(f"alter table audit.{t} disable trigger indb_append_only")
        target = {
            "sealed: edit": lambda: _edit(c, _sealed(c, newest=False), rehash=False),
            "sealed: edit and recompute its hash": lambda: _edit(c, _sealed(c, newest=False), rehash=True),
            "sealed: delete the event": lambda: _delete(c, _sealed(c, newest=False)),
            "sealed: delete the event and its chain row": lambda: _delete(c, _sealed(c, newest=False), True),
            "sealed: insert an event after the tail": lambda: _forge_sealed_tail(c),
            "pending: edit": lambda: _edit(c, _pending(c), rehash=False),
            "pending: edit and recompute its hash": lambda: _edit(c, _pending(c), rehash=True),
            "pending: delete (not the newest)": lambda: _delete(c, _pending(c)),
            "pending: delete the newest": lambda: _delete(c, _pending(c, newest=True)),
            "pending: insert a copy with a correct hash": lambda: _forge_copy(c, _pending(c)),
            "sealed: reorder two events": lambda: _reorder_sealed(c),
            "pending: reorder two events, hashes and links recomputed": lambda: _reorder_pending(c),
        }[case]()
        ok, broken, reason = verify(c)
        assert not ok and want in reason, reason
        if case not in ("pending: delete the newest", "sealed: delete the event and its chain row"):
            assert broken is not None and broken <= target + 1, (broken, target, reason)
        c.rollback()
    with psycopg.connect(tamper_dsn) as c:
        assert verify(c)[0] is True


def test_removed_tails_are_detected(empty_db):
    dsn = fresh(empty_db, "indb_audit_tail")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("select registry.start_run('tail')")
        c.execute("select audit.seal()")
        last = one(c, "select max(id) from audit.events")
        c.execute("alter table audit.events disable trigger indb_append_only")
        c.execute("alter table audit.chain disable trigger indb_append_only")
        c.execute("delete from audit.chain where event_id = %s", [last])
        c.execute("delete from audit.events where id = %s", [last])
        ok, broken, reason = verify(c)
        assert not ok and "removed from the end" in reason


def test_retention_is_admin_only_and_logs_itself(empty_db):
    dsn = fresh(empty_db, "indb_audit_retention")
    with psycopg.connect(dsn, autocommit=True) as c:
        for t in ("events", "chain"):
            c.execute(
                f"create table audit.{t}_2023_01 partition of audit.{t} for values from ('2023-01-01') to ('2023-02-01')"
            )
            c.execute(f"alter table audit.{t}_2023_01 owner to indb_owner")  # as audit.ensure_partitions makes them
        for role in ("indb_writer", "indb_reader", "indb_app"):
            c.execute(f"set role {role}")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("select audit.apply_retention('30 days')")
            c.execute("reset role")
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            c.execute("select audit.apply_retention('1 hour')")
        out = one(c, "select audit.apply_retention('365 days')")
        assert out["dropped"] == ["events_2023_01"] and out["events"] == 0
        assert one(c, "select to_regclass('audit.events_2023_01')") is None
        assert one(c, "select to_regclass('audit.chain_2023_01')") is None
        ev = c.execute(
            "select action, current_user_name, new_values from audit.events order by id desc limit 1"
        ).fetchone()
        assert ev[0] == "RETENTION" and ev[2]["dropped_partitions"] == ["events_2023_01"]
        c.execute("select audit.seal()")
        assert verify(c) == (True, None, "ok")


def _age_current_month(c) -> int:
    """Set-up (superuser, not an attack): move every event so far, with its chain rows, into January 2020
    partitions, so that retention has old events to drop. Content hashes cover ts, so they are recomputed, and
    the chain is re-linked from the first event. Returns how many events moved."""
    c.execute("select audit.seal()")
    month = one(c, "select to_char(now(), 'YYYY_MM')")
    for t in ("events", "chain"):
        c.execute(f"alter table audit.{t} detach partition audit.{t}_{month}")
        c.execute(f"alter table audit.{t}_{month} disable trigger all")
    c.execute(f"update audit.events_{month} set ts = timestamptz '2020-01-15' + id * interval '1 millisecond'")
    c.execute(f"update audit.chain_{month} ch set event_ts = e.ts from audit.events_{month} e where e.id = ch.event_id")
    # lanes link content hashes: recompute them in lane order
    for (eid,) in c.execute(f"select id from audit.events_{month} order by lane, lane_pos").fetchall():
        c.execute(
            f"""update audit.events_{month} e set
                  lane_prev = (select p.hash from audit.events_{month} p where p.lane = e.lane
                               and p.lane_pos = e.lane_pos - 1)
                where id = %s""",
            [eid],
        )
        c.execute(REHASH.replace("audit.events e", f"audit.events_{month} e"), [eid])
    prev = bytes(32)
    for (seq,) in c.execute(f"select seq from audit.chain_{month} order by seq").fetchall():
        prev = one(
            c,
            f"""update audit.chain_{month} ch set prev_hash = %s,
                       hash = audit._link_hash(%s, ch.seq, ch.event_id, e.hash)
                  from audit.events_{month} e where e.id = ch.event_id and ch.seq = %s returning ch.hash""",
            [prev, prev, seq],
        )
    c.execute("alter table audit.chain_head disable trigger indb_append_only")
    c.execute("update audit.chain_head set last_hash = %s", [prev])
    c.execute("alter table audit.chain_head enable trigger indb_append_only")
    c.execute(
        f"update audit.lanes l set last_hash = e.hash from audit.events_{month} e "
        "where e.lane = l.lane and e.lane_pos = l.pos"
    )
    for t in ("events", "chain"):
        c.execute(f"alter table audit.{t}_{month} enable trigger all")
        c.execute(f"alter table audit.{t}_{month} rename to {t}_2020_01")
        c.execute(
            f"alter table audit.{t} attach partition audit.{t}_2020_01 for values from ('2020-01-01') to ('2020-02-01')"
        )
        c.execute(
            f"create table audit.{t}_{month} partition of audit.{t} for values from "
            "(date_trunc('month', now())) to (date_trunc('month', now()) + interval '1 month')"
        )
    return one(c, "select count(*) from audit.events_2020_01")


@pytest.mark.parametrize("by_hand", [False, True])
def test_retention_anchor_keeps_the_chain_verifiable(empty_db, by_hand):
    """Old events dropped by apply_retention: the chain and the lanes resume at the anchor and verify() says ok.
    The same partitions dropped by hand (no anchor) are reported."""
    dsn = fresh(empty_db, "indb_audit_anchor")
    with psycopg.connect(dsn, autocommit=True) as c:
        n_old = _age_current_month(c)
        assert verify(c) == (True, None, "ok")
        c.execute("select registry.start_run('after')")
        c.execute("select audit.seal()")
        assert verify(c) == (True, None, "ok")
        if by_hand:
            c.execute("drop table audit.events_2020_01")
            c.execute("drop table audit.chain_2020_01")
            ok, broken, reason = verify(c)
            assert not ok and "missing" in reason
        else:
            out = one(c, "select audit.apply_retention('365 days')")
            assert out["dropped"] == ["events_2020_01"] and out["events"] == n_old
            assert one(c, "select min(seq) from audit.chain") == n_old + 1
            c.execute("select registry.start_run('after retention')")
            assert verify(c) == (True, None, "ok")
            c.execute("select audit.seal()")
            assert verify(c) == (True, None, "ok")


def test_grants_on_indb_objects_are_logged_and_others_are_not(conn):
    role = f"indb_t_{secrets.token_hex(3)}"
    conn.execute(f"create role {role} nologin")
    try:
        before = one(conn, "select max(id) from audit.events")
        conn.execute(f"grant select on registry.runs to {role}")
        conn.execute(f"revoke select on registry.runs from {role}")
        conn.execute("create temp table not_indb(x int)")
        conn.execute(f"grant select on pg_temp.not_indb to {role} /* not an event */")
        conn.execute(f"revoke select on pg_temp.not_indb from {role}")
        ev = conn.execute("select action, new_values from audit.events where id > %s order by id", [before]).fetchall()
        assert [e[0] for e in ev] == ["GRANT", "REVOKE"] and role in ev[0][1]["command"]
        assert [o["object"] for o in ev[0][1]["objects"]] == ["relation registry.runs"]
        assert f"{role}=r/indb_owner" in ev[0][1]["objects"][0]["acl"]
    finally:
        conn.execute(f"drop role {role}")


def test_role_membership_changes_are_observed_at_the_next_seal(empty_db):
    """GRANT indb_writer TO x changes a shared catalog, which event triggers never see: each seal compares the
    memberships of indb's roles with what it saw last and logs the difference."""
    dsn = fresh(empty_db, "indb_audit_roles")
    role = f"audit_member_{secrets.token_hex(3)}"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("select audit.seal()")  # the first seal logs what it finds (a baseline)
        before = one(c, "select max(id) from audit.events")
        c.execute(f"create role {role} nologin")
        try:
            c.execute(f"grant indb_writer to {role}")
            c.execute("select audit.seal()")
            ev = c.execute(
                "select new_values from audit.events where id > %s and action = 'ROLE_MEMBERSHIP'", [before]
            ).fetchall()
            assert [e[0]["added"] for e in ev] == [[{"role": "indb_writer", "member": role, "admin_option": False}]]
            assert ev[0][0]["removed"] == []
            before = one(c, "select max(id) from audit.events")
            c.execute(f"revoke indb_writer from {role}")
            c.execute("select audit.seal()")
            ev = c.execute(
                "select new_values from audit.events where id > %s and action = 'ROLE_MEMBERSHIP'", [before]
            ).fetchall()
            assert [e[0]["removed"] for e in ev] == [[{"role": "indb_writer", "member": role, "admin_option": False}]]
            assert one(c, "select audit.seal()") == 0  # nothing new: no event
        finally:
            c.execute(f"drop role if exists {role}")
        assert verify(c)[0] is True


def test_an_install_logs_what_it_changed_in_privileges_once(empty_db):
    """An install's GRANTs are not events one by one: the next seal logs their net change as one PRIVILEGES
    event; a reinstall that changes no privilege logs nothing."""
    from indb.install import install

    dsn = fresh(empty_db, "indb_audit_reinstall")
    with psycopg.connect(dsn, autocommit=True) as c:
        assert one(c, "select count(*) from audit.events where object = 'privileges'") == 0
        c.execute("select audit.seal()")
        ev = c.execute("select action, new_values from audit.events where object = 'privileges'").fetchall()
        assert [e[0] for e in ev] == ["PRIVILEGES"]
        objs = {o["object"]: o["acl"] for o in ev[0][1]["objects"]}
        assert "indb_reader=X/indb_owner" in objs["function audit.verify()"]
        assert "indb_admin=r/indb_owner" in objs["relation audit.events"]
    install(dsn, venv=sys.prefix)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("select audit.seal()")
        assert one(c, "select count(*) from audit.events where object = 'privileges'") == 1
        # a change no event saw (ownership moves rewrite ACLs; here: a superuser edits the catalog's view)
        c.execute("grant select on registry.runs to indb_app")  # an event of its own
        assert one(c, "select count(*) from audit.events where action = 'GRANT'") == 1
        c.execute("select audit.seal()")
        assert one(c, "select count(*) from audit.events where object = 'privileges'") == 2
        c.execute("revoke select on registry.runs from indb_app")
        assert verify(c)[0] is True


def test_truncate_of_an_audited_table_is_logged(empty_db):
    dsn = fresh(empty_db, "indb_audit_truncate")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("select registry.start_run('t')")
        c.execute("truncate registry.lineage_edges")
        ev = c.execute("select action, object from audit.events order by id desc limit 1").fetchone()
        assert ev == ("TRUNCATE", "registry.lineage_edges")
        assert verify(c)[0] is True


def test_a_large_model_binary_is_audited_by_hash_not_copied(conn):
    """A 150 MB model must be registrable with audit on: the bytea is left out of the event before
    any JSON conversion (a 300 MB hex string would exceed jsonb's limit), and its sha256 is put in."""
    name = "big_" + secrets.token_hex(4)
    mid = conn.execute("insert into registry.registered_models(name) values (%s) returning id", [name]).fetchone()[0]
    vid, digest = conn.execute(
        "insert into registry.model_versions(model_id, version, artifact, artifact_sha256) "
        "select %s, 1, b, encode(sha256(b), 'hex') from (select decode(repeat('ab', 150000000), 'hex') b) s "
        "returning id, artifact_sha256",
        [mid],
    ).fetchone()
    ev = conn.execute(
        "select new_values from audit.events where object = 'registry.model_versions' "
        "and row_key->>'id' = %s order by id desc limit 1",
        [str(vid)],
    ).fetchone()[0]
    assert ev["artifact"] == "sha256:" + digest
    assert len(ev["artifact_sha256"]) == 64
    assert conn.execute("select ok from audit.verify()").fetchone()[0] is True


def test_create_tenant_is_an_event_and_keeps_working_after_a_reinstall(empty_db):
    """ml.create_tenant (owned by indb_tenant_manager) logs itself; its EXECUTE on audit._append survives
    the grants that the next `indb install` re-applies."""
    from helpers import act_as

    from indb.install import install

    dsn = fresh(empty_db, "indb_audit_tenant")
    install(dsn, venv=sys.prefix)  # again: 999-grants re-applied
    t = f"t{secrets.token_hex(3)}"
    with psycopg.connect(dsn, autocommit=True) as c:
        who = act_as(c, "indb_admin")
        c.execute("select ml.create_tenant(%s)", [t])
        c.execute("select ml.create_tenant(%s)", [t])  # no change: no event
        c.execute("reset role")
        ev = c.execute(
            "select action, current_user_name, tenant, new_values from audit.events where object = 'ml.tenants'"
        ).fetchall()
        assert ev == [
            ("CREATE_TENANT", who, t, {"tenant": t, "role": f"indb_tenant_{t}", "created": True, "member": None})
        ]
        c.execute("select audit.seal()")
        assert verify(c)[0] is True


def test_events_of_0_1_0_stay_verifiable_after_the_upgrade(empty_db):
    """A database of 0.1.0 (revision 0007) with chained events: the upgrade keeps them as the first links of
    the chain, verify() checks them with the 0.1.0 formula, and new events continue the chain. The 0.1.0 audit
    triggers (stand-ins here, which fail once audit.chain exists) are gone before sql/ is re-applied: they would
    append events the old way."""
    from indb.install import install

    dsn = empty_db("indb_audit_upgrade")
    install(dsn, venv=sys.prefix, target="0007", apply_sql=False)
    with psycopg.connect(dsn, autocommit=True) as c:
        old = """begin
                   if to_regclass('audit.chain') is not null then
                     raise exception 'a 0.1.0 audit trigger fired after migration 0012';
                   end if;
                   return null;
                 end"""
        c.execute(f"create function audit._row_trigger() returns trigger language plpgsql as $${old}$$")
        c.execute(
            "create trigger indb_audit after insert on registry.experiments "
            "for each row execute function audit._row_trigger()"
        )
        c.execute(
            f"create function audit._ddl_trigger() returns event_trigger language plpgsql as "
            f"$${old.replace('return null;', '')}$$"
        )
        c.execute(
            "create event trigger indb_audit_grants on ddl_command_end when tag in ('GRANT', 'REVOKE') "
            "execute function audit._ddl_trigger()"
        )
        prev = bytes(32)
        for i in range(1, 4):
            prev = one(
                c,
                """insert into audit.events(id, ts, action, object, row_key, new_values, session_user_name,
                       current_user_name, txid, prev_hash, hash)
                   select %(i)s, t, 'INSERT', 'registry.runs', jsonb_build_object('id', %(i)s),
                          jsonb_build_object('n', %(i)s), 'postgres', 'postgres', 1, %(p)s,
                          sha256(convert_to(jsonb_build_array(encode(%(p)s, 'hex'), %(i)s::bigint,
                            extract(epoch from t)::text, 'INSERT', 'registry.runs', jsonb_build_object('id', %(i)s),
                            null::jsonb, jsonb_build_object('n', %(i)s), 'postgres', 'postgres', null::text,
                            null::text, 1::bigint, null::text)::text, 'UTF8'))
                     from (select now() as t) x returning hash""",
                {"i": i, "p": prev},
            )
        c.execute("update audit.chain_head set last_id = 3, prev_hash = last_hash, last_hash = %s", [prev])
    install(dsn, venv=sys.prefix)
    with psycopg.connect(dsn, autocommit=True) as c:
        assert verify(c) == (True, None, "ok")
        c.execute("select registry.start_run('after the upgrade')")
        c.execute("select audit.seal()")
        assert verify(c) == (True, None, "ok")
        assert one(c, "select event_id from audit.chain where seq = 4") >= 4
        c.execute("alter table audit.events disable trigger indb_append_only")
        c.execute("update audit.events set new_values = '{\"n\": 99}' where id = 2")
        ok, broken, reason = verify(c)
        assert not ok and broken == 2 and "altered" in reason


def test_sealing_is_scheduled_in_the_pg_cron_database(cluster):
    with psycopg.connect(cluster.dsn(), autocommit=True) as c:
        if c.execute(
            "select to_regprocedure('audit.seal()') is null "
            "or not exists (select 1 from pg_extension where extname = 'pg_cron')"
        ).fetchone()[0]:
            pytest.skip("the indb database has no pg_cron or an older indb install (run `indb install`)")
        row = c.execute("select schedule, command from cron.job where jobname = 'indb_audit_seal'").fetchone()
        assert row == ("* * * * *", "select audit.seal()")


def test_indb_worker_seals_the_log(empty_db):
    dsn = fresh(empty_db, "indb_audit_worker")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("select registry.start_run('worker')")
        assert one(c, "select pending from audit.verify()") > 0
    r = subprocess.run(
        [str(Path(sys.executable).parent / "indb"), "worker", "--once", "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, "INDB_DSN": dsn},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    with psycopg.connect(dsn, autocommit=True) as c:
        ok, pending = c.execute("select ok, pending from audit.verify()").fetchone()
        assert ok and pending == 0
