"""Feature store helpers run by PL/Python: describe a query's result columns without running it.

The point-in-time join, online serving and materialization are plain SQL/plpgsql (sql/5*-features-*.sql);
Python is used only where Postgres has no SQL-level answer: the column names and types of an arbitrary
SELECT (run with LIMIT 0, which reads no rows).
"""

from __future__ import annotations

from .errors import IndbRuntimeError

INT_TYPES = {"smallint", "integer", "bigint"}
TEXT_TYPES = {"text", "uuid", "name"}
TS_TYPES = {"timestamp with time zone", "timestamp without time zone", "date"}


def key_kind(type_name: str) -> str | None:
    """'int' or 'text' for a column type usable as an entity key, None otherwise."""
    t = type_name.lower()
    if t in INT_TYPES:
        return "int"
    if t in TEXT_TYPES or t.startswith("character varying") or t.startswith("character("):
        return "text"
    return None


def describe(plpy, query: str, what: str = "query") -> list[dict]:
    """[{'name', 'type'}] for the columns of ``query`` (a SELECT), in order, with LIMIT 0 (planned, no rows read)."""
    if query is None or not str(query).strip():
        raise IndbRuntimeError("22023", f"{what} is empty", hint="pass a table or view name or a SELECT statement")
    try:
        res = plpy.execute("select * from (" + query + "\n) as _indb_q limit 0")
    except Exception as e:  # plpy.SPIError: keep its SQLSTATE, say which argument was wrong
        state = getattr(e, "sqlstate", None) or "42601"
        raise IndbRuntimeError(
            state,
            f"{what}: {e}",
            hint="check the SQL: a source or entity query is a table, view or SELECT that runs on "
            "its own; feature expressions are SQL over the source's columns",
        ) from None
    names = list(res.colnames())
    oids = list(res.coltypes())
    mods = list(res.coltypmods())
    rows = plpy.execute(
        plpy.prepare(
            "select format_type(t, m) as f from unnest($1::oid[], $2::int[]) with ordinality u(t, m, o) order by o",
            ["oid[]", "int[]"],
        ),
        [oids, mods],
    )
    return [{"name": n, "type": r["f"]} for n, r in zip(names, rows)]
