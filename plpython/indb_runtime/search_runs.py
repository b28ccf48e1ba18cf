"""registry.search_runs: MLflow's run filter syntax, parsed into parameterized SQL.

    metrics.rmse < 0.5 and params.depth = '6' and tags.team = 'x' and attributes.status = 'FINISHED'

Grammar (MLflow's, plus OR and parentheses)::

    expr       := term (OR term)*
    term       := factor (AND factor)*
    factor     := '(' expr ')' | comparison
    comparison := field op value
                | field [NOT] IN '(' value (',' value)* ')'
                | field IS [NOT] NULL
    field      := entity '.' key         entity: metrics|metric, params|param|parameters, tags|tag,
                                                 attributes|attribute|attr|run, datasets|dataset
    key        := name | `quoted` | "quoted"
    value      := 'string' | "string" | number

The SQL text is assembled only from fixed fragments chosen here; every key and value the user wrote is
bound as a parameter ($1, $2, ...).

The conditions read registry.run_search, one row per run with its params, latest metrics and tags as jsonb
(kept by registry.start_run and registry.log_batch): equality on params and tags is jsonb containment, served
by one GIN index over both; metric conditions read the run's own row. ``mirror=False`` builds the same search
over registry.params / registry.latest_metrics with an EXISTS per condition (the 0.2.0 SQL), kept as the
reference that tests compare the mirror with. Errors carry SQLSTATE 42601 and the position of the problem; a filter
nested deeper than MAX_DEPTH parentheses, or longer than MAX_FILTER characters, is refused with 54001.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import spi
from .errors import IndbRuntimeError
from .filters import CONTAINS  # leakproof jsonb containment: keeps the GIN index under row security

HINT = (
    "filters look like: metrics.rmse < 0.5 and params.depth = '6' and tags.team = 'x' "
    "and attributes.status = 'FINISHED'; strings in quotes, numbers bare; and/or/parentheses"
)

ENTITIES = {
    "metrics": "metric",
    "metric": "metric",
    "params": "param",
    "param": "param",
    "parameters": "param",
    "parameter": "param",
    "tags": "tag",
    "tag": "tag",
    "attributes": "attr",
    "attribute": "attr",
    "attr": "attr",
    "run": "attr",
    "datasets": "dataset",
    "dataset": "dataset",
}

# attribute name -> (SQL expression over runs r / experiments e, type)
ATTRIBUTES = {
    "status": ("r.status", "text"),
    "run_name": ("r.name", "text"),
    "run_id": ("r.run_uuid::text", "text"),
    "run_uuid": ("r.run_uuid::text", "text"),
    "user_id": ("r.user_name", "text"),
    "user_name": ("r.user_name", "text"),
    "start_time": ("r.start_time", "time"),
    "end_time": ("r.end_time", "time"),
    "experiment": ("e.name", "text"),
    "experiment_name": ("e.name", "text"),
}
DATASET_FIELDS = {"name": "d.name", "digest": "d.digest", "context": "i.context"}

NUM_OPS = {"=": "=", "==": "=", "!=": "<>", "<>": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
STR_OPS = {"=": "=", "==": "=", "!=": "<>", "<>": "<>", "LIKE": "like", "ILIKE": "ilike"}
MAX_RESULTS = 50000
MAX_DEPTH = 64  # nesting of parentheses
MAX_FILTER = 100_000  # characters

TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<num>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))
  | (?P<str>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.)*")
  | (?P<btick>`[^`]*`)
  | (?P<op><=|>=|!=|<>|==|=|<|>)
  | (?P<lp>\()
  | (?P<rp>\))
  | (?P<comma>,)
  | (?P<dot>\.)
  | (?P<word>[A-Za-z_][A-Za-z0-9_\-/:]*)
""",
    re.VERBOSE,
)


@dataclass
class Tok:
    kind: str
    text: str
    pos: int


def syntax_error(text: str, pos: int, message: str) -> IndbRuntimeError:
    pos = max(0, min(pos, len(text)))
    detail = f"{text}\n{' ' * pos}^"
    return IndbRuntimeError("42601", f"invalid filter at position {pos + 1}: {message}", detail, HINT)


