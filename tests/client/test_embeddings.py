"""Vectorizers through the client and the CLI (`indb worker`, `indb vectorizer`) on the real database."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

import indb

BIN = Path(sys.prefix) / "bin"


def test_vectorizer_backfill_with_progress_and_search(client, scifact_docs):
    t = f"cl_docs_{secrets.token_hex(3)}"
    client.conn.execute(f"create table {t} (id text primary key, title text, abstract text)")
    with client.conn.cursor() as cur:
        cur.executemany(f"insert into {t} values (%s, %s, %s)", scifact_docs[:30])
    lines: list[str] = []
    out = client.create_vectorizer(t, ["title", "abstract"], chunk_size=128, chunk_overlap=16, progress=lines.append)
    assert out["backfill"]["rows"] == 30 and out["backfill"]["remaining"] == 0
    assert lines and lines[-1].endswith("done") and "30/30 rows" in lines[-1] and "rows/s" in lines[-1]
    st = client.vectorizer_status(t)[0]
    assert st["source_rows"] == 30 and st["embedded_rows"] == 30 and st["chunks"] > 30 and st["pending"] == 0
    assert "chunked: 128 tokens" in st["long_text"]
    title = scifact_docs[5][1]
    hits = client.vectorizer_search(t, title, k=3)
    assert hits[0]["id"] == scifact_docs[5][0]  # a document's own title finds it first
    assert hits[0]["score"] >= hits[-1]["score"]  # the shape of ml.search: id, score (higher is better)
    assert set(hits[0]) == {"id", "score", "chunk", "seq"}


def test_errors_are_mapped(client):
    with pytest.raises(indb.NotFound):
        client.process_queue("no_such_vectorizer")
    t = f"cl_bad_{secrets.token_hex(3)}"
    client.conn.execute(f"create table {t} (id int primary key, body text)")
    with pytest.raises(indb.InvalidInput) as e:
        client.create_vectorizer(t, ["body"], mode="whenever")
    assert "mode must be" in str(e.value)


def test_worker_cli_drains_the_queue_with_progress(client, db_dsn):
    t = f"cl_async_{secrets.token_hex(3)}"
    client.conn.execute(f"create table {t} (id int primary key, body text)")
    client.conn.execute(f"insert into {t} select g, 'queued sentence number ' || g from generate_series(1, 50) g")
    lines: list[str] = []
    out = client.create_vectorizer(t, ["body"], mode="async", progress=lines.append)
    assert out["backfill"]["queued"] == 50 and "50 rows queued" in lines[-1]
    env = {**os.environ, "INDB_DSN": db_dsn}
    r = subprocess.run(
        [str(BIN / "indb"), "worker", "--once", "--batch", "16", "--vectorizer", t],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "50/50" in r.stderr and "rows/s" in r.stderr  # the bar reached the total, with its rate
    st = client.vectorizer_status(t)[0]
    assert st["pending"] == 0 and st["embedded_rows"] == 50
    env["COLUMNS"] = "250"  # rich draws the table to this width
    r = subprocess.run(
        [str(BIN / "indb"), "vectorizer", "status", t], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 0, r.stderr
    header, row = [ln for ln in r.stdout.splitlines() if "pending" in ln or t in ln][:2]
    cells = dict(zip([c.strip() for c in header.split("┃")], [c.strip() for c in row.split("│")]))
    assert cells["name"] == t and cells["mode"] == "async" and cells["pending"] == "0" and cells["embedded"] == "50"


def test_cli_errors_exit_non_zero_and_every_option_has_help(db_dsn):
    env = {**os.environ, "INDB_DSN": db_dsn}
    for argv in (
        ["vectorizer", "status", "nosuch"],
        ["vectorizer", "backfill", "nosuch"],
        ["worker", "--once", "--vectorizer", "nosuch"],
    ):
        r = subprocess.run([str(BIN / "indb"), *argv], capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 1, (argv, r.stdout, r.stderr)
        assert 'vectorizer "nosuch" does not exist' in r.stderr and "HINT" in r.stderr, r.stderr
    r = subprocess.run([str(BIN / "indb"), "vectorizer", "retry"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "a vectorizer name is required" in r.stderr
    r = subprocess.run(
        [str(BIN / "indb"), "worker", "--batch", "0"], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 2 and "--batch must be at least 1" in r.stderr
    from indb.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for cmd in ("worker", "vectorizer"):
        for action in subs.choices[cmd]._actions:
            assert action.help, f"indb {cmd} {action.option_strings or action.dest} has no help text"


def test_vectorizer_backfill_cli_shows_a_bar(client, db_dsn):
    t = f"cl_bf_{secrets.token_hex(3)}"
    client.conn.execute(f"create table {t} (id int primary key, body text)")
    client.conn.execute(f"insert into {t} select g, 'backfilled sentence ' || g from generate_series(1, 30) g")
    client.create_vectorizer(t, ["body"], backfill=False)
    env = {**os.environ, "INDB_DSN": db_dsn, "COLUMNS": "200"}
    r = subprocess.run(
        [str(BIN / "indb"), "vectorizer", "backfill", t, "--batch", "10"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert f"backfill {t}" in r.stderr and "30/30" in r.stderr and "rows/s" in r.stderr  # tqdm: done, rate
    assert "remaining" in r.stdout  # the summary as a table
    assert client.vectorizer_status(t)[0]["embedded_rows"] == 30
