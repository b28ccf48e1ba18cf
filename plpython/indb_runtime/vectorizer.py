"""Vectorizers: keep embeddings of a table's rows current in a destination table.

One catalog row (ml.vectorizers) per vectorizer; four statement-level triggers on the source
(INSERT/UPDATE/DELETE with transition tables, TRUNCATE) call :func:`on_trigger`. All SQL is built from
catalog identifiers quoted with ``plpy.quote_ident`` and types taken from ``format_type``; user values are
always parameters.

Change detection: every destination row stores ``content_hash`` = sha256(chunking tag || embedded content)
and the model name; a row needs (re-)embedding when its first chunk (seq 0) is missing or has another hash
or model. Only those rows reach the model.

Concurrency (async mode): a worker takes queue items ``FOR UPDATE SKIP LOCKED`` and then locks the source
rows ``FOR NO KEY UPDATE SKIP LOCKED`` before reading them, so a writer that changes a row waits for the worker
(or the worker skips it and leaves the item queued), and its own trigger then sees the worker's result.
Two workers never embed the same row at once and nothing older overwrites something newer.
"""

from __future__ import annotations

import json
import time

from . import chunking, embedding
from .errors import IndbRuntimeError, invalid, undefined

NEW = "indb_new"
OLD = "indb_old"
RESERVED = ("seq", "chunk", "embedding", "content_hash", "model", "embedded_at")

_PLANS: dict = {}


def prep(plpy, sql: str, types: list[str]):
    key = (sql, tuple(types))
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = plpy.prepare(sql, types)
    return plan


_VSCHEMA: list = []


def vschema(plpy) -> str:
    """Quoted schema of the vector extension: functions pin search_path, so its type and operators are qualified."""
    if not _VSCHEMA:
        r = plpy.execute("select extnamespace::regnamespace::text as s from pg_extension where extname = 'vector'")
        if not r:
            raise IndbRuntimeError(
                "55000", "the vector extension is not installed in this database", hint="run `indb install`"
            )
        _VSCHEMA.append(r[0]["s"])
    return _VSCHEMA[0]


def run(plpy, sql: str, types: list[str] | None = None, args: list | None = None):
    if not types:
        return plpy.execute(sql)
    return plpy.execute(prep(plpy, sql, types), args)