def too_complex(why: str) -> IndbRuntimeError:
    return IndbRuntimeError(
        "54001",
        f"filter is too complex: {why}",
        hint="simplify the filter: drop redundant parentheses, or split the search",
    )


def tokenize(text: str) -> list[Tok]:
    if len(text) > MAX_FILTER:
        raise too_complex(f"it is {len(text)} characters long (at most {MAX_FILTER})")
    toks, i = [], 0
    while i < len(text):
        m = TOKEN_RE.match(text, i)
        if not m:
            raise syntax_error(text, i, f"unexpected character {text[i]!r}")
        kind = m.lastgroup or ""
        if kind != "ws":
            toks.append(Tok(kind, m.group(), i))
        i = m.end()
    toks.append(Tok("end", "", len(text)))
    return toks


def unquote(s: str) -> str:
    q = s[0]
    body = s[1:-1]
    if q == "'":
        body = body.replace("''", "'")
    return re.sub(r"\\(.)", r"\1", body)


class Parser:
    def __init__(self, text: str, params: list, mirror: bool = True):
        self.mirror = mirror
        self.text = text
        self.toks = tokenize(text)
        self.i = 0
        self.params = params
        self.depth = 0

    # -- helpers
    def peek(self) -> Tok:
        return self.toks[self.i]

    def next(self) -> Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def is_word(self, *words: str) -> bool:
        t = self.peek()
        return t.kind == "word" and t.text.upper() in words

    def expect(self, kind: str, what: str) -> Tok:
        t = self.peek()
        if t.kind != kind:
            raise syntax_error(self.text, t.pos, f"expected {what}, found {describe(t)}")
        return self.next()

    def bind(self, value, pgtype: str) -> str:
        self.params.append((value, pgtype))
        return f"${len(self.params)}"

    def pair(self, key, val) -> str:
        """{key: val} as a jsonb object of two text parameters (the right side of a containment)."""
        return f"jsonb_build_object({self.bind(key, 'text')}::text, {self.bind(val, 'text')}::text)"

    # -- grammar
    def parse(self) -> str:
        if self.peek().kind == "end":
            return "true"
        sql = self.expr()
        t = self.peek()
        if t.kind != "end":
            raise syntax_error(self.text, t.pos, f"expected AND, OR or the end of the filter, found {describe(t)}")
        return sql

    def expr(self) -> str:
        parts = [self.term()]
        while self.is_word("OR"):
            self.next()
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else "(" + " or ".join(parts) + ")"

    def term(self) -> str:
        parts = [self.factor()]
        while self.is_word("AND"):
            self.next()
            parts.append(self.factor())
        return parts[0] if len(parts) == 1 else "(" + " and ".join(parts) + ")"

    def factor(self) -> str:
        if self.peek().kind == "lp":
            t = self.next()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise too_complex(f"it nests parentheses more than {MAX_DEPTH} deep (at position {t.pos + 1})")
            inner = self.expr()
            self.expect("rp", "')'")
            self.depth -= 1
            return inner
        return self.comparison()

    def field(self) -> tuple[str, str, int]:
        t = self.peek()
        if (
            t.kind == "word"
            and "." not in t.text
            and self.toks[self.i + 1].kind != "dot"
            and t.text.lower() in ATTRIBUTES
        ):
            # bare attribute (MLflow accepts e.g. status = 'FINISHED' only with a prefix; we allow it)
            self.next()
            return "attr", t.text.lower(), t.pos
        if t.kind != "word":
            raise syntax_error(self.text, t.pos, f"expected a field such as metrics.rmse, found {describe(t)}")
        self.next()
        entity = ENTITIES.get(t.text.lower())
        if entity is None:
            raise syntax_error(
                self.text, t.pos, f"unknown entity {t.text!r}: use metrics., params., tags., attributes. or datasets."
            )
        self.expect("dot", f"'.' after {t.text}")
        k = self.next()
        if k.kind == "word":
            key = k.text
            # keys may contain dots (tags.mlflow.runName): glue word . word ...
            while (
                self.peek().kind == "dot"
                and self.toks[self.i + 1].kind == "word"
                and self.toks[self.i + 1].pos == self.peek().pos + 1
                and self.peek().pos == k.pos + len(key)
            ):
                self.next()
                key += "." + self.next().text
        elif k.kind == "btick" or (k.kind == "str" and k.text[0] == '"'):
            key = k.text[1:-1]
        else:
            raise syntax_error(self.text, k.pos, f"expected a key after {t.text}., found {describe(k)}")
        if not key:
            raise syntax_error(self.text, k.pos, "empty key")
        if entity == "attr" and key.lower() not in ATTRIBUTES:
            raise syntax_error(self.text, k.pos, f"unknown attribute {key!r}; attributes: " + ", ".join(ATTRIBUTES))
        if entity == "dataset" and key.lower() not in DATASET_FIELDS:
            raise syntax_error(
                self.text,
                k.pos,
                f"unknown dataset field {key!r}; use datasets.name, datasets.digest or datasets.context",
            )
        return entity, key.lower() if entity in ("attr", "dataset") else key, t.pos

    def value(self) -> tuple[str, object, int]:
        t = self.next()
        if t.kind == "num":
            return "num", float(t.text), t.pos
        if t.kind == "str":
            return "str", unquote(t.text), t.pos
        raise syntax_error(self.text, t.pos, f"expected a value ('text' or a number), found {describe(t)}")

    def comparison(self) -> str:
        entity, key, fpos = self.field()
        t = self.peek()
        negate = False
        if self.is_word("IS"):
            self.next()
            if self.is_word("NOT"):
                self.next()
                negate = True
            if not self.is_word("NULL"):
                raise syntax_error(self.text, self.peek().pos, f"expected NULL after IS, found {describe(self.peek())}")
            self.next()
            return self.null_test(entity, key, negate, fpos)
        if self.is_word("NOT"):
            self.next()
            negate = True
            if not self.is_word("IN"):
                raise syntax_error(self.text, self.peek().pos, f"expected IN after NOT, found {describe(self.peek())}")
        if self.is_word("IN"):
            self.next()
            self.expect("lp", "'(' after IN")
            vals = [self.value()]
            while self.peek().kind == "comma":
                self.next()
                vals.append(self.value())
            self.expect("rp", "')' closing the IN list")
            return self.in_list(entity, key, vals, negate)
        if t.kind == "op":
            op = self.next().text
        elif self.is_word("LIKE", "ILIKE"):
            op = self.next().text.upper()
        else:
            raise syntax_error(
                self.text, t.pos, f"expected a comparison (=, !=, <, <=, >, >=, LIKE, ILIKE, IN), found {describe(t)}"
            )
        vkind, val, vpos = self.value()
        return self.compare(entity, key, op, vkind, val, t.pos, vpos)

    # -- SQL fragments
    def compare(self, entity, key, op, vkind, val, opos, vpos) -> str:
        if entity == "metric":
            if op not in NUM_OPS:
                raise syntax_error(self.text, opos, f"operator {op} does not apply to metrics; use = != < <= > >=")
            if vkind != "num":
                raise syntax_error(self.text, vpos, f"metric {key!r} is compared with a number, not a string")
            if self.mirror:
                return f"(s.metrics ->> {self.bind(key, 'text')})::float8 {NUM_OPS[op]} {self.bind(val, 'float8')}"
            return (
                f"exists (select 1 from registry.latest_metrics m where m.run_id = r.id and m.key = "
                f"{self.bind(key, 'text')} and m.value {NUM_OPS[op]} {self.bind(val, 'float8')})"
            )
        attr_type = ATTRIBUTES.get(key, (None, None))[1] if entity == "attr" else None
        if attr_type == "time":
            if op not in NUM_OPS:
                raise syntax_error(self.text, opos, f"operator {op} does not apply to {key}; use = != < <= > >=")
            col = ATTRIBUTES[key][0]
            if vkind == "num":  # MLflow: milliseconds since the epoch
                return f"{col} {NUM_OPS[op]} to_timestamp({self.bind(val / 1000.0, 'float8')})"
            return f"{col} {NUM_OPS[op]} {self.bind(val, 'timestamptz')}"
        if op not in STR_OPS:
            raise syntax_error(
                self.text, opos, f"operator {op} does not apply to {entity} values; use =, !=, LIKE, ILIKE or IN"
            )
        if vkind != "str":
            raise syntax_error(self.text, vpos, f"{entity} values are strings: write {key} {op} '{_fmt(val)}'")
        sop = STR_OPS[op]
        if entity == "param" and self.mirror:
            if sop == "=":
                return f"s.params {CONTAINS} {self.pair(key, val)}"
            return f"(s.params ->> {self.bind(key, 'text')}) {sop} {self.bind(val, 'text')}"
        if entity == "param":
            return (
                f"exists (select 1 from registry.params p where p.run_id = r.id and p.key = "
                f"{self.bind(key, 'text')} and p.value {sop} {self.bind(val, 'text')})"
            )
        if entity == "tag":
            t = self.tags
            if sop == "=":
                return f"{t} {CONTAINS} {self.pair(key, val)}"
            return f"({t} ->> {self.bind(key, 'text')}) {sop} {self.bind(val, 'text')}"
        if entity == "dataset":
            return (
                f"exists (select 1 from registry.run_inputs i join registry.datasets d on d.id = i.dataset_id "
                f"where i.run_id = r.id and {DATASET_FIELDS[key]} {sop} {self.bind(val, 'text')})"
            )
        return f"{ATTRIBUTES[key][0]} {sop} {self.bind(val, 'text')}"

    @property
    def tags(self) -> str:
        return "s.tags" if self.mirror else "r.tags"

    def in_list(self, entity, key, vals, negate) -> str:
        if entity == "metric":
            if any(k != "num" for k, _, _ in vals):
                bad = next(p for k, _, p in vals if k != "num")
                raise syntax_error(self.text, bad, "metric IN lists hold numbers")
            arr = self.bind([v for _, v, _ in vals], "float8[]")
            if self.mirror:
                inner = f"coalesce((s.metrics ->> {self.bind(key, 'text')})::float8 = any({arr}), false)"
                return f"not {inner}" if negate else inner
            inner = (
                f"exists (select 1 from registry.latest_metrics m where m.run_id = r.id and m.key = "
                f"{self.bind(key, 'text')} and m.value = any({arr}))"
            )
            return f"not {inner}" if negate else inner
        bad = next((p for k, _, p in vals if k != "str"), None)
        if bad is not None:
            raise syntax_error(self.text, bad, "IN lists of params, tags and attributes hold quoted strings")
        arr = self.bind([v for _, v, _ in vals], "text[]")
        if entity == "param" and self.mirror:
            expr = f"coalesce((s.params ->> {self.bind(key, 'text')}) = any({arr}), false)"
        elif entity == "param":
            expr = (
                f"exists (select 1 from registry.params p where p.run_id = r.id and p.key = "
                f"{self.bind(key, 'text')} and p.value = any({arr}))"
            )
        elif entity == "tag":
            expr = f"coalesce(({self.tags} ->> {self.bind(key, 'text')}) = any({arr}), false)"
        elif entity == "dataset":
            expr = (
                f"exists (select 1 from registry.run_inputs i join registry.datasets d on d.id = i.dataset_id "
                f"where i.run_id = r.id and {DATASET_FIELDS[key]} = any({arr}))"
            )
        else:
            col, typ = ATTRIBUTES[key]
            if typ == "time":
                raise syntax_error(self.text, vals[0][2], f"IN does not apply to {key}")
            expr = f"coalesce({col} = any({arr}), false)"
        return f"not {expr}" if negate else expr

    def null_test(self, entity, key, negate, pos) -> str:
        if entity in ("metric", "param") and self.mirror:
            e = f"s.{entity}s ? {self.bind(key, 'text')}"
        elif entity == "metric":
            k = self.bind(key, "text")
            e = f"exists (select 1 from registry.latest_metrics m where m.run_id = r.id and m.key = {k})"
        elif entity == "param":
            e = f"exists (select 1 from registry.params p where p.run_id = r.id and p.key = {self.bind(key, 'text')})"
        elif entity == "tag":
            e = f"{self.tags} ? {self.bind(key, 'text')}"
        elif entity == "attr":
            e = f"{ATTRIBUTES[key][0]} is not null"
        else:
            raise syntax_error(self.text, pos, "IS NULL does not apply to datasets")
        # "x IS NULL" is true when the run has no such metric/param/tag
        return e if negate else f"not {e}"


