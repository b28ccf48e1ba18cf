"""Reproductions 5 and 6 of the trust issue, as the attacker logins of conftest.py.

5. The audit log missed changes: an artifact-only UPDATE of a model version, `UPDATE registry.latest_metrics SET
   value = 0.0001` (search_runs then returns the falsified metric), `DELETE FROM registry.prediction_log`.
   Closed by: bytea columns recorded as their sha256 (a change of the bytes alone is an event); history tables
   (metrics, params, trials, the prediction log) refuse UPDATE/DELETE/TRUNCATE for everyone, and latest_metrics
   accepts only logged points (sql/800-audit-int.sql); catalog DML is revoked from indb roles anyway.
6. Anyone could write into the audit chain and stall it: the GRANT/REVOKE event trigger appended any GRANT (with the
   text of the query) under the chain head's row lock, held to commit. Closed by: events are appended without a
   lock (a lane taken with SKIP LOCKED, sealed later), and a GRANT is an event only when the ACL of one of indb's
   objects changed.
"""

from __future__ import annotations

import hashlib
import secrets
import time

import psycopg
import pytest
from helpers import login_name

LANE_LOCK = 182285636  # audit._lane_lock(): hashtext('indb audit lane')


def one(conn, sql, params=None):
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def newest_event(sconn) -> int:
    return one(sconn, "select coalesce(max(id), 0) from audit.events")


