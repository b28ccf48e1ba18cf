"""Foundation pieces that need no database: versions agree, errors map, bootstrap, progress."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_the_version_is_written_once_and_both_packages_report_it():
    import indb
    import indb_runtime

    text = (REPO / "pyproject.toml").read_text()
    assert indb.__version__ == indb_runtime.__version__ == re.search(r'^version = "([^"]+)"', text, re.M).group(1)
    literal = re.compile(r"""__version__\s*=\s*["']|^version\s*=""", re.M)
    written = [
        str(p.relative_to(REPO))
        for p in REPO.glob("**/*")
        if p.suffix in (".py", ".toml", ".cfg")
        and ".venv" not in p.parts
        and p.is_file()
        and literal.search(p.read_text())
    ]
    assert written == ["pyproject.toml"], written


def test_sql_version_is_rendered_from_the_client_version():
    from indb import __version__
    from indb.install import render_sql, sql_files

    files = sql_files()
    assert files[0].name.startswith("000-"), "the runtime bootstrap must be applied first"
    runtime = render_sql(files[0])
    assert f"select '{__version__}'::text" in runtime
    assert "@INDB_VERSION@" not in runtime


def test_every_plpython_function_in_sql_is_parallel_unsafe_and_bootstraps():
    """plpy.execute in a parallel worker fails: every plpython3u function must say PARALLEL UNSAFE; and every one
    that imports the runtime must first activate it (the bootstrap line), or it fails in a fresh backend."""
    from indb.install import sql_files

    unsafe, no_bootstrap, seen = [], [], 0
    bootstrap = "if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')"
    for f in sql_files():
        text = f.read_text()
        for m in re.finditer(r"create or replace function\s+([\w.]+)\s*\((.*?)\$\$(.*?)\$\$", text, re.S | re.I):
            header, body = m.group(2), m.group(3)
            if "plpython3u" not in header.lower():
                continue
            seen += 1
            if "parallel unsafe" not in header.lower():
                unsafe.append(f"{f.name}:{m.group(1)}")
            imports_runtime = "indb_runtime" in body.replace("indb_runtime.bootstrap' not in sys.modules", "")
            if m.group(1) != "ml._activate" and imports_runtime and bootstrap not in body:
                no_bootstrap.append(f"{f.name}:{m.group(1)}")
    assert seen > 20, "the sql/ files were not read"
    assert not unsafe, f"plpython3u functions without PARALLEL UNSAFE: {unsafe}"
    assert not no_bootstrap, f"plpython3u functions that import indb_runtime before activating it: {no_bootstrap}"


def test_migrations_form_one_linear_chain_from_0001():
    from alembic.script import ScriptDirectory

    from indb.install import alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    heads = script.get_heads()
    assert len(heads) == 1, f"more than one head: {heads}"
    revs = list(script.walk_revisions())
    assert revs[-1].revision == "0001" and revs[-1].down_revision is None


@pytest.mark.parametrize(
    "sqlstate,cls",
    [
        ("57014", "Canceled"),
        ("42501", "PermissionDenied"),
        ("42704", "NotFound"),
        ("42P01", "NotFound"),
        ("22023", "InvalidInput"),
        ("23505", "ConflictError"),
        ("38000", "RuntimeFailure"),
        (None, "IndbError"),
    ],
)
def test_sqlstates_map_to_the_exception_hierarchy(sqlstate, cls):
    import indb
    from indb.errors import from_sqlstate

    assert from_sqlstate(sqlstate) is getattr(indb, cls)
    assert issubclass(from_sqlstate(sqlstate), indb.IndbError)


def test_bootstrap_sets_environment_and_refuses_a_version_mismatch(monkeypatch):
    from indb_runtime import bootstrap

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(bootstrap, "STATE", {"activated_at": None, "venv": None, "models": {}})
    with pytest.raises(bootstrap.RuntimeMismatch, match="0.0.0-other"):
        bootstrap.activate("/nonexistent", "0.0.0-other")
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    out = bootstrap.activate("/some/venv", bootstrap.__version__)
    assert out["venv"] == "/some/venv"