def _fmt(v) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def describe(t: Tok) -> str:
    if t.kind == "end":
        return "the end of the filter"
    return repr(t.text)


def parse_filter(text: str | None, params: list, mirror: bool = True) -> str:
    """Return a SQL boolean expression over run_search s / runs r / experiments e; appends (value, type) to
    params."""
    return Parser(text or "", params, mirror).parse()


ORDER_RE = re.compile(r"^\s*(?P<field>.+?)(?:\s+(?P<dir>asc|desc))?\s*$", re.IGNORECASE)


def parse_order_by(items: list[str] | None, params: list, mirror: bool = True) -> list[str]:
    out = []
    for item in items or []:
        if item is None or not item.strip():
            raise IndbRuntimeError("42601", "empty order_by item", hint="order_by items look like 'metrics.rmse ASC'")
        m = ORDER_RE.match(item)
        if m is None:  # pragma: no cover - the pattern matches any non-empty text
            raise IndbRuntimeError("42601", f"invalid order_by item {item!r}")
        text = m.group("field")
        direction = (m.group("dir") or "asc").lower()
        p = Parser(text, params, mirror)
        try:
            entity, key, _ = p.field()
        except IndbRuntimeError as e:
            e.message = e.message.replace("invalid filter", "invalid order_by item " + repr(item))
            raise
        if p.peek().kind != "end":
            raise IndbRuntimeError(
                "42601",
                f"invalid order_by item {item!r}: expected a field then ASC or DESC",
                None,
                "order_by items look like 'metrics.rmse ASC' or 'attributes.start_time DESC'",
            )
        if entity == "metric" and mirror:
            expr = f"((s.metrics ->> {p.bind(key, 'text')})::float8)"
        elif entity == "param" and mirror:
            expr = f"(s.params ->> {p.bind(key, 'text')})"
        elif entity == "metric":
            k = p.bind(key, "text")
            expr = f"(select m.value from registry.latest_metrics m where m.run_id = r.id and m.key = {k})"
        elif entity == "param":
            expr = f"(select p.value from registry.params p where p.run_id = r.id and p.key = {p.bind(key, 'text')})"
        elif entity == "tag":
            expr = f"({p.tags} ->> {p.bind(key, 'text')})"
        elif entity == "attr":
            expr = ATTRIBUTES[key][0]
        else:
            raise IndbRuntimeError("42601", f"invalid order_by item {item!r}: cannot order by datasets")
        out.append(f"{expr} {direction} nulls last")
    return out


