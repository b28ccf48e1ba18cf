"""The shared runtime when the service is down or dies: auto falls back to the backend (one WARNING per
connection), shared fails whole with 58R01 and the hint `indb runtime status`, SIGKILL during a sync-vectorizer
INSERT rolls it back, and the supervisor brings the service back with no manual step."""

from __future__ import annotations

import os
import signal
import threading
import time

import psycopg
import pytest
from runtime_helpers import MODEL, connect, texts, wait_for_service


@pytest.fixture
def service_down(cluster, db_dsn):
    cluster.runtime_start()
    wait_for_service(cluster)
    cluster.runtime_stop()
    assert cluster.runtime_stats() is None
    yield cluster
    cluster.runtime_start()
    wait_for_service(cluster)


def test_auto_falls_back_to_the_backend_with_one_warning(service_down, db_dsn):
    with connect(db_dsn) as ref:
        ref.execute("set indb.runtime = 'backend'")
        expected = ref.execute("select ml.embed(%s, 'falls back')", [MODEL]).fetchone()[0]
    with connect(db_dsn) as c:  # indb.runtime is auto by default
        notices = []
        c.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.message_primary, d.message_hint)))
        first = c.execute("select ml.embed(%s, 'falls back')", [MODEL]).fetchone()[0]
        second = c.execute("select ml.embed(%s, 'falls back')", [MODEL]).fetchone()[0]
        info = c.execute("select ml.runtime_info()->'runtime'").fetchone()[0]
    warnings = [n for n in notices if n[0] == "WARNING" and "runtime service" in n[1]]
    assert len(warnings) == 1, notices
    assert "indb runtime status" in warnings[0][2]
    assert first.to_list() == expected.to_list() == second.to_list()
    assert info["mode"] == "auto" and info["embeddings_run_in"] == "backend" and info["service"] is None


def test_shared_mode_without_the_service_fails_whole_with_its_own_sqlstate(service_down, db_dsn, scifact_docs):
    with connect(db_dsn, "shared") as c:
        with pytest.raises(psycopg.Error) as e:
            c.execute("select ml.embed(%s, 'no service')", [MODEL])
        assert e.value.sqlstate == "58R01"
        assert "runtime service does not answer" in e.value.diag.message_primary
        assert "indb runtime status" in e.value.diag.message_hint
        assert "Traceback" not in str(e.value) and "plpy" not in str(e.value)
        c.execute("drop table if exists rt_down cascade")
        c.execute("set indb.runtime = 'backend'")
        c.execute("create table rt_down (id int primary key, body text)")
        c.execute("select ml.create_vectorizer('rt_down', array['body'], name => 'rt_down')")
        c.execute("set indb.runtime = 'shared'")
        with pytest.raises(psycopg.Error) as e:
            c.execute(
                "insert into rt_down select i, d from unnest(%s::text[]) with ordinality u(d, i)",
                [texts(scifact_docs, 20)],
            )
        assert e.value.sqlstate == "58R01"
        dest = c.execute("select destination::text from ml.vectorizers where name = 'rt_down'").fetchone()[0]
        assert c.execute("select count(*) from rt_down").fetchone()[0] == 0
        assert c.execute(f"select count(*) from {dest}").fetchone()[0] == 0


def test_sigkill_during_a_sync_insert_rolls_it_back_and_the_service_comes_back(cluster, db_dsn, scifact_docs):
    cluster.runtime_start()
    st = wait_for_service(cluster)
    docs = texts(scifact_docs, 200) * 3
    with connect(db_dsn, "shared") as c:
        c.execute("select ml.embed(%s, 'warm')", [MODEL])
        c.execute("drop table if exists rt_kill cascade")
        c.execute("create table rt_kill (id int primary key, body text)")
        c.execute("select ml.create_vectorizer('rt_kill', array['body'], name => 'rt_kill')")
        dest = c.execute("select destination::text from ml.vectorizers where name = 'rt_kill'").fetchone()[0]
        errors = []

        def insert():
            try:
                c.execute("insert into rt_kill select i, d from unnest(%s::text[]) with ordinality u(d, i)", [docs])
            except psycopg.Error as e:
                errors.append(e)

        th = threading.Thread(target=insert)
        th.start()
        time.sleep(2.0)
        os.kill(int(st["pid"]), signal.SIGKILL)
        th.join(timeout=60)
        assert not th.is_alive()
        assert errors and errors[0].sqlstate == "58R01", errors
        assert c.execute("select count(*) from rt_kill").fetchone()[0] == 0
        assert c.execute(f"select count(*) from {dest}").fetchone()[0] == 0
        # the supervisor restarts the service: the next statement works with no manual step
        back = wait_for_service(cluster)
        assert back["pid"] != st["pid"]
        c.execute("insert into rt_kill values (1, 'after the restart')")
        assert c.execute(f"select count(*) from {dest}").fetchone()[0] == 1
    assert cluster.runtime_stats()["pid"] == back["pid"]


def test_async_items_stay_queued_while_the_service_is_down(service_down, db_dsn, cluster):
    with connect(db_dsn, "backend") as c:
        c.execute("drop table if exists rt_async cascade")
        c.execute("create table rt_async (id int primary key, body text)")
        c.execute("select ml.create_vectorizer('rt_async', array['body'], name => 'rt_async', mode => 'async')")
    with connect(db_dsn, "shared") as c:
        c.execute("insert into rt_async values (1, 'queued while the service is down'), (2, 'and another one')")
        with pytest.raises(psycopg.Error) as e:  # one vectorizer: the call fails whole
            c.execute("select * from ml.process_queue('rt_async')")
        assert e.value.sqlstate == "58R01"
        # every vectorizer (what `indb worker` runs): this one is skipped with the reason, the others go on
        rows = c.execute("select vectorizer, processed, failed, error from ml.process_queue()").fetchall()
        mine = [r for r in rows if r[0] == "rt_async"]
        assert mine and mine[0][1] == 0 and mine[0][2] == 0 and "58R01" in (mine[0][3] or ""), rows
        q = c.execute(
            "select count(*), max(attempts) from ml.vectorizer_queue q join ml.vectorizers v on v.id = q.vectorizer_id "
            "where v.name = 'rt_async'"
        ).fetchone()
        assert q == (2, 0), "a service outage is no row's fault: no attempt is counted"
        assert c.execute("select count(*) from ml.vectorizer_failed").fetchone()[0] == 0
        cluster.runtime_start()
        wait_for_service(cluster)
        r = c.execute("select processed, failed, pending from ml.process_queue('rt_async')").fetchone()
        assert r == (2, 0, 0)


def test_a_bad_runtime_setting_fails_the_start_at_once_and_names_the_problem(service_down, monkeypatch):
    """INDB_RUNTIME_ENGINE=bogus: `indb db start` / runtime_start says what is wrong within seconds (it waited 60 s
    and pointed at a log that did not hold the reason), and nothing is left running."""
    from indb.localdb import ClusterError

    monkeypatch.setenv("INDB_RUNTIME_ENGINE", "bogus")
    t0 = time.time()
    with pytest.raises(ClusterError) as e:
        service_down.runtime_start()
    assert time.time() - t0 < 30
    assert "--engine 'bogus': give auto or torch" in str(e.value)
    assert "runtime.log" in str(e.value)
    assert service_down.runtime_stats() is None
