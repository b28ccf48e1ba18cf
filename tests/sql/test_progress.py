"""ml.progress: another session sees how far a long call is, and nothing once it has ended."""

from __future__ import annotations

import threading
import time

import psycopg

LONG = """
create or replace function pg_temp.long_call(n int) returns int language plpython3u as $$
import sys, time
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime.progress import Progress
with Progress(plpy, 'test.long_call', target='demo', total=n, notice_every_s=0) as p:
    for i in range(n):
        time.sleep(0.2)
        p.update(i + 1, phase='working')
return n
$$
"""


def test_another_session_sees_the_progress_of_a_long_call(db_dsn, conn):
    worker = psycopg.connect(db_dsn, autocommit=True)
    try:
        worker.execute(LONG)
        t = threading.Thread(target=lambda: worker.execute("select pg_temp.long_call(15)"))
        t.start()
        seen = []
        deadline = time.time() + 10
        while t.is_alive() and time.time() < deadline:
            seen += conn.execute(
                "select command, target, phase, done, total, percent from ml.progress where command = 'test.long_call'"
            ).fetchall()
            time.sleep(0.3)
        t.join()
        assert seen, "the long call never showed up in ml.progress"
        assert all(r[:3] == ("test.long_call", "demo", "working") and r[4] == 15 for r in seen if r[2] != "starting")
        done = [r[3] for r in seen]
        assert done == sorted(done) and 0 < max(done) <= 15  # it moved forward
        assert conn.execute("select count(*) from ml.progress where command = 'test.long_call'").fetchone()[0] == 0
    finally:
        worker.close()


def test_a_stale_progress_file_of_a_dead_backend_is_not_shown(tmp_path, monkeypatch):
    import json
    import os

    from indb_runtime import progress

    monkeypatch.chdir(tmp_path)
    os.makedirs(progress.folder())
    for pid, start in ((111, 1.0), (222, 2.0), (333, 3.0)):
        with open(os.path.join(progress.folder(), f"{pid}.json"), "w") as f:
            json.dump({"pid": pid, "backend_start": start, "command": "x"}, f)
    # 111 is alive, 222 is gone, 333's pid now belongs to a newer backend
    live = progress.read_all({111: 1.0, 333: 9.0})
    assert [s["pid"] for s in live] == [111]
    assert sorted(os.listdir(progress.folder())) == ["111.json"]
