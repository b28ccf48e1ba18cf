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


def connect(
    dsn: str | None = None,
    autocommit: bool = True,
    *,
    read_dsn: str | None = None,
    read_your_writes: bool = False,
    read_your_writes_timeout: float = 5.0,
    **kwargs,
) -> Client:
    """Connect to indb (default: this checkout's local cluster, or $INDB_DSN) with pgvector types registered.

    ``read_dsn``: a hot standby (``indb dsn --replica``). Calls of the read paths (search, embed, predict,
    explain, get_online, get_historical, search_runs, lineage, get_run, audit.verify) go there, everything else
    to ``dsn``. A prediction the replica refuses because its project logs predictions is served by the primary.
    ``read_your_writes``: before a read on the replica, wait until it has replayed this session's last write
    (autocommit writes), at most ``read_your_writes_timeout`` seconds, else ReplicaLagError.
    """
    try:
        conn = psycopg.connect(dsn or default_dsn(), autocommit=autocommit, **kwargs)
        read_conn = psycopg.connect(read_dsn, autocommit=True, **kwargs) if read_dsn else None
    except psycopg.Error as e:
        raise translate(e) from None
    register_types(conn)
    if read_conn is not None:
        register_types(read_conn)
    return Client(conn, read_conn, read_your_writes, read_your_writes_timeout)


def register_types(conn: psycopg.Connection) -> None:
    """pgvector's vector/halfvec/sparsevec <-> numpy, and jsonb -> Python (psycopg does jsonb already)."""
    from pgvector.psycopg import register_vector

    try:
        register_vector(conn)
    except psycopg.ProgrammingError:
        # the vector extension is not installed in this database yet (e.g. before `indb install`)
        pass
