"""The jsonb filter language of ml.search / ml.keyword_search / ml.hybrid_search, translated to SQL.

The SQL text produced holds only fixed templates and integer indexes into ONE jsonb parameter
(``$N``); every key and every value lives in that parameter, so nothing a user writes ever becomes
SQL text. Example: ``{"year": {"$gte": 2020}, "lang": "en"}`` becomes
``((case when jsonb_typeof(metadata -> ($3->>0)) = 'number' then (metadata -> ($3->>0))::numeric end)
>= ($3->>1)::numeric and metadata operator(ml.@>) ($3->2))`` with params ``["year", 2020, {"lang": "en"}]``.

Equality and $in on metadata use ml.@>, $exists ml.? (migration 0024): PostgreSQL's own containment and key
test declared LEAKPROOF, so that under row security (every role but a superuser) they may be evaluated ahead of
the tenant policy; ml.@> has a GIN operator class of its own (jsonb_path_ops' keys), so containment still reaches
the collection's metadata index. A value compared by containment is at most MAX_VALUE_DEPTH levels deep.

Language (Mongo-like):
  {"key": value}                        equality (metadata containment, uses the GIN index)
  {"key": {"$eq"|"$ne": value}}
  {"key": {"$in"|"$nin": [v, ...]}}
  {"key": {"$gt"|"$gte"|"$lt"|"$lte": number | "ISO-8601 timestamp"}}
  {"key": {"$exists": true|false}}
  {"$and": [f, ...]}, {"$or": [f, ...]}, {"$not": f}
  several keys in one object are ANDed.
Keys: ``tenant``, ``created_at`` and ``id`` are the table's columns; anything else (or ``metadata.<key>``)
is a top-level metadata key.
"""

from __future__ import annotations

import datetime as _dt
import json

from .errors import invalid

COLUMNS = {"tenant": "text", "created_at": "timestamptz", "id": "text"}
COMPARE = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
OPERATORS = ("$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$exists")
LOGICAL = ("$and", "$or", "$not")
MAX_DEPTH = 16
MAX_NODES = 1000
MAX_IN = 1000
MAX_VALUE_DEPTH = 16
CONTAINS = "operator(ml.@>)"
EXISTS = "operator(ml.?)"
HINT = (
    'filters look like {"key": value}, {"key": {"$in": [..]}}, {"key": {"$gte": 3}}, '
    '{"$or": [{...}, {...}]}; operators: ' + ", ".join(OPERATORS + LOGICAL)
)


class _Builder:
    def __init__(self, param: int):
        self.param = param
        self.params: list = []
        self.nodes = 0

    def p(self, value) -> int:
        self.params.append(value)
        return len(self.params) - 1

    def text(self, value) -> str:
        return f"(${self.param}->>{self.p(value)})"

    def json(self, value) -> str:
        return f"(${self.param}->{self.p(value)})"


def _err(path: str, problem: str):
    return invalid(f"invalid filter at {path}: {problem}", hint=HINT)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _timestamp(path: str, v) -> str:
    if isinstance(v, str):
        try:
            _dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
            return v
        except ValueError:
            pass
    raise _err(path, f'{json.dumps(v)} is not an ISO-8601 timestamp (e.g. "2024-05-01" or "2024-05-01T12:00:00Z")')


def translate(flt, param: int = 2) -> tuple[str, list]:
    """Filter (parsed JSON, or None) -> (SQL boolean expression, params list for ``$param``)."""
    if flt is None:
        return "true", []
    if isinstance(flt, str):
        try:
            flt = json.loads(flt)
        except ValueError as e:
            raise invalid(f"invalid filter: not JSON ({e})", hint=HINT) from None
    if not isinstance(flt, dict):
        raise _err("$", f"a filter is a JSON object, got {type(flt).__name__}")
    b = _Builder(param)
    sql = _node(b, flt, "$", 0)
    return sql, b.params


def _node(b: _Builder, flt, path: str, depth: int) -> str:
    b.nodes += 1
    if depth > MAX_DEPTH or b.nodes > MAX_NODES:
        raise _err(path, f"filter too deep or too large (at most {MAX_DEPTH} levels and {MAX_NODES} conditions)")
    if not isinstance(flt, dict):
        raise _err(path, f"expected an object, got {json.dumps(flt)[:60]}")
    if not flt:
        return "true"
    parts = []
    for key, value in flt.items():
        kpath = f"{path}.{key}"
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise _err(kpath, f"{key} takes a non-empty array of filters")
            subs = [_node(b, v, f"{kpath}[{i}]", depth + 1) for i, v in enumerate(value)]
            parts.append("(" + (" and " if key == "$and" else " or ").join(subs) + ")")
        elif key == "$not":
            parts.append("(not coalesce(" + _node(b, value, kpath, depth + 1) + ", false))")
        elif key.startswith("$"):
            raise _err(kpath, f'unknown logical operator "{key}" (use $and, $or, $not, or a key name)')
        else:
            parts.append(_field(b, key, value, kpath))
    return parts[0] if len(parts) == 1 else "(" + " and ".join(parts) + ")"


