"""Client methods for embeddings and vectorizers (SQL: ml.embed, ml.chunk, ml.*vectorizer*, ml.process_queue).

The SQL functions that act on a vectorizer return one row of columns; these methods return that row as a dict
(the keys of 0.1.0's jsonb results, with the nested ``backfill``/``refresh`` objects flattened into
``embedded_rows``, ``embedded_chunks``, ``queued``, ``deleted``, ``seconds``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from .base import Base, a_list, as_texts
from .errors import InvalidInput, NotFound
from .progress import Progress

QUEUE_STATS = ("processed", "embedded", "unchanged", "deleted", "skipped_locked", "failed", "retrying")


class EmbeddingsAPI(Base):
    def _row(self, sql: str, params: Any = None) -> dict:
        """The one row of a function that returns a table of one row, as a dict."""
        rows = self.call(sql, params)
        return rows[0] if rows else {}

    # -- models ---------------------------------------------------------------------------------
    def embed(self, inputs, model: str = "all-MiniLM-L6-v2"):
        """One text -> numpy vector; a list -> list of vectors (one model call in the server). None, or None in a
        list, gives None, as NULL does in SQL."""
        if inputs is None or isinstance(inputs, str):
            return as_numpy(self.scalar("select ml.embed(%s, %s::text)", [model, inputs]))
        texts = a_list(
            inputs, "embed takes a text or a list of texts", "client.embed('a text') or client.embed(['one', 'two'])"
        )
        bad = next((i for i, t in enumerate(texts) if t is not None and not isinstance(t, str)), None)
        if bad is not None:
            raise InvalidInput(
                f"inputs[{bad}] is {type(texts[bad]).__name__}, not a text",
                hint="pass texts (str); convert other values with str() first",
            )
        return [as_numpy(v) for v in self.scalar("select ml.embed(%s, %s::text[])", [model, texts])]

    def register_embedding_model(
        self,
        name: str,
        path: str,
        dimensions: int | None = None,
        max_tokens: int | None = None,
        normalize: bool = True,
        replace: bool = False,
    ) -> dict:
        """Register a local sentence-transformers folder (a path the database server can read); returns the row
        registered (name, source_path, folder, dimensions, max_tokens, normalize). indb_admin only."""
        return self._row(
            "select * from ml.register_embedding_model(%s, %s, %s, %s, %s, %s)",
            [name, path, dimensions, max_tokens, normalize, replace],
        )

    def embedding_models(self) -> list[dict]:
        return self.call(
            "select name, dimensions, max_tokens, normalize, source_path from ml.embedding_models order by name"
        )

    def chunk(
        self, text: str, chunk_size: int, overlap: int = 0, by: str = "tokens", model: str = "all-MiniLM-L6-v2"
    ) -> list[str]:
        rows = self.call("select seq, chunk from ml.chunk(%s, %s, %s, %s, %s)", [text, chunk_size, overlap, by, model])
        return [r["chunk"] for r in rows]

    # -- vectorizers ----------------------------------------------------------------------------
    def create_vectorizer(
        self,
        source: str,
        columns: list[str],
        model: str = "all-MiniLM-L6-v2",
        mode: str = "sync",
        chunk_size: int | None = None,
        chunk_overlap: int = 0,
        name: str | None = None,
        batch_size: int | None = None,
        destination: str | None = None,
        backfill: bool = True,
        chunk_by: str = "tokens",
        max_attempts: int | None = None,
        progress: bool | Callable[[str], None] | None = None,
    ) -> dict:
        """Create a vectorizer; returns its row (name, id, source, destination, model, mode, dimensions,
        long_text, embedded_rows, embedded_chunks, queued, seconds). With ``progress`` (True: a tqdm bar on
        stderr, or a callable taking a line) the existing rows are backfilled in separate batches after
        creation, with rows done, rate and time left, and ``backfill`` holds :meth:`backfill`'s summary;
        without it the backfill runs inside the creating statement (ml.progress shows it to other sessions)."""
        inline = backfill and not progress
        out = self._row(
            "select * from ml.create_vectorizer(%s::regclass, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                source,
                as_texts(columns),
                model,
                mode,
                chunk_size,
                chunk_overlap,
                name,
                batch_size,
                destination,
                inline,
                chunk_by,
                max_attempts,
            ],
        )
        if backfill and progress:
            out["backfill"] = self.backfill(out["name"], progress=progress)
            out["embedded_rows"] = out["backfill"]["rows"] if out["mode"] == "sync" else 0
            out["queued"] = out["backfill"].get("queued", 0)
        return out

    def backfill(self, name: str, batch: int = 256, progress: bool | Callable[[str], None] | None = True) -> dict:
        """Embed (sync) or queue (async) every row that lacks an up-to-date embedding, ``batch`` rows per call
        (one transaction each), with a tqdm bar (``progress=True``) or lines handed to a callable.
        Returns {rows, mode, remaining} (async: also queued)."""
        out_fn = progress if callable(progress) else None
        st = self.vectorizer_status(name)
        if st[0]["mode"] == "async":
            # async: queue everything in one call; `indb worker` embeds it and shows the progress
            r = self.refresh_vectorizer(name)
            line = f"backfill {name}: {r['queued']:,} rows queued for the worker (indb worker)"
            if out_fn is not None:
                out_fn(line)
            elif progress:
                print(line, file=sys.stderr)
            return {"rows": r["queued"], "mode": "async", "remaining": 0, "queued": r["queued"]}
        bar = Progress(None, f"backfill {name}", out=out_fn) if progress else None
        r = self.refresh_vectorizer(name, max_rows=batch)
        done = r["embedded_rows"]
        if bar:
            bar.total = done + r["remaining"]
            bar.update(done)
        while r["remaining"] > 0:
            r = self.refresh_vectorizer(name, max_rows=batch)
            n = r["embedded_rows"]
            done += n
            if bar:
                bar.update(n)
            if n == 0:
                break
        if bar:
            bar.finish()
        return {"rows": done, "mode": "sync", "remaining": r["remaining"]}

    def refresh_vectorizer(self, name: str, max_rows: int | None = None) -> dict:
        """ml.refresh_vectorizer's row: vectorizer, mode, embedded_rows, embedded_chunks, queued, deleted,
        remaining, seconds."""
        return self._row("select * from ml.refresh_vectorizer(%s, %s)", [name, max_rows])

    def process_queue(self, vectorizer: str | None = None, batch_size: int | None = None) -> dict:
        """One batch of queued rows: the row of ``vectorizer`` (processed, embedded, unchanged, deleted,
        skipped_locked, failed, retrying, pending, error); without one, the sums over every vectorizer processed
        with ``vectorizers`` (their names), ``errors`` (name -> error) and ``pending``."""
        rows = self.call("select * from ml.process_queue(%s, %s)", [vectorizer, batch_size])
        if vectorizer is not None:
            return rows[0]
        total: dict[str, Any] = {k: sum(r[k] or 0 for r in rows) for k in QUEUE_STATS}
        total["vectorizers"] = [r["vectorizer"] for r in rows]
        total["errors"] = {r["vectorizer"]: r["error"] for r in rows if r["error"]}
        total["pending"] = sum(r["pending"] or 0 for r in rows)
        return total

    def retry_vectorizer(self, name: str) -> dict:
        """ml.retry_vectorizer's row: vectorizer, requeued_failed, queued_now_due."""
        return self._row("select * from ml.retry_vectorizer(%s)", [name])

    def alter_vectorizer(
        self,
        name: str,
        mode: str | None = None,
        batch_size: int | None = None,
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
        chunk_by: str | None = None,
        max_attempts: int | None = None,
        refresh: bool = True,
    ) -> dict:
        """ml.alter_vectorizer's row: the settings now, refreshed, and what the refresh did."""
        return self._row(
            "select * from ml.alter_vectorizer(%s, %s, %s, %s, %s, %s, %s, %s)",
            [name, mode, batch_size, chunk_size, chunk_overlap, chunk_by, max_attempts, refresh],
        )

    def drop_vectorizer(self, name: str, drop_embeddings: bool = False) -> dict:
        """ml.drop_vectorizer's row: vectorizer, dropped_tables, kept_tables."""
        return self._row("select * from ml.drop_vectorizer(%s, %s)", [name, drop_embeddings])

    def vectorizer_status(self, name: str | None = None) -> list[dict]:
        """Rows of ml.vectorizer_status (all this session may see, or the one named: NotFound when it does not
        exist or belongs to another tenant)."""
        rows = self.call("select * from ml.vectorizer_status where %s::text is null or name = %s", [name, name])
        if name is not None and not rows:
            raise NotFound(
                f'vectorizer "{name}" does not exist',
                sqlstate="42704",
                detail="or it belongs to a tenant this session does not act for",
                hint="list them with SELECT name FROM ml.vectorizer_status, or make one with ml.create_vectorizer",
            )
        return rows

    def vectorizer_search(self, name: str, query: str, k: int = 10) -> list[dict]:
        """ml.vectorizer_search: rows id (the source row's key as text; a JSON array for several key columns),
        score (cosine similarity, higher is better), chunk, seq -- the shape of :meth:`search`."""
        return self.call("select id, score, chunk, seq from ml.vectorizer_search(%s, %s, %s)", [name, query, k])

    # -- model migration --------------------------------------------------------------------------
    def migrate_vectorizer(self, name: str, new_model: str, backfill: bool = True) -> dict:
        """ml.migrate_vectorizer's row: vectorizer, serving_model, staging_model, staging_destination and what
        the backfill of the staging table did."""
        return self._row("select * from ml.migrate_vectorizer(%s, %s, %s)", [name, new_model, backfill])

    def compare_vectorizer_models(self, name: str, sample_queries: list[str], k: int = 10) -> list[dict]:
        return self.call("select * from ml.compare_vectorizer_models(%s, %s, %s)", [name, as_texts(sample_queries), k])

    def promote_vectorizer(self, name: str, force: bool = False) -> dict:
        """ml.promote_vectorizer's row: serving and previous model and destination, stale_rows_promoted."""
        return self._row("select * from ml.promote_vectorizer(%s, %s)", [name, force])

    def restore_vectorizer(self, name: str) -> dict:
        return self._row("select * from ml.restore_vectorizer(%s)", [name])

    def drop_vectorizer_staging(self, name: str) -> dict:
        """ml.drop_vectorizer_staging's row: vectorizer, dropped_table, dropped_model."""
        return self._row("select * from ml.drop_vectorizer_staging(%s)", [name])

    def schedule_vectorizer(self, name: str, schedule: str = "* * * * *", batch_size: int | None = None) -> int:
        return self.scalar("select ml.schedule_vectorizer(%s, %s, %s)", [name, schedule, batch_size])

    def unschedule_vectorizer(self, name: str) -> bool:
        return self.scalar("select ml.unschedule_vectorizer(%s)", [name])


def as_numpy(v):
    """pgvector's Vector/HalfVector (or None) -> numpy float32 array."""
    if v is None:
        return None
    return v.to_numpy() if hasattr(v, "to_numpy") else v