SELECT_MIRROR = """select r.run_uuid as run_id, e.name as experiment, r.name as run_name, r.status, r.user_name,
       r.start_time, r.end_time, s.params, s.metrics, s.tags
  from registry.run_search s join registry.runs r on r.id = s.run_id
  join registry.experiments e on e.id = r.experiment_id
 where {where}
 order by {order}
 limit {limit}"""

SELECT = """select r.run_uuid as run_id, e.name as experiment, r.name as run_name, r.status, r.user_name,
       r.start_time, r.end_time,
       (select coalesce(jsonb_object_agg(p.key, p.value), '{{}}')
          from registry.params p where p.run_id = r.id) as params,
       (select coalesce(jsonb_object_agg(m.key, m.value), '{{}}')
          from registry.latest_metrics m where m.run_id = r.id) as metrics,
       r.tags
  from registry.runs r join registry.experiments e on e.id = r.experiment_id
 where {where}
 order by {order}
 limit {limit}"""


def build(experiments, filter_text, order_by, max_results, mirror: bool = True) -> tuple[str, list]:
    """(sql, [(value, type), ...]) for one search_runs call (mirror=False: the reference SQL over the tables)."""
    where, order, limit, params = build_parts(experiments, filter_text, order_by, max_results, mirror)
    sql = (SELECT_MIRROR if mirror else SELECT).format(where=where, order=order, limit=limit)
    return sql, params


