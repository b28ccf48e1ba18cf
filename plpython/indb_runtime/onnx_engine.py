"""The runtime service's CPU engine: the model's encoder run by ONNX Runtime instead of PyTorch.

On a CPU, PyTorch runs a BERT encoder operator by operator; ONNX Runtime runs the same graph with its layer-norm,
GELU and attention steps fused and its own matrix kernels. Measured here (MiniLM, one thread, SciFact): a
sentence 13.7 -> 7.5 ms of CPU, sentences in batches of 4 10.3 (packed, packing.py) -> 7.1 ms a text, whole
abstracts 72.8 -> 46.7 ms; the vectors agree to cosine >= 0.9999998 (float32 both).

Only in the runtime service, where there is one copy per server: the session holds its own prepared copy of the
weights (~110 MB more than the model alone), which every backend that embeds would pay in backend mode. Backends
keep PyTorch (embedding.model_call); the two agree to the cosine the modes promise (>= 0.999999).

Which models: exactly those packing.py reproduces (a BERT encoder under sentence-transformers' Transformer, mean
pooling, an optional Normalize, on the CPU), and only after the engine's vectors for probe texts, alone and
padded in one batch, matched the model's own. Anything else, or any failure (export, session, check), leaves the
model to PyTorch with a line in the log: the engine is a speed-up, never a reason for a request to fail.

The encoder is exported once per model (torch.onnx.export, ~2 s) into the service's 0700 runtime folder, under a
name that digests the weights, the configuration and the versions of torch and onnxruntime, so a changed model
or upgrade exports again. INDB_RUNTIME_ENGINE=torch (or ``--engine torch``) keeps every model on PyTorch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import packing

log = logging.getLogger("indb.runtime.onnx")

ENGINES = ("auto", "torch")  # --engine / INDB_RUNTIME_ENGINE (service.py, indb runtime serve)
EXPORT_VERSION = 1  # bump when the exported graph changes
MAX_GROUP = 8  # texts in one session call: larger batches of padded texts gained nothing here
_UNSET = object()
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
# session calls made by this process, their texts and tokens (real and padding), for the service's statistics
_COUNTS = {"calls": 0, "texts": 0, "tokens": 0, "padding": 0}
_COUNTS_LOCK = threading.Lock()


def counts() -> dict:
    with _COUNTS_LOCK:
        return dict(_COUNTS)


def wanted(choice: str | None = None) -> bool:
    """True unless the engine was set to torch (``choice``, else INDB_RUNTIME_ENGINE; default auto)."""
    return (choice or os.environ.get("INDB_RUNTIME_ENGINE") or "auto") != "torch"


def attached(model: Any) -> Engine | None:
    """The engine made for ``model`` by ``prepare`` (None: the model runs on PyTorch)."""
    eng = getattr(model, "_indb_onnx", None)
    return eng if isinstance(eng, Engine) else None


def prepare(model: Any, folder: Path, choice: str | None = None, source: str = "") -> Engine | None:
    """Make (once per model object) the engine for ``model``, its graph exported into ``folder`` when not there
    yet; None when the model is left to PyTorch (not wanted, not a model this reproduces, or a failure: logged).
    ``source``: where the model was loaded from (its graphs are named after it: export)."""
    known = getattr(model, "_indb_onnx", _UNSET)
    if known is not _UNSET:
        return known if isinstance(known, Engine) else None
    eng: Engine | None = None
    if wanted(choice) and packing.packable(model) and getattr(model.tokenizer, "padding_side", "right") == "right":
        try:
            eng = Engine(model, export(model, folder, source))
            eng.check()
        except ImportError as e:
            log.info("onnxruntime is not installed (%s): models run on PyTorch", e)
            eng = None
        except Exception:
            log.exception("ONNX Runtime engine not used for this model; it runs on PyTorch")
            eng = None
    try:
        model._indb_onnx = eng
    except AttributeError:
        pass
    return eng


def _digest(model: Any) -> str:
    import onnxruntime
    import torch

    bert = list(model)[0].auto_model
    h = hashlib.sha256()
    h.update(f"{EXPORT_VERSION}|{torch.__version__}|{onnxruntime.__version__}|".encode())
    h.update(json.dumps(bert.config.to_dict(), sort_keys=True, default=str).encode())
    for name, t in bert.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def _encoder(bert: Any) -> Any:
    """The exported function: token ids, mask and token types -> the last hidden states."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, inner: Any):
            super().__init__()
            self.inner = inner

        def forward(self, ids: Any, mask: Any, types: Any) -> Any:
            return self.inner(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state

    return Encoder(bert).eval()


def export(model: Any, folder: Path, source: str = "") -> Path:
    """The model's encoder as an ONNX file in ``folder``, exported when missing (written beside and renamed, so a
    reader never sees half a file). The name is encoder-<source>-<digest>.onnx, both digested: a new export of a
    model from the same source (its weights changed, or torch or onnxruntime was upgraded) removes that source's
    older graphs, and any half-written file an export killed midway left behind."""
    folder = Path(folder)
    prefix = f"encoder-{hashlib.sha256(source.encode()).hexdigest()[:12]}-"
    path = folder / f"{prefix}{_digest(model)}.onnx"
    if path.exists():
        return path
    import torch

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    feats = packing.tokenize(model, packing.PROBES)
    types = feats.get("token_type_ids")
    if types is None:
        types = torch.zeros_like(feats["input_ids"])
    tmp = folder / f".{path.name}.{os.getpid()}.{threading.get_ident()}"
    axes = {"batch": 0, "tokens": 1}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _encoder(list(model)[0].auto_model),
            (feats["input_ids"], feats["attention_mask"], types),
            str(tmp),
            input_names=["ids", "mask", "types"],
            output_names=["hidden"],
            dynamic_axes={n: {v: k for k, v in axes.items()} for n in ("ids", "mask", "types", "hidden")},
            opset_version=17,
            dynamo=False,
        )
    os.replace(tmp, path)
    log.info("exported the encoder to %s (%.1f MB)", path, path.stat().st_size / 1e6)
    # one service per cluster exports, one model at a time (service.Models): any other file of this source is old
    for old in [*folder.glob(f"{prefix}*.onnx"), *folder.glob(f".{prefix}*")]:
        if old != path:
            old.unlink(missing_ok=True)
            log.info("removed %s (an older graph of this model, or a half-written one)", old.name)
    return path


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1), thread_name_prefix="onnx")
        return _POOL