class Vectorizer:
    COLS = (
        "id, name, source::text as source, key_columns, key_types, columns, model, destination::text as destination, "
        "mode, batch_size, chunk_size, chunk_overlap, chunk_by, max_attempts, staging_model, "
        "staging_destination::text as staging_destination, staging_role"
    )

    def __init__(self, plpy, row: dict):
        self.plpy = plpy
        for k, v in row.items():
            setattr(self, k, v)
        self.key_columns = list(row["key_columns"])
        self.key_types = list(row["key_types"])
        self.columns = list(row["columns"])
        q = plpy.quote_ident
        self.qkeys = [q(c) for c in self.key_columns]
        self.nkeys = len(self.key_columns)

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def by_name(cls, plpy, name: str, lock: bool = False) -> Vectorizer:
        if name is None:
            raise invalid("vectorizer name must not be NULL")
        rows = run(
            plpy,
            f"select {cls.COLS} from ml.vectorizers where name = $1" + (" for update" if lock else ""),
            ["text"],
            [name],
        )
        if not rows:
            known = [r["name"] for r in plpy.execute("select name from ml.vectorizers order by name")]
            raise undefined(
                f'vectorizer "{name}" does not exist',
                detail="vectorizers: " + (", ".join(known) or "(none)"),
                hint="create one with ml.create_vectorizer(source, columns)",
            )
        return cls(plpy, rows[0])

    @classmethod
    def by_id(cls, plpy, vid: int):
        rows = run(plpy, f"select {cls.COLS} from ml.vectorizers where id = $1", ["int4"], [vid])
        return cls(plpy, rows[0]) if rows else None

    # -- SQL fragments -------------------------------------------------------------------------
    @property
    def tag(self) -> str:
        if self.chunk_size:
            return f"{self.chunk_by}:{self.chunk_size}:{self.chunk_overlap}|"
        return "whole|"

    def content_expr(self, alias: str) -> str:
        q = self.plpy.quote_ident
        parts = ", ".join(f"nullif(btrim({alias}.{q(c)}::text), '')" for c in self.columns)
        return f"coalesce(concat_ws(E'\\n', {parts}), '')"

    def hash_expr(self, alias: str) -> str:
        lit = self.plpy.quote_literal(self.tag)
        return f"encode(sha256(convert_to({lit} || {self.content_expr(alias)}, 'UTF8')), 'hex')"

    def key_text(self, alias: str) -> str:
        return ", ".join(f"{alias}.{k}::text as k{i}" for i, k in enumerate(self.qkeys))

    def key_match(self, a: str, c: str) -> str:
        """a.<key> = c.k<i>::<type> for every key column (c holds the keys as text)."""
        return " and ".join(f"{a}.{k} = {c}.k{i}::{t}" for i, (k, t) in enumerate(zip(self.qkeys, self.key_types)))

    def key_join(self, a: str, b: str) -> str:
        return " and ".join(f"{a}.{k} = {b}.{k}" for k in self.qkeys)

    def unnest_keys(self, first_param: int = 1, extra: list[str] | None = None) -> str:
        """unnest($1::text[], ..., $n::text[] [, extra...]) as c(k0, ..., kn [, extra names])"""
        n = self.nkeys
        params = [f"${first_param + i}::text[]" for i in range(n)]
        names = [f"k{i}" for i in range(n)]
        for j, e in enumerate(extra or []):
            typ, name = e.split(" ")
            params.append(f"${first_param + n + j}::{typ}")
            names.append(name)
        return f"unnest({', '.join(params)}) with ordinality as c({', '.join(names)}, ord)"

    def key_columns_arrays(self, keys: list[tuple]) -> list[list]:
        return [[k[i] for k in keys] for i in range(self.nkeys)]

    def targets(self) -> list[tuple[str, str]]:
        out = [(self.destination, self.model)]
        if self.staging_destination:
            out.append((self.staging_destination, self.staging_model))
        return out

    # -- reading rows ----------------------------------------------------------------------------
    def rows_from(self, relation: str, where: str = "", types=None, args=None, suffix: str = "") -> list[tuple]:
        """[(key tuple of text, content, hash)] from relation (source, or a transition table)."""
        sql = (
            f"select {self.key_text('s')}, {self.content_expr('s')} as content, {self.hash_expr('s')} as h "
            f"from {relation} s {where} {suffix}"
        )
        rows = run(self.plpy, sql, types, args)
        return [(tuple(r[f"k{i}"] for i in range(self.nkeys)), r["content"], r["h"]) for r in rows]

    def keys_from(self, relation: str, where: str = "") -> list[tuple]:
        rows = self.plpy.execute(f"select {self.key_text('s')} from {relation} s {where}")
        return [tuple(r[f"k{i}"] for i in range(self.nkeys)) for r in rows]

    def source_rows(self, keys: list[tuple], lock: bool = False) -> list[tuple]:
        if not keys:
            return []
        n = self.nkeys
        sql = (
            f"select {self.key_text('s')}, {self.content_expr('s')} as content, {self.hash_expr('s')} as h "
            f"from {self.source} s join {self.unnest_keys()} on {self.key_match('s', 'c')}"
            + (" for no key update of s skip locked" if lock else "")
        )
        rows = run(self.plpy, sql, ["text[]"] * n, self.key_columns_arrays(keys))
        return [(tuple(r[f"k{i}"] for i in range(n)), r["content"], r["h"]) for r in rows]

    # -- destination -----------------------------------------------------------------------------
    def stale(self, dest: str, model: str, rows: list[tuple]) -> list[int]:
        """Indexes of ``rows`` whose destination rows are missing or have another hash or model."""
        if not rows:
            return []
        n = self.nkeys
        sql = (
            f"select c.ord from {self.unnest_keys(extra=['text[] h'])} where not exists ("
            f"select 1 from {dest} d where {self.key_match('d', 'c')} and d.seq = 0 "
            f"and d.content_hash = c.h and d.model = ${n + 2})"
        )
        args = self.key_columns_arrays([r[0] for r in rows]) + [[r[2] for r in rows], model]
        res = run(self.plpy, sql, ["text[]"] * n + ["text[]", "text"], args)
        return sorted(r["ord"] - 1 for r in res)

    def delete_keys(self, dest: str, keys: list[tuple]) -> int:
        if not keys:
            return 0
        n = self.nkeys
        sql = f"delete from {dest} d using {self.unnest_keys()} where {self.key_match('d', 'c')}"
        return run(self.plpy, sql, ["text[]"] * n, self.key_columns_arrays(keys)).nrows()

    def dest_hashes(self, dest: str, model: str, keys: list[tuple]) -> dict:
        if not keys:
            return {}
        n = self.nkeys
        sql = (
            f"select {self.key_text('d')}, d.content_hash from {dest} d join {self.unnest_keys()} "
            f"on {self.key_match('d', 'c')} where d.seq = 0 and d.model = ${n + 1}"
        )
        out: dict = {}
        for r in run(self.plpy, sql, ["text[]"] * n + ["text"], self.key_columns_arrays(keys) + [model]):
            out.setdefault(r["content_hash"], []).append(tuple(r[f"k{i}"] for i in range(n)))
        return out

    def move_key(self, dest: str, old: tuple, new: tuple) -> None:
        n = self.nkeys
        sets = ", ".join(f"{k} = ${n + 1 + i}::{t}" for i, (k, t) in enumerate(zip(self.qkeys, self.key_types)))
        where = " and ".join(f"{k} = ${1 + i}::{t}" for i, (k, t) in enumerate(zip(self.qkeys, self.key_types)))
        run(self.plpy, f"update {dest} set {sets} where {where}", ["text"] * (2 * n), list(old) + list(new))

    def embed_and_write(self, dest: str, model: str, rows: list[tuple], check=None) -> int:
        """Embed rows (key, content, hash) with ``model`` and replace their destination rows. Returns chunks written."""
        rows = [r for r in rows if r[1]]
        if not rows:
            return 0
        spec = embedding.resolve(self.plpy, model)
        if self.chunk_size:
            tok = embedding.load(spec).tokenizer if self.chunk_by == "tokens" else None
            pieces = [chunking.chunk(r[1], self.chunk_size, self.chunk_overlap, self.chunk_by, tok) for r in rows]
        else:
            pieces = [[r[1]] for r in rows]
        texts, owners, seqs = [], [], []
        for i, ps in enumerate(pieces):
            for s, p in enumerate(ps):
                texts.append(p)
                owners.append(i)
                seqs.append(s)
        vecs = embedding.encode(spec, texts, batch_size=self.batch_size, check=check)
        self.delete_keys(dest, [r[0] for r in rows])
        n = self.nkeys
        keycols = ", ".join(self.qkeys)
        casts = ", ".join(f"c.k{i}::{t}" for i, t in enumerate(self.key_types))
        sql = (
            f"insert into {dest} ({keycols}, seq, chunk, embedding, content_hash, model, embedded_at) "
            f"select {casts}, c.seq, c.chunk, c.e::{vschema(self.plpy)}.vector, c.h, ${n + 5}, clock_timestamp() "
            f"from {self.unnest_keys(extra=['int4[] seq', 'text[] chunk', 'text[] e', 'text[] h'])}"
        )
        keys = [rows[o][0] for o in owners]
        args = self.key_columns_arrays(keys) + [
            seqs,
            texts,
            [embedding.to_pgvector(v) for v in vecs],
            [rows[o][2] for o in owners],
            model,
        ]
        run(self.plpy, sql, ["text[]"] * n + ["int4[]", "text[]", "text[]", "text[]", "text"], args)
        return len(texts)

    def enqueue(self, keys: list[tuple]) -> int:
        if not keys:
            return 0
        run(
            self.plpy,
            "insert into ml.vectorizer_queue (vectorizer_id, key) select $1, k from unnest($2::jsonb[]) k",
            ["int4", "jsonb[]"],
            [self.id, [json.dumps(list(k)) for k in keys]],
        )
        return len(keys)

    def touch(self, embedded: int = 0, error: str | None = None) -> None:
        run(
            self.plpy,
            "insert into ml.vectorizer_stats as s (vectorizer_id, last_run_at, last_error, embedded_total) "
            "values ($1, now(), $2, $3) on conflict (vectorizer_id) do update set last_run_at = now(), "
            "last_error = $2, embedded_total = s.embedded_total + $3",
            ["int4", "text", "int8"],
            [self.id, error, embedded],
        )