def test_a_role_without_rights_cannot_append_to_the_audit_log(connect_as, sconn):
    nr = connect_as("norights")
    nr.execute("create temp table t(x int)")
    before = newest_event(sconn)
    nr.execute("grant select on pg_temp.t to public /* indb: forged event, would land in the chain */")
    nr.execute("revoke select on pg_temp.t from public")
    assert one(sconn, "select count(*) from audit.events where id > %s and object = 'privileges'", [before]) == 0
    # nor call the append function, nor seal, nor read the log
    for sql in (
        "select audit._append('X', 'x', null, null, null, null)",
        "select audit.seal()",
        "select count(*) from audit.events",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            nr.execute(sql)


@pytest.mark.parametrize("role", ["norights", "writer", "acme_writer", "admin"])
def test_no_role_can_put_the_audit_triggers_on_its_own_table_to_forge_events(connect_as, sconn, role):
    """The audit triggers (C, SECURITY DEFINER as the log's owner) would write whatever row a table gives them,
    tenant column included: on a table of the attacker's own they would forge events. Attaching them needs
    EXECUTE, which no role has."""
    c = connect_as(role)
    c.execute("create temp table forged(id int primary key, tenant text, note text)")
    before = newest_event(sconn)
    for trg in (
        "create trigger f after insert on pg_temp.forged for each row execute function audit._row_trigger('id')",
        "create trigger f after insert on pg_temp.forged referencing new table as new_rows "
        "for each statement execute function audit._batch_trigger('note')",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(trg)
    c.execute("insert into pg_temp.forged values (1, 'globex', 'x')")
    assert newest_event(sconn) == before


def test_a_role_without_rights_cannot_stall_audited_writes(connect_as, logins):
    with psycopg.connect(logins["norights"]) as nr:  # a transaction left open after its GRANT
        nr.execute("create temp table t(x int)")
        nr.execute("grant select on pg_temp.t to public")
        w = connect_as("acme_writer")
        w.execute("set lock_timeout = '3s'")
        t0 = time.monotonic()
        w.execute("select registry.start_run(%s)", [f"exp_{secrets.token_hex(4)}"])
        assert time.monotonic() - t0 < 2.5
        nr.rollback()


def test_an_open_audited_transaction_does_not_stall_another_tenant(connect_as, logins):
    with psycopg.connect(logins["globex_writer"]) as slow:
        slow.execute("select registry.start_run(%s)", [f"exp_{secrets.token_hex(4)}"])  # open
        w = connect_as("acme_writer")
        w.execute("set lock_timeout = '3s'")
        t0 = time.monotonic()
        w.execute("select registry.start_run(%s)", [f"exp_{secrets.token_hex(4)}"])
        assert time.monotonic() - t0 < 2.5
        slow.commit()


def test_a_forged_lane_setting_neither_waits_nor_breaks_a_lane(connect_as, logins, sconn):
    """A session may SET any custom setting, the indb.audit_lane* ones older versions kept the held lane in
    included: naming the lane another open transaction holds, or a made-up place, neither waits for it nor
    writes into it; the writer takes a free lane and every lane stays consistent."""
    with psycopg.connect(logins["globex_writer"]) as holder:
        holder.execute("select registry.start_run(%s)", [f"exp_{secrets.token_hex(4)}"])
        # the lane the open transaction holds: its advisory lock (class audit._lane_lock(), key the lane)
        lane_held = one(
            sconn,
            "select objid from pg_locks where locktype = 'advisory' and classid = %s and objsubid = 2 and pid = %s",
            [LANE_LOCK, holder.info.backend_pid],
        )
        held = f"{lane_held}/(0,1)"  # "<lane>/<ctid of its row>"
        forger = connect_as("acme_writer")
        forger.execute("set lock_timeout = '3s'")
        for forged in (held, held.split("/")[0] + "/(0,1)", "1/(4294967295,1)", "garbage"):
            forger.execute("select set_config('indb.audit_lane', %s, false)", [forged])
            t0 = time.monotonic()
            forger.execute("select registry.start_run(%s)", [f"exp_{secrets.token_hex(4)}"])
            assert time.monotonic() - t0 < 2.5
            lane = one(
                sconn,
                "select lane from audit.events where session_user_name = %s order by id desc limit 1",
                [login_name("acme_writer")],
            )
            assert str(lane) != held.split("/")[0]
        forger.execute("reset indb.audit_lane")
        other = connect_as("writer")
        other.execute("set lock_timeout = '3s'")
        other.execute("select registry.start_run(%s)", [f"exp_{secrets.token_hex(4)}"])
        holder.commit()
    sconn.execute("select audit.seal()")
    assert one(sconn, "select ok from audit.verify()") is True


def test_an_artifact_only_update_is_refused_or_an_event(connect_as, sconn):
    """Refused where catalog DML is revoked from indb roles; while a transition grant allows it, it is an event
    that records the old and new sha256 of the bytes. A superuser's change is an event either way."""
    w = connect_as("writer")
    name = f"m_{secrets.token_hex(3)}"
    w.execute("select registry.register_model(%s, artifact => 'honest'::bytea, flavor => 'sklearn')", [name])
    vid = one(
        sconn,
        "select v.id from registry.model_versions v join registry.registered_models m on m.id = v.model_id "
        "where m.name = %s",
        [name],
    )
    honest = "sha256:" + hashlib.sha256(b"honest").hexdigest()
    evil = "sha256:" + hashlib.sha256(b"evil").hexdigest()
    before = newest_event(sconn)
    try:
        w.execute("update registry.model_versions set artifact = 'evil'::bytea where id = %s", [vid])
    except psycopg.errors.InsufficientPrivilege:
        assert one(sconn, "select artifact from registry.model_versions where id = %s", [vid]) == b"honest"
        sconn.execute("update registry.model_versions set artifact = 'evil'::bytea where id = %s", [vid])
    ev = sconn.execute(
        "select action, old_values, new_values from audit.events where id > %s and object = 'registry.model_versions'",
        [before],
    ).fetchall()
    assert ev == [("UPDATE", {"artifact": honest}, {"artifact": evil})]


def test_a_writer_cannot_falsify_a_metric(connect_as, sconn):
    w = connect_as("writer")
    rid = str(one(w, "select registry.start_run(%s)", [f"exp_{secrets.token_hex(4)}"]))
    w.execute("select registry.log_batch(%s, array['rmse'], array[0.9])", [rid])
    for sql in (
        "update registry.latest_metrics set value = 0.0001 where key = 'rmse'",
        "delete from registry.latest_metrics where key = 'rmse'",
        "update registry.metrics set value = 0.0001 where key = 'rmse'",
        "delete from registry.metrics where key = 'rmse'",
        "insert into registry.latest_metrics(run_id, key, value, step, ts) "
        f"select id, 'rmse2', 0.0001, 0, now() from registry.runs where run_uuid = '{rid}'",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            w.execute(sql)
    got = one(
        sconn,
        "select value from registry.latest_metrics l join registry.runs r on r.id = l.run_id "
        "where r.run_uuid = %s and l.key = 'rmse'",
        [rid],
    )
    assert got == 0.9
    # the superuser is refused too (the trigger is for everyone)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        sconn.execute(
            "update registry.latest_metrics l set value = 0.0001 from registry.runs r "
            "where r.id = l.run_id and r.run_uuid = %s",
            [rid],
        )


def test_a_writer_cannot_delete_the_prediction_log(connect_as, sconn):
    sconn.execute(
        "insert into registry.prediction_log(project_id, model_id, inputs_hash, prediction) values (1, 1, %s, 1.0)",
        [secrets.token_hex(4)],
    )
    n = one(sconn, "select count(*) from registry.prediction_log")
    w = connect_as("writer")
    for sql in ("delete from registry.prediction_log", "update registry.prediction_log set prediction = 0"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            w.execute(sql)
    assert one(sconn, "select count(*) from registry.prediction_log") == n


@pytest.mark.parametrize("key, may", [("app", False), ("reader", True), ("writer", True), ("admin", True)])
def test_who_may_seal_and_verify(connect_as, key, may):
    c = connect_as(key)
    if may:
        assert one(c, "select audit.seal()") >= 0
        assert one(c, "select ok from audit.verify()") is True
        assert len(one(c, "select last_hash from audit.head()")) == 64  # the head to publish elsewhere
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("select audit._append('X', 'x', null, null, null, null)")
    else:
        for sql in ("select audit.seal()", "select ok from audit.verify()", "select last_hash from audit.head()"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(sql)