def _field(b: _Builder, key: str, cond, path: str) -> str:
    if not key:
        raise _err(path, "empty key")
    column = None
    if key.startswith("metadata."):
        key = key[len("metadata.") :]
        if not key:
            raise _err(path, "empty metadata key")
    elif key in COLUMNS:
        column = key
    if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond):
        ops = cond
    elif isinstance(cond, dict) and any(k.startswith("$") for k in cond):
        raise _err(path, "do not mix operators ($...) and plain keys in one condition")
    else:
        ops = {"$eq": cond}
    parts = []
    for op, value in ops.items():
        opath = f"{path}.{op}"
        if op not in OPERATORS:
            raise _err(opath, f'unknown operator "{op}" (use one of {", ".join(OPERATORS)})')
        if column:
            parts.append(_column_op(b, column, op, value, opath))
        else:
            parts.append(_metadata_op(b, key, op, value, opath))
    return parts[0] if len(parts) == 1 else "(" + " and ".join(parts) + ")"


def _list(path: str, op: str, value) -> list:
    if not isinstance(value, list) or not value:
        raise _err(path, f"{op} takes a non-empty array")
    if len(value) > MAX_IN:
        raise _err(path, f"{op} takes at most {MAX_IN} values, got {len(value)}")
    return value


def _column_value(b: _Builder, column: str, value, path: str) -> str:
    if value is None:
        raise _err(path, f"{column} cannot be compared with null (use $exists on metadata keys)")
    if COLUMNS[column] == "timestamptz":
        return f"{b.text(_timestamp(path, value))}::timestamptz"
    if not isinstance(value, str):
        raise _err(path, f"{column} is text; got {json.dumps(value)}")
    return b.text(value)


def _column_op(b: _Builder, column: str, op: str, value, path: str) -> str:
    if op in ("$eq", "$ne"):
        v = _column_value(b, column, value, path)
        return f"{column} = {v}" if op == "$eq" else f"({column} is distinct from {v})"
    if op in ("$in", "$nin"):
        vals = [_column_value(b, column, v, f"{path}[{i}]") for i, v in enumerate(_list(path, op, value))]
        sql = f"{column} in ({', '.join(vals)})"
        return sql if op == "$in" else f"(not coalesce({sql}, false))"
    if op in COMPARE:
        if COLUMNS[column] != "timestamptz":
            raise _err(path, f"{op} works on numbers and timestamps; {column} is text")
        return f"{column} {COMPARE[op]} {_column_value(b, column, value, path)}"
    raise _err(path, f"{op} does not apply to the column {column}")


def _depth(v) -> int:
    """How many levels of objects and arrays a JSON value nests (a scalar: 0), level by level, no recursion."""
    depth, level = 0, [v]
    while any(isinstance(x, (dict, list)) for x in level):
        depth += 1
        level = [y for x in level if isinstance(x, (dict, list)) for y in (x.values() if isinstance(x, dict) else x)]
    return depth


def _metadata_op(b: _Builder, key: str, op: str, value, path: str) -> str:
    if op in ("$eq", "$ne", "$in", "$nin") and _depth(value) > MAX_VALUE_DEPTH:
        raise _err(path, f"the value is nested more than {MAX_VALUE_DEPTH} levels deep")
    if op == "$eq":
        if value is None:
            return f"(metadata -> {b.text(key)}) = 'null'::jsonb"
        return f"metadata {CONTAINS} {b.json({key: value})}"
    if op == "$ne":
        return f"(not metadata {CONTAINS} {b.json({key: value})})"
    if op in ("$in", "$nin"):
        vals = _list(path, op, value)
        ors = " or ".join(f"metadata {CONTAINS} {b.json({key: v})}" for v in vals)
        return f"({ors})" if op == "$in" else f"(not ({ors}))"
    if op == "$exists":
        if not isinstance(value, bool):
            raise _err(path, "$exists takes true or false")
        sql = f"metadata {EXISTS} {b.text(key)}"
        return sql if value else f"(not {sql})"
    # $gt/$gte/$lt/$lte: numbers compare as numbers, ISO strings as timestamps
    cmp = COMPARE[op]
    k = b.text(key)
    if _is_number(value):
        return (
            f"(case when jsonb_typeof(metadata -> {k}) = 'number' then (metadata -> {k})::numeric end) "
            f"{cmp} {b.text(value)}::numeric"
        )
    ts = _timestamp(path, value) if isinstance(value, str) else None
    if ts is None:
        raise _err(path, f"{op} takes a number or an ISO-8601 timestamp, got {json.dumps(value)}")
    return f"ml._jsonb_timestamptz(metadata -> {k}) {cmp} {b.text(ts)}::timestamptz"


def translate_json(flt, param: int = 2) -> str:
    """For the SQL wrapper: returns {"sql": ..., "params": [...]} as JSON text."""
    sql, params = translate(flt, param)
    return json.dumps({"sql": sql, "params": params})
