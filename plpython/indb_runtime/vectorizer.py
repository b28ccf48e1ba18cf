"""Vectorizers: keep embeddings of a table's rows current in a destination table (schema embeddings).

One catalog row (ml.vectorizers) per vectorizer; four statement-level triggers on the source
(INSERT/UPDATE/DELETE with transition tables, TRUNCATE) run ml._vectorizer_trigger (sql/110), which reads
the transition tables and calls :func:`on_trigger` once per statement.

Trust (SECURITY.md): the SQL here is built from catalog values at the point of use: key columns and key
types come quoted and cast through regtype by ml._vectorizer_sql, relations are regclass texts, user values
are parameters. The source table is read only with the caller's rights, and a superuser's session reads it as
the vectorizer's creator (:func:`as_creator`). Catalogs are written only through the SECURITY DEFINER functions
of sql/110; destinations are checked to be indb_owner's (ml._assert_indb_owned) before they are written.

Change detection: every destination row stores ``content_hash`` (ml._content_hash of the chunking tag and the
embedded content) and the model name; a row needs (re-)embedding when its first chunk (seq 0) is missing or
has another hash or model. Only those rows reach the model, through the one embed-changed-rows core
(embedding.embed_changed), one model call per statement.

Concurrency (async mode): a worker takes queue items ``FOR UPDATE SKIP LOCKED`` and then locks the source
rows ``FOR NO KEY UPDATE SKIP LOCKED`` before reading them, so a writer that changes a row waits for the worker
(or the worker skips it and leaves the item queued), and its own trigger then sees the worker's result.
Two workers never embed the same row at once and nothing older overwrites something newer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from . import chunking, embedding, progress, spi, wire
from .errors import IndbRuntimeError, invalid

RESERVED = ("seq", "chunk", "embedding", "content_hash", "model", "embedded_at")
# a statement that writes this many destination rows into a destination without statistics analyzes it (below)
ANALYZE_AFTER_ROWS = 1000

_VSCHEMA: list[str] = []


def vschema(plpy: spi.Plpy) -> str:
    """Quoted schema of the vector extension: functions pin search_path, so its type and operators are qualified."""
    if not _VSCHEMA:
        r = spi.one(plpy, "select extnamespace::regnamespace::text as s from pg_extension where extname = 'vector'")
        if r is None:
            raise IndbRuntimeError(
                "55000", "the vector extension is not installed in this database", hint="run `indb install`"
            )
        _VSCHEMA.append(r["s"])
    return _VSCHEMA[0]


Key = tuple
Row = tuple  # (key tuple of text, content, hash)


class Vectorizer:
    # the catalog row and the SQL fragments made from it at the point of use (sql/110: ml._vectorizer_sql)
    COLS = (
        "v.id, v.name, v.source::text as source, v.columns, v.model, v.destination::text as destination, "
        "v.mode, v.batch_size, v.chunk_size, v.chunk_overlap, v.chunk_by, v.max_attempts, v.staging_model, "
        "v.staging_destination::text as staging_destination, v.staging_role, v.tenant, v.created_by, "
        "f.qkeys, f.ktypes, f.content, f.hash, "
        "ml._long_text_policy(v.chunk_size, v.chunk_overlap, v.chunk_by, m.max_tokens) as long_text"
    )
    FROM = "cross join lateral ml._vectorizer_sql(v) f join ml.embedding_models m on m.name = v.model"

    id: int
    name: str
    source: str
    model: str
    destination: str
    mode: str
    batch_size: int
    chunk_size: int | None
    chunk_overlap: int
    chunk_by: str
    max_attempts: int
    staging_model: str | None
    staging_destination: str | None
    staging_role: str | None
    tenant: str | None
    created_by: str
    long_text: str

    def __init__(self, plpy: spi.Plpy, row: dict[str, Any]):
        self.plpy = plpy
        for k, v in row.items():
            setattr(self, k, v)
        self.columns = list(row["columns"])
        self.qkeys: list[str] = list(row["qkeys"])
        self.ktypes: list[str] = list(row["ktypes"])
        self.content_sql: str = row["content"]
        self.hash_sql: str = row["hash"]
        self.nkeys = len(self.qkeys)
        self.policy = embedding.LongText(self.chunk_size, self.chunk_overlap or 0, self.chunk_by)
        self._owned = False
        self._analyzed: set[str] = set()  # destinations this object analyzed (analyze_if_unknown: once each)

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, plpy: spi.Plpy, lookup: str, typ: str, value: Any) -> Vectorizer:
        row = spi.one(plpy, f"select {cls.COLS} from {lookup}($1) v {cls.FROM}", [typ], [value])
        if row is None:  # the lookup functions raise; a missing model row cannot happen (foreign key)
            raise IndbRuntimeError(
                "42704", f"vectorizer {value} not found", hint="list them with SELECT name FROM ml.vectorizer_status"
            )
        return cls(plpy, row)

    @classmethod
    def by_name(cls, plpy: spi.Plpy, name: str, write: bool = False) -> Vectorizer:
        """A vectorizer this session may see (``write``: may change: its tenant's, 42501 otherwise)."""
        return cls.load(plpy, "ml._vectorizer_for_write" if write else "ml._vectorizer", "text", name)

    @classmethod
    def by_id(cls, plpy: spi.Plpy, vid: int) -> Vectorizer:
        return cls.load(plpy, "ml._vectorizer_by_id", "int4", vid)

    def reload(self) -> Vectorizer:
        return Vectorizer.by_id(self.plpy, self.id)

    def check_source(self) -> None:
        """Before the source is read: still a table, key and content columns of built-in types."""
        spi.run(self.plpy, "select ml._vectorizer_check_source(v) from ml._vectorizer_by_id($1) v", ["int4"], [self.id])

    # -- SQL fragments (alias s: the source or a transition table) --------------------------------
    def content_expr(self, alias: str = "s") -> str:
        assert alias == "s", "ml._vectorizer_sql builds the content over alias s"
        return self.content_sql

    def hash_expr(self, alias: str = "s") -> str:
        assert alias == "s", "ml._vectorizer_sql builds the hash over alias s"
        return self.hash_sql

    def key_text(self, alias: str) -> str:
        return ", ".join(f"{alias}.{k}::text as k{i}" for i, k in enumerate(self.qkeys))

    def key_match(self, a: str, c: str) -> str:
        """a.<key> = c.k<i> for every key column (c from unnest_keys: the keys already of the key's type).

        No cast may stand in this clause: a text-to-type cast is not leakproof, so under row-level security
        (every destination has a forced policy) the planner could not use it as an index condition and
        would hash-join a sequential scan of the whole destination for every written row."""
        return " and ".join(f"{a}.{k} = {c}.k{i}" for i, k in enumerate(self.qkeys))

    def key_join(self, a: str, b: str) -> str:
        return " and ".join(f"{a}.{k} = {b}.{k}" for k in self.qkeys)

    def unnest_keys(self, first_param: int = 1, extra: list[str] | None = None) -> str:
        """unnest($1::text[]::<key type>[], ... [, extra...]) as c(k0, ..., kn [, extra names]): the keys arrive
        as text and are cast here, once per array, so that key_match compares columns of one type."""
        n = self.nkeys
        params = [f"${first_param + i}::text[]::{t}[]" for i, t in enumerate(self.ktypes)]
        names = [f"k{i}" for i in range(n)]
        for j, e in enumerate(extra or []):
            typ, name = e.split(" ")
            params.append(f"${first_param + n + j}::{typ}")
            names.append(name)
        return f"unnest({', '.join(params)}) with ordinality as c({', '.join(names)}, ord)"

    def key_columns_arrays(self, keys: list[Key]) -> list[list]:
        return [[k[i] for k in keys] for i in range(self.nkeys)]

    def targets(self) -> list[tuple[str, str]]:
        """(destination, model) pairs this vectorizer writes; each checked to be indb_owner's (once)."""
        out = [(self.destination, self.model)]
        if self.staging_destination and self.staging_model:
            out.append((self.staging_destination, self.staging_model))
        if not self._owned:
            for dest, _ in out:
                spi.run(self.plpy, "select ml._assert_indb_owned($1::regclass)", ["text"], [dest])
            self._owned = True
        return out

    # -- reading rows ----------------------------------------------------------------------------
    def rows_from(self, relation: str, where: str = "", types=None, args=None, suffix: str = "") -> list[Row]:
        """[(key tuple of text, content, hash)] from the source (read with the caller's rights)."""
        sql = (
            f"select {self.key_text('s')}, {self.content_expr()} as content, {self.hash_expr()} as h "
            f"from {relation} s {where} {suffix}"
        )
        rows = spi.run(self.plpy, sql, types or (), args or ())
        return [(tuple(r[f"k{i}"] for i in range(self.nkeys)), r["content"], r["h"]) for r in rows]

    def source_rows(self, keys: list[Key], lock: bool = False) -> list[Row]:
        if not keys:
            return []
        n = self.nkeys
        sql = (
            f"select {self.key_text('s')}, {self.content_expr()} as content, {self.hash_expr()} as h "
            f"from {self.source} s join {self.unnest_keys()} on {self.key_match('s', 'c')}"
            + (" for no key update of s skip locked" if lock else "")
        )
        rows = spi.run(self.plpy, sql, ["text[]"] * n, self.key_columns_arrays(keys))
        return [(tuple(r[f"k{i}"] for i in range(n)), r["content"], r["h"]) for r in rows]

    # -- destination -----------------------------------------------------------------------------
    def stale(self, dest: str, model: str, rows: list[Row]) -> list[int]:
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
        res = spi.run(self.plpy, sql, ["text[]"] * n + ["text[]", "text"], args)
        return sorted(r["ord"] - 1 for r in res)

    def delete_keys(self, dest: str, keys: list[Key]) -> int:
        if not keys:
            return 0
        n = self.nkeys
        sql = f"delete from {dest} d using {self.unnest_keys()} where {self.key_match('d', 'c')}"
        return spi.run(self.plpy, sql, ["text[]"] * n, self.key_columns_arrays(keys)).nrows()

    def dest_hashes(self, dest: str, model: str, keys: list[Key]) -> dict[str, list[Key]]:
        if not keys:
            return {}
        n = self.nkeys
        sql = (
            f"select {self.key_text('d')}, d.content_hash from {dest} d join {self.unnest_keys()} "
            f"on {self.key_match('d', 'c')} where d.seq = 0 and d.model = ${n + 1}"
        )
        out: dict[str, list[Key]] = {}
        for r in spi.run(self.plpy, sql, ["text[]"] * n + ["text"], self.key_columns_arrays(keys) + [model]):
            out.setdefault(r["content_hash"], []).append(tuple(r[f"k{i}"] for i in range(n)))
        return out

    def move_key(self, dest: str, old: Key, new: Key) -> None:
        n = self.nkeys
        sets = ", ".join(f"{k} = ${n + 1 + i}::{t}" for i, (k, t) in enumerate(zip(self.qkeys, self.ktypes)))
        where = " and ".join(f"{k} = ${1 + i}::{t}" for i, (k, t) in enumerate(zip(self.qkeys, self.ktypes)))
        spi.run(self.plpy, f"update {dest} set {sets} where {where}", ["text"] * (2 * n), list(old) + list(new))

    def embed_and_write(
        self, dest: str, model: str, rows: list[Row], on_progress: Callable[[float], None] | None = None
    ) -> int:
        """Embed rows (key, content, hash) with ``model`` (the embed-changed-rows core: chunked by the long-text
        policy, one model call) and replace their destination rows. Returns chunks written. ``on_progress``:
        the fraction embedded, after each model batch."""
        rows = [r for r in rows if r[1]]
        if not rows:
            return 0
        done = embedding.embed_changed(
            self.plpy,
            model,
            [r[1] for r in rows],
            policy=self.policy,
            batch_size=self.batch_size,
            on_progress=on_progress,
        )
        self.delete_keys(dest, [r[0] for r in rows])
        keys: list[Key] = []
        seqs: list[int] = []
        texts: list[str] = []
        vecs: list[str] = []
        hashes: list[str] = []
        for r, e in zip(rows, done):
            for seq, piece, vec in e.pieces if e is not None else []:
                keys.append(r[0])
                seqs.append(seq)
                texts.append(piece)
                vecs.append(embedding.to_pgvector(vec))
                hashes.append(r[2])
        if not keys:
            return 0
        n = self.nkeys
        casts = ", ".join(f"c.k{i}::{t}" for i, t in enumerate(self.ktypes))
        sql = (
            f"insert into {dest} ({', '.join(self.qkeys)}, seq, chunk, embedding, content_hash, model, embedded_at) "
            f"select {casts}, c.seq, c.chunk, c.e::{vschema(self.plpy)}.vector, c.h, ${n + 5}, clock_timestamp() "
            f"from {self.unnest_keys(extra=['int4[] seq', 'text[] chunk', 'text[] e', 'text[] h'])}"
        )
        args = self.key_columns_arrays(keys) + [seqs, texts, vecs, hashes, model]
        spi.run(self.plpy, sql, ["text[]"] * n + ["int4[]", "text[]", "text[]", "text[]", "text"], args)
        if len(keys) >= ANALYZE_AFTER_ROWS:
            self.analyze_if_unknown(dest)
        return len(keys)

    def analyze_if_unknown(self, dest: str) -> None:
        """ANALYZE ``dest`` when it was never analyzed, or held no rows when it was (a new destination that one
        statement filled, e.g. a bulk INSERT into the source). The statements above look rows up by key through
        plans each backend keeps; without statistics PostgreSQL assumes 200 distinct keys, so every key seems to
        match a share of the table and the plan hash-joins a scan of the whole destination: after a 2,000-row
        INSERT each single-row INSERT scanned it (~1-2 ms then, growing with the table) until autovacuum analyzed
        it, up to a minute later. Once analyzed, the key's distinct count is stored as a fraction of the rows and
        stays right as the table grows. Never waits: when another session holds the lock ANALYZE needs (its own
        ANALYZE, a VACUUM), this is left to autovacuum; and never fails the statement that wrote the rows."""
        if dest in self._analyzed:  # its statistics reach the cumulative view only when this transaction ends
            return
        self._analyzed.add(dest)
        r = spi.one(
            self.plpy,
            # (pg_stats shows nothing of a table under forced row security, even to its owner: the cumulative
            # statistics say whether it was ever analyzed, reltuples whether it held rows then)
            "select pg_catalog.pg_has_role(c.relowner, 'USAGE') and (c.reltuples <= 0 or coalesce("
            "greatest(t.last_analyze, t.last_autoanalyze) is null, true)) as go, "
            "pg_catalog.current_setting('lock_timeout') as lt "
            "from pg_catalog.pg_class c left join pg_catalog.pg_stat_all_tables t on t.relid = c.oid "
            "where c.oid = $1::regclass",
            ["text"],
            [dest],
        )
        if not r or not r["go"]:
            return
        spi.run(self.plpy, "select pg_catalog.set_config('lock_timeout', '100ms', true)")
        try:
            with self.plpy.subtransaction():  # type: ignore[attr-defined]
                self.plpy.execute(f"analyze {dest}")
        except self.plpy.SPIError as e:  # type: ignore[attr-defined]
            # the rows are written: a failed ANALYZE (the lock, anything else) must not fail the statement; a
            # cancel or statement_timeout still does
            if getattr(e, "sqlstate", None) == "57014":
                raise
        finally:
            spi.run(self.plpy, "select pg_catalog.set_config('lock_timeout', $1, true)", ["text"], [r["lt"]])

    # -- catalogs, through the definers of sql/110 -------------------------------------------------
    def enqueue(self, keys: list[Key]) -> int:
        if not keys:
            return 0
        spi.run(
            self.plpy,
            "select ml._vectorizer_enqueue($1, $2) as n",
            ["int4", "jsonb"],
            [self.id, json.dumps([list(k) for k in keys])],
        )
        return len(keys)

    def touch(self, embedded: int = 0, error: str | None = None) -> None:
        spi.run(
            self.plpy, "select ml._vectorizer_touch($1, $2, $3)", ["int4", "int8", "text"], [self.id, embedded, error]
        )

    def pending(self) -> int:
        sql = "select count(*) as n from ml.vectorizer_queue where vectorizer_id = $1"
        r = spi.one(self.plpy, sql, ["int4"], [self.id])
        return int(r["n"]) if r else 0


@contextmanager
def as_creator(plpy: spi.Plpy, v: Vectorizer) -> Iterator[None]:
    """Read a vectorizer's source as its creator when the session is a superuser or bypasses row-level security.

    A worker shared by every vectorizer (a superuser's `indb worker`, a cron job) would otherwise read each source
    with rights its owner never had, and let each source owner run code with every other source's grants.
    The role and tenant are set for the rest of the transaction's statements and put back after."""
    me = spi.one(
        plpy,
        "select r.rolsuper or r.rolbypassrls as privileged, current_setting('role') as role, "
        "coalesce(current_setting('indb.tenant', true), '') as tenant from pg_roles r where r.rolname = current_user",
    )
    if me is None or not me["privileged"]:
        yield
        return
    creator = spi.one(
        plpy, "select rolsuper or rolbypassrls as privileged from pg_roles where rolname = $1", ["text"], [v.created_by]
    )
    if creator is None:
        raise IndbRuntimeError(
            "42704",
            f'role "{v.created_by}", which made vectorizer "{v.name}", no longer exists',
            detail="a superuser's worker reads each source table as the role that made the vectorizer",
            hint="re-create the vectorizer as the role that owns its source table",
        )
    if creator["privileged"]:  # made by a superuser: it reads as one already
        yield
        return
    spi.run(
        plpy,
        "select set_config('role', $1, true), set_config('indb.tenant', $2, true)",
        ["text", "text"],
        [v.created_by, v.tenant or ""],
    )
    try:
        yield
    finally:
        spi.run(
            plpy,
            "select set_config('role', $1, true), set_config('indb.tenant', $2, true)",
            ["text", "text"],
            [me["role"], me["tenant"]],
        )


# -- triggers ------------------------------------------------------------------------------------
def on_trigger(plpy: spi.Plpy, vid: int, keys: list, contents: list, hashes: list, vanished: list) -> dict:
    """ml._vectorizer_apply: what the statement trigger read from its transition tables (sql/110)."""
    v = Vectorizer.by_id(plpy, vid)
    rows = [(tuple(k), c, h) for k, c, h in zip(keys, contents, hashes)]
    return apply_changes(plpy, v, rows, [tuple(k) for k in vanished])


def apply_changes(plpy: spi.Plpy, v: Vectorizer, rows: list[Row], vanished: list[Key]) -> dict:
    """Bring the destinations up to date for ``rows`` (key, content, hash) and keys that disappeared.

    Unchanged rows are skipped; rows whose key changed but content did not have their embeddings moved;
    the rest are embedded now (sync) or queued (async)."""
    to_queue: dict[Key, bool] = {}
    stats = {"embedded": 0, "moved": 0, "queued": 0, "deleted": 0}
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
            stats["embedded"] += v.embed_and_write(dest, model, work)
        elif v.mode == "sync":
            # a staged model must not block writes: if it fails, its rows are queued and retried
            try:
                with plpy.subtransaction():  # type: ignore[attr-defined]
                    stats["embedded"] += v.embed_and_write(dest, model, work)
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
QUEUE_STATS = ("processed", "embedded", "unchanged", "deleted", "skipped_locked", "failed", "retrying")


def process_queue(plpy: spi.Plpy, name: str | None, batch_size: int | None) -> list[dict]:
    """ml.process_queue: one row per vectorizer processed (``name``, or every one this session may change that
    has due items); a vectorizer that fails as a whole (a dropped source) gets a row with its ``error``."""
    if batch_size is not None and batch_size <= 0:
        raise invalid(
            f"batch_size must be positive, got {batch_size}",
            hint="pass NULL to take the vectorizer's own batch size (4 x its batch_size rows per call)",
        )
    if name is not None:
        v = Vectorizer.by_name(plpy, name, write=True)
        with as_creator(plpy, v):
            return [_process(plpy, v, batch_size)]
    names = [
        r["name"]
        for r in spi.run(
            plpy,
            "select v.name from ml.vectorizers v where exists (select 1 from ml.vectorizer_queue q "
            "where q.vectorizer_id = v.id and q.next_attempt_at <= now()) "
            "and (v.tenant is not distinct from ml.current_tenant() or ml.is_admin()) order by v.id",
        )
    ]
    out: list[dict] = []
    for n in names:
        # one broken vectorizer (a dropped source, a changed column type) does not stop the others
        try:
            with plpy.subtransaction():  # type: ignore[attr-defined]
                out += process_queue(plpy, n, batch_size)
        except Exception as e:
            if _is_cancel(e):
                raise
            err = _error_text(e)
            plpy.warning(f'vectorizer "{n}" was skipped: {err}')
            row = spi.one(
                plpy,
                "select count(*) as n from ml.vectorizer_queue q join ml.vectorizers v on v.id = q.vectorizer_id "
                "where v.name = $1",
                ["text"],
                [n],
            )
            out.append(
                {"vectorizer": n, **dict.fromkeys(QUEUE_STATS, 0), "pending": row["n"] if row else None, "error": err}
            )
    return out


def _process(plpy: spi.Plpy, v: Vectorizer, batch_size: int | None) -> dict:
    stats: dict[str, Any] = {"vectorizer": v.name, **dict.fromkeys(QUEUE_STATS, 0)}
    v.targets()  # indb_owner's destinations, checked before any work (a failure below is retried per row)
    # rows per transaction; the model still sees v.batch_size texts at a time, sorted by length across the take
    items = spi.run(
        plpy,
        "select id, key::text as key, attempts from ml._vectorizer_take($1, $2)",
        ["int4", "int4"],
        [v.id, batch_size or v.batch_size * 4],
    )
    if not items:
        stats["pending"] = v.pending()
        return stats
    v.check_source()
    by_key: dict[Key, list[int]] = {}
    attempts: dict[int, int] = {}
    for it in items:
        by_key.setdefault(tuple(json.loads(it["key"])), []).append(it["id"])
        attempts[it["id"]] = it["attempts"]
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
        done_ids += by_key[k]
    failures: dict[Key, str] = {}
    touched: set[Key] = set()

    def work(rows: list[Row]) -> int:
        n = 0
        for dest, model in v.targets():
            stale = [rows[i] for i in v.stale(dest, model, rows)]
            touched.update(r[0] for r in stale)
            empty = [r[0] for r in stale if not r[1]]
            if empty:
                v.delete_keys(dest, empty)
            n += v.embed_and_write(dest, model, [r for r in stale if r[1]])
        return n

    try:
        with plpy.subtransaction():  # type: ignore[attr-defined]
            stats["embedded"] += work(locked_rows)
        ok_rows = locked_rows
    except Exception as e:
        if _is_cancel(e) or _runtime_down(e):
            raise
        ok_rows = []
        for r in locked_rows:
            try:
                with plpy.subtransaction():  # type: ignore[attr-defined]
                    stats["embedded"] += work([r])
                ok_rows.append(r)
            except Exception as e1:
                if _is_cancel(e1) or _runtime_down(e1):
                    raise
                failures[r[0]] = _error_text(e1)
    for r in ok_rows:
        done_ids += by_key[r[0]]
    stats["processed"] = sum(len(by_key[r[0]]) for r in ok_rows)
    stats["unchanged"] = len([r for r in ok_rows if r[0] not in touched])
    return _finish(plpy, v, stats, done_ids, {k: (by_key[k], err) for k, err in failures.items()}, attempts)


def _finish(
    plpy: spi.Plpy,
    v: Vectorizer,
    stats: dict[str, Any],
    done_ids: list[int],
    failures: dict[Key, tuple[list[int], str]],
    attempts: dict[int, int],
) -> dict[str, Any]:
    """Done items leave the queue; failed ones wait backoff_seconds or, after max_attempts, go to
    ml.vectorizer_failed (ml._vectorizer_finish); the run's statistics are recorded."""
    failed_ids = [i for ids, _ in failures.values() for i in ids]
    errors = [err for ids, err in failures.values() for _ in ids]
    delays = [float(backoff_seconds(attempts.get(i, 0) + 1)) for i in failed_ids]
    res = spi.one(
        plpy,
        "select ml._vectorizer_finish($1, $2, $3, $4, $5)::text as r",
        ["int4", "int8[]", "int8[]", "text[]", "float8[]"],
        [v.id, done_ids, failed_ids, errors, delays],
    )
    finished = json.loads(res["r"]) if res else {}
    stats["failed"] = finished.get("failed", 0)
    stats["retrying"] = finished.get("retrying", 0)
    last_error = errors[-1] if errors else None
    v.touch(stats["embedded"], last_error)
    if last_error:
        plpy.warning(
            f'vectorizer "{v.name}": {len(failures)} row(s) failed to embed and stay queued or moved to '
            f"ml.vectorizer_failed: {last_error}"
        )
    stats["pending"] = v.pending()
    return stats


def backoff_seconds(attempts: int) -> int:
    """The delay before the next attempt of an item that failed ``attempts`` times: 2, 4, 8 ... at most 300 s."""
    return min(2**attempts, 300)


def _is_cancel(e: Exception) -> bool:
    return getattr(e, "sqlstate", None) in ("57014", "57P01", "57P02", "57P03") or "canceling statement" in str(e)


def _runtime_down(e: Exception) -> bool:
    """The shared runtime service does not answer (indb.runtime = 'shared'): no row is at fault, so the take is
    rolled back and every item stays queued, its attempts untouched, for the next round."""
    return getattr(e, "sqlstate", None) == wire.UNAVAILABLE


def _error_text(e: Exception) -> str:
    if isinstance(e, IndbRuntimeError):
        return f"[{e.sqlstate}] {e.message}"
    return f"[{getattr(e, 'sqlstate', None) or type(e).__name__}] {e}"


# -- refresh / backfill --------------------------------------------------------------------------
def refresh(
    plpy: spi.Plpy,
    name: str,
    max_rows: int | None = None,
    only_staging: bool = False,
    v: Vectorizer | None = None,
    label: str = "refresh",
) -> dict:
    """Re-embed (sync) or queue (async) the rows whose hash or model differs; drop orphans."""
    v = v or Vectorizer.by_name(plpy, name, write=True)
    if max_rows is not None and max_rows <= 0:
        raise invalid(f"max_rows must be positive, got {max_rows}", hint="pass NULL to refresh every stale row")
    with as_creator(plpy, v):
        return _refresh(plpy, v, max_rows, only_staging, label)


def _refresh(plpy: spi.Plpy, v: Vectorizer, max_rows: int | None, only_staging: bool, label: str) -> dict:
    v.check_source()
    stats: dict[str, Any] = {
        "vectorizer": v.name,
        "mode": v.mode,
        "embedded_rows": 0,
        "embedded_chunks": 0,
        "queued": 0,
        "deleted": 0,
    }
    targets = v.targets()[1:] if only_staging else v.targets()
    t0 = time.time()
    with progress.Progress(plpy, f"vectorizer {label}", target=v.name, unit="rows") as p:
        for dest, model in targets:
            p.update(0, phase=f"finding changed rows for {dest}")
            # orphans: destination rows whose source row is gone or has nothing to embed
            stats["deleted"] += plpy.execute(
                f"delete from {dest} d where not exists (select 1 from {v.source} s where {v.key_join('s', 'd')} "
                f"and {v.content_expr()} <> '')"
            ).nrows()
            where = (
                f"where {v.content_expr()} <> '' and not exists (select 1 from {dest} d where "
                f"{v.key_join('d', 's')} and d.seq = 0 and d.content_hash = {v.hash_expr()} and d.model = $1)"
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
            p.update(0, total=len(rows), phase=f"embedding into {dest}")
            step = max(v.batch_size * 4, 256)
            for i in range(0, len(rows), step):
                part = rows[i : i + step]

                def report(frac: float, i: int = i, n: int = len(part)) -> None:
                    p.update(i + int(n * frac))

                stats["embedded_chunks"] += v.embed_and_write(dest, model, part, on_progress=report)
                stats["embedded_rows"] += len(part)
                p.update(i + len(part))
            if len(rows) >= ANALYZE_AFTER_ROWS:  # written in steps smaller than that: see analyze_if_unknown
                v.analyze_if_unknown(dest)
    # rows without an up-to-date embedding after this call (queued ones too): only max_rows leaves some
    stats["remaining"] = sum(count_stale(plpy, v, d, m) for d, m in targets) if max_rows else 0
    v.touch(stats["embedded_chunks"])
    stats["seconds"] = round(time.time() - t0, 3)
    return stats


def count_stale(plpy: spi.Plpy, v: Vectorizer, dest: str, model: str) -> int:
    r = spi.one(
        plpy,
        f"select count(*) as n from {v.source} s where {v.content_expr()} <> '' and not exists ("
        f"select 1 from {dest} d where {v.key_join('d', 's')} and d.seq = 0 and "
        f"d.content_hash = {v.hash_expr()} and d.model = $1)",
        ["text"],
        [model],
    )
    return int(r["n"]) if r else 0


# -- create / alter / drop -------------------------------------------------------------------------
def _columns(plpy: spi.Plpy, rel: str) -> list[str]:
    rows = spi.run(
        plpy,
        "select attname from pg_attribute where attrelid = $1::regclass and attnum > 0 and not attisdropped "
        "order by attnum",
        ["text"],
        [rel],
    )
    return [r["attname"] for r in rows]


def _destination_name(plpy: spi.Plpy, destination: str | None) -> str | None:
    """destination => a new table name in schema embeddings (``embeddings.x`` or ``x``); nothing else."""
    if not destination:
        return None
    parts = spi.one(plpy, "select parse_ident($1) as p", ["text"], [destination])["p"]  # type: ignore[index]
    if len(parts) == 2 and parts[0] == "embeddings":
        return parts[1]
    if len(parts) != 1:
        raise invalid(
            f"destination {destination} is not in schema embeddings",
            detail="indb makes every destination itself, in schema embeddings, owned by indb_owner: "
            "never an existing table",
            hint="pass destination => a new table name (it is made as embeddings.<name>), or leave it out",
        )
    return parts[0]


def create(
    plpy: spi.Plpy,
    source: str,
    columns: list | None,
    model: str,
    mode: str,
    chunk_size: int | None,
    chunk_overlap: int | None,
    name: str | None,
    batch_size: int | None,
    destination: str | None,
    backfill: bool,
    chunk_by: str,
    max_attempts: int | None,
) -> dict:
    if source is None or not columns:
        raise invalid(
            "source and columns are required: " + ("source is NULL" if source is None else "columns is empty"),
            hint="e.g. ml.create_vectorizer('docs', array['title', 'body'])",
        )
    _check_mode(mode)
    _check_batch_size(batch_size)
    chunk_overlap = chunk_overlap or 0
    cols = _columns(plpy, source)
    bad = [c for c in columns if c not in cols]
    if bad:
        raise IndbRuntimeError(
            "42703",
            f"column(s) {', '.join(bad)} do not exist in {source}",
            detail="columns: " + ", ".join(cols),
            hint="name the text columns to embed, e.g. array['title', 'abstract']",
        )
    spec = embedding.resolve(plpy, model)
    chunking.validate(chunk_size, chunk_overlap, chunk_by, spec.max_tokens)
    if name is None:
        name = spi.one(plpy, "select relname::text as n from pg_class where oid = $1::regclass", ["text"], [source])[  # type: ignore[index]
            "n"
        ]
    row = spi.one(
        plpy,
        "select (ml._vectorizer_create($1, $2::regclass, $3, $4, $5, $6, $7, $8, $9, $10, $11)).id as id",
        ["text", "text", "text[]", "text", "text", "int4", "int4", "int4", "text", "int4", "text"],
        [
            name,
            source,
            list(columns),
            model,
            mode,
            batch_size,
            chunk_size,
            chunk_overlap,
            chunk_by,
            max_attempts,
            _destination_name(plpy, destination),
        ],
    )
    vid = int(row["id"])  # type: ignore[index]
    # the triggers go on the caller's own table, with the caller's rights
    srcq = spi.one(plpy, "select $1::regclass::text as s", ["text"], [source])["s"]  # type: ignore[index]
    for ev, ref in (
        ("insert", "referencing new table as indb_new"),
        ("update", "referencing old table as indb_old new table as indb_new"),
        ("delete", "referencing old table as indb_old"),
        ("truncate", ""),
    ):
        plpy.execute(
            f"create trigger {spi.ident(f'indb_vectorizer_{vid}_{ev}')} after {ev} on {srcq} {ref} "
            f"for each statement execute function ml._vectorizer_trigger('{vid}')"
        )
    v = Vectorizer.by_id(plpy, vid)
    out: dict[str, Any] = {
        "name": v.name,
        "id": vid,
        "source": srcq,
        "destination": v.destination,
        "model": model,
        "mode": mode,
        "dimensions": spec.dimensions,
        "long_text": v.long_text,
    }
    out.update(_work_done(refresh(plpy, v.name, v=v, label="backfill") if backfill else None))
    return out


def _work_done(r: dict | None) -> dict:
    """The columns a create, alter or migrate shares with ml.refresh_vectorizer (NULL when nothing was run)."""
    keys = ("embedded_rows", "embedded_chunks", "queued", "deleted", "seconds")
    return {k: (r or {}).get(k) for k in keys}


def _check_mode(mode: str | None) -> None:
    if mode not in ("sync", "async"):
        raise invalid(
            "mode must be 'sync' or 'async', got " + ("NULL" if mode is None else f'"{mode}"'),
            hint="sync embeds in the writing statement; async queues rows for ml.process_queue or `indb worker`",
        )


def _check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and batch_size <= 0:
        raise invalid(
            f"batch_size must be positive, got {batch_size}", hint="texts per model call, e.g. 64 (the default)"
        )


def _drop_triggers(plpy: spi.Plpy, v: Vectorizer) -> None:
    if not spi.one(plpy, "select to_regclass($1) is not null as ok", ["text"], [v.source])["ok"]:  # type: ignore[index]
        return
    for ev in ("insert", "update", "delete", "truncate"):
        plpy.execute(f"drop trigger if exists {spi.ident(f'indb_vectorizer_{v.id}_{ev}')} on {v.source}")


def drop(plpy: spi.Plpy, name: str, drop_embeddings: bool) -> dict:
    v = Vectorizer.by_name(plpy, name, write=True)
    _drop_triggers(plpy, v)
    dropped = spi.one(plpy, "select ml._vectorizer_delete($1, $2) as d", ["text", "bool"], [v.name, drop_embeddings])
    kept = [d for d in (v.destination, v.staging_destination) if d]
    return {
        "vectorizer": v.name,
        "dropped_tables": list(dropped["d"]) if dropped else [],
        "kept_tables": [] if drop_embeddings else kept,
    }


def alter(
    plpy: spi.Plpy,
    name: str,
    mode: str | None,
    batch_size: int | None,
    chunk_size: int | None,
    chunk_overlap: int | None,
    chunk_by: str | None,
    max_attempts: int | None,
    do_refresh: bool,
) -> dict:
    v = Vectorizer.by_name(plpy, name, write=True)
    if mode is not None:
        _check_mode(mode)
    _check_batch_size(batch_size)
    new_chunk = v.chunk_size if chunk_size is None else (None if chunk_size == 0 else chunk_size)
    new_overlap = v.chunk_overlap if chunk_overlap is None else chunk_overlap
    if new_chunk is None:
        new_overlap = 0
    new_by = chunk_by or v.chunk_by
    spec = embedding.resolve(plpy, v.model)
    chunking.validate(new_chunk, new_overlap, new_by, spec.max_tokens)
    spi.run(
        plpy,
        "select ml._vectorizer_update($1, $2, $3, $4, $5, $6, $7)",
        ["text", "text", "int4", "int4", "int4", "text", "int4"],
        [v.name, mode, batch_size, new_chunk, new_overlap, new_by, max_attempts],
    )
    nv = v.reload()
    out: dict[str, Any] = {
        "vectorizer": nv.name,
        "mode": nv.mode,
        "batch_size": nv.batch_size,
        "chunk_size": nv.chunk_size,
        "chunk_overlap": nv.chunk_overlap,
        "chunk_by": nv.chunk_by,
        "max_attempts": nv.max_attempts,
        "long_text": nv.long_text,
    }
    done = None
    if do_refresh and (nv.hash_sql != v.hash_sql or (v.mode == "async" and nv.mode == "sync")):
        done = refresh(plpy, name, v=nv)
        if nv.mode == "sync":
            spi.run(plpy, "select ml._vectorizer_clear_queue($1)", ["int4"], [nv.id])
    out["refreshed"] = done is not None
    out.update(_work_done(done))
    return out


# -- model migration -------------------------------------------------------------------------------
def migrate(plpy: spi.Plpy, name: str, new_model: str, backfill: bool) -> dict:
    v = Vectorizer.by_name(plpy, name, write=True)
    if v.staging_destination and v.staging_role == "candidate":
        raise invalid(
            f'vectorizer "{name}" is already migrating to "{v.staging_model}"',
            hint="ml.promote_vectorizer(name) or ml.drop_vectorizer_staging(name) first",
        )
    if new_model == v.model:
        raise invalid(
            f'vectorizer "{name}" already serves model "{new_model}"',
            hint="to re-embed with the same model use ml.refresh_vectorizer; to migrate name another model",
        )
    spec = embedding.resolve(plpy, new_model)
    chunking.validate(v.chunk_size, v.chunk_overlap, v.chunk_by, spec.max_tokens)
    spi.run(plpy, "select ml._vectorizer_stage($1, $2)", ["text", "text"], [v.name, new_model])
    nv = v.reload()
    out: dict[str, Any] = {
        "vectorizer": name,
        "serving_model": v.model,
        "staging_model": new_model,
        "staging_destination": nv.staging_destination,
    }
    out.update(
        _work_done(refresh(plpy, name, v=nv, only_staging=True, label="migration backfill") if backfill else None)
    )
    return out


def promote(plpy: spi.Plpy, name: str, force: bool) -> dict:
    v = Vectorizer.by_name(plpy, name, write=True)
    if not v.staging_destination or not v.staging_model:
        raise invalid(
            f'vectorizer "{name}" has nothing staged to promote',
            hint="start a migration with ml.migrate_vectorizer(name, new_model)",
        )
    with as_creator(plpy, v):
        v.check_source()
        stale = count_stale(plpy, v, v.staging_destination, v.staging_model)
    if stale and not force:
        raise IndbRuntimeError(
            "55000",
            f'staging embeddings of "{name}" are not complete: {stale} row(s) missing or stale',
            hint="run ml.refresh_vectorizer(name) or the worker until they are embedded, or pass force => true",
        )
    spi.run(plpy, "select ml._vectorizer_promote($1)", ["text"], [v.name])
    nv = v.reload()
    return {
        "vectorizer": name,
        "serving_model": nv.model,
        "serving_destination": nv.destination,
        "previous_model": nv.staging_model,
        "previous_destination": nv.staging_destination,
        "stale_rows_promoted": stale,
    }


def top_keys(plpy: spi.Plpy, v: Vectorizer, dest: str, model: str, query: str, k: int) -> list:
    spec = embedding.resolve(plpy, model)
    vec = embedding.to_pgvector(embedding.embed_texts(plpy, spec, [query])[0])
    rows = spi.run(
        plpy,
        f"select {v.key_text('d')} from {dest} d order by d.embedding operator({vschema(plpy)}.<=>) "
        f"$1::{vschema(plpy)}.vector limit $2",
        ["text", "int4"],
        [vec, k * 4],
    )
    out: list[list] = []
    for r in rows:
        key = [r[f"k{i}"] for i in range(v.nkeys)]
        if key not in out:
            out.append(key)
        if len(out) == k:
            break
    return out


def compare(plpy: spi.Plpy, name: str, queries: list | None, k: int | None) -> list[dict]:
    v = Vectorizer.by_name(plpy, name)
    if not v.staging_destination or not v.staging_model:
        raise invalid(
            f'vectorizer "{name}" has no staged model to compare with',
            hint="ml.migrate_vectorizer(name, new_model) first",
        )
    if not queries:
        raise invalid(
            "sample_queries must hold at least one query", hint="e.g. array['aspirin and fever', 'vitamin D']"
        )
    if k is None or k <= 0:
        raise invalid(f"k must be positive, got {'NULL' if k is None else k}", hint="e.g. k => 10")
    out = []
    for qtext in queries:
        a = top_keys(plpy, v, v.destination, v.model, qtext, k)
        b = top_keys(plpy, v, v.staging_destination, v.staging_model, qtext, k)
        overlap = len([x for x in a if x in b]) / float(k)
        out.append({"query": qtext, "overlap": overlap, "serving_top": json.dumps(a), "staging_top": json.dumps(b)})
    return out