def _tick(plpy):
    plan = prep(plpy, "select 1", [])
    return lambda: plpy.execute(plan)


# -- triggers ------------------------------------------------------------------------------------
def on_trigger(plpy, TD) -> None:
    v = Vectorizer.by_id(plpy, int(TD["args"][0]))
    if v is None:
        return None
    event = TD["event"]
    if event == "TRUNCATE":
        for dest, _ in v.targets():
            plpy.execute(f"truncate {dest}")
        run(plpy, "delete from ml.vectorizer_queue where vectorizer_id = $1", ["int4"], [v.id])
        return None
    if event == "DELETE":
        keys = v.keys_from(OLD)
        for dest, _ in v.targets():
            v.delete_keys(dest, keys)
        return None
    rows = v.rows_from(NEW)
    vanished: list[tuple] = []
    if event == "UPDATE":
        vanished = v.keys_from(OLD, f"where not exists (select 1 from {NEW} n where {v.key_join('n', 's')})")
    apply_changes(plpy, v, rows, vanished)
    return None


def apply_changes(plpy, v: Vectorizer, rows: list[tuple], vanished: list[tuple]) -> dict:
    """Bring the destinations up to date for ``rows`` (key, content, hash) and keys that disappeared.

    Unchanged rows are skipped; rows whose key changed but content did not have their embeddings moved;
    the rest are embedded now (sync) or queued (async)."""
    to_queue: dict = {}
    stats = {"embedded": 0, "moved": 0, "queued": 0, "deleted": 0}
    check = _tick(plpy)
    for ti, (dest, model) in enumerate(v.targets()):
        stale = [rows[i] for i in v.stale(dest, model, rows)]
        if vanished:
            old = v.dest_hashes(dest, model, vanished)
            moved_from = set()
            keep = []
            for r in stale:
                cands = old.get(r[2])
                if cands:
                    src = cands.pop()
                    v.delete_keys(dest, [r[0]])
                    v.move_key(dest, src, r[0])
                    moved_from.add(src)
                    stats["moved"] += 1
                else:
                    keep.append(r)
            stale = keep
            stats["deleted"] += v.delete_keys(dest, [k for k in vanished if k not in moved_from])
        empty = [r[0] for r in stale if not r[1]]
        if empty:
            stats["deleted"] += v.delete_keys(dest, empty)
        work = [r for r in stale if r[1]]
        if not work:
            continue
        if v.mode == "sync" and ti == 0:
            stats["embedded"] += v.embed_and_write(dest, model, work, check=check)
        elif v.mode == "sync":
            # a staged model must not block writes: if it fails, its rows are queued and retried
            try:
                with plpy.subtransaction():
                    stats["embedded"] += v.embed_and_write(dest, model, work, check=check)
            except Exception as e:
                if _is_cancel(e):
                    raise
                plpy.warning(
                    f'vectorizer "{v.name}": staged model "{model}" failed ({_error_text(e)}); '
                    f"{len(work)} row(s) queued for ml.process_queue"
                )
                for r in work:
                    to_queue[r[0]] = True
        else:
            for r in work:
                to_queue[r[0]] = True
    if to_queue:
        stats["queued"] = v.enqueue(list(to_queue))
    return stats


