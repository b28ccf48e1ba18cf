"""The BM25 index of a collection, evaluated with numpy (ml.__bm25_top_py, ml.__bm25_merge_py).

Postings per lexeme (sql/230): the merged segment in ml.bm25_postings (big-endian int4 arrays in bytea:
document numbers in ascending order, term frequencies, document lengths) plus the rows written since the last
merge in ml.bm25_delta, less the documents in ml.bm25_deleted. A query reads only its lexemes' postings, never
a document: scores are accumulated term by term into a dense array indexed by document number (BM25 with
Lucene's idf, the collection's current statistics: exactly the reference formula, in float64), then the top
documents are picked with argpartition.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import invalid

BE4 = np.dtype(">i4")


def _arr(b: Any) -> np.ndarray:
    return np.frombuffer(b, dtype=BE4) if b else np.zeros(0, dtype=BE4)


def _postings(plpy, cid: int, terms: list[str]) -> tuple[dict[str, tuple[np.ndarray, ...]], np.ndarray]:
    """Per term (docs, tfs, dls) of merged + delta postings, and the deleted document numbers."""
    from indb_runtime import spi

    out: dict[str, tuple[np.ndarray, ...]] = {}
    for r in spi.run(
        plpy,
        "select term, docs, tfs, dls from ml.bm25_postings where collection_id = $1 and term = any($2)",
        ["bigint", "text[]"],
        [cid, terms],
    ):
        out[r["term"]] = (_arr(r["docs"]).astype(np.int64), _arr(r["tfs"]), _arr(r["dls"]))
    for r in spi.run(
        plpy,
        "select term, array_agg(doc) docs, array_agg(tf) tfs, array_agg(dl) dls from ml.bm25_delta "
        "where collection_id = $1 and term = any($2) group by term",
        ["bigint", "text[]"],
        [cid, terms],
    ):
        d = (np.asarray(r["docs"], dtype=np.int64), np.asarray(r["tfs"], dtype=BE4), np.asarray(r["dls"], dtype=BE4))
        if r["term"] in out:
            m = out[r["term"]]
            out[r["term"]] = tuple(np.concatenate([a, b]) for a, b in zip(m, d, strict=True))
        else:
            out[r["term"]] = d
    dead = spi.run(
        plpy,
        "select coalesce(array_agg(doc), '{}') as d from ml.bm25_deleted where collection_id = $1",
        ["bigint"],
        [cid],
    )[0]["d"]
    return out, np.asarray(dead, dtype=np.int64)


def scores(
    postings: dict[str, tuple[np.ndarray, ...]],
    dead: np.ndarray,
    terms: list[str],
    idfs: list[float],
    avgdl: float,
    k1: float,
    b: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(document numbers, scores) of every live document holding a query term."""
    top = 0
    for t in terms:
        if t in postings and len(postings[t][0]):
            top = max(top, int(postings[t][0].max()))
    acc = np.zeros(top + 1, dtype=np.float64)
    for t, idf in zip(terms, idfs, strict=True):
        if t not in postings:
            continue
        docs, tfs, dls = postings[t]
        tf = tfs.astype(np.float64)
        # a document number appears once per term (in the segment or in the delta, never both)
        acc[docs] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dls.astype(np.float64) / avgdl))
    if len(dead):
        acc[dead[dead <= top]] = 0.0
    docs = np.flatnonzero(acc > 0)
    return docs, acc[docs]