def build_parts(experiments, filter_text, order_by, max_results, mirror: bool = True) -> tuple[str, str, str, list]:
    """(where, order by, limit, params) of one search_runs call."""
    if max_results is None:
        max_results = 1000
    if not 1 <= int(max_results) <= MAX_RESULTS:
        raise IndbRuntimeError("22023", f"max_results must be between 1 and {MAX_RESULTS}, got {max_results}")
    params: list = []
    where = []
    if experiments is not None:
        if any(x is None for x in experiments):
            raise IndbRuntimeError("22004", "experiments contains a null name")
        names = _bind(params, list(experiments), "text[]")
        where.append(f"e.name = any({names})")
        if mirror:  # lets the planner use the run_search experiment index
            ids = f"array(select x.id from registry.experiments x where x.name = any({names}))"
            where.append(f"s.experiment_id = any({ids})")
    cond = parse_filter(filter_text, params, mirror)
    if cond != "true":
        where.append(cond)
    tail = ["s.start_time desc", "s.run_id desc"] if mirror else ["r.start_time desc", "r.id desc"]
    order = parse_order_by(order_by, params, mirror) + tail
    limit = _bind(params, int(max_results), "int4")
    return " and ".join(where) or "true", ", ".join(order), limit, params


def _bind(params: list, value, pgtype: str) -> str:
    params.append((value, pgtype))
    return f"${len(params)}"


