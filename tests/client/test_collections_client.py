"""The Python client's collection methods, end to end against the real database and model."""

from __future__ import annotations

import secrets

import pytest

from indb.errors import InvalidInput, NotFound


def test_client_round_trip_with_progress_and_typed_errors(client):
    name = f"cl_{secrets.token_hex(3)}"
    info = client.create_collection(name, options={"m": 8})
    assert info["table_name"] == f"collections.{name}" and info["dimensions"] == 384
    lines = []
    docs = [
        {"id": f"n{i}", "content": f"note {i} about {'cats' if i % 2 else 'rockets'}", "metadata": {"i": i}}
        for i in range(40)
    ]
    assert client.add_documents(name, docs, batch_size=16, progress=lines.append) == 40
    assert lines and lines[-1].endswith("done") and "40/40 documents" in lines[-1]
    hits = client.search(name, "a note about felines", k=5, filter={"i": {"$lt": 20}})
    assert len(hits) == 5 and all(h["metadata"]["i"] < 20 for h in hits)
    assert all(int(h["id"][1:]) % 2 == 1 for h in hits)  # the cat notes
    vec = client.embed("a note about felines")
    by_vec = client.search(name, vec, k=5, filter={"i": {"$lt": 20}})
    assert [h["id"] for h in by_vec] == [h["id"] for h in hits]
    kw = client.keyword_search(name, "rockets", k=3)
    assert len(kw) == 3 and all("rockets" in h["content"] for h in kw)
    hy = client.hybrid_search(name, "rockets", k=3, method="weighted")
    assert {"vector_rank", "keyword_rank"} <= set(hy[0]) and "rockets" in hy[0]["content"]
    ex = client.explain_search(name, "cats", k=3, filter={"i": 3})
    assert ex["strategy"] == "exact" and ex["filter_matches"] == 1
    h = client.collection_health(name, sample=5)
    assert h["rows"] == 40 and h["bm25_documents"] == 40 and h["sampled_recall_at_10"] is not None
    assert any(c["name"] == name for c in client.collections())
    with pytest.raises(NotFound):
        client.search("no_such_collection", "x")
    with pytest.raises(InvalidInput) as e:
        client.search(name, "x", filter={"i": {"$between": [1, 2]}})
    assert e.value.sqlstate == "22023" and "$.i.$between" in str(e.value)
    # a NaN in a vector (a numpy array from a model that overflowed): named, and no batch is written, earlier ones included
    with pytest.raises(InvalidInput, match="document 'v2' has an embedding whose element 3 is nan"):
        docs = [{"id": "v1", "content": "ok"}, {"id": "v2", "embedding": [0.1] * 2 + [float("nan")] + [0.1] * 381}]
        client.add_documents(name, docs, batch_size=1)
    assert client.scalar(f"select count(*) from collections.{name} where id like 'v%'") == 0
    # a NaN in the metadata (a pandas row's missing float): named with its key, and nothing written either
    with pytest.raises(InvalidInput, match=r"document 'v2' metadata\['w'\] is nan") as e:
        docs = [{"id": "v1", "content": "ok"}, {"id": "v2", "content": "ok", "metadata": {"w": float("nan")}}]
        client.add_documents(name, docs, batch_size=1)
    assert e.value.sqlstate == "22023" and "None" in (e.value.hint or "")
    assert client.scalar(f"select count(*) from collections.{name} where id like 'v%'") == 0
    with pytest.raises(InvalidInput, match=r"filter\['i'\]\['\$lt'\] is nan"):
        client.hybrid_search(name, "cats", k=3, filter={"i": {"$lt": float("nan")}})
    assert client.drop_collection(name) is True
    assert client.drop_collection(name, if_exists=True) is False