def test_runtime_errors_carry_sqlstate_through_plpy():
    from fakeplpy import FakeError, FakePlpy

    from indb_runtime import errors

    plpy = FakePlpy()

    def boom():
        raise errors.invalid("k must be positive", hint="pass k >= 1")

    with pytest.raises(FakeError) as ei:
        errors.call(plpy, boom)
    assert ei.value.sqlstate == "22023" and "k must be positive" in str(ei.value) and ei.value.hint == "pass k >= 1"


def test_progress_reports_rate_and_time_left():
    from indb.progress import Progress

    lines = []
    p = Progress(total=100, label="embedding", out=lines.append, every_s=0)
    p.t0 -= 10  # pretend 10 s went by
    p.update(50)
    assert re.search(r"embedding: 50/100 rows, [\d.]+ rows/s, [\d.]+ s elapsed, ~\d+ s left", lines[-1]), lines[-1]


def test_default_port_is_stable_per_state_folder(monkeypatch):
    from indb.localdb import default_port

    monkeypatch.delenv("INDB_PORT", raising=False)
    a, b = default_port(Path("/x/a/.state")), default_port(Path("/x/b/.state"))
    assert a == default_port(Path("/x/a/.state")) and 54000 <= a < 55000 and 54000 <= b < 55000
    monkeypatch.setenv("INDB_PORT", "6543")
    assert default_port(Path("/x/a/.state")) == 6543


def test_pgvector_names_are_qualified_with_its_schema_and_the_pinned_search_path_stays_narrow(tmp_path):
    """indb's functions search pg_catalog and pg_temp only; pgvector's names are written with @VS@, its schema."""
    from indb.install import render_sql

    f = tmp_path / "x.sql"
    f.write_text(
        "create function ml.f(q vector) returns int language sql set search_path = pg_catalog, pg_temp "
        "as $$ select @VS@.vector_dims(q) $$;"
    )
    out = render_sql(f, "extensions")
    assert 'select "extensions".vector_dims(q)' in out and "search_path = pg_catalog, pg_temp " in out
    assert 'select "public".vector_dims(q)' in render_sql(f)
    assert '"we""ird".vector_dims' in render_sql(f, 'we"ird')


def test_socket_folder_stays_within_the_unix_socket_path_limit():
    from indb.localdb import Cluster

    short = Cluster(Path("/work/x/.state"), 54321)
    assert short.run == Path("/work/x/.state/run")
    deep = Cluster(Path("/" + "/".join(["a-rather-long-folder-name"] * 6) + "/.state"), 54321)
    assert len(str(deep.run / ".s.PGSQL.54321")) <= 100
    assert deep.run == Cluster(deep.state, 54321).run, "the same checkout always gets the same socket folder"


def test_extra_clusters_skip_a_port_another_program_holds(tmp_path, monkeypatch):
    """A local shard or replica whose folder hashes to a port that another program listens on takes the next free
    one instead of failing to start (CI once hit exactly this), and a folder set up earlier keeps its own port."""
    import socket

    from indb.localdb import SmallCluster, configured_port, default_port, free_port

    monkeypatch.delenv("INDB_PORT", raising=False)
    st = tmp_path / "shard"
    busy = default_port(st)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind(("127.0.0.1", busy))
        except OSError:
            pass  # already held by something else: the point of the test either way
        else:
            holder.listen(1)
        assert free_port(busy) != busy
        small = SmallCluster.at(st)
        assert small.port != busy and 54000 <= small.port < 55000
    (st / "pgdata").mkdir()
    (st / "pgdata" / "indb.conf").write_text("listen_addresses = '127.0.0.1'\nport = 54321\n")
    assert configured_port(st / "pgdata") == 54321 and SmallCluster.at(st).port == 54321
    SmallCluster.at(st).remove()  # never started: its folder still goes
    assert not st.exists()


def test_the_runtime_service_takes_1_to_64_workers_and_says_so_otherwise(monkeypatch, capsys):
    from indb_runtime import service

    monkeypatch.delenv("INDB_RUNTIME_WORKERS", raising=False)
    assert service.parser().parse_args(["serve", "--data", "/x", "--workers", "3"]).workers == 3
    assert 1 <= service.parser().parse_args(["serve", "--data", "/x"]).workers <= 4
    monkeypatch.setenv("INDB_RUNTIME_WORKERS", "2")
    assert service.parser().parse_args(["serve", "--data", "/x"]).workers == 2
    for bad in ("0", "65", "two"):
        with pytest.raises(SystemExit):
            service.parser().parse_args(["serve", "--data", "/x", "--workers", bad])
        assert "give a whole number from 1 to 64" in capsys.readouterr().err