# -- async queue -----------------------------------------------------------------------------------
def backoff_seconds(attempts: int) -> int:
    return min(2**attempts, 300)


def process_queue(plpy, name: str | None, batch_size: int | None) -> dict:
    if name is None:
        names = [
            r["name"]
            for r in plpy.execute(
                "select v.name from ml.vectorizers v where exists (select 1 from ml.vectorizer_queue q "
                "where q.vectorizer_id = v.id and q.next_attempt_at <= now()) order by v.id"
            )
        ]
        total = {
            "processed": 0,
            "embedded": 0,
            "unchanged": 0,
            "deleted": 0,
            "skipped_locked": 0,
            "failed": 0,
            "retrying": 0,
            "vectorizers": names,
        }
        for n in names:
            r = process_queue(plpy, n, batch_size)
            for k in total:
                if k != "vectorizers":
                    total[k] += r[k]
        total["pending"] = plpy.execute("select count(*) as n from ml.vectorizer_queue")[0]["n"]
        return total
    v = Vectorizer.by_name(plpy, name)
    if batch_size is not None and batch_size <= 0:
        raise invalid(f"batch_size must be positive, got {batch_size}")
    # rows per transaction; the model still sees v.batch_size texts at a time, sorted by length across the whole take
    limit = batch_size or v.batch_size * 4
    items = run(
        plpy,
        "select id, key::text as key, attempts, enqueued_at::text as enqueued_at from ml.vectorizer_queue "
        "where vectorizer_id = $1 and next_attempt_at <= now() order by id limit $2 "
        "for update skip locked",
        ["int4", "int4"],
        [v.id, limit],
    )
    stats = {
        "vectorizer": v.name,
        "processed": 0,
        "embedded": 0,
        "unchanged": 0,
        "deleted": 0,
        "skipped_locked": 0,
        "failed": 0,
        "retrying": 0,
    }
    if not items:
        stats["pending"] = _pending(plpy, v)
        return stats
    by_key: dict = {}
    for it in items:
        by_key.setdefault(tuple(json.loads(it["key"])), []).append(it)
    keys = list(by_key)
    locked_rows = v.source_rows(keys, lock=True)
    found = {r[0] for r in locked_rows}
    missing = [k for k in keys if k not in found]
    present_unlocked = {r[0] for r in v.source_rows(missing)} if missing else set()
    done_ids: list[int] = []
    for k in missing:
        if k in present_unlocked:
            stats["skipped_locked"] += 1  # a writer holds the row: leave it queued for the next round
            continue
        for dest, _ in v.targets():  # the row is gone: so are its embeddings
            stats["deleted"] += v.delete_keys(dest, [k])
        done_ids += [it["id"] for it in by_key[k]]
    check = _tick(plpy)
    failures: dict = {}
    touched: set = set()

    def work(rows):
        n = 0
        for dest, model in v.targets():
            idx = v.stale(dest, model, rows)
            stale = [rows[i] for i in idx]
            touched.update(r[0] for r in stale)
            empty = [r[0] for r in stale if not r[1]]
            if empty:
                v.delete_keys(dest, empty)
            n += v.embed_and_write(dest, model, [r for r in stale if r[1]], check=check)
        return n

    try:
        with plpy.subtransaction():
            stats["embedded"] += work(locked_rows)
        ok_rows = locked_rows
    except Exception as e:
        if _is_cancel(e):
            raise
        ok_rows = []
        for r in locked_rows:
            try:
                with plpy.subtransaction():
                    stats["embedded"] += work([r])
                ok_rows.append(r)
            except Exception as e1:
                if _is_cancel(e1):
                    raise
                failures[r[0]] = _error_text(e1)
    for r in ok_rows:
        done_ids += [it["id"] for it in by_key[r[0]]]
    stats["processed"] = sum(len(by_key[r[0]]) for r in ok_rows)
    stats["unchanged"] = len([r for r in ok_rows if r[0] not in touched])
    if done_ids:
        run(plpy, "delete from ml.vectorizer_queue where id = any($1)", ["int8[]"], [done_ids])
    last_error = None
    for k, err in failures.items():
        last_error = err
        for it in by_key[k]:
            attempts = it["attempts"] + 1
            if attempts >= v.max_attempts:
                run(
                    plpy,
                    "with d as (delete from ml.vectorizer_queue where id = $1 "
                    "returning vectorizer_id, key, enqueued_at) "
                    "insert into ml.vectorizer_failed (vectorizer_id, key, attempts, error, first_enqueued_at) "
                    "select vectorizer_id, key, $2, $3, enqueued_at from d",
                    ["int8", "int4", "text"],
                    [it["id"], attempts, err],
                )
                stats["failed"] += 1
            else:
                run(
                    plpy,
                    "update ml.vectorizer_queue set attempts = $2, last_error = $3, "
                    "next_attempt_at = now() + make_interval(secs => $4) where id = $1",
                    ["int8", "int4", "text", "float8"],
                    [it["id"], attempts, err, backoff_seconds(attempts)],
                )
                stats["retrying"] += 1
    v.touch(stats["embedded"], last_error)
    if last_error:
        plpy.warning(
            f'vectorizer "{v.name}": {len(failures)} row(s) failed to embed and stay queued or moved to '
            f"ml.vectorizer_failed: {last_error}"
        )
    stats["pending"] = _pending(plpy, v)
    return stats


