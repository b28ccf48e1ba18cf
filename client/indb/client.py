"""The thin client: a psycopg connection with pgvector types, errors mapped from SQLSTATE.

Every method calls one SQL function of the public API; the client owns no DDL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RuntimeAPI(Base):
    def version(self) -> str:
        return self.scalar("select ml.version()")

    def runtime_info(self) -> dict:
        return self.scalar("select ml.runtime_info()")

    def warmup(self, model: str = "all-MiniLM-L6-v2") -> dict:
        return self.scalar("select ml.warmup(%s)", [model])


from .collections import CollectionsAPI  # noqa: E402
from .embeddings import EmbeddingsAPI  # noqa: E402
from .features import FeaturesMixin  # noqa: E402
from .tracking import TrackingAPI  # noqa: E402
from .training import TrainingAPI  # noqa: E402


class Client(RuntimeAPI, EmbeddingsAPI, CollectionsAPI, TrainingAPI, TrackingAPI, FeaturesMixin):
    """``indb.connect()`` returns one. Each feature area is a mixin in its own module; every method
    calls one SQL function of the public API."""


def connect(dsn: str | None = None, autocommit: bool = True, **kwargs) -> Client:
    """Connect to indb (default: this checkout's local cluster, or $INDB_DSN) with pgvector types registered."""
    try:
        conn = psycopg.connect(dsn or default_dsn(), autocommit=autocommit, **kwargs)
    except psycopg.Error as e:
        raise translate(e) from None
    register_types(conn)
    return Client(conn)


def register_types(conn: psycopg.Connection) -> None:
    """pgvector's vector/halfvec/sparsevec <-> numpy, and jsonb -> Python (psycopg does jsonb already)."""
    from pgvector.psycopg import register_vector

    try:
        register_vector(conn)
    except psycopg.ProgrammingError:
        # the vector extension is not installed in this database yet (e.g. before `indb install`)
        pass


def _json(v: Any) -> str:
    return json.dumps(v)
