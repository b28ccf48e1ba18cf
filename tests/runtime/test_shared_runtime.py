"""The shared runtime service with the service up: the same embeddings as in a backend, one model copy for
every connection and database, batching across connections, cancel while waiting, and what a client may send."""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from runtime_helpers import MODEL, connect, texts

from benchmarks.common import proc_rollup_kib
from indb_runtime import wire


def cosine(a, b) -> float:
    a, b = list(a), list(b)
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def pss_bytes(pid: int) -> int:
    rollup = proc_rollup_kib(pid)
    assert "Pss" in rollup, f"no Pss of process {pid}"
    return rollup["Pss"] * 1024


def test_shared_and_backend_modes_give_the_same_embeddings(service, db_dsn, scifact_docs):
    docs = texts(scifact_docs, 40) + ["", "a", "word " * 400]  # empty, one letter, longer than the window
    with connect(db_dsn, "shared") as s, connect(db_dsn, "backend") as b:
        shared = s.execute("select ml.embed(%s, %s::text[])", [MODEL, docs]).fetchone()[0]
        local = b.execute("select ml.embed(%s, %s::text[])", [MODEL, docs]).fetchone()[0]
        one_s = s.execute("select ml.embed(%s, %s)", [MODEL, docs[3]]).fetchone()[0]
        one_b = b.execute("select ml.embed(%s, %s)", [MODEL, docs[3]]).fetchone()[0]
        info = s.execute("select ml.runtime_info()->'runtime'").fetchone()[0]
    assert len(shared) == len(local) == len(docs)
    worst = min(cosine(x.to_list(), y.to_list()) for x, y in zip(shared, local))
    assert worst >= 0.999999, f"lowest cosine between the modes: {worst}"
    assert cosine(one_s.to_list(), one_b.to_list()) >= 0.999999
    assert info["mode"] == "shared" and info["embeddings_run_in"] == "service"
    assert info["service"]["pid"] == service.runtime_stats()["pid"]


def test_a_sync_vectorizer_writes_the_same_vectors_in_both_modes(service, db_dsn, scifact_docs):
    docs = texts(scifact_docs, 30, start=50)
    out = {}
    for mode in ("shared", "backend"):
        t = f"rt_vec_{mode}"
        with connect(db_dsn, mode) as c:
            c.execute(f"drop table if exists {t} cascade")
            c.execute(f"create table {t} (id int primary key, body text)")
            c.execute(f"select ml.create_vectorizer('{t}', array['body'], name => '{t}')")
            c.execute(f"insert into {t} select i, d from unnest(%s::text[]) with ordinality u(d, i)", [docs])
            dest = c.execute("select destination::text from ml.vectorizers where name = %s", [t]).fetchone()[0]
            rows = c.execute(f"select id, embedding from {dest} order by id").fetchall()
            out[mode] = {r[0]: r[1].to_list() for r in rows}
    assert len(out["shared"]) == len(docs) and out["shared"].keys() == out["backend"].keys()
    assert min(cosine(out["shared"][k], out["backend"][k]) for k in out["shared"]) >= 0.999999


def test_search_orders_results_the_same_in_both_modes(service, db_dsn):
    with connect(db_dsn, "backend") as c:
        c.execute("drop table if exists rt_search cascade")
        c.execute("create table rt_search (id int primary key, body text)")
        c.execute(
            "insert into rt_search values (1, 'cats purr on the sofa'), (2, 'the stock market fell'), "
            "(3, 'kittens sleep in the sun'), (4, 'interest rates rose again')"
        )
        c.execute("select ml.create_vectorizer('rt_search', array['body'], name => 'rt_search')")
    order = {}
    for mode in ("shared", "backend"):
        with connect(db_dsn, mode) as c:
            rows = c.execute("select * from ml.vectorizer_search('rt_search', 'a small cat', 4)").fetchall()
            order[mode] = [r[0] for r in rows]
    assert order["shared"] == order["backend"] and len(order["shared"]) == 4


def test_a_backend_in_shared_mode_holds_no_model(service, db_dsn):
    """The point of the service: a backend that embeds does not load torch and the model (~400 MB PSS)."""
    with connect(db_dsn, "shared") as s, connect(db_dsn, "backend") as b:
        s.execute("select ml.embed(%s, 'one sentence')", [MODEL])
        b.execute("select ml.embed(%s, 'one sentence')", [MODEL])
        shared_pss = pss_bytes(s.execute("select pg_backend_pid()").fetchone()[0])
        local_pss = pss_bytes(b.execute("select pg_backend_pid()").fetchone()[0])
    assert shared_pss < 100 * 2**20, f"a shared-mode backend holds {shared_pss / 2**20:.0f} MiB"
    assert local_pss > 3 * shared_pss


