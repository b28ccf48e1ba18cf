"""What every feature-area mixin of the client builds on: one psycopg connection and errors mapped from
SQLSTATE. The mixins (collections.py, embeddings.py, features.py, tracking.py, training.py) import this
module, and client.py puts them together, so nothing imports client.py from below (no import circle)."""

from __future__ import annotations

import datetime as _dt
import decimal
import json
import math
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Self

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from .errors import InvalidInput, ReplicaLagError, translate
from .localdb import Cluster

# The read paths that a hot standby serves: a statement that calls only these functions goes to the
# connection's replica (read_dsn); everything else goes to the primary.
READ_FUNCTIONS = frozenset(
    {
        "ml.search",
        "ml.keyword_search",
        "ml.hybrid_search",
        "ml.vectorizer_search",
        "ml.embed",
        "ml.embed_batch",
        "ml.predict",
        "ml.predict_proba",
        "ml.predict_batch",
        "ml.explain",
        "ml.version",
        "features.get_online",
        "features.get_online_batch",
        "features.get_historical",
        "registry.search_runs",
        "registry.lineage",
        "registry.get_run",
        "audit.verify",
    }
)
_CALLED = re.compile(r"\b([a-z_]+)\s*\.\s*([a-z_][a-z0-9_]*)\s*\(", re.IGNORECASE)


def is_read(sql: str) -> bool:
    """True when ``sql`` is one SELECT whose schema-qualified calls are all read paths."""
    text = sql.strip().lower()
    if not text.startswith("select") or ";" in text.rstrip(";"):
        return False
    called = {f"{a}.{b}" for a, b in _CALLED.findall(text)}
    return bool(called) and called <= READ_FUNCTIONS


def jsonable(value: Any, what: str) -> Any:
    """``value`` made ready for a jsonb parameter: numpy numbers and arrays become Python numbers and lists, dates
    and times ISO 8601 texts, a Decimal a number, a UUID its text; and a float JSON cannot hold (NaN, +-Infinity)
    is refused with InvalidInput (22023) naming where it is (``what``, then the keys and indexes down to it).
    json.dumps would write a bare NaN token, which PostgreSQL refuses as invalid JSON without naming the value,
    and only when that part of a batched call is sent."""
    if isinstance(value, float):  # numpy's float64 too
        if not math.isfinite(value):
            raise InvalidInput(
                f"{what} is {value!r}: JSON has no NaN or Infinity",
                hint="pass None for a missing value (or the string 'NaN' where a float column is to hold one)",
            )
        return value
    if isinstance(value, dict):
        return {k: jsonable(v, f"{what}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, f"{what}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (_dt.date, _dt.time)):  # datetimes too: ISO 8601, which the server reads
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return jsonable(float(value), what)  # Decimal('NaN') refused by name as the float is
    if isinstance(value, uuid.UUID):
        return str(value)
    if type(value).__module__ == "numpy" and getattr(getattr(value, "dtype", None), "kind", "") in ("b", "i", "u", "f"):
        return jsonable(value.tolist(), what)  # numbers and booleans (numpy's datetimes stay: str() below)
    return value


def a_list(value: Any, what: str, hint: str) -> list:
    """A list argument (texts to embed, documents) as a list; a text, bytes, a dict or a non-iterable is
    InvalidInput, ``what`` (the argument and what it takes) followed by the type given: list() would split a text
    into characters and a dict into its keys."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise InvalidInput(f"{what}, got {type(value).__name__}", hint=hint)
    return list(value)


def as_texts(value: Any) -> list:
    """A list argument of texts (columns, feature references, queries); one text given alone is a list of one:
    list() would split it into characters, each an unknown name (or, for search queries, a wrong answer)."""
    return [value] if isinstance(value, str) else list(value)


def mapping(value: Any, what: str) -> dict:
    """An optional dict argument as a dict (None: empty); anything else is InvalidInput naming the argument."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{what} must be a dict, got {type(value).__name__}", hint=f"{what}={{'name': value, ...}}")
    return dict(value)


