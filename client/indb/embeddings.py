"""Client methods for embeddings and vectorizers (SQL: ml.embed, ml.chunk, ml.*vectorizer*, ml.process_queue)."""

from __future__ import annotations

from collections.abc import Callable

from .base import Base
from .progress import Progress


class EmbeddingsAPI(Base):
    # -- models ---------------------------------------------------------------------------------
    def embed(self, inputs, model: str = "all-MiniLM-L6-v2"):
        """One text -> numpy vector; a list -> list of vectors (one model call in the server)."""
        if isinstance(inputs, str):
            return as_numpy(self.scalar("select ml.embed(%s, %s::text)", [model, inputs]))
        return [as_numpy(v) for v in self.scalar("select ml.embed(%s, %s::text[])", [model, list(inputs)])]

    def register_embedding_model(
        self,
        name: str,
        path: str,
        dimensions: int | None = None,
        max_tokens: int | None = None,
        normalize: bool = True,
        replace: bool = False,
    ) -> dict:
        """Register a local sentence-transformers folder (a path the database server can read)."""
        return self.scalar(
            "select ml.register_embedding_model(%s, %s, %s, %s, %s, %s)",
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
        """Create a vectorizer. With ``progress`` (True: print to stderr, or a callable taking a line) the existing
        rows are backfilled in separate batches after creation, reporting rows done, rate and time left; without
        it the backfill runs inside the creating statement."""
        inline = backfill and not progress
        out = self.scalar(
            "select ml.create_vectorizer(%s::regclass, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                source,
                list(columns),
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
        return out

    def backfill(self, name: str, batch: int = 256, progress: bool | Callable[[str], None] | None = True) -> dict:
        """Embed (sync) or queue (async) every row that lacks an up-to-date embedding, ``batch`` rows per call."""
        out_fn = progress if callable(progress) else None
        st = self.vectorizer_status(name)
        if st and st[0]["mode"] == "async":
            # async: queue everything in one call; `indb worker` embeds it and shows the progress
            r = self.refresh_vectorizer(name)
            if out_fn or progress is True:
                (out_fn or print)(f"backfill {name}: {r['queued']:,} rows queued for the worker (indb worker)")
            return {"rows": r["queued"], "mode": "async", "remaining": 0, "queued": r["queued"]}
        first = self.refresh_vectorizer(name, max_rows=batch)
        total = first.get("embedded_rows", 0) + first.get("queued", 0) + first.get("remaining", 0)
        bar = Progress(total, f"backfill {name}", out=out_fn) if progress else None
        done = first.get("embedded_rows", 0) + first.get("queued", 0)
        if bar:
            bar.update(done)
        r = first
        while r.get("remaining", 0) > 0 and r.get("mode") == "sync":
            r = self.refresh_vectorizer(name, max_rows=batch)
            n = r.get("embedded_rows", 0)
            done += n
            if bar:
                bar.update(n)
            if n == 0:
                break
        if bar:
            bar.finish()
        return {"rows": done, "mode": first.get("mode"), "remaining": r.get("remaining", 0)}

    def refresh_vectorizer(self, name: str, max_rows: int | None = None) -> dict:
        return self.scalar("select ml.refresh_vectorizer(%s, %s)", [name, max_rows])

    def process_queue(self, vectorizer: str | None = None, batch_size: int | None = None) -> dict:
        return self.scalar("select ml.process_queue(%s, %s)", [vectorizer, batch_size])

    def retry_vectorizer(self, name: str) -> dict:
        return self.scalar("select ml.retry_vectorizer(%s)", [name])

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
        return self.scalar(
            "select ml.alter_vectorizer(%s, %s, %s, %s, %s, %s, %s, %s)",
            [name, mode, batch_size, chunk_size, chunk_overlap, chunk_by, max_attempts, refresh],
        )

    def drop_vectorizer(self, name: str, drop_embeddings: bool = False) -> dict:
        return self.scalar("select ml.drop_vectorizer(%s, %s)", [name, drop_embeddings])

    def vectorizer_status(self, name: str | None = None) -> list[dict]:
        return self.call("select * from ml.vectorizer_status where %s::text is null or name = %s", [name, name])

    def vectorizer_search(self, name: str, query: str, k: int = 10) -> list[dict]:
        """ml.vectorizer_search: rows id (the source row's key as text; a JSON array for several key columns),
        score (cosine similarity, higher is better), chunk, seq -- the shape of :meth:`search`."""
        return self.call("select id, score, chunk, seq from ml.vectorizer_search(%s, %s, %s)", [name, query, k])

    # -- model migration --------------------------------------------------------------------------
    def migrate_vectorizer(self, name: str, new_model: str, backfill: bool = True) -> dict:
        return self.scalar("select ml.migrate_vectorizer(%s, %s, %s)", [name, new_model, backfill])

    def compare_vectorizer_models(self, name: str, sample_queries: list[str], k: int = 10) -> list[dict]:
        return self.call("select * from ml.compare_vectorizer_models(%s, %s, %s)", [name, list(sample_queries), k])

    def promote_vectorizer(self, name: str, force: bool = False) -> dict:
        return self.scalar("select ml.promote_vectorizer(%s, %s)", [name, force])

    def restore_vectorizer(self, name: str) -> dict:
        return self.scalar("select ml.restore_vectorizer(%s)", [name])

    def drop_vectorizer_staging(self, name: str) -> dict:
        return self.scalar("select ml.drop_vectorizer_staging(%s)", [name])

    def schedule_vectorizer(self, name: str, schedule: str = "* * * * *", batch_size: int | None = None) -> int:
        return self.scalar("select ml.schedule_vectorizer(%s, %s, %s)", [name, schedule, batch_size])

    def unschedule_vectorizer(self, name: str) -> bool:
        return self.scalar("select ml.unschedule_vectorizer(%s)", [name])


def as_numpy(v):
    """pgvector's Vector/HalfVector (or None) -> numpy float32 array."""
    if v is None:
        return None
    return v.to_numpy() if hasattr(v, "to_numpy") else v
