"""The audit log on a hot standby: audit.verify() checks the replayed log (sealed and pending events), and
audit.seal() refuses cleanly (SQLSTATE 25006, a message that says to seal on the primary), never a half-done
seal or a Python traceback."""

from __future__ import annotations

import secrets
import time

import psycopg
import pytest


@pytest.fixture(scope="module")
def replica(cluster):
    from indb.localdb import Replica

    rep = Replica.of(cluster, f"pytest_audit_{secrets.token_hex(3)}")
    rep.create()
    yield rep
    rep.remove()


def test_seal_refuses_on_a_standby_and_verify_checks_the_replayed_log(replica, db_dsn, sconn):
    sconn.execute("select audit.seal()")
    sconn.execute("select registry.start_run(%s)", [f"exp_{secrets.token_hex(4)}"])  # one pending event at least
    base = psycopg.conninfo.conninfo_to_dict(db_dsn)
    base.update(host=str(replica.run), port=str(replica.port))
    with psycopg.connect(psycopg.conninfo.make_conninfo(**base), autocommit=True) as r:
        assert r.execute("select pg_is_in_recovery()").fetchone()[0] is True
        lsn = sconn.execute("select pg_current_wal_insert_lsn()::text").fetchone()[0]
        deadline = time.time() + 60
        while not r.execute("select pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn]).fetchone()[0]:
            assert time.time() < deadline, "the replica did not catch up"
            time.sleep(0.05)
        with pytest.raises(psycopg.Error) as ei:
            r.execute("select audit.seal()")
        assert ei.value.sqlstate == "25006", (ei.value.sqlstate, str(ei.value))
        assert "standby" in ei.value.diag.message_primary and "primary" in (ei.value.diag.message_hint or "")
        ok, reason, pending = r.execute("select ok, reason, pending from audit.verify()").fetchone()
        assert ok, reason
        assert pending >= 1
