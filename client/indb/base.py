"""What every feature-area mixin of the client builds on: one psycopg connection and errors mapped from
SQLSTATE. The mixins (collections.py, embeddings.py, features.py, tracking.py, training.py) import this
module, and client.py puts them together, so nothing imports client.py from below (no import circle)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Self

import psycopg
from psycopg.rows import dict_row

from .errors import translate
from .localdb import Cluster


def default_dsn() -> str:
    import os

    return os.environ.get("INDB_DSN") or Cluster.local().dsn()


class Base:
    """Plumbing shared by the feature-area mixins: one connection, SQLSTATE-mapped errors."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn

    # -- plumbing ----------------------------------------------------------------------------
    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as e:
            if not self.conn.autocommit and self.conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                self.conn.rollback()
            raise translate(e) from None

    def call(self, sql: str, params: Any = None) -> list[dict]:
        """Run one statement of the SQL API and return its rows as dicts."""
        with self._errors(), self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def scalar(self, sql: str, params: Any = None) -> Any:
        with self._errors(), self.conn.cursor() as cur:
            cur.execute(sql, params)
            row = cur.fetchone()
            return row[0] if row else None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