def _pending(plpy, v) -> int:
    return run(plpy, "select count(*) as n from ml.vectorizer_queue where vectorizer_id = $1", ["int4"], [v.id])[0]["n"]


def _is_cancel(e: Exception) -> bool:
    return getattr(e, "sqlstate", None) in ("57014", "57P01", "57P02", "57P03") or "canceling statement" in str(e)


def _error_text(e: Exception) -> str:
    if isinstance(e, IndbRuntimeError):
        return f"[{e.sqlstate}] {e.message}"
    return f"[{getattr(e, 'sqlstate', None) or type(e).__name__}] {e}"


def retry(plpy, name: str) -> dict:
    v = Vectorizer.by_name(plpy, name)
    moved = run(
        plpy,
        "with d as (delete from ml.vectorizer_failed where vectorizer_id = $1 returning key) "
        "insert into ml.vectorizer_queue (vectorizer_id, key) select $1, key from d",
        ["int4"],
        [v.id],
    ).nrows()
    due = run(
        plpy,
        "update ml.vectorizer_queue set next_attempt_at = now(), attempts = 0 where vectorizer_id = $1",
        ["int4"],
        [v.id],
    ).nrows()
    return {"vectorizer": v.name, "requeued_failed": moved, "queued_now_due": due}


# -- refresh / backfill --------------------------------------------------------------------------
def refresh(
    plpy,
    name: str,
    max_rows: int | None = None,
    only_staging: bool = False,
    v: Vectorizer | None = None,
    label: str = "refresh",
) -> dict:
    """Re-embed (sync) or queue (async) the rows whose hash or model differs; drop orphans."""
    v = v or Vectorizer.by_name(plpy, name)
    if max_rows is not None and max_rows <= 0:
        raise invalid(f"max_rows must be positive, got {max_rows}")
    check = _tick(plpy)
    stats = {"vectorizer": v.name, "mode": v.mode, "embedded_rows": 0, "embedded_chunks": 0, "queued": 0, "deleted": 0}
    targets = v.targets()[1:] if only_staging else v.targets()
    t0 = time.time()
    last = t0
    for dest, model in targets:
        # orphans: destination rows whose source row is gone or has nothing to embed
        stats["deleted"] += plpy.execute(
            f"delete from {dest} d where not exists (select 1 from {v.source} s where {v.key_join('s', 'd')} "
            f"and {v.content_expr('s')} <> '')"
        ).nrows()
        where = (
            f"where {v.content_expr('s')} <> '' and not exists (select 1 from {dest} d where "
            f"{v.key_join('d', 's')} and d.seq = 0 and d.content_hash = {v.hash_expr('s')} and d.model = $1)"
        )
        lim = " limit $2" if max_rows else ""
        rows = v.rows_from(
            v.source,
            where,
            ["text", "int8"] if max_rows else ["text"],
            [model, max_rows] if max_rows else [model],
            suffix=lim,
        )
        if v.mode == "async":
            stats["queued"] += v.enqueue([r[0] for r in rows])
            continue
        step = max(v.batch_size * 4, 256)
        for i in range(0, len(rows), step):
            part = rows[i : i + step]
            stats["embedded_chunks"] += v.embed_and_write(dest, model, part, check=check)
            stats["embedded_rows"] += len(part)
            now = time.time()
            if now - last >= 2 and len(rows) > step:
                last = now
                rate = stats["embedded_rows"] / (now - t0)
                left = (len(rows) - i - len(part)) / rate if rate else 0
                plpy.notice(
                    f'vectorizer "{v.name}" {label}: {i + len(part):,}/{len(rows):,} rows embedded into '
                    f"{dest}, {rate:,.1f} rows/s, ~{left:,.0f} s left"
                )
    if max_rows:
        stats["remaining"] = sum(count_stale(plpy, v, d, m) for d, m in targets)
    v.touch(stats["embedded_chunks"])
    stats["seconds"] = round(time.time() - t0, 3)
    return stats


def count_stale(plpy, v: Vectorizer, dest: str, model: str) -> int:
    return run(
        plpy,
        f"select count(*) as n from {v.source} s where {v.content_expr('s')} <> '' and not exists ("
        f"select 1 from {dest} d where {v.key_join('d', 's')} and d.seq = 0 and "
        f"d.content_hash = {v.hash_expr('s')} and d.model = $1)",
        ["text"],
        [model],
    )[0]["n"]


# -- create / alter / drop -------------------------------------------------------------------------
def _primary_key(plpy, source: str) -> list[tuple[str, str]]:
    rows = run(
        plpy,
        "select a.attname, format_type(a.atttypid, a.atttypmod) as typ "
        "from pg_index i cross join lateral unnest(i.indkey) with ordinality as k(attnum, pos) "
        "join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum "
        "where i.indrelid = $1::regclass and i.indisprimary order by k.pos",
        ["text"],
        [source],
    )
    return [(r["attname"], r["typ"]) for r in rows]


def _columns(plpy, rel: str) -> dict:
    rows = run(
        plpy,
        "select attname, format_type(atttypid, atttypmod) as typ, atttypmod from pg_attribute "
        "where attrelid = $1::regclass and attnum > 0 and not attisdropped",
        ["text"],
        [rel],
    )
    return {r["attname"]: r for r in rows}


