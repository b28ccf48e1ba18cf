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
    r = subprocess.run(
        [str(BIN / "indb"), "vectorizer", "status", t], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 0 and f"{t}: async" in r.stdout and "pending 0" in r.stdout