# --- execution: two plans that stay fast at 1,000,000 runs ---------------------------------------------------
# PL/Python's cached plans turn generic after five calls; a generic plan cannot see how common a param or tag
# value is, and at 1M runs it scans every GIN match (~22,000 rows for params.depth and tags.team) and sorts them.
# * No order_by: the order is the time index's own (start_time desc, run_id desc). The search runs with a plan
#   made for its values (plan_cache_mode = force_custom_plan around that one call), which walks the index and
#   stops at max_results matches.
# * order_by a metric first: a walk of registry.latest_metrics' (key, value) index gives the runs in that
#   metric's order; the search reads the first WALK_CAP of them (each a primary-key read of run_search) and
#   stops at max_results matches. The answer is exact when it is complete (max_results rows) and fewer than
#   WALK_CAP runs have a value no later than its last one: then every run that could come earlier was read.
#   Otherwise (a rare filter, a tie across the cut, NaN, fewer matches) the general query answers.
#   latest_metrics holds the same values as run_search.metrics (both written by registry.log_batch, with the
#   run's tenant), so the same runs are visible through either.
# Both apply from LARGE runs on (run_search's row estimate; indb.search_runs_walk_from overrides it for a session,
# which tests use to run the walk on small registries): below that the cached generic plan is already fast
# (p99 36.5 / 29.3 ms at 100,000 runs), a custom plan costs its planning on every call, and a walk over a small
# registry mostly ends in the general query anyway.
LARGE = 200_000  # runs (run_search's reltuples) from which the two plans below are used; below, the cached plan
WALK_MIN = 1000
WALK_PER_RESULT = 100
WALK_MAX = 50000
WALK_STATS = {"exact": 0, "general": 0}  # how the metric-ordered searches of this backend were answered

# every run of the walk is read by its keys, in the walk's order (LATERAL ... OFFSET 0 keeps each read a nested
# loop: the planner may not turn them into a hash join over all runs), so the sort on the walk's value is
# already done and the query stops at max_results matches
SELECT_WALK = """select r.run_uuid as run_id, e.name as experiment, r.name as run_name, r.status, r.user_name,
       r.start_time, r.end_time, s.params, s.metrics, s.tags, w.value as walk_value
  from (select m.run_id, m.value from registry.latest_metrics m
         where m.key = {key} order by m.value {direction} limit {cap}) w
  cross join lateral (select * from registry.run_search s0 where s0.run_id = w.run_id offset 0) s
  cross join lateral (select * from registry.runs r0 where r0.id = w.run_id offset 0) r
  cross join lateral (select * from registry.experiments e0 where e0.id = r.experiment_id offset 0) e
 where {where}
 order by w.value {direction}, {order}
 limit {limit}"""

# how many runs of the walk come no later than the answer's last value (counted up to the walk's length)
BOUNDARY = (
    "select count(*)::int8 as n from (select 1 from registry.latest_metrics m "
    "where m.key = $1 and m.value {cmp} $2 limit $3) x"
)

COLUMNS = (
    "run_id",
    "experiment",
    "run_name",
    "status",
    "user_name",
    "start_time",
    "end_time",
    "params",
    "metrics",
    "tags",
)


