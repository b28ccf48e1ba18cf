"""The one way indb's Python talks to the database it runs in: typed ``plpy``, cached plans, cancel points,
identifier quoting.

Every module of indb_runtime goes through here instead of keeping its own plan cache:

    from .spi import Plpy, run, plan, tick, ident, qualified

    rows = run(plpy, "select dimensions from ml.embedding_models where name = $1", ["text"], [name])

* ``run`` / ``plan`` prepare a statement once per backend (keyed by its text and argument types; at most
  ``MAX_PLANS`` are kept, least recently used first out). Values always travel as parameters.
* ``tick`` is a cheap statement to call between chunks of long work, so statement_timeout and cancel act.
* ``ident`` / ``qualified`` quote identifiers exactly as PostgreSQL's quote_ident does, for names that come
  from the catalogs. A catalog value is user input at the moment it is used: quote it (or cast it with
  ``::regclass`` / ``::regtype``) right where it reaches SQL.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

MAX_PLANS = 512


class PlanLike(Protocol):
    pass


class Result(Protocol):
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Any: ...

    def colnames(self) -> list[str]: ...

    def coltypes(self) -> list[int]: ...


class Cursor(Protocol):
    def fetch(self, n: int) -> Any: ...


class Plpy(Protocol):
    """The parts of PL/Python's ``plpy`` module indb uses (tests/unit/fakeplpy.py implements the same)."""

    def execute(self, query: Any, args: Sequence[Any] | None = ..., /) -> Any: ...

    def prepare(self, query: str, types: Sequence[str] | None = ..., /) -> Any: ...

    def cursor(self, query: Any, args: Sequence[Any] | None = ..., /) -> Any: ...

    def quote_ident(self, name: str, /) -> str: ...

    def quote_literal(self, value: str, /) -> str: ...

    def notice(self, message: str, **kw: Any) -> None: ...

    def warning(self, message: str, **kw: Any) -> None: ...

    def error(self, message: str, **kw: Any) -> None: ...


_PLANS: OrderedDict[tuple[str, tuple[str, ...]], Any] = OrderedDict()


def plan(plpy: Plpy, sql: str, types: Sequence[str] = ()) -> Any:
    """A prepared statement for ``sql`` with argument ``types``, made once per backend."""
    key = (sql, tuple(types))
    p = _PLANS.get(key)
    if p is None:
        p = _PLANS[key] = plpy.prepare(sql, list(types))
        if len(_PLANS) > MAX_PLANS:
            _PLANS.popitem(last=False)
    else:
        _PLANS.move_to_end(key)
    return p


def run(plpy: Plpy, sql: str, types: Sequence[str] = (), args: Sequence[Any] = ()) -> Any:
    """Execute ``sql`` with parameters ``args`` ($1, $2, ... of ``types``) through a cached plan."""
    if not types:
        return plpy.execute(plan(plpy, sql))
    return plpy.execute(plan(plpy, sql, types), list(args))


def one(plpy: Plpy, sql: str, types: Sequence[str] = (), args: Sequence[Any] = ()) -> dict[str, Any] | None:
    """The first row of ``run(...)``, or None."""
    rows = run(plpy, sql, types, args)
    return rows[0] if len(rows) else None


def tick(plpy: Plpy | None) -> None:
    """A cancel point: statement_timeout and pg_cancel_backend act here (call it between chunks of work)."""
    if plpy is not None:
        plpy.execute(plan(plpy, "select 1"))


def ident(name: str) -> str:
    """A quoted identifier (same result as PostgreSQL's quote_ident for the names indb makes)."""
    if name is None:
        raise ValueError("identifier is None")
    return '"' + str(name).replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    return f"{ident(schema)}.{ident(name)}"


def clear_plans() -> None:
    """Forget every cached plan (tests; a backend never needs to)."""
    _PLANS.clear()
