"""The thin client: a psycopg connection with pgvector types, errors mapped from SQLSTATE.

Every method calls one SQL function of the public API; the client owns no DDL.
"""

from __future__ import annotations

import json

import orjson
import psycopg
from psycopg.types.json import set_json_loads

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
    """pgvector's vector/halfvec/sparsevec <-> numpy, and json/jsonb -> Python with orjson (json_loads)."""
    from pgvector.psycopg import register_vector

    set_json_loads(json_loads, conn)

    try:
        register_vector(conn)
    except psycopg.ProgrammingError:
        # the vector extension is not installed in this database yet (e.g. before `indb install`)
        pass


def json_loads(data: str | bytes) -> object:
    """A json or jsonb value as Python objects, exactly what json.loads gives, parsed by orjson where that is the
    same: 100 answers of features.get_online_batch (20 values and 20 statuses each) in ~0.35 ms instead of ~1.2.
    orjson turns an integer beyond 64 bits into a float and refuses a number beyond a double's range; a text with a
    run of 19 or more digits (found by a translate and a substring search, ~0.5 us a document) and one orjson
    refuses go to json.loads (exact integers, inf)."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if _NINETEEN_DIGITS not in raw.translate(_DIGITS_TO_ZERO):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)


# every digit to "0", every other byte to " ": a run of 19 digits becomes _NINETEEN_DIGITS
_DIGITS_TO_ZERO = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_NINETEEN_DIGITS = b"0" * 19