def _job(service, source: int, n: int = 1):
    return service.Job(("model",), None, True, [f"text {source} {i}" for i in range(n)], source)


def test_a_lone_request_among_idle_pooled_connections_does_not_wait_for_the_batching_window():
    from indb_runtime import device, service

    b = service.Batcher(window_ms=2000, max_batch=64, workers=2)
    b.connections = 32  # a pool: 32 connections to the service, one of them embedding
    b.submit(_job(service, 1))
    t = time.monotonic()
    batch = b.next_batch()
    assert time.monotonic() - t < 0.5, "a lone request waited for the window"
    assert [len(j.texts) for j, _, _ in batch] == [1]
    assert b.threads_for_call(cores=2) == 2  # alone: every core, as fast as in a backend
    # ... unless it is small: a sentence is embedded faster on one thread than split over two
    assert b.threads_for_call(cores=2, texts=["a sentence of 85 characters"]) == 1
    assert b.threads_for_call(cores=2, texts=["x" * device.SMALL_CALL_CHARS]) == 2


def test_a_lone_request_is_embedded_by_the_thread_that_received_it_and_overlapping_ones_are_queued():
    from indb_runtime import service

    b = service.Batcher(window_ms=2000, max_batch=64, workers=2)
    lone = _job(service, 1)
    batch = b.try_inline(lone)
    assert batch == [(lone, 0, 1)] and b.busy == 1 and not b.pending  # no hand-off to a worker
    # a request that arrives while that one is in the model call is queued, and marks the overlap
    second = _job(service, 2)
    assert b.try_inline(second) is None
    b.submit(second)
    assert b.pending == [second] and b.overlapped == second.arrived
    # once requests overlap, even a request alone in the queue goes through the batcher (it may wait for others)
    b.pending.clear()
    b.inflight.clear()
    b.busy = 0
    assert b.try_inline(_job(service, 3)) is None
    # a request over max_batch is cut into pieces by the batcher
    b.overlapped = -1e9
    assert b.try_inline(_job(service, 4, n=65)) is None
    assert b.try_inline(_job(service, 5, n=64)) is not None


def test_a_model_failure_on_the_inline_path_fails_that_request_and_gives_its_worker_back():
    from indb_runtime import service

    class Broken:
        def encode(self, texts, **kw):
            raise RuntimeError("out of memory")

    class Fine:
        def encode(self, texts, **kw):
            import numpy as np

            return np.ones((len(texts), 3), dtype=np.float32)

    b = service.Batcher(window_ms=10, max_batch=64, workers=1)
    bad = service.Job(("m",), Broken(), True, ["a sentence"], 1)
    b.embed_batch(b.try_inline(bad))
    assert bad.done.is_set() and bad.error is not None and bad.error.code == "38000"
    assert b.busy == 0 and not b.inflight  # the one worker is free again: the next request is served
    good = service.Job(("m",), Fine(), True, ["another", "two"], 2)
    b.embed_batch(b.try_inline(good))
    assert good.done.is_set() and good.error is None and good.out.shape == (2, 3)


def test_overlapping_requests_are_batched_and_shared_among_the_idle_workers_one_core_each():
    from indb_runtime import service

    b = service.Batcher(window_ms=2000, max_batch=64, workers=2)
    b.connections = 6
    # connections 1-4 have been embedding side by side (a request arrived while another was queued) ...
    for s in (1, 2, 3, 4):
        b.submit(_job(service, s))
    b.pending.clear()
    # ... and four of them send again: the first worker waits for all four, not for the two idle connections
    # (5, 6), and takes half; the second worker takes the other half
    sent = []

    def send():
        for s in (1, 2, 3, 4):
            time.sleep(0.05)
            b.submit(_job(service, s))
            sent.append(s)

    th = threading.Thread(target=send)
    th.start()
    t = time.monotonic()
    first = b.next_batch()
    waited = time.monotonic() - t
    th.join()
    assert len(sent) == 4 and 0.1 < waited < 1.5, f"waited {waited:.2f} s"
    assert sorted(j.source for j, _, _ in first) == [1, 2]
    assert b.threads_for_call(cores=2) == 1
    second = b.next_batch()
    assert sorted(j.source for j, _, _ in second) == [3, 4] and b.busy == 2
    assert b.threads_for_call(cores=2) == 1


