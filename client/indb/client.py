"""The thin client: a psycopg connection with pgvector types, errors mapped from SQLSTATE.

Every method calls one SQL function of the public API; the client owns no DDL.
"""

from __future__ import annotations

import psycopg

from .base import Base, default_dsn
from .collections import CollectionsAPI
from .embeddings import EmbeddingsAPI
from .errors import translate
from .features import FeaturesMixin
from .tracking import TrackingAPI
from .training import TrainingAPI


class RuntimeAPI(Base):
    def version(self) -> str:
        return self.scalar("select ml.version()")

    def runtime_info(self) -> dict:
        return self.scalar("select ml.runtime_info()")

    def warmup(self, model: str = "all-MiniLM-L6-v2") -> dict:
        """ml.warmup's row: model and the seconds of each step (import_torch_s, ..., load_model_s, total_s)."""
        return self.call("select * from ml.warmup(%s)", [model])[0]


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