def _qualified(plpy, schema: str, table: str) -> str:
    return f"{plpy.quote_ident(schema)}.{plpy.quote_ident(table)}"


def _create_destination(plpy, dest: str, keys, dims: int) -> None:
    q = plpy.quote_ident
    cols = ", ".join(f"{q(c)} {t} not null" for c, t in keys)
    pk = ", ".join(q(c) for c, _ in keys)
    plpy.execute(
        f"create table {dest} ({cols}, seq int not null, chunk text not null, "
        f"embedding {vschema(plpy)}.vector({int(dims)}) not null, content_hash text not null, model text not null, "
        f"embedded_at timestamptz not null default now(), primary key ({pk}, seq))"
    )
    plpy.execute(f"create index on {dest} using hnsw (embedding {vschema(plpy)}.vector_cosine_ops)")


def _check_destination(plpy, dest: str, keys, dims: int, model: str) -> None:
    cols = _columns(plpy, dest)
    need = [c for c, _ in keys] + list(RESERVED)
    missing = [c for c in need if c not in cols]
    if missing:
        raise invalid(
            f"destination {dest} exists but lacks the columns " + ", ".join(missing),
            hint="pass destination => a new table name, or drop that table",
        )
    typ = cols["embedding"]["typ"]
    if not typ.split(".")[-1].startswith("vector(") or cols["embedding"]["atttypmod"] != dims:
        raise invalid(
            f'destination {dest} has embedding {typ} but model "{model}" gives vector({dims})',
            hint="use a model with that many dimensions, or another destination",
        )


def create(
    plpy,
    source: str,
    columns,
    model: str,
    mode: str,
    chunk_size,
    chunk_overlap,
    name,
    batch_size,
    destination,
    backfill: bool,
    chunk_by: str,
    max_attempts: int,
) -> dict:
    q = plpy.quote_ident
    if source is None or not columns:
        raise invalid("source and columns are required", hint="ml.create_vectorizer('docs', array['title', 'body'])")
    if mode not in ("sync", "async"):
        raise invalid(f"mode must be 'sync' or 'async', got \"{mode}\"")
    if batch_size is not None and batch_size <= 0:
        raise invalid(f"batch_size must be positive, got {batch_size}")
    chunk_overlap = chunk_overlap or 0
    info = run(
        plpy,
        "select n.nspname, c.relname, c.relkind from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where c.oid = $1::regclass",
        ["text"],
        [source],
    )[0]
    if info["relkind"] not in ("r", "p"):
        raise invalid(f"{source} is not a table", hint="vectorizers work on ordinary or partitioned tables")
    keys = _primary_key(plpy, source)
    if not keys:
        raise IndbRuntimeError(
            "42P10",
            f"table {source} has no primary key",
            detail="a vectorizer ties every embedding to its source row by primary key",
            hint=f"alter table {source} add primary key (...)",
        )
    clash = [c for c, _ in keys if c in RESERVED]
    if clash:
        raise invalid(f"primary key column(s) {', '.join(clash)} clash with destination columns {', '.join(RESERVED)}")
    cols = _columns(plpy, source)
    bad = [c for c in columns if c not in cols]
    if bad:
        raise IndbRuntimeError(
            "42703", f"column(s) {', '.join(bad)} do not exist in {source}", detail="columns: " + ", ".join(cols)
        )
    spec = embedding.resolve(plpy, model)
    chunking.validate(chunk_size, chunk_overlap, chunk_by, spec.max_tokens)
    name = name or info["relname"]
    if plpy.execute(prep(plpy, "select 1 from ml.vectorizers where name = $1", ["text"]), [name]):
        raise IndbRuntimeError(
            "42710",
            f'vectorizer "{name}" already exists',
            hint="pass name => another name, or ml.drop_vectorizer first",
        )
    if destination:
        parts = run(plpy, "select parse_ident($1) as p", ["text"], [destination])[0]["p"]
        dschema, dtable = parts if len(parts) == 2 else [info["nspname"], parts[-1]]
    else:
        dschema, dtable = info["nspname"], f"{name}_embeddings"
    dest = _qualified(plpy, dschema, dtable)
    exists = run(plpy, "select to_regclass($1) is not null as ok", ["text"], [dest])[0]["ok"]
    if exists:
        _check_destination(plpy, dest, keys, spec.dimensions, model)
    else:
        _create_destination(plpy, dest, keys, spec.dimensions)
    row = run(
        plpy,
        "insert into ml.vectorizers (name, source, key_columns, key_types, columns, model, destination, mode, "
        "batch_size, chunk_size, chunk_overlap, chunk_by, max_attempts) values "
        "($1, $2::regclass, $3, $4, $5, $6, $7::regclass, $8, coalesce($9, 64), $10, $11, $12, coalesce($13, 5)) "
        "returning id",
        ["text", "text", "text[]", "text[]", "text[]", "text", "text", "text", "int4", "int4", "int4", "text", "int4"],
        [
            name,
            source,
            [c for c, _ in keys],
            [t for _, t in keys],
            list(columns),
            model,
            dest,
            mode,
            batch_size,
            chunk_size,
            chunk_overlap,
            chunk_by,
            max_attempts,
        ],
    )[0]
    vid = row["id"]
    srcq = run(plpy, "select $1::regclass::text as s", ["text"], [source])[0]["s"]
    for ev, ref in (
        ("insert", f"referencing new table as {NEW}"),
        ("update", f"referencing old table as {OLD} new table as {NEW}"),
        ("delete", f"referencing old table as {OLD}"),
        ("truncate", ""),
    ):
        plpy.execute(
            f"create trigger {q(f'indb_vectorizer_{vid}_{ev}')} after {ev} on {srcq} {ref} "
            f"for each statement execute function ml._vectorizer_trigger('{vid}')"
        )
    v = Vectorizer.by_id(plpy, vid)
    out = {
        "name": name,
        "id": vid,
        "source": srcq,
        "destination": v.destination,
        "model": model,
        "mode": mode,
        "dimensions": spec.dimensions,
        "long_text": long_text_policy(v, spec),
    }
    if backfill:
        out["backfill"] = refresh(plpy, name, v=v, label="backfill")
    return out


