"""Batches of texts without padding, for BERT-family sentence-transformers models on a CPU.

sentence-transformers pads every text of a batch to the longest one. On a GPU that costs little; on a CPU every
padded token costs what a real one does, so a batch of sentences of different lengths (what a service that
batches requests from many connections gets) costs as much per text as embedding them one by one, however large
the batch: measured here (MiniLM, one thread, 96 SciFact sentences of 39 tokens on average), 16.4 ms a text one
at a time, 15.1 / 16.3 / 17.7 ms in batches of 2 / 4 / 8; sentences of one length 16.8 / 13.1 / 11.2 / 9.6 ms.

Packed, as text-embeddings-inference does it: the tokens of all texts form one sequence, so the layers that act
on each token (embeddings, the attention's projections, the feed-forward network, layer norms: most of the work)
run as one larger matrix product without padding, and attention runs per text on its own tokens. Same
sentences: 13.4 / 11.7 / 10.5 ms a text in batches of 2 / 4 / 8, and the same vectors (cosine >= 0.9999999,
largest difference 1.6e-7). Long texts (SciFact abstracts, ~250 tokens, sorted by length) gain nothing: their
batches hardly pad, and attention is a larger share (packed batches of 8: 74 against 66 ms a text);
a batch that would pad less than MIN_PADDING_SHARE is left to sentence-transformers (embedding.model_call).

Only a model whose computation this module reproduces is packed: a BERT encoder (absolute positions, not a
decoder) under sentence-transformers' Transformer, mean pooling and an optional Normalize; and only after its
vectors for probe texts matched the model's own (`packer`). Every other model, and every model on CUDA, goes
through sentence-transformers as before. The weights are the loaded model's own modules; nothing is copied.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("indb_runtime.packing")

# pack a batch when padding would add at least this share of its tokens (n x longest > (1 + share) x sum)
MIN_PADDING_SHARE = 0.15
# probe texts of different lengths for the self-check of a model (packed against sentence-transformers)
PROBES = (
    "Cells divide.",
    "PostgreSQL keeps the embeddings next to the rows they describe, so a search reads one database.",
    "A",
    "Dynamic batching collects requests from many connections; padding each text to the longest one of the "
    "batch wastes most of the work on a CPU when the texts differ in length, which packing avoids entirely.",
)
MIN_COSINE = 0.999999
_UNSET = object()
# batches and texts embedded packed by this process (embedding.model_call), for the runtime service's statistics
_COUNTS = {"batches": 0, "texts": 0}
_COUNTS_LOCK = threading.Lock()


def count(texts: int) -> None:
    with _COUNTS_LOCK:
        _COUNTS["batches"] += 1
        _COUNTS["texts"] += texts


def counts() -> dict:
    with _COUNTS_LOCK:
        return dict(_COUNTS)


def packable(model: Any) -> bool:
    """True when ``model`` is exactly what packed_encode reproduces (module classes and settings)."""
    try:
        mods = list(model)
    except TypeError:  # not a sentence-transformers model (a sequence of modules)
        return False
    if len(mods) not in (2, 3) or str(getattr(model, "device", "")) != "cpu":
        return False
    names = [type(m).__name__ for m in mods]
    if names[:2] != ["Transformer", "Pooling"] or (len(mods) == 3 and names[2] != "Normalize"):
        return False
    bert = getattr(mods[0], "auto_model", None)
    cfg = getattr(bert, "config", None)
    if cfg is None or type(bert).__name__ != "BertModel" or getattr(cfg, "model_type", None) != "bert":
        return False
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute" or getattr(cfg, "is_decoder", False):
        return False
    pool = mods[1]
    return getattr(pool, "pooling_mode", None) == "mean" and getattr(pool, "include_prompt", True) is True


def probe_cosine(model: Any, got: Any) -> float:
    """The lowest cosine between ``got`` (one row per text of PROBES) and the model's own vectors for them (each
    text alone, through sentence-transformers; computed once per model and kept on it). The self-check of the
    packed encoder here and of the ONNX Runtime engine (onnx_engine.py)."""
    import numpy as np

    want = getattr(model, "_indb_probe_vectors", None)
    if want is None:
        want = np.stack([model.encode([t], convert_to_numpy=True, show_progress_bar=False)[0] for t in PROBES]).astype(
            np.float64
        )
        try:
            model._indb_probe_vectors = want
        except AttributeError:
            pass
    got = np.asarray(got, dtype=np.float64)
    cos = (want * got).sum(1) / (np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1))
    return float(cos.min())


def packer(model: Any) -> Callable[[dict, bool], Any] | None:
    """The packed encoder of ``model`` (tokenized texts, normalize -> float32 array), or None when the model is not
    one this module reproduces or its packed vectors for the probe texts differ from its own. Decided once per
    model, and kept on the model object (so it goes when the model goes)."""
    known = getattr(model, "_indb_packer", _UNSET)
    if known is not _UNSET:
        return known  # type: ignore[return-value]
    fn: Callable[[dict, bool], Any] | None = None
    if packable(model):

        def run(feats: dict, normalize: bool) -> Any:
            return packed_encode(model, feats, normalize)

        try:
            worst = probe_cosine(model, run(tokenize(model, PROBES), False))
            if worst >= MIN_COSINE:
                fn = run
            else:
                log.warning("packed batches disabled for this model: probe cosine %.9f", worst)
        except Exception:
            log.exception("packed batches disabled for this model: the self-check failed")
    try:
        model._indb_packer = fn
    except AttributeError:  # an object that takes no attributes: decided again next time
        pass
    return fn


def padding_share(lengths: Sequence[int]) -> float:
    """The share of a padded batch's tokens that are padding, over its real tokens."""
    return len(lengths) * max(lengths) / max(1, sum(lengths)) - 1 if lengths else 0.0


