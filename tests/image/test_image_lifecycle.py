"""The image's life: stop with SIGTERM, start again, data and deployments kept, installs that change nothing.

The tests run in file order on one container (the module's `server`) and build on each other: the first
writes data and deploys a model, the next ones stop and start the container and check what is left.
"""

from __future__ import annotations

import time

import pytest
from indb_image import DATA_DIR, NETWORK, run_once, starts_since

import indb

STATE: dict = {}

# PostgreSQL's words for a start after an unclean stop
RECOVERY = ("was interrupted", "not properly shut down", "automatic recovery in progress", "redo starts at")


def schema(server) -> str:
    """The schema of the indb database as pg_dump writes it (data left out), from inside the container."""
    port = server.env.get("INDB_PORT", "5432")
    code, out = server.exec(["pg_dump", "-h", "/var/run/postgresql", "-p", port, "-d", "indb", "--schema-only"])
    assert code == 0, out
    # \restrict lines carry a random key, new in every dump
    return "\n".join(line for line in out.splitlines() if not line.startswith(("\\restrict", "\\unrestrict")))


def cluster_state(server) -> str:
    """`Database cluster state` of pg_controldata, read from the volume by a one-off container."""
    out = run_once(
        server.wrapped.image.id,
        ["pg_controldata", f"{DATA_DIR}/pgdata"],
        volumes={server.volume: {"bind": DATA_DIR, "mode": "ro"}},
        user="postgres",
        network_mode="host" if NETWORK == "host" else "none",
    )
    return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Database cluster state"))


def test_write_data_and_deploy_a_model(server):
    with indb.connect(server.dsn()) as c:
        c.call("create table kept (id int primary key, note text)")
        c.call("insert into kept select i, 'row ' || i from generate_series(1, 1000) i")
        c.call("create table lines as select x::float8 as x, (2 * x + 1)::float8 as y from generate_series(1, 200) x")
        first = c.train("lines", task="regression", relation="lines", target="y", algorithm="linear")
        second = c.train("lines", algorithm="ridge", automatic_deploy=False)
        c.deploy("lines", "specific", model_id=first["model_id"])
        STATE.update(
            model_id=first["model_id"],
            other=second["model_id"],
            prediction=c.predict("lines", {"x": 10.0}),
            schema=schema(server),
            installs=c.scalar("select count(*) from ml.installs"),
        )
    assert STATE["prediction"] == pytest.approx(21.0, abs=1e-3)


def test_sigterm_stops_cleanly(server):
    assert STATE, "runs after test_write_data_and_deploy_a_model"
    # an idle client stays connected: a smart shutdown would wait for it, the entrypoint asks for a fast one
    idle = server.connect()
    t0 = time.time()
    code = server.stop("SIGTERM")
    took = time.time() - t0
    idle.close()
    assert code == 0, server.logs()[-3000:]
    assert took < 60, f"SIGTERM took {took:.1f} s"
    last = starts_since(server.logs())[-1]
    assert "SIGTERM: stopping the server" in last and "database system is shut down" in last
    assert cluster_state(server) == "shut down"


def test_restart_keeps_data_and_deployments_without_crash_recovery(server):
    server.start_again()
    last = starts_since(server.logs())[-1]
    assert "database system was shut down at" in last
    assert not [w for w in RECOVERY if w in last], last
    with indb.connect(server.dsn()) as c:
        assert c.scalar("select count(*) from kept") == 1000
        assert c.scalar("select note from kept where id = 777") == "row 777"
        deployed = [m["model_id"] for m in c.models("lines") if m["deployed"]]
        assert deployed == [STATE["model_id"]], "the deployment chosen before the restart is still the one"
        assert c.predict("lines", {"x": 10.0}) == pytest.approx(STATE["prediction"], abs=1e-9)
        # the start ran `indb install` once more, on an up-to-date schema
        assert c.scalar("select count(*) from ml.installs") == STATE["installs"] + 1
    assert "indb install: schema at revision" in last
    revision = last.split("indb install: schema at revision ", 1)[1].split()[0]
    assert f"(was {revision})" in last, "the restart found the schema at head already"
    assert schema(server) == STATE["schema"]


def test_running_indb_install_again_changes_nothing(server):
    port = server.env.get("INDB_PORT", "5432")
    code, out = server.exec(
        [
            "/opt/indb/.venv/bin/indb",
            "install",
            "--dsn",
            f"host=/var/run/postgresql port={port} dbname=indb user=postgres",
            "--venv",
            "/opt/indb/.venv",
        ]
    )
    assert code == 0, out
    revision = out.split("schema at revision ", 1)[1].split()[0]
    assert f"(was {revision})" in out, out
    assert schema(server) == STATE["schema"]
    with indb.connect(server.dsn()) as c:
        assert [m["model_id"] for m in c.models("lines") if m["deployed"]] == [STATE["model_id"]]


def test_a_killed_server_recovers_on_the_next_start(server):
    """The other side of the clean stop: after SIGKILL the next start does replay the WAL, and says so."""
    with indb.connect(server.dsn()) as c:
        c.call("insert into kept values (1001, 'written just before the kill')")
    assert server.stop("SIGKILL") != 0
    assert cluster_state(server) == "in production"
    server.start_again()
    last = starts_since(server.logs())[-1]
    assert [w for w in RECOVERY if w in last], last
    with indb.connect(server.dsn()) as c:
        assert c.scalar("select note from kept where id = 1001") == "written just before the kill"