class Engine:
    """One ONNX Runtime session (one thread per call: the service's workers call it side by side, and a call
    given several threads runs its groups of texts side by side)."""

    def __init__(self, model: Any, path: Path):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.model = model
        self.path = path
        self.normalizes = len(list(model)) == 3  # ends in Normalize
        self.dim = int(list(model)[0].auto_model.config.hidden_size)
        self.version = ort.__version__
        self.min_cosine: float | None = None

    def describe(self) -> str:
        return f"onnxruntime {self.version}"

    def _inputs(self, texts: Sequence[str]) -> tuple[Any, Any, Any]:
        import numpy as np

        feats = packing.tokenize(self.model, texts)
        ids = feats["input_ids"].numpy().astype(np.int64)
        mask = feats["attention_mask"].numpy().astype(np.int64)
        types = feats.get("token_type_ids")
        types = np.zeros_like(ids) if types is None else types.numpy().astype(np.int64)
        return ids, mask, types

    def _run(self, ids: Any, mask: Any, types: Any, rows: Sequence[int], normalize: bool, count: bool = True) -> Any:
        """Mean-pooled (and normalized) vectors of ``rows``, padded only to the longest of them."""
        import numpy as np

        lengths = mask[rows].sum(1)
        width = int(lengths.max())
        m = mask[rows, :width]
        if count:
            with _COUNTS_LOCK:
                _COUNTS["calls"] += 1
                _COUNTS["texts"] += len(rows)
                _COUNTS["tokens"] += int(lengths.sum())
                _COUNTS["padding"] += len(rows) * width - int(lengths.sum())
        hidden = self.session.run(None, {"ids": ids[rows, :width], "mask": m, "types": types[rows, :width]})[0]
        mf = m[..., None].astype(np.float32)
        out = (hidden * mf).sum(1) / np.clip(mf.sum(1), 1e-9, None)
        if normalize or self.normalizes:
            out = out / np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
        return out.astype(np.float32)

    @staticmethod
    def groups(lengths: Sequence[int]) -> list[list[int]]:
        """Rows in groups of texts alike in length (longest first): a group grows while its padding stays under
        packing.MIN_PADDING_SHARE of its tokens, up to MAX_GROUP texts."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        out: list[list[int]] = []
        for i in order:
            g = out[-1] if out else None
            if (
                g is not None
                and len(g) < MAX_GROUP
                and packing.padding_share([lengths[j] for j in g] + [lengths[i]]) < packing.MIN_PADDING_SHARE
            ):
                g.append(i)
            else:
                out.append([i])
        return out

    def embed(self, texts: Sequence[str], normalize: bool, threads: int = 1) -> Any:
        """One float32 row per text, in order; ``threads`` > 1 runs the groups side by side."""
        import numpy as np

        ids, mask, types = self._inputs(texts)
        groups = self.groups(mask.sum(1).tolist())

        def share(part: list[list[int]]) -> list[Any]:
            return [self._run(ids, mask, types, g, normalize) for g in part]

        # at most ``threads`` calls at once: the groups dealt round-robin (longest first), one share each
        n = max(1, min(threads, len(groups)))
        shares = [groups[i::n] for i in range(n)]
        done = list(_pool().map(share, shares)) if n > 1 else [share(groups)]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for part, vecs in zip(shares, done):
            for g, v in zip(part, vecs):
                out[g] = v
        return out

    def check(self) -> None:
        """The engine's vectors for the probe texts, each alone and all in one padded call, against the model's
        own (sentence-transformers): raises when a cosine is below packing.MIN_COSINE."""
        import numpy as np

        ids, mask, types = self._inputs(packing.PROBES)
        alone = np.stack([self._run(*self._inputs([t]), [0], False, count=False)[0] for t in packing.PROBES])
        padded = self._run(ids, mask, types, list(range(len(packing.PROBES))), False, count=False)
        worst = min(packing.probe_cosine(self.model, alone), packing.probe_cosine(self.model, padded))
        if worst < packing.MIN_COSINE:
            raise ValueError(f"probe cosine {worst:.9f} against the model's own vectors")
        self.min_cosine = worst
