"""The audit log: every registry change is an event with who/what/diff; the hash chain detects a row
altered with superuser rights; UPDATE/DELETE/TRUNCATE are refused for every role, owner included;
retention drops whole partitions, keeps the chain verifiable and logs itself; GRANTs are logged."""

from __future__ import annotations

import secrets

import psycopg
import pytest

ROLES = ["indb_app", "indb_reader", "indb_writer", "indb_admin"]


def one(conn, sql, params=None):
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def verify(conn):
    return conn.execute("select ok, broken_id, reason from audit.verify()").fetchone()


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
    # bytes are not copied into the log (their sha256 is in the row)
    conn.execute(
        "select registry.register_model(%s, artifact => 'secret-bytes'::bytea, flavor => 'sklearn')",
        [f"m_{secrets.token_hex(3)}"],
    )
    new = conn.execute(
        "select new_values from audit.events where object = 'registry.model_versions' order by id desc limit 1"
    ).fetchone()[0]
    assert "artifact" not in new and len(new["artifact_sha256"]) == 64
    assert verify(conn) == (True, None, "ok")


@pytest.mark.parametrize("role", [None] + ROLES)
def test_update_delete_truncate_refused_for_every_role(conn, role):
    conn.execute("select registry.start_run(%s)", [f"exp_{secrets.token_hex(4)}"])
    if role:
        conn.execute(f"set role {role}")
    try:
        stmts = [
            "update audit.events set action = 'X' where id = (select max(id) from audit.events)",
            "delete from audit.events where id = (select max(id) from audit.events)",
            "truncate audit.events",
            "update audit.chain_head set last_id = 0",
            "truncate audit.anchors",
            "truncate audit.chain_head",
        ]
        if role:  # the owner may insert (a superuser can always write); no indb role can
            stmts.append(
                "insert into audit.events(id, ts, action, object, session_user_name, current_user_name,"
                " txid, prev_hash, hash) values (0, now(), 'X', 'x', 'x', 'x', 0, ''::bytea, ''::bytea)"
            )
        for stmt in stmts:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(stmt)
    finally:
        conn.execute("reset role")
    assert verify(conn)[0] is True


def test_chain_detects_a_row_altered_by_a_superuser(db_dsn, empty_db):
    # a database of its own: this test breaks its chain on purpose
    import sys

    from indb.install import install

    dsn = empty_db("indb_audit_tamper")
    install(dsn, venv=sys.prefix)
    with psycopg.connect(dsn, autocommit=True) as c:
        rid = str(one(c, "select registry.start_run('tamper', 'honest')"))
        c.execute("select registry.end_run(%s)", [rid])
        target = one(
            c,
            "select id from audit.events where object = 'registry.runs' and action = 'INSERT' order by id desc limit 1",
        )
        c.execute("select registry.start_run('tamper', 'later')")
        assert verify(c)[0] is True
        # the attacker is a superuser: switch off the append-only trigger and rewrite history
        c.execute("alter table audit.events disable trigger indb_append_only")
        c.execute(
            "update audit.events set new_values = jsonb_set(new_values, '{name}', '\"forged\"') where id = %s", [target]
        )
        ok, broken, reason = verify(c)
        assert not ok and broken == target and "altered" in reason
        # re-hashing the row moves the break to the next link
        c.execute(
            """update audit.events e set hash = audit._hash(e.prev_hash, e.id, e.ts, e.action, e.object,
                       e.row_key, e.old_values, e.new_values, e.session_user_name, e.current_user_name,
                       e.application_name, e.client_addr, e.txid, e.tenant) where id = %s""",
            [target],
        )
        ok, broken, reason = verify(c)
        assert not ok and broken == target + 1 and "does not link" in reason
        # deleting a row from the middle is a gap
        c.execute("delete from audit.events where id = %s", [target + 1])
        ok, broken, reason = verify(c)
        assert not ok and broken == target + 2 and "missing" in reason
        c.execute("alter table audit.events enable trigger indb_append_only")


def test_removed_tail_is_detected(empty_db):
    import sys

    from indb.install import install

    dsn = empty_db("indb_audit_tail")
    install(dsn, venv=sys.prefix)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("select registry.start_run('tail')")
        last = one(c, "select max(id) from audit.events")
        c.execute("alter table audit.events disable trigger indb_append_only")
        c.execute("delete from audit.events where id = %s", [last])
        ok, broken, reason = verify(c)
        assert not ok and "removed from the end" in reason


def test_retention_is_admin_only_and_logs_itself(empty_db):
    import sys

    from indb.install import install

    dsn = empty_db("indb_audit_retention")
    install(dsn, venv=sys.prefix)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(
            "create table audit.events_2023_01 partition of audit.events "
            "for values from ('2023-01-01') to ('2023-02-01')"
        )
        c.execute("alter table audit.events_2023_01 owner to indb_owner")  # as audit.ensure_partitions makes them
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
        ev = c.execute(
            "select action, current_user_name, new_values from audit.events order by id desc limit 1"
        ).fetchone()
        assert ev[0] == "RETENTION" and ev[2]["dropped_partitions"] == ["events_2023_01"]
        assert verify(c) == (True, None, "ok")


