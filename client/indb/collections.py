"""Client methods for vector collections and search (SQL: ml.create_collection, ml.add_documents, ml.search,
ml.keyword_search, ml.hybrid_search, ml.collection_health, ml.reindex_collection, ml.tier_partition,
ml.drop_collection). Each method calls one SQL function; the client owns no DDL.

``add_documents(..., progress=True)`` sends the documents in batches with a tqdm bar (rows done, rate, time
left; a callable gets lines instead); the server reports calls of more than 256 documents in ``ml.progress``.

The functions that make or maintain a collection return one row of columns; these methods return it as a dict
(``create_collection``: collection, table_name, model, dimensions, index, metric, storage, binary_rerank,
partition_by, text_search_config, tenant). ``tier_partition`` returns one dict per partition switched.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from psycopg.types.json import Jsonb

from .base import Base, a_list, jsonable, jsonb, mapping
from .errors import InvalidInput


def _floats(v: Any, message: str, hint: str) -> list[float]:
    """A vector as Python floats; anything that is not a sequence of numbers is InvalidInput(message)."""
    try:
        return [float(x) for x in v]
    except (TypeError, ValueError):
        raise InvalidInput(message, hint=hint) from None


def _vector_literal(v) -> str:
    vec = _floats(
        v,
        f"a query is a text or a vector of numbers, got {type(v).__name__}",
        "search(collection, 'some words') or search(collection, numpy_vector)",
    )
    return "[" + ",".join(repr(x) for x in vec) + "]"


def _filter_options(filter: Any, options: Mapping | None) -> list:
    """The filter and options of the search functions as jsonb parameters (a NaN in either refused by name)."""
    return [
        jsonb(filter, "filter") if filter is not None else None,
        jsonb(mapping(options, "options"), "options"),
    ]


def _doc(d: Mapping, i: int) -> dict:
    if not isinstance(d, Mapping):
        raise InvalidInput(
            f"docs[{i}] is {type(d).__name__}, not a document",
            hint="a document is a dict: {'id': ..., 'content': ..., 'metadata': {...}}",
        )
    out = dict(d)
    if "embedding" in out and out["embedding"] is not None:
        out["embedding"] = vec = _floats(
            out["embedding"],
            f"document {out.get('id')!r} has an embedding that is not a list of numbers",
            "an embedding is a list or numpy array of floats, as many as the collection's dimensions",
        )
        # JSON has no NaN or Infinity: json.dumps would send the bare token, which the server refuses as invalid
        # JSON without naming the document
        bad = next((i for i, x in enumerate(vec) if not math.isfinite(x)), None)
        if bad is not None:
            raise InvalidInput(
                f"document {out.get('id')!r} has an embedding whose element {bad + 1} is {vec[bad]}",
                hint="an embedding holds finite numbers only (JSON has no NaN or Infinity)",
            )
    if isinstance(out.get("created_at"), (_dt.datetime, _dt.date)):
        out["created_at"] = out["created_at"].isoformat()
    # a NaN in the metadata is refused here too, before the first batch, not by the server in a later one
    # (the embedding is checked above, element by element)
    return {k: v if k == "embedding" else jsonable(v, f"document {out.get('id')!r} {k}") for k, v in out.items()}


class CollectionsAPI(Base):
    def create_collection(
        self,
        name: str,
        model: str | None = "all-MiniLM-L6-v2",
        index: str = "hnsw",
        metric: str = "cosine",
        partition_by: str | None = None,
        options: Mapping | None = None,
    ) -> dict:
        """ml.create_collection: a table collections.<name> with embedding, tsvector, metadata and indexes;
        returns the row of what was made."""
        rows = self.call(
            "select * from ml.create_collection(%s, %s, %s, %s, %s, %s)",
            [name, model, index, metric, partition_by, jsonb(mapping(options, "options"), "options")],
        )
        return rows[0]

    def drop_collection(self, name: str, if_exists: bool = False) -> bool:
        return self.scalar("select ml.drop_collection(%s, %s)", [name, if_exists])

    def add_documents(
        self,
        collection: str,
        docs: Iterable[Mapping],
        batch_size: int = 512,
        progress: bool | Callable[[str], None] | None = None,
    ) -> int:
        """ml.add_documents in batches (upsert by id). Documents: {id, content, metadata, tenant, created_at,
        embedding}; those without an embedding are embedded in the server. Returns rows written.
        ``progress``: True for a tqdm bar on stderr, or a callable that gets a line per batch."""
        from .progress import Progress

        if not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInput(f"batch_size must be a positive integer, got {batch_size!r}")
        docs = a_list(
            docs,
            "docs is a list of documents",
            "add_documents(collection, [{'id': 'a', 'content': '...'}]); one document goes in a list of one",
        )
        docs = [_doc(d, i) for i, d in enumerate(docs)]  # all checked before the first batch is sent
        out = progress if callable(progress) else None
        bar = Progress(len(docs), f"add_documents {collection}", out=out, unit="documents") if progress else None
        written = 0
        for start in range(0, len(docs), batch_size):
            batch = docs[start : start + batch_size]
            written += self.scalar("select ml.add_documents(%s, %s)", [collection, Jsonb(batch)])
            if bar:
                bar.update(len(batch))
        if bar:
            bar.finish()
        return written

    def search(
        self,
        collection: str,
        query: str | Sequence[float],
        k: int = 10,
        filter: Mapping | None = None,
        options: Mapping | None = None,
    ) -> list[dict]:
        """ml.search: query is text (embedded by the collection's model) or a vector.

        Rows: id, score, content, metadata."""
        if isinstance(query, str):
            sql, q = "select * from ml.search(%s, %s::text, %s, %s, %s)", query
        else:
            sql, q = "select * from ml.search(%s, %s::vector, %s, %s, %s)", _vector_literal(query)
        return self.call(
            sql,
            [collection, q, k, *_filter_options(filter, options)],
        )

    def explain_search(
        self,
        collection: str,
        query: str | Sequence[float],
        k: int = 10,
        filter: Mapping | None = None,
        options: Mapping | None = None,
    ) -> dict:
        """ml.search_explain: {strategy, reason, filter_matches, settings, filter_sql, plan}."""
        if isinstance(query, str):
            sql, q = "select * from ml.search_explain(%s, %s::text, %s, %s, %s)", query
        else:
            sql, q = "select * from ml.search_explain(%s, %s::vector, %s, %s, %s)", _vector_literal(query)
        rows = self.call(
            sql,
            [collection, q, k, *_filter_options(filter, options)],
        )
        return rows[0]

    def keyword_search(
        self, collection: str, query: str, k: int = 10, filter: Mapping | None = None, options: Mapping | None = None
    ) -> list[dict]:
        """ml.keyword_search: BM25 (options k1, b)."""
        return self.call(
            "select * from ml.keyword_search(%s, %s, %s, %s, %s)",
            [collection, query, k, *_filter_options(filter, options)],
        )

    def hybrid_search(
        self,
        collection: str,
        query: str,
        k: int = 10,
        filter: Mapping | None = None,
        method: str = "rrf",
        rrf_k: int = 60,
        vector_weight: float = 1.0,
        keyword_weight: float = 1.0,
        candidates: int = 100,
        options: Mapping | None = None,
    ) -> list[dict]:
        """ml.hybrid_search: rows id, score, vector_rank, keyword_rank, content, metadata."""
        f, o = _filter_options(filter, options)
        return self.call(
            "select * from ml.hybrid_search(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                collection,
                query,
                k,
                f,
                method,
                rrf_k,
                vector_weight,
                keyword_weight,
                candidates,
                o,
            ],
        )

    def collection_health(self, name: str, sample: int = 20) -> dict:
        """ml.collection_health's row: rows, rows_missing_embedding, table_bytes, dead_tuples, bm25_documents,
        bm25_avg_length, bm25_terms, sampled_recall_at_10, ..., partitions and indexes (lists of dicts)."""
        return self.call("select * from ml.collection_health(%s, %s)", [name, sample])[0]

    def reindex_collection(self, name: str, concurrently: bool = True) -> dict:
        """ml.reindex_collection's row: collection, index, rows, lists, built, seconds."""
        return self.call("select * from ml.reindex_collection(%s, %s)", [name, concurrently])[0]

    def tier_partition(self, collection: str, older_than: str = "3 months", index: str = "none") -> list[dict]:
        """ml.tier_partition: one dict (collection, partition, index) per partition switched."""
        return self.call("select * from ml.tier_partition(%s, %s::interval, %s)", [collection, older_than, index])

    def collections(self) -> list[dict[str, Any]]:
        """The catalog ml.collections (those this session's tenant may see)."""
        return self.call(
            "select name, table_schema || '.' || table_name as table, model, dimensions, index_type, "
            "metric, storage, binary_rerank, partition_by, rls, created_at from ml.collections order by name"
        )