def long_text_policy(v: Vectorizer, spec) -> str:
    if v.chunk_size:
        return f"chunked: {v.chunk_size} {v.chunk_by} per chunk, {v.chunk_overlap} overlap"
    return f"truncated by the model at {spec.max_tokens} tokens" if spec.max_tokens else "whole text"


def _drop_triggers(plpy, v: Vectorizer) -> None:
    q = plpy.quote_ident
    exists = run(plpy, "select to_regclass($1) is not null as ok", ["text"], [v.source])[0]["ok"]
    if not exists:
        return
    for ev in ("insert", "update", "delete", "truncate"):
        plpy.execute(f"drop trigger if exists {q(f'indb_vectorizer_{v.id}_{ev}')} on {v.source}")


def drop(plpy, name: str, drop_embeddings: bool) -> dict:
    v = Vectorizer.by_name(plpy, name, lock=True)
    _drop_triggers(plpy, v)
    run(plpy, "delete from ml.vectorizers where id = $1", ["int4"], [v.id])
    dropped = []
    if drop_embeddings:
        for dest, _ in v.targets():
            plpy.execute(f"drop table if exists {dest}")
            dropped.append(dest)
    return {
        "vectorizer": v.name,
        "dropped_tables": dropped,
        "kept_tables": [] if drop_embeddings else [d for d, _ in v.targets()],
    }


def alter(
    plpy, name: str, mode, batch_size, chunk_size, chunk_overlap, chunk_by, max_attempts, do_refresh: bool
) -> dict:
    v = Vectorizer.by_name(plpy, name, lock=True)
    if mode is not None and mode not in ("sync", "async"):
        raise invalid(f"mode must be 'sync' or 'async', got \"{mode}\"")
    if batch_size is not None and batch_size <= 0:
        raise invalid(f"batch_size must be positive, got {batch_size}")
    new_chunk = v.chunk_size if chunk_size is None else (None if chunk_size == 0 else chunk_size)
    new_overlap = v.chunk_overlap if chunk_overlap is None else chunk_overlap
    if new_chunk is None:
        new_overlap = 0
    new_by = chunk_by or v.chunk_by
    spec = embedding.resolve(plpy, v.model)
    chunking.validate(new_chunk, new_overlap, new_by, spec.max_tokens)
    old_tag = v.tag
    run(
        plpy,
        "update ml.vectorizers set mode = coalesce($2, mode), batch_size = coalesce($3, batch_size), "
        "chunk_size = $4, chunk_overlap = $5, chunk_by = $6, max_attempts = coalesce($7, max_attempts) where id = $1",
        ["int4", "text", "int4", "int4", "int4", "text", "int4"],
        [v.id, mode, batch_size, new_chunk, new_overlap, new_by, max_attempts],
    )
    nv = Vectorizer.by_id(plpy, v.id)
    out = {
        "vectorizer": nv.name,
        "mode": nv.mode,
        "batch_size": nv.batch_size,
        "chunk_size": nv.chunk_size,
        "chunk_overlap": nv.chunk_overlap,
        "chunk_by": nv.chunk_by,
        "long_text": long_text_policy(nv, spec),
    }
    if do_refresh and (nv.tag != old_tag or (v.mode == "async" and nv.mode == "sync")):
        out["refresh"] = refresh(plpy, name, v=nv)
        if nv.mode == "sync":
            run(plpy, "delete from ml.vectorizer_queue where vectorizer_id = $1", ["int4"], [nv.id])
    return out


# -- model migration -------------------------------------------------------------------------------
def migrate(plpy, name: str, new_model: str, backfill: bool) -> dict:
    v = Vectorizer.by_name(plpy, name, lock=True)
    if v.staging_destination and v.staging_role == "candidate":
        raise invalid(
            f'vectorizer "{name}" is already migrating to "{v.staging_model}"',
            hint="ml.promote_vectorizer(name) or ml.drop_vectorizer_staging(name) first",
        )
    if v.staging_destination:  # a kept previous destination: drop it to make room
        plpy.execute(f"drop table if exists {v.staging_destination}")
    if new_model == v.model:
        raise invalid(
            f'vectorizer "{name}" already serves model "{new_model}"',
            hint="to re-embed with the same model use ml.refresh_vectorizer; to migrate name another model",
        )
    spec = embedding.resolve(plpy, new_model)
    chunking.validate(v.chunk_size, v.chunk_overlap, v.chunk_by, spec.max_tokens)
    keys = list(zip(v.key_columns, v.key_types))
    schema, table = run(
        plpy,
        "select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where c.oid = $1::regclass",
        ["text"],
        [v.destination],
    )[0].values()
    stage = _qualified(plpy, schema, table[:50] + "_staging")
    if run(plpy, "select to_regclass($1) is not null as ok", ["text"], [stage])[0]["ok"]:
        raise IndbRuntimeError("42P07", f"table {stage} already exists", hint="drop or rename it, then retry")
    _create_destination(plpy, stage, keys, spec.dimensions)
    run(
        plpy,
        "update ml.vectorizers set staging_model = $2, staging_destination = $3::regclass, "
        "staging_role = 'candidate' where id = $1",
        ["int4", "text", "text"],
        [v.id, new_model, stage],
    )
    nv = Vectorizer.by_id(plpy, v.id)
    out = {
        "vectorizer": name,
        "serving_model": v.model,
        "staging_model": new_model,
        "staging_destination": nv.staging_destination,
    }
    if backfill:
        out["backfill"] = refresh(plpy, name, v=nv, only_staging=True, label="migration backfill")
    return out