def _age_current_month(c) -> int:
    """Set-up (superuser, not an attack): move every event so far into a January-2020 partition and
    re-chain it, so that retention has old events to drop. Returns how many events moved."""
    month = one(c, "select 'events_' || to_char(now(), 'YYYY_MM')")
    c.execute(f"alter table audit.events detach partition audit.{month}")
    c.execute(f"alter table audit.{month} disable trigger all")
    c.execute(f"update audit.{month} set ts = timestamptz '2020-01-15' + id * interval '1 millisecond'")
    prev = one(c, f"select prev_hash from audit.{month} order by id limit 1")
    for (eid,) in c.execute(f"select id from audit.{month} order by id").fetchall():
        prev = one(
            c,
            f"""update audit.{month} e set prev_hash = %s, hash = audit._hash(%s, e.id, e.ts, e.action,
                          e.object, e.row_key, e.old_values, e.new_values, e.session_user_name,
                          e.current_user_name, e.application_name, e.client_addr, e.txid, e.tenant)
                          where id = %s returning hash""",
            [prev, prev, eid],
        )
    c.execute("alter table audit.chain_head disable trigger indb_append_only")
    c.execute("update audit.chain_head set last_hash = %s", [prev])
    c.execute("alter table audit.chain_head enable trigger indb_append_only")
    c.execute(f"alter table audit.{month} rename to events_2020_01")
    c.execute(
        "alter table audit.events attach partition audit.events_2020_01 "
        "for values from ('2020-01-01') to ('2020-02-01')"
    )
    c.execute(
        f"create table audit.{month} partition of audit.events for values from "
        "(date_trunc('month', now())) to (date_trunc('month', now()) + interval '1 month')"
    )
    return one(c, "select count(*) from audit.events_2020_01")


@pytest.mark.parametrize("by_hand", [False, True])
def test_retention_anchor_keeps_the_chain_verifiable(empty_db, by_hand):
    """Old events dropped by apply_retention: the chain resumes at the anchor and verify() says ok.
    The same partition dropped by hand (no anchor) is reported."""
    import sys

    from indb.install import install

    dsn = empty_db("indb_audit_anchor")
    install(dsn, venv=sys.prefix)
    with psycopg.connect(dsn, autocommit=True) as c:
        n_old = _age_current_month(c)
        c.execute("select registry.start_run('after')")
        assert verify(c) == (True, None, "ok")
        if by_hand:
            c.execute("drop table audit.events_2020_01")
            ok, broken, reason = verify(c)
            assert not ok and broken == n_old + 1 and "links to nothing" in reason
        else:
            out = one(c, "select audit.apply_retention('365 days')")
            assert out["dropped"] == ["events_2020_01"] and out["events"] == n_old
            assert one(c, "select min(id) from audit.events") == n_old + 1
            assert verify(c) == (True, None, "ok")


def test_grants_are_logged(conn):
    role = f"indb_t_{secrets.token_hex(3)}"
    conn.execute(f"create role {role} nologin")
    try:
        before = one(conn, "select max(id) from audit.events")
        conn.execute(f"grant select on registry.runs to {role}")
        conn.execute(f"revoke select on registry.runs from {role}")
        ev = conn.execute(
            "select action, new_values->>'command' from audit.events where id > %s order by id", [before]
        ).fetchall()
        assert [e[0] for e in ev] == ["GRANT", "REVOKE"] and role in ev[0][1]
    finally:
        conn.execute(f"drop role {role}")


def test_truncate_of_an_audited_table_is_logged(empty_db):
    import sys

    from indb.install import install

    dsn = empty_db("indb_audit_truncate")
    install(dsn, venv=sys.prefix)
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("select registry.start_run('t')")
        c.execute("truncate registry.lineage_edges")
        ev = c.execute("select action, object from audit.events order by id desc limit 1").fetchone()
        assert ev == ("TRUNCATE", "registry.lineage_edges")
        assert verify(c)[0] is True


def test_a_large_model_binary_is_audited_by_hash_not_copied(conn):
    """A 150 MB model must be registrable with audit on: the bytea is left out of the event before
    any JSON conversion (a 300 MB hex string would exceed jsonb's limit), its sha256 stays in it."""
    name = "big_" + secrets.token_hex(4)
    mid = conn.execute("insert into registry.registered_models(name) values (%s) returning id", [name]).fetchone()[0]
    vid = conn.execute(
        "insert into registry.model_versions(model_id, version, artifact, artifact_sha256) "
        "select %s, 1, b, encode(sha256(b), 'hex') from (select decode(repeat('ab', 150000000), 'hex') b) s returning id",
        [mid],
    ).fetchone()[0]
    ev = conn.execute(
        "select new_values from audit.events where object = 'registry.model_versions' "
        "and row_key->>'id' = %s order by id desc limit 1",
        [str(vid)],
    ).fetchone()[0]
    assert "artifact" not in ev
    assert len(ev["artifact_sha256"]) == 64
    assert conn.execute("select ok from audit.verify()").fetchone()[0] is True
