"""Fixtures of the shared runtime tests: the real service of the project's cluster, the real model."""

from __future__ import annotations

import time

import psycopg
import pytest

MODEL = "all-MiniLM-L6-v2"


def wait_for_service(cluster, timeout: float = 180.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = cluster.runtime_stats()
        if st is not None:
            return st
        time.sleep(0.2)
    raise AssertionError(f"the runtime service did not answer within {timeout} s")


def connect(dsn: str, mode: str | None = None) -> psycopg.Connection:
    from indb.client import register_types

    c = psycopg.connect(dsn, autocommit=True)
    register_types(c)
    if mode is not None:
        c.execute(f"set indb.runtime = '{mode}'")
    return c


@pytest.fixture(scope="module")
def service(cluster, db_dsn):
    """The service answers and has the model loaded (warm)."""
    cluster.runtime_start()
    wait_for_service(cluster)
    with connect(db_dsn, "shared") as c:
        c.execute("select ml.embed(%s, 'warm-up')", [MODEL])
    return cluster


def texts(scifact_docs, n: int, start: int = 0) -> list[str]:
    return [f"{t}. {b}" for _, t, b in scifact_docs[start : start + n]]