def promote(plpy, name: str, force: bool) -> dict:
    v = Vectorizer.by_name(plpy, name, lock=True)
    if not v.staging_destination:
        raise invalid(
            f'vectorizer "{name}" has nothing staged to promote',
            hint="start a migration with ml.migrate_vectorizer(name, new_model)",
        )
    stale = count_stale(plpy, v, v.staging_destination, v.staging_model)
    if stale and not force:
        raise IndbRuntimeError(
            "55000",
            f'staging embeddings of "{name}" are not complete: {stale} row(s) missing or stale',
            hint="run ml.refresh_vectorizer(name) or the worker until they are embedded, or pass force => true",
        )
    q = plpy.quote_ident
    serving_tbl = run(plpy, "select relname from pg_class where oid = $1::regclass", ["text"], [v.destination])[0][
        "relname"
    ]
    staging_tbl = run(plpy, "select relname from pg_class where oid = $1::regclass", ["text"], [v.staging_destination])[
        0
    ]["relname"]
    tmp = f"indb_swap_{v.id}"
    schema = run(
        plpy,
        "select relnamespace::regnamespace::text as s from pg_class where oid = $1::regclass",
        ["text"],
        [v.destination],
    )[0]["s"]
    plpy.execute(f"lock table {v.destination}, {v.staging_destination} in access exclusive mode")
    plpy.execute(f"alter table {v.destination} rename to {q(tmp)}")
    plpy.execute(f"alter table {v.staging_destination} rename to {q(serving_tbl)}")
    plpy.execute(f"alter table {schema}.{q(tmp)} rename to {q(staging_tbl)}")
    # the regclass columns follow the tables (oids), so swap them together with the models
    run(
        plpy,
        "update ml.vectorizers set model = staging_model, staging_model = model, "
        "destination = staging_destination, staging_destination = destination, "
        "staging_role = 'previous' where id = $1",
        ["int4"],
        [v.id],
    )
    nv = Vectorizer.by_id(plpy, v.id)
    return {
        "vectorizer": name,
        "serving_model": nv.model,
        "serving_destination": nv.destination,
        "previous_model": nv.staging_model,
        "previous_destination": nv.staging_destination,
        "stale_rows_promoted": stale,
    }


def drop_staging(plpy, name: str) -> dict:
    v = Vectorizer.by_name(plpy, name, lock=True)
    if not v.staging_destination:
        raise invalid(f'vectorizer "{name}" has no staging or previous destination')
    plpy.execute(f"drop table {v.staging_destination}")
    run(
        plpy,
        "update ml.vectorizers set staging_model = null, staging_destination = null, staging_role = null where id = $1",
        ["int4"],
        [v.id],
    )
    return {"vectorizer": name, "dropped": v.staging_destination, "dropped_model": v.staging_model}


def top_keys(plpy, v: Vectorizer, dest: str, model: str, query: str, k: int) -> list:
    spec = embedding.resolve(plpy, model)
    vec = embedding.to_pgvector(embedding.encode(spec, [query])[0])
    rows = run(
        plpy,
        f"select {v.key_text('d')} from {dest} d order by d.embedding operator({vschema(plpy)}.<=>) "
        f"$1::{vschema(plpy)}.vector limit $2",
        ["text", "int4"],
        [vec, k * 4],
    )
    out = []
    for r in rows:
        key = [r[f"k{i}"] for i in range(v.nkeys)]
        if key not in out:
            out.append(key)
        if len(out) == k:
            break
    return out


def compare(plpy, name: str, queries, k: int) -> list[dict]:
    v = Vectorizer.by_name(plpy, name)
    if not v.staging_destination:
        raise invalid(
            f'vectorizer "{name}" has no staged model to compare with',
            hint="ml.migrate_vectorizer(name, new_model) first",
        )
    if not queries:
        raise invalid("sample_queries must hold at least one query")
    if k is None or k <= 0:
        raise invalid(f"k must be positive, got {k}")
    out = []
    for qtext in queries:
        a = top_keys(plpy, v, v.destination, v.model, qtext, k)
        b = top_keys(plpy, v, v.staging_destination, v.staging_model, qtext, k)
        overlap = len([x for x in a if x in b]) / float(k)
        out.append({"query": qtext, "overlap": overlap, "serving_top": json.dumps(a), "staging_top": json.dumps(b)})
    return out
