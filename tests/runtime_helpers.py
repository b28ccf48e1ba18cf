"""Helpers of tests/runtime (importable as `runtime_helpers`: tests/ is on sys.path)."""

from __future__ import annotations

import time

import psycopg

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


def texts(scifact_docs, n: int, start: int = 0) -> list[str]:
    return [f"{t}. {b}" for _, t, b in scifact_docs[start : start + n]]