def _best(
    plpy, cid: int, terms: list[str], idfs: list[float], avgdl: float, k1: float, b: float, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """The n best (document numbers, scores), best first, plus every document tied with the n-th."""
    # ml._keyword_search passes one idf per lexeme, the collection's statistics and n >= 10; a writer may call
    # ml._bm25_top directly, and its arguments are then refused here, not by numpy as a bug (38000)
    if len(terms) != len(idfs) or any(t is None for t in terms) or any(x is None for x in idfs):
        raise invalid(
            f"ml._bm25_top takes one idf per term, not null: {len(terms)} terms and {len(idfs)} idfs",
            hint="ml.keyword_search computes them",
        )
    if not all(math.isfinite(x) for x in (avgdl, k1, b, *idfs)) or n < 1:
        raise invalid("ml._bm25_top takes finite statistics and n >= 1", hint="ml.keyword_search computes them")
    postings, dead = _postings(plpy, cid, terms)
    docs, sc = scores(postings, dead, terms, idfs, avgdl, k1, b)
    if len(docs) > n:
        part = np.argpartition(-sc, n - 1)[:n]
        nth = sc[part].min()
        keep = np.flatnonzero(sc >= nth)
        docs, sc = docs[keep], sc[keep]
    order = np.argsort(-sc, kind="stable")
    return docs[order], sc[order]


def top(
    plpy, cid: int, terms: list[str], idfs: list[float], avgdl: float, k1: float, b: float, n: int
) -> list[tuple[list[int], list[float]]]:
    """ml._bm25_top: one row of two arrays (document numbers, scores), not a row per document: a query whose best
    score many documents share (a common word in short texts of one length) returns them all, and PL/Python made
    a row of each at ~3 us (50,000 tied documents: ~250 ms as rows, ~50 ms as arrays)."""
    docs, sc = _best(plpy, cid, terms, idfs, avgdl, k1, b, n)
    return [(docs.tolist(), sc.tolist())]


def topk(
    plpy, cid: int, terms: list[str], idfs: list[float], avgdl: float, k1: float, b: float, n: int
) -> list[tuple[int, float]]:
    """The same as rows (document number, score): what ml._bm25_topk of a database that `indb install` has not
    upgraded to migration 0027 yet calls (the runtime is shared by every database of the cluster)."""
    docs, sc = _best(plpy, cid, terms, idfs, avgdl, k1, b, n)
    return list(zip(docs.tolist(), sc.tolist(), strict=True))


def merge(plpy, cid: int) -> dict:
    """Fold the delta and the tombstones of collection cid into its merged postings (only the terms they
    touch). Returns counts."""
    from indb_runtime import spi

    spi.run(plpy, "select pg_advisory_xact_lock(hashtext('indb.bm25_merge'), $1::int)", ["bigint"], [cid])
    dead_rows = spi.run(
        plpy, "delete from ml.bm25_deleted where collection_id = $1 returning doc, terms", ["bigint"], [cid]
    )
    dead = np.asarray(sorted(r["doc"] for r in dead_rows), dtype=np.int64)
    delta = spi.run(
        plpy,
        "with d as (delete from ml.bm25_delta where collection_id = $1 returning term, doc, tf, dl) "
        "select term, array_agg(doc order by doc) docs, array_agg(tf order by doc) tfs, "
        "array_agg(dl order by doc) dls from d group by term",
        ["bigint"],
        [cid],
    )
    added = {r["term"]: r for r in delta}
    touched = set(added)
    for r in dead_rows:
        touched.update(r["terms"])
    if not touched:
        return {"terms": 0, "postings_added": 0, "documents_removed": 0}
    cur = {
        r["term"]: r
        for r in spi.run(
            plpy,
            "select term, docs, tfs, dls from ml.bm25_postings where collection_id = $1 and term = any($2)",
            ["bigint", "text[]"],
            [cid, sorted(touched)],
        )
    }
    up = spi.plan(
        plpy,
        "insert into ml.bm25_postings as p (collection_id, term, n, docs, tfs, dls) values ($1, $2, $3, $4, $5, $6) "
        "on conflict (collection_id, term) do update set n = excluded.n, docs = excluded.docs, "
        "tfs = excluded.tfs, dls = excluded.dls",
        ["bigint", "text", "int", "bytea", "bytea", "bytea"],
    )
    gone = spi.plan(plpy, "delete from ml.bm25_postings where collection_id = $1 and term = $2", ["bigint", "text"])
    n_added = 0
    for i, t in enumerate(sorted(touched)):
        if i % 1000 == 0:
            spi.tick(plpy)
        if t in cur:
            docs, tfs, dls = (_arr(cur[t][c]) for c in ("docs", "tfs", "dls"))
        else:
            docs = tfs = dls = np.zeros(0, dtype=BE4)
        if t in added:
            a = added[t]
            n_added += len(a["docs"])
            docs = np.concatenate([docs, np.asarray(a["docs"], dtype=BE4)])
            tfs = np.concatenate([tfs, np.asarray(a["tfs"], dtype=BE4)])
            dls = np.concatenate([dls, np.asarray(a["dls"], dtype=BE4)])
        if len(dead):
            live = ~np.isin(docs, dead)
            docs, tfs, dls = docs[live], tfs[live], dls[live]
        if len(docs) == 0:
            if t in cur:
                plpy.execute(gone, [cid, t])
            continue
        o = np.argsort(docs, kind="stable")
        plpy.execute(
            up,
            [
                cid,
                t,
                len(docs),
                docs[o].astype(BE4).tobytes(),
                tfs[o].astype(BE4).tobytes(),
                dls[o].astype(BE4).tobytes(),
            ],
        )
    spi.run(plpy, "update ml.collection_stats set bm25_merged_at = now() where collection_id = $1", ["bigint"], [cid])
    return {"terms": len(touched), "postings_added": n_added, "documents_removed": len(dead)}