def test_warmup_in_shared_mode_warms_the_service_not_the_backend(service, db_dsn):
    with connect(db_dsn, "shared") as c:
        row = c.execute("select model, import_torch_s, total_s from ml.warmup()").fetchone()
        pid = c.execute("select pg_backend_pid()").fetchone()[0]
        assert row[0] == MODEL and row[1] == 0.0
        assert pss_bytes(pid) < 100 * 2**20
    st = service.runtime_stats()
    assert any(MODEL in m["names"] for m in st["models"])


def test_requests_from_many_connections_are_batched_together(service, db_dsn):
    """Six connections embed at once: their texts go to the model in fewer calls than texts, and each connection
    gets its own text's vector, the one a backend computes for that text alone, whatever else shared its batch.
    Texts of different lengths waste little on padding: with ONNX Runtime (the default engine) a batch goes to the
    session in groups alike in length; with PyTorch it is packed (one sequence of all its tokens)."""
    before = service.runtime_stats()
    conns = [connect(db_dsn, "shared") for _ in range(6)]
    sent = {
        (i, j): f"sentence {i} {j} about proteins and cells" + " in tissue" * ((3 * i + j) % 7)
        for i in range(6)
        for j in range(8)
    }
    got: dict = {}
    try:
        start = threading.Barrier(len(conns))

        def work(c, i):
            start.wait()
            for j in range(8):
                got[i, j] = c.execute("select ml.embed(%s, %s)", [MODEL, sent[i, j]]).fetchone()[0].to_list()

        threads = [threading.Thread(target=work, args=(c, i)) for i, c in enumerate(conns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for c in conns:
            c.close()
    after = service.runtime_stats()
    texts_done = after["texts"] - before["texts"]
    batches = after["batches"] - before["batches"]
    assert texts_done == 48
    assert batches < texts_done, f"{texts_done} single-text requests went to the model in {batches} calls"
    engine = next(m["engine"] for m in after["models"] if MODEL in m["names"])
    if engine == "torch":
        assert after["packed_batches"] > before["packed_batches"], "texts of different lengths batched: packed"
    else:
        assert engine.startswith("onnxruntime ")
        assert after["onnx_texts"] - before["onnx_texts"] == 48
        tokens = after["onnx_tokens"] - before["onnx_tokens"]
        padding = after["onnx_padding_tokens"] - before["onnx_padding_tokens"]
        assert padding < 0.15 * tokens, f"{padding} padding tokens for {tokens} tokens of text"
    with connect(db_dsn, "backend") as b:
        alone = {k: b.execute("select ml.embed(%s, %s)", [MODEL, t]).fetchone()[0].to_list() for k, t in sent.items()}
    assert got.keys() == alone.keys()
    worst = max(max(abs(x - y) for x, y in zip(got[k], alone[k])) for k in sent)
    assert worst < 1e-5, f"a vector differs from its text's own by {worst}"


def test_cancel_while_waiting_on_the_service_acts_within_a_second(service, db_dsn, scifact_docs):
    many = texts(scifact_docs, 200) * 5  # about a minute of model time on two cores
    with connect(db_dsn, "shared") as c, connect(db_dsn, "shared") as other:
        c.execute("set statement_timeout = '1s'")
        t0 = time.time()
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute("select ml.embed(%s, %s::text[])", [MODEL, many])
        took = time.time() - t0
        # a small request beside the cancelled one is answered, correctly
        ref = other.execute("select ml.embed(%s, 'a protein folds')", [MODEL]).fetchone()[0]
        c.execute("reset statement_timeout")
        again = c.execute("select ml.embed(%s, 'a protein folds')", [MODEL]).fetchone()[0]
    assert took < 2.5, f"statement_timeout of 1 s acted after {took:.1f} s"
    assert cosine(ref.to_list(), again.to_list()) >= 0.999999  # the connection is not out of step
    st = service.runtime_stats()
    assert st["cancelled_requests"] >= 1


def test_pg_cancel_backend_acts_while_waiting(service, db_dsn, scifact_docs):
    many = texts(scifact_docs, 200) * 5
    with connect(db_dsn, "shared") as c, connect(db_dsn) as admin:
        pid = c.execute("select pg_backend_pid()").fetchone()[0]
        errors = []

        def run():
            try:
                c.execute("select ml.embed(%s, %s::text[])", [MODEL, many])
            except psycopg.Error as e:
                errors.append(e)

        th = threading.Thread(target=run)
        th.start()
        time.sleep(1.0)
        t0 = time.time()
        admin.execute("select pg_cancel_backend(%s)", [pid])
        th.join(timeout=10)
        took = time.time() - t0
    assert not th.is_alive() and errors and isinstance(errors[0], psycopg.errors.QueryCanceled)
    assert took < 1.5, f"the cancel acted after {took:.1f} s"


def test_two_databases_share_one_service_and_one_model_copy(service, db_dsn, empty_db):
    from indb.install import install

    other = empty_db("indb_rt_second")
    install(other, venv=sys.prefix)
    with connect(db_dsn, "shared") as a, connect(other, "shared") as b:
        va = a.execute("select ml.embed(%s, 'shared by two databases')", [MODEL]).fetchone()[0]
        vb = b.execute("select ml.embed(%s, 'shared by two databases')", [MODEL]).fetchone()[0]
        pa = a.execute("select ml.runtime_info()->'runtime'->'service'->>'pid'").fetchone()[0]
        pb = b.execute("select ml.runtime_info()->'runtime'->'service'->>'pid'").fetchone()[0]
    assert pa == pb
    assert cosine(va.to_list(), vb.to_list()) >= 0.999999
    models = [m for m in service.runtime_stats()["models"] if MODEL in m["names"]]
    assert len(models) == 1, "one copy of the model serves both databases"


# -- what a client may send ------------------------------------------------------------------------
def raw_request(cluster, frame: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(cluster.runtime_socket))
        s.sendall(frame)
        head = s.recv(wire.HEADER.size, socket.MSG_WAITALL)
        _, jlen, _ = wire.parse_header(head)
        return json.loads(s.recv(jlen, socket.MSG_WAITALL))


def test_the_service_loads_only_models_registered_in_the_database(service, db_dsn):
    """A request names a model; the folder comes from ml.embedding_models (admin-only), never from the client."""
    dbname = psycopg.conninfo.conninfo_to_dict(db_dsn)["dbname"]
    for model in ("/tmp", "package:os", "../../etc"):
        ans = raw_request(
            service, wire.pack({"op": "embed", "db": dbname, "model": model, "version": "1", "texts": ["x"]})
        )
        assert ans["ok"] is False and ans["code"] == "42704", ans
    ans = raw_request(service, wire.pack({"op": "run", "code": "import os; os.system('id')"}))
    assert ans["ok"] is False and ans["code"] == "08P01"


def test_a_request_over_the_size_limit_is_refused_clearly(service, db_dsn):
    limit = service.runtime_stats()["max_request_bytes"]
    head = struct.pack("<4sHHII", wire.MAGIC, wire.VERSION, 0, limit + 1, 0)
    ans = raw_request(service, head)
    assert ans["code"] == "54000" and "limit" in ans["message"]
    with connect(db_dsn, "shared") as c:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded) as e:
            c.execute("select ml.embed(%s, repeat('x', %s))", [MODEL, limit + 10])
        assert "request limit" in str(e.value) and "--max-request-bytes" in (e.value.diag.message_hint or "")
        # the service is still there
        assert c.execute("select vector_dims(ml.embed(%s, 'still here'))", [MODEL]).fetchone()[0] == 384


def test_another_wire_version_is_a_clear_error(service):
    ans = raw_request(service, struct.pack("<4sHHII", wire.MAGIC, wire.VERSION + 1, 0, 2, 0) + b"{}")
    assert ans["ok"] is False and ans["code"] == wire.MISMATCH and "version" in ans["message"]


def test_only_the_server_os_user_can_reach_the_socket(service):
    folder = service.runtime_socket.parent
    st = os.stat(folder)
    import pwd

    assert pwd.getpwuid(st.st_uid).pw_name == ("postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name)
    assert st.st_mode & 0o077 == 0, oct(st.st_mode)
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another OS user")
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    print('refused')\nelse:\n    print('connected')\n"
    )
    out = subprocess.run(
        ["runuser", "-u", "nobody", "--", sys.executable, "-c", probe, str(service.runtime_socket)],
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert out.stdout.strip() == "refused", out.stdout + out.stderr


def test_an_app_role_embeds_through_the_service(service, db_dsn):
    from helpers import act_as

    before = service.runtime_stats()["texts"]
    with connect(db_dsn, "shared") as c:
        act_as(c, "indb_app", None)
        v = c.execute("select ml.embed(%s, 'as an application')", [MODEL]).fetchone()[0]
        # an application cannot move the work elsewhere than the database allows: the setting is only where
        # the same registered model runs, and an unknown value is refused
        c.execute("set indb.runtime = 'elsewhere'")
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            c.execute("select ml.embed(%s, 'x')", [MODEL])
    assert len(v.to_list()) == 384 and service.runtime_stats()["texts"] == before + 1


def test_token_chunking_in_shared_mode_needs_no_model_in_the_backend(service, db_dsn, scifact_docs):
    """Chunks come from the model's tokenizer alone (tokenizer.json): the same chunks and vectors as in a backend
    that holds the whole model, and the backend stays small."""
    docs = texts(scifact_docs, 10, start=120)
    out = {}
    for mode in ("shared", "backend"):
        t = f"rt_chunk_{mode}"
        with connect(db_dsn, mode) as c:
            c.execute(f"drop table if exists {t} cascade")
            c.execute(f"create table {t} (id int primary key, body text)")
            c.execute(
                f"select ml.create_vectorizer('{t}', array['body'], name => '{t}', chunk_size => 40, chunk_overlap => 8)"
            )
            c.execute(f"insert into {t} select i, d from unnest(%s::text[]) with ordinality u(d, i)", [docs])
            dest = c.execute("select destination::text from ml.vectorizers where name = %s", [t]).fetchone()[0]
            rows = c.execute(f"select id, seq, chunk, embedding from {dest} order by id, seq").fetchall()
            chunks = c.execute("select array_agg(chunk order by seq) from ml.chunk(%s, 40, 8)", [docs[0]]).fetchone()[0]
            pid = c.execute("select pg_backend_pid()").fetchone()[0]
            out[mode] = (rows, chunks, pss_bytes(pid))
    (rs, cs, mem), (rb, cb, _) = out["shared"], out["backend"]
    assert [r[:3] for r in rs] == [r[:3] for r in rb] and len(rs) > len(docs)
    assert cs == cb and len(cs) > 1
    assert min(cosine(a[3].to_list(), b[3].to_list()) for a, b in zip(rs, rb)) >= 0.999999
    assert mem < 150 * 2**20, f"a shared-mode backend that chunks holds {mem / 2**20:.0f} MiB"


def test_the_workers_split_a_bulk_request_and_answer_in_request_order(service, db_dsn, scifact_docs):
    """The service's workers embed pieces of one large request side by side (on a machine with two or more cores),
    and the answer is the backend's, row for row, while single-text requests from other connections run beside it."""
    docs = texts(scifact_docs, 100, start=120)
    docs = docs + [d[: len(d) // 2] for d in docs] + ["a", "", "word " * 300]  # 203 texts: 4 pieces of <= 64
    workers = service.runtime_stats()["workers"]
    singles: list = []

    def single_rows():
        with connect(db_dsn, "shared") as c:
            for d in docs[:12]:
                singles.append(c.execute("select ml.embed(%s, %s)", [MODEL, d]).fetchone()[0].to_list())

    side = threading.Thread(target=single_rows)
    with connect(db_dsn, "shared") as s, connect(db_dsn, "backend") as b:
        side.start()
        shared = s.execute("select ml.embed(%s, %s::text[])", [MODEL, docs]).fetchone()[0]
        side.join()
        local = b.execute("select ml.embed(%s, %s::text[])", [MODEL, docs]).fetchone()[0]
    assert len(shared) == len(local) == len(docs)
    worst = min(cosine(x.to_list(), y.to_list()) for x, y in zip(shared, local))
    assert worst >= 0.999999, f"lowest cosine between the modes: {worst}"
    assert len(singles) == 12 and min(cosine(x, y.to_list()) for x, y in zip(singles, local)) >= 0.999999
    if (os.cpu_count() or 1) >= 2:
        assert workers >= 2
        # whether two pieces of one request overlap depends on thread scheduling, so a few more bulk requests give
        # the workers the chance; a service with one live worker never overlaps (a worker that died on a race in
        # next_batch once left exactly that), so this still fails when the workers do not run side by side
        with connect(db_dsn, "shared") as s:
            for _ in range(3):
                if service.runtime_stats()["most_busy_workers"] >= 2:
                    break
                s.execute("select ml.embed(%s, %s::text[])", [MODEL, docs]).fetchone()
        assert service.runtime_stats()["most_busy_workers"] >= 2, "the pieces of every request ran one after another"