def test_a_queued_request_waits_for_the_one_worker_while_a_lone_request_holds_it_inline():
    """workers=1: the thread that received a lone request embeds it (try_inline, counted busy); a request that
    arrives meanwhile is queued, and the worker waits for the call to end instead of starting a second model
    call. It once divided by the number of idle workers (0) and spun, logging a traceback each time."""
    import numpy as np

    from indb_runtime import service

    class Fine:
        device = "cpu"

        def encode(self, texts, **kw):
            return np.ones((len(texts), 3), dtype=np.float32)

    b = service.Batcher(window_ms=10, max_batch=64, workers=1)
    lone = service.Job(("m",), Fine(), True, ["a sentence"], 1)
    inline = b.try_inline(lone)
    assert inline is not None and b.busy == 1
    queued = service.Job(("m",), Fine(), True, ["another sentence"], 2)
    b.submit(queued)
    got: list = []
    errors: list = []

    def worker():
        try:
            got.append(b.next_batch())
        except Exception as e:
            errors.append(e)

    th = threading.Thread(target=worker, daemon=True)
    th.start()
    th.join(0.3)
    assert not errors, f"the worker failed: {errors[0]!r}"
    assert th.is_alive() and b.busy == 1, "a second model call started beside the one the worker count allows"
    b.embed_batch(inline)  # the inline call ends: its slot is free
    th.join(2)
    assert not errors and got and [(j, a, z) for j, a, z in got[0]] == [(queued, 0, 1)]
    b.embed_batch(got[0])
    assert lone.done.is_set() and queued.done.is_set() and b.busy == 0


def test_waiting_texts_for_a_model_on_a_gpu_go_to_one_call_not_shared_among_workers():
    """On a CPU the idle workers share the waiting texts (one core each); on a GPU their calls would queue on the
    one device, and one call on all of them is faster (benchmarks/results/runtime_device.json)."""
    from indb_runtime import service

    class OnGpu:
        device = "cuda:0"

    b = service.Batcher(window_ms=10, max_batch=64, workers=2)
    for s in (1, 2, 3, 4):
        b.submit(service.Job(("gpu",), OnGpu(), True, [f"text {s}"], s))
    batch = b.next_batch()
    assert sorted(j.source for j, _, _ in batch) == [1, 2, 3, 4] and not b.pending


def test_the_client_names_a_nan_it_cannot_send_as_json_and_sends_numpy_numbers_as_numbers():
    import json

    import numpy as np

    from indb.base import json_text
    from indb.errors import InvalidInput

    for bad, where in [
        ([{"a": 1.0}, {"a": float("nan")}], "rows[1]['a'] is nan"),
        ({"k": [1.0, float("-inf")]}, "rows['k'][1] is -inf"),
        ({"k": np.float32("inf")}, "rows['k'] is inf"),
        ({"k": np.array([0.5, np.nan])}, "rows['k'][1] is nan"),
    ]:
        with pytest.raises(InvalidInput) as e:
            json_text(bad, "rows")
        assert str(e.value).startswith(where) and e.value.sqlstate == "22023"
    text = json_text(
        {
            "i": np.int64(3),
            "f": np.float32(0.5),
            "b": np.bool_(True),
            "a": np.arange(2),
            "t": np.datetime64("2024-05-01"),
        },
        "rows",
    )
    assert json.loads(text) == {"i": 3, "f": 0.5, "b": True, "a": [0, 1], "t": "2024-05-01"}


def test_make_bench_leaves_the_gpu_results_alone_on_a_machine_without_one(capsys):
    """`make bench` (benchmarks/run_all.py) calls every benchmark's main() without arguments: the runtime service's
    device benchmark, whose recorded results come from a lent GPU machine, says why it does not run and keeps them."""
    import torch

    from benchmarks import runtime_device

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: make bench would run the benchmark")
    results = runtime_device.Path(runtime_device.__file__).parent / "results" / "runtime_device.json"
    before = results.read_bytes()
    assert runtime_device.main() == 0
    assert "no GPU here" in capsys.readouterr().out
    assert results.read_bytes() == before
