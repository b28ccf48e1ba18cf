"""The thin client and the CLI against the real database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import indb

BIN = Path(sys.prefix) / "bin"


def test_connect_registers_vector_types_and_embeds(client):
    v = client.embed("PostgreSQL keeps the embeddings next to the rows")
    assert isinstance(v, np.ndarray) and v.shape == (384,)
    assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-3, "MiniLM vectors are normalized"
    many = client.embed(["first", "second", "third"])
    assert len(many) == 3 and all(m.shape == (384,) for m in many)
    assert client.version() == indb.__version__


def test_json_and_jsonb_values_come_back_as_json_loads_reads_them(client):
    """The client parses json with orjson (fast), except where orjson would change a value: integers beyond 64
    bits (orjson makes them floats) and numbers beyond a double's range; those read as json.loads reads them."""
    import json

    doc = (
        '{"id": 123456789012345678901234567890, "neg": -9223372036854775809, "u64": 18446744073709551615, '
        '"i64": 9223372036854775807, "big": 1e400, "f": 0.30000000000000004, "s": "é\\u00e9", '
        '"n": null, "a": [1, 2.5, true, {"x": "1234567890123456789012"}]}'
    )
    for typ in ("jsonb", "json"):
        got = client.scalar(f"select %s::{typ}", [doc])
        text = client.scalar(f"select %s::{typ}::text", [doc])
        assert got == json.loads(text) and repr(got) == repr(json.loads(text)), typ
        assert got["id"] == 123456789012345678901234567890 and isinstance(got["id"], int)
        assert got["f"] == 0.30000000000000004


def test_unknown_model_raises_not_found_with_the_registered_names(client):
    with pytest.raises(indb.NotFound) as ei:
        client.embed("hello", model="no-such-model")
    assert ei.value.sqlstate == "42704"
    assert "no-such-model" in str(ei.value) and "all-MiniLM-L6-v2" in str(ei.value)


def test_sql_errors_keep_their_sqlstate_class(client):
    with pytest.raises(indb.InvalidInput) as ei:
        client.call("select 1/0")
    assert ei.value.sqlstate == "22012"
    assert client.scalar("select 1") == 1, "the connection stays usable after an error"


def test_cli_dsn_works_with_psql_and_psycopg(cluster):
    dsn = subprocess.run([str(BIN / "indb"), "dsn"], capture_output=True, text=True, check=True).stdout.strip()
    assert dsn == cluster.dsn()
    out = subprocess.run(["psql", dsn, "-Atc", "select ml.runtime_info()->>'python'"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("3.11")
    tcp = subprocess.run([str(BIN / "indb"), "dsn", "--tcp"], capture_output=True, text=True, check=True).stdout.strip()
    assert "host=127.0.0.1" in tcp
    with indb.connect(tcp) as c:
        assert c.scalar("select inet_client_addr()::text") == "127.0.0.1/32"


def test_cli_psql_passes_its_arguments_after_the_double_dash_to_psql():
    out = subprocess.run([str(BIN / "indb"), "psql", "--", "-Atc", "select 6 * 7"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "42", out
    bad = subprocess.run([str(BIN / "indb"), "psql", "--", "-c", "select nosuchcolumn"], capture_output=True, text=True)
    assert bad.returncode != 0 and "nosuchcolumn" in bad.stderr


def test_cli_db_status_reports_the_running_cluster():
    out = subprocess.run([str(BIN / "indb"), "db", "status"], capture_output=True, text=True)
    assert out.returncode == 0 and '"running": true' in out.stdout


def test_cli_install_error_is_one_clear_line_and_exit_1(empty_db):
    dsn = empty_db("indb_cli")
    out = subprocess.run(
        [str(BIN / "indb"), "install", "--dsn", dsn, "--venv", "/nonexistent"], capture_output=True, text=True
    )
    assert out.returncode == 1
    assert "indb install: error:" in out.stderr and "/nonexistent" in out.stderr
    assert "Traceback" not in out.stderr


def test_errors_raised_in_plpython_read_cleanly_in_the_client(client):
    with pytest.raises(indb.NotFound) as ei:
        client.embed("x", model="missing-model")
    assert str(ei.value).startswith('embedding model "missing-model"'), str(ei.value)
