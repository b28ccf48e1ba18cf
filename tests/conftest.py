"""Shared fixtures: a real throwaway database in the project's cluster, with indb installed.

`db_dsn` creates `indb_test_<random>` once per test session, installs indb into it (alembic + sql/),
and drops it at the end. No mocks of Postgres anywhere.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("INDB_DATA", REPO.parent / "shared" / "data"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "docs"))


@pytest.fixture(scope="session")
def cluster():
    from indb.localdb import Cluster

    c = Cluster.local()
    if not c.running():
        c.start()
    c.runtime_start()  # the shared runtime service is up by default, as after `indb db start`
    return c


def _admin_dsn(cluster) -> str:
    return os.environ.get("INDB_TEST_ADMIN_DSN") or cluster.dsn("postgres")


def create_database(cluster, prefix: str = "indb_test") -> str:
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(_admin_dsn(cluster), autocommit=True) as c:
        c.execute(f'create database "{name}"')
    return name


def drop_database(cluster, name: str) -> None:
    with psycopg.connect(_admin_dsn(cluster), autocommit=True) as c:
        c.execute(f'drop database if exists "{name}" with (force)')


def dsn_for(cluster, name: str) -> str:
    base = psycopg.conninfo.conninfo_to_dict(_admin_dsn(cluster))
    base["dbname"] = name
    return psycopg.conninfo.make_conninfo(**base)


@pytest.fixture(scope="session")
def db_dsn(cluster):
    """A fresh database with indb installed at head, for the whole test session."""
    from indb.install import install

    name = create_database(cluster)
    dsn = dsn_for(cluster, name)
    install(dsn, venv=sys.prefix)
    yield dsn
    if not os.environ.get("INDB_KEEP_TEST_DB"):
        drop_database(cluster, name)


@pytest.fixture(scope="session")
def empty_db(cluster):
    """Factory: a new empty database (nothing installed); dropped at the end of the session."""
    made = []

    def make(prefix: str = "indb_empty") -> str:
        name = create_database(cluster, prefix)
        made.append(name)
        return dsn_for(cluster, name)

    yield make
    for name in made:
        drop_database(cluster, name)


@pytest.fixture(scope="session")
def sconn(db_dsn):
    """One session-wide connection (its backend keeps the model warm across tests)."""
    from indb.client import register_types

    conn = psycopg.connect(db_dsn, autocommit=True)
    register_types(conn)
    yield conn
    conn.close()


@pytest.fixture
def conn(db_dsn):
    """A fresh connection per test (autocommit)."""
    from indb.client import register_types

    c = psycopg.connect(db_dsn, autocommit=True)
    register_types(c)
    yield c
    c.close()


@pytest.fixture(scope="session")
def client(db_dsn):
    import indb

    c = indb.connect(db_dsn)
    yield c
    c.close()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.exists():
        pytest.fail(f"data folder {DATA} not found (set INDB_DATA)")
    return DATA


@pytest.fixture(scope="session")
def scifact_docs(data_dir):
    """The first 200 SciFact documents as (id, title, text)."""
    import json

    out = []
    with open(data_dir / "scifact" / "corpus.jsonl") as f:
        for line in f:
            d = json.loads(line)
            out.append((d["_id"], d["title"], d["text"]))
            if len(out) == 200:
                break
    return out