def json_text(value: Any, what: str) -> str:
    """``value`` as JSON text for a jsonb parameter (see jsonable); any other object JSON has no type for (a
    pandas Timestamp is a datetime; numpy's datetime64, for one) is written as its str(), which the server casts
    to the column's type."""
    try:  # the usual case, in C: ~7x faster than the walk (100 entity keys: ~50 us against ~340)
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):  # a NaN, or a value json has no type for: walk it to name or convert it
        return json.dumps(jsonable(value, what), default=str)


def jsonb(value: Any, what: str) -> Jsonb:
    """``value`` as a jsonb parameter, written by json_text (NaN refused by name, numpy and dates converted)."""
    text = json_text(value, what)
    return Jsonb(value, dumps=lambda _value: text)


def default_dsn() -> str:
    import os

    return os.environ.get("INDB_DSN") or Cluster.local().dsn()


class Base:
    """Plumbing shared by the feature-area mixins: one connection, SQLSTATE-mapped errors."""

    def __init__(
        self,
        conn: psycopg.Connection,
        read_conn: psycopg.Connection | None = None,
        read_your_writes: bool = False,
        read_your_writes_timeout: float = 5.0,
    ):
        self.conn = conn
        self.read_conn = read_conn
        self.read_your_writes = read_your_writes
        self.read_your_writes_timeout = read_your_writes_timeout
        self._last_write_lsn: str | None = None

    # -- routing: reads to the replica, writes to the primary ----------------------------------
    def _route(self, sql: str) -> psycopg.Connection:
        if self.read_conn is None or not is_read(sql):
            return self.conn
        if self.read_your_writes and self._last_write_lsn is not None:
            self._wait_replayed(self._last_write_lsn)
        return self.read_conn

    def _wait_replayed(self, lsn: str) -> None:
        assert self.read_conn is not None
        deadline = time.monotonic() + self.read_your_writes_timeout
        replayed = None
        while True:
            with self.read_conn.cursor() as cur:
                cur.execute("select pg_last_wal_replay_lsn()::text, pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn])
                replayed, ok = cur.fetchone() or (None, False)
            if ok:
                return
            if time.monotonic() >= deadline:
                raise ReplicaLagError(
                    f"read-your-writes: the replica had replayed WAL up to {replayed} but the last write is at "
                    f"{lsn}, after waiting {self.read_your_writes_timeout} s",
                    hint="raise read_your_writes_timeout, check the replica (indb db replica list), or read "
                    "from the primary (connect without read_dsn)",
                )
            time.sleep(0.005)

    def _after(self, conn: psycopg.Connection) -> None:
        if conn is self.conn and self.read_conn is not None and self.read_your_writes and self.conn.autocommit:
            with self.conn.cursor() as cur:
                cur.execute("select pg_current_wal_insert_lsn()::text")
                row = cur.fetchone()
                self._last_write_lsn = row[0] if row else None

    def _execute(self, sql: str, params: Any, rows: bool) -> Any:
        conn = self._route(sql)
        try:
            return self._run(conn, sql, params, rows)
        except psycopg.errors.ReadOnlySqlTransaction:
            if conn is self.conn:
                raise
            # the replica refused (e.g. a prediction of a project that logs its predictions):
            # serve it on the primary, which logs it
            return self._run(self.conn, sql, params, rows)

    def _run(self, conn: psycopg.Connection, sql: str, params: Any, rows: bool) -> Any:
        out: Any
        if rows:
            with conn.cursor(row_factory=dict_row) as dcur:
                dcur.execute(sql, params)
                out = dcur.fetchall() if dcur.description else []
        else:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                row = cur.fetchone()
                out = row[0] if row else None
        self._after(conn)
        return out

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
        with self._errors():
            return self._execute(sql, params, rows=True)

    def scalar(self, sql: str, params: Any = None) -> Any:
        with self._errors():
            return self._execute(sql, params, rows=False)

    def close(self) -> None:
        self.conn.close()
        if self.read_conn is not None:
            self.read_conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
