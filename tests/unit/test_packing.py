"""Packed batches (plpython/indb_runtime/packing.py) with the real MiniLM model, no database: the vectors of a
packed batch are the model's own vectors of each text alone, whatever mix of lengths the batch holds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

DATA = Path(os.environ.get("INDB_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


@pytest.fixture(scope="module")
def model():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from indb_runtime import embedding

    spec = embedding.builtin_models()[embedding.DEFAULT_MODEL]
    return embedding.load(spec)


def texts_of_every_kind() -> list[str]:
    sents = []
    with open(DATA / "scifact" / "corpus.jsonl") as f:
        for line in f:
            doc = json.loads(line)
            sents.append(doc["title"])
            sents.append(doc["text"][:300])
            if len(sents) >= 24:
                break
    long_text = " ".join(sents)  # over the model's 256-token window: truncated, as the model itself does
    return [*sents, "", "   ", "A", "UPPER case and ünïcödé — text ✓", long_text, "x " * 400]


def alone(model, texts):
    return np.stack([model.encode([t], convert_to_numpy=True, show_progress_bar=False)[0] for t in texts])


def test_a_packed_batch_gives_each_texts_own_vector(model):
    from indb_runtime import packing

    texts = texts_of_every_kind()
    run = packing.packer(model)
    assert run is not None, "MiniLM is a BERT encoder with mean pooling: it must be packed"
    for batch in (texts[:2], texts[:7], texts):
        got = run(packing.tokenize(model, batch), True)
        want = alone(model, batch)
        assert got.shape == want.shape and got.dtype == np.float32
        cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        assert cos.min() >= 0.999999, (batch[int(cos.argmin())][:60], float(cos.min()))
        assert np.abs(got - want).max() < 1e-5


def test_the_one_model_call_packs_one_text_and_batches_that_padding_would_waste(model, monkeypatch):
    from indb_runtime import embedding, packing

    calls: list[int] = []
    real = packing.packed_encode
    monkeypatch.setattr(packing, "packed_encode", lambda m, f, n: calls.append(len(f["input_ids"])) or real(m, f, n))
    model.__dict__.pop("_indb_packer", None)  # decided again: the self-check's packed call is counted too
    varied = ["Cells divide.", "PostgreSQL keeps the embeddings next to the rows they describe, and more."]
    same = ["one two three", "four five six"]
    v = embedding.model_call(model, varied, True)
    s = embedding.model_call(model, same, True)
    one = embedding.model_call(model, ["Cells divide."], True)
    # long texts of different lengths: all cut to the model's window, so they hardly pad
    cut = ["word " * 400, "other " * 700, "third " * 1000]
    c = embedding.model_call(model, cut, True)
    # the self-check (4 probes), the varied batch and the one text (packing's forward pass without encode's
    # per-call work); not the texts of one length, not the long texts cut to the window
    assert calls == [4, 2, 1], calls
    for got, texts in ((v, varied), (s, same), (one, ["Cells divide."]), (c, cut)):
        assert np.abs(got - alone(model, texts)).max() < 1e-5


def test_a_model_packing_does_not_reproduce_is_left_to_sentence_transformers():
    from indb_runtime import embedding, packing

    class NotSentenceTransformers:
        def encode(self, texts, **kw):
            return np.full((len(texts), 3), 0.5, dtype=np.float32)

    m = NotSentenceTransformers()
    assert packing.packer(m) is None
    out = embedding.model_call(m, ["short", "a much longer text than the other one"], True)
    assert out.shape == (2, 3) and float(out[0, 0]) == 0.5


def test_two_threads_embedding_with_one_model_do_not_disturb_each_other(model):
    """The runtime's workers share one model: one thread tokenizes and packs batches while another embeds through
    sentence-transformers, and both get the right vectors without an error. (A fast tokenizer keeps its padding
    settings in the tokenizer object: a tokenizer call with other settings in one thread made the other's batch
    fail now and then, "Unable to create tensor ... padding=True"; packing tokenizes only as sentence-transformers
    does, packing.tokenize. That race is too rare to be caught here every time.)"""
    import threading
    import time

    from indb_runtime import embedding, packing

    texts = texts_of_every_kind()
    varied = texts[:5]  # different lengths: packed
    alike = ["one two three", "four five six", "seven eight nine"]  # one length: sentence-transformers
    want = {"packed": alone(model, varied), "st": alone(model, alike)}
    errors: list[str] = []
    worst = [0.0]
    stop = time.monotonic() + 3.0

    def packs() -> None:
        i = 0
        while time.monotonic() < stop:
            try:
                if i % 50 == 0:
                    got = embedding.model_call(model, varied, True)
                    worst[0] = max(worst[0], float(np.abs(got - want["packed"]).max()))
                else:  # the step that decides on and feeds a packed batch, as often as it can run
                    packing.tokenize(model, varied)
            except Exception as e:  # collected: an exception in a thread would not fail the test
                errors.append(str(e)[:200])
            i += 1

    def encodes() -> None:
        while time.monotonic() < stop:
            try:
                got = embedding.model_call(model, alike, True)
                worst[0] = max(worst[0], float(np.abs(got - want["st"]).max()))
            except Exception as e:
                errors.append(str(e)[:200])

    threads = [threading.Thread(target=packs), threading.Thread(target=encodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and worst[0] < 1e-5, errors[:3]
