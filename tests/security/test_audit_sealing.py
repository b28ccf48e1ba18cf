"""Attacks on the audit log's append and seal paths (0.3.0: lanes claimed with an advisory try-lock, one sealer
by the chain head's row lock), as the attacker logins of conftest.py. What must hold: no indb role (nor a role
without rights) can write the log's tables or run the sealer's internals; advisory locks, which any role may take,
can neither stall an audited write, nor suppress its event, nor stop sealing; a writer cannot switch its own
events off."""

from __future__ import annotations

import secrets
import time

import psycopg
import pytest

LANE_LOCK = 182285636  # audit._lane_lock(): hashtext('indb audit lane')
OLD_SEAL_KEY = 7497920481490968101  # the advisory key 0.2.0's sealers tried (now the chain head's row lock)


def one(conn, sql, params=None):
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def run_events(sconn, run_uuid: str) -> list[str]:
    return [
        r[0]
        for r in sconn.execute(
            "select e.action from audit.events e join registry.runs r on e.object = 'registry.runs' "
            "and e.row_key = jsonb_build_object('id', r.id) where r.run_uuid = %s order by e.id",
            [run_uuid],
        ).fetchall()
    ]


def test_lane_locks_held_by_an_outsider_neither_stall_nor_suppress_events(connect_as, logins, sconn):
    """A role without rights takes the advisory lock of every lane and of the next 50 (any role may call
    pg_advisory_lock): audited writes do not wait, every event is appended, and the lanes stay consistent."""
    top = one(sconn, "select coalesce(max(lane), 0) from audit.lanes") + 50
    with psycopg.connect(logins["norights"], autocommit=True) as nr:
        nr.execute("select count(pg_advisory_lock(%s, k)) from generate_series(1, %s) k", [LANE_LOCK, top])
        w = connect_as("acme_writer")
        w.execute("set lock_timeout = '3s'")
        w.execute("set indb.audit_lane_pref = '1'")  # and points this session at a lane the outsider holds
        for _ in range(3):
            t0 = time.monotonic()
            rid = str(one(w, "select registry.start_run(%s)", [f"exp_{secrets.token_hex(4)}"]))
            w.execute("select registry.set_tag(%s, 'k', 'v')", [rid])
            w.execute("select registry.end_run(%s)", [rid])
            assert time.monotonic() - t0 < 2.5
            assert run_events(sconn, rid) == ["INSERT", "UPDATE", "UPDATE"]
        nr.execute("select pg_advisory_unlock_all()")
    sconn.execute("select audit.seal()")
    ok, reason, pending = sconn.execute("select ok, reason, pending from audit.verify()").fetchone()
    assert ok, reason
    assert pending == 0


def test_an_outsider_holding_the_old_seal_key_does_not_stop_sealing(connect_as, logins, sconn):
    with psycopg.connect(logins["norights"], autocommit=True) as nr:
        nr.execute("select pg_advisory_lock(%s)", [OLD_SEAL_KEY])
        w = connect_as("writer")
        w.execute("select registry.start_run(%s)", [f"exp_{secrets.token_hex(4)}"])
        assert one(w, "select audit.seal()") >= 1
        assert one(w, "select pending from audit.verify()") == 0
        nr.execute("select pg_advisory_unlock_all()")


def test_a_sealer_left_open_holds_up_no_writer_and_no_later_seal_corrupts(connect_as, logins, sconn):
    """A writer may seal (indb_writer may call audit.seal()): one that seals and keeps its transaction open makes
    other sealers skip (0), never wait, and audited writes go on; its rollback takes its seal back whole."""
    with psycopg.connect(logins["writer"]) as sealer:  # not autocommit: the seal stays open
        sealer.execute("select audit.seal()")
        w = connect_as("acme_writer")
        w.execute("set lock_timeout = '3s'")
        t0 = time.monotonic()
        w.execute("select registry.start_run(%s)", [f"exp_{secrets.token_hex(4)}"])
        assert one(w, "select audit.seal()") == 0
        assert time.monotonic() - t0 < 2.5
        sealer.rollback()
    sconn.execute("select audit.seal()")
    ok, reason, pending = sconn.execute("select ok, reason, pending from audit.verify()").fetchone()
    assert ok, reason
    assert pending == 0


WRITES = [
    "insert into audit.events(id, ts, action, object, session_user_name, current_user_name, txid, hash) "
    "values (-1, now(), 'X', 'x', 'x', 'x', 1, '\\x00')",
    "update audit.lanes set pos = 0",
    "insert into audit.lanes default values",
    "insert into audit.chain(seq, event_id, event_ts, prev_hash, hash) values (-1, -1, now(), '\\x00', '\\x00')",
    "update audit.chain_head set last_id = 0",
    "select 1 from audit.chain_head for update",  # the sealers' lock: holding it would stop sealing
    "delete from audit.anchors",
    "select audit._seal()",
    "select audit._append('X', 'x', null, null, null, null)",
    "select audit._observe_roles()",
    "select audit._acl_changes(null)",
]


@pytest.mark.parametrize("key", ["app", "reader", "writer", "admin", "norights", "acme_writer"])
def test_no_role_can_write_the_log_or_run_the_sealers_internals(connect_as, key):
    c = connect_as(key)
    for sql in WRITES:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(sql)


def test_a_writer_cannot_switch_its_own_events_off(connect_as, sconn):
    w = connect_as("writer")
    for sql in (
        "set session_replication_role = replica",  # would skip every trigger
        "alter table registry.runs disable trigger indb_audit",
        "alter table registry.runs disable trigger all",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            w.execute(sql)
    # settings the audit code reads: forged, they change nothing about what is logged
    for name, value in (
        ("indb.audit_lane", "1/(0,1)"),
        ("indb.audit_lane", "garbage"),
        ("indb.audit_lane_pref", "2147483647"),
        ("indb.audit_lane_pref", "-1"),
        ("indb.audit_installing", "on"),
    ):
        w.execute("select set_config(%s, %s, false)", [name, value])
        rid = str(one(w, "select registry.start_run(%s)", [f"exp_{secrets.token_hex(4)}"]))
        w.execute("select registry.end_run(%s)", [rid])
        assert run_events(sconn, rid) == ["INSERT", "UPDATE"], (name, value)
        w.execute(f"reset {name}")
    sconn.execute("select audit.seal()")
    ok, reason = sconn.execute("select ok, reason from audit.verify()").fetchone()
    assert ok, reason
