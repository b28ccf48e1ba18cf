"""The runtime picks CUDA when torch sees a GPU, else the CPU, and embeddings agree across devices.

Uses a tiny randomly initialised BERT saved as a local sentence-transformers folder (nothing is
downloaded). On a machine without a GPU it checks the CPU path; on a GPU machine it checks that the
model really runs on CUDA and gives the same vectors as on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
st = pytest.importorskip("sentence_transformers")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    d = tmp_path_factory.mktemp("tiny-st")
    vocab = (
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        + [chr(c) for c in range(ord("a"), ord("z") + 1)]
        + ["the", "cat", "dog", "sat"]
    )
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(d / "vocab.txt"))
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    )
    hf = d / "hf"
    bert.save_pretrained(hf)
    tok.save_pretrained(hf)
    word = models.Transformer(str(hf), max_seq_length=32)
    model = SentenceTransformer(
        modules=[
            word,
            models.Pooling(
                word.get_embedding_dimension()
                if hasattr(word, "get_embedding_dimension")
                else word.get_word_embedding_dimension()
            ),
            models.Normalize(),
        ]
    )
    out = d / "st"
    model.save(str(out))
    return out


def test_device_is_cuda_when_present_else_cpu(tiny_model_dir, monkeypatch):
    from indb_runtime import device, embedding

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.delenv("INDB_DEVICE", raising=False)
    assert device.torch_device() == expected
    spec = embedding.ModelSpec("tiny", str(tiny_model_dir), 32, 32, True)
    model = embedding.load(spec)
    assert str(model.device).startswith(expected)
    texts = ["the cat sat", "the dog sat", "a b c d e f g"]
    got = np.asarray(embedding.encode(spec, texts))
    assert got.shape == (3, 32)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    if expected == "cuda":
        monkeypatch.setenv("INDB_DEVICE", "cpu")
        cpu_spec = embedding.ModelSpec("tiny-cpu", str(tiny_model_dir), 32, 32, True)
        ref = np.asarray(embedding.encode(cpu_spec, texts))
        cos = (got * ref).sum(axis=1)
        assert cos.min() >= 0.9999, cos