def may_pay(texts: Sequence[str]) -> bool:
    """Padding might add MIN_PADDING_SHARE of the batch's tokens, judged from the texts' lengths in characters: a
    cheap first test, so that a batch of texts alike in length is not tokenized twice."""
    return len(texts) > 1 and padding_share([len(t) + 8 for t in texts]) >= MIN_PADDING_SHARE


def tokenize(model: Any, texts: Sequence[str]) -> dict:
    """``texts`` tokenized by sentence-transformers itself (its preprocessing, truncation to the model's window,
    padded). Always through this call, never the tokenizer with other settings: a fast tokenizer keeps its
    padding and truncation settings in the tokenizer object, and the runtime's workers share one model, so two
    threads that asked for different settings would change them under each other's calls."""
    prep = getattr(model, "preprocess", None) or model.tokenize
    return prep(list(texts))


def token_lengths(feats: dict) -> list[int]:
    return feats["attention_mask"].sum(1).tolist()


def packed_encode(model: Any, feats: dict, normalize: bool) -> Any:
    """Embed the texts of ``feats`` (``tokenize``) with ``model`` (a packable one) as one sequence of all their
    tokens: one float32 row per text, what model.encode gives (mean pooling; L2-normalised when the model ends in
    Normalize or ``normalize``)."""
    import torch
    import torch.nn.functional as F

    mods = list(model)
    bert = mods[0].auto_model
    cfg = bert.config
    heads = cfg.num_attention_heads
    dim = cfg.hidden_size // heads
    with torch.inference_mode():
        keep = feats["attention_mask"].bool()  # the padding dropped
        lens = token_lengths(feats)
        ids = feats["input_ids"][keep].unsqueeze(0)
        types = feats["token_type_ids"][keep].unsqueeze(0) if "token_type_ids" in feats else torch.zeros_like(ids)
        pos = torch.cat([torch.arange(n) for n in lens]).unsqueeze(0)
        emb = bert.embeddings
        x = emb.word_embeddings(ids) + emb.token_type_embeddings(types) + emb.position_embeddings(pos)
        x = emb.LayerNorm(x)[0]  # [tokens, hidden]; dropout is the identity at inference
        total = x.shape[0]
        for layer in bert.encoder.layer:
            att = layer.attention
            q = att.self.query(x).view(total, heads, dim).transpose(0, 1)
            k = att.self.key(x).view(total, heads, dim).transpose(0, 1)
            v = att.self.value(x).view(total, heads, dim).transpose(0, 1)
            parts = []
            start = 0
            for n in lens:
                end = start + n
                parts.append(F.scaled_dot_product_attention(q[:, start:end], k[:, start:end], v[:, start:end]))
                start = end
            ctx = torch.cat(parts, dim=1).transpose(0, 1).reshape(total, heads * dim)
            x = att.output.LayerNorm(att.output.dense(ctx) + x)
            x = layer.output.LayerNorm(layer.output.dense(layer.intermediate(x)) + x)
        out = torch.stack([t.mean(0) for t in torch.split(x, lens)])
        if normalize or len(mods) == 3:
            out = F.normalize(out, p=2, dim=1)
        return out.float().numpy()
