"""Feature store helpers run by PL/Python: describe a query's result columns without running it, and the
progress of long calls.

The point-in-time join, online serving and materialization are plain SQL/plpgsql (sql/5*-features-*.sql);
Python is used only where Postgres has no SQL-level answer: the column names and types of an arbitrary
SELECT (planned with LIMIT 0, which reads no rows), and progress that other sessions see while a call runs
(``indb_runtime.progress``, shown by ``ml.progress``). Entity-key kinds live in SQL only (features._key_kind).
"""

from __future__ import annotations

from typing import Any

from . import spi
from .errors import IndbRuntimeError


def describe(plpy: spi.Plpy, query: str, what: str = "query") -> list[dict[str, Any]]:
    """[{'name', 'type'}] for the columns of ``query`` (a SELECT), in order, with LIMIT 0 (planned, no rows read).

    ``query`` is the caller's own SQL (this runs in a SECURITY INVOKER function, with the caller's rights). It
    must be one read-only query: ml._relation_sql refuses several statements and writes before anything runs."""
    if query is None or not str(query).strip():
        raise IndbRuntimeError("22023", f"{what} is empty", hint="pass a table or view name or a SELECT statement")
    try:
        one = spi.one(plpy, "select ml._relation_sql($1, $2) as q", ["text", "text"], [query, what])
        q = one["q"] if one else query
        res = plpy.execute("select * from (" + q + "\n) as _indb_q limit 0")
    except Exception as e:  # plpy.SPIError: keep its SQLSTATE, say which argument was wrong
        state = getattr(e, "sqlstate", None) or "42601"
        msg = str(e)
        raise IndbRuntimeError(
            state,
            msg if msg.startswith(what) else f"{what}: {msg}",
            hint="check the SQL: a source or entity query is a table, view or SELECT that runs on "
            "its own; feature expressions are SQL over the source's columns",
        ) from None
    names = list(res.colnames())
    rows = spi.run(
        plpy,
        "select format_type(t, m) as f from unnest($1::oid[], $2::int[]) with ordinality u(t, m, o) order by o",
        ["oid[]", "int[]"],
        [list(res.coltypes()), list(res.coltypmods())],
    )
    return [{"name": n, "type": r["f"]} for n, r in zip(names, rows)]