def first_metric_order(order_by: list[str] | None) -> tuple[str, str] | None:
    """(metric key, 'asc'|'desc') when the first order_by item is a metric, else None (syntax was checked by
    build already)."""
    if not order_by:
        return None
    m = ORDER_RE.match(order_by[0] or "")
    if m is None:  # pragma: no cover - build refused it first
        return None
    p = Parser(m.group("field"), [], True)
    entity, key, _ = p.field()
    if entity != "metric" or p.peek().kind != "end":
        return None
    return key, (m.group("dir") or "asc").lower()


def build_walk(experiments, filter_text, order_by, max_results, key: str, direction: str, cap: int):
    """The metric-walk form of the search (same WHERE and ORDER BY as build), plus the value of the walk's
    last row is returned as walk_value."""
    where, order, limit, params = build_parts(experiments, filter_text, order_by, max_results)
    k = _bind(params, key, "text")
    c = _bind(params, int(cap), "int4")
    walk = SELECT_WALK.format(key=k, direction=direction, cap=c, where=where, order=order, limit=limit)
    return walk, params


def _run_custom(plpy: spi.Plpy, sql: str, params: list):
    prev = spi.one(plpy, "select current_setting('plan_cache_mode') as v")["v"]  # type: ignore[index]
    spi.run(plpy, "select set_config('plan_cache_mode', 'force_custom_plan', true)")
    try:
        return spi.run(plpy, sql, [t for _, t in params], [v for v, _ in params])
    finally:
        spi.run(plpy, "select set_config('plan_cache_mode', $1, true)", ["text"], [prev])


def _walk(plpy: spi.Plpy, experiments, filter_text, order_by, max_results, key: str, direction: str):
    limit = 1000 if max_results is None else int(max_results)
    cap = min(max(WALK_PER_RESULT * limit, WALK_MIN), WALK_MAX)
    sql, params = build_walk(experiments, filter_text, order_by, max_results, key, direction, cap)
    rows = spi.run(plpy, sql, [t for _, t in params], [v for v, _ in params])
    if len(rows) < limit:
        WALK_STATS["general"] += 1
        return None
    # exact when every run whose value comes no later than the last answer's was walked: fewer of them than
    # the walk's length (ties at the last value included; NaN sorts after every number)
    last = rows[len(rows) - 1]["walk_value"]
    seen = spi.one(
        plpy, BOUNDARY.format(cmp="<=" if direction == "asc" else ">="), ["text", "float8", "int8"], [key, last, cap]
    )
    if seen is None or seen["n"] >= cap:
        WALK_STATS["general"] += 1
        return None
    WALK_STATS["exact"] += 1
    return [{c: r[c] for c in COLUMNS} for r in rows]


def _large(plpy: spi.Plpy) -> bool:
    """run_search's row estimate >= LARGE, or >= the session's indb.search_runs_walk_from (runs) when set. The
    same for every caller: under row security the general query reaches the GIN index of params and tags too
    (ml.@> is leakproof, migration 0024). Before, a reader's general query read run_search whole, and readers took
    the metric walk at any size (100,000 runs, an indb_reader login, 2026-12-02, same run: the general query now
    p50 29.9 / p99 46.5 ms, the walk 45.3 / 54.6 ms)."""
    r = spi.one(
        plpy,
        "select c.reltuples::float8 as n, current_setting('indb.search_runs_walk_from', true) as t "
        "from pg_class c where c.oid = 'registry.run_search'::regclass",
    )
    if r is None:
        return False
    t = (r["t"] or "").strip()
    return r["n"] >= (float(t) if t.isdigit() else LARGE)


def execute(plpy: spi.Plpy, experiments, filter_text, order_by, max_results):
    sql, params = build(experiments, filter_text, order_by, max_results)
    large = _large(plpy)
    first = first_metric_order(order_by)
    if large and not order_by:
        return _run_custom(plpy, sql, params)
    if first is not None and large:
        rows = _walk(plpy, experiments, filter_text, order_by, max_results, *first)
        if rows is not None:
            return rows
    return spi.run(plpy, sql, [t for _, t in params], [v for v, _ in params])
