"""The shared inference runtime: one process per cluster holds one copy of each embedding model and embeds the
texts that every backend sends, batching requests that arrive together.

    python -m indb_runtime.service serve --data <pgdata>       # the service itself
    python -m indb_runtime.service supervise --data <pgdata>   # the service, restarted whenever it dies

It runs as the server's OS user, listens on ``runtime/runtime.sock`` beside the data directory (a 0700
folder: only that user can connect; wire.runtime_dir) and logs to ``log/runtime.log`` beside it. A request
names a database and a model registered there; the service reads the model's folder from that database's
``ml.embedding_models`` itself (connected over the cluster's own socket), so a client can neither send code
nor name a folder an administrator did not register.

Batching: while requests overlap (one arrived while another was queued or being embedded, within the last
second), requests for one model that arrive within ``--window-ms`` (default 20) of the first waiting one, or
until ``--max-batch`` texts are waiting, go to the model in one call; the window ends early when every connection
that sent a request in the last second already waits. A lone request, or one among idle pooled connections,
never waits for the window. A large request is taken ``max-batch`` texts at a time, after the small requests
waiting beside it, so one bulk INSERT does not starve single-row statements. A client that goes away (a
cancelled statement) has its texts dropped from the queue; the batch it was part of goes on for the others.

Workers: ``--workers`` threads (default: one per core, at most 4) take batches from the one queue. A worker that
runs alone uses every core for its model call (torch intra-op threads), so a lone request is as fast as in a
backend (a small one, a sentence or two, is faster on one thread: device.SMALL_CALL_CHARS); while several run,
or while requests overlap, each uses its share of the cores, and the texts waiting are shared among the idle
workers. On a CPU the model is bound by arithmetic, and one call spread over several threads wastes part of
each core on synchronisation: two single-threaded calls side by side embed more texts per second than one call
on two threads (measured here for 4-text batches of SciFact sentences: 13.5 ms of CPU per text against 20.6;
benchmarks/runtime_shared.py). On a GPU the waiting texts go to one call: the workers' calls would queue on the one
device (benchmarks/runtime_device.py).

Engine: on a CPU, the models packing.py reproduces run on ONNX Runtime (onnx_engine.py: exported once into
``runtime/onnx/``, checked against the model's own vectors at load, a call's texts in groups alike in length run
side by side on the threads the call was given); every other model, and any model with ``--engine torch``
(INDB_RUNTIME_ENGINE=torch), on PyTorch as described above.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import bootstrap, device, wire

log = logging.getLogger("indb.runtime")


# -- the model catalog, as each database holds it --------------------------------------------------
@dataclass(frozen=True)
class Resolved:
    name: str
    folder: str
    max_tokens: int | None
    normalize: bool
    version: str


def postmaster_socket(data: Path) -> tuple[str, int]:
    """(socket folder, port) of the running server, from its postmaster.pid."""
    lines = (data / "postmaster.pid").read_text().splitlines()
    return lines[4].strip() or "/var/run/postgresql", int(lines[3])


class Catalog:
    """Model name -> folder per database, read from ``ml.embedding_models`` (one short connection per miss,
    so that the service never holds a database open: DROP DATABASE is not blocked)."""

    QUERY = (
        "select source_path, max_tokens, normalize, extract(epoch from registered_at)::numeric::text as version "
        "from ml.embedding_models where name = %s"
    )

    def __init__(self, data: Path):
        self.data = data
        self.cache: dict[tuple[str, str], Resolved] = {}
        self.lock = threading.Lock()

    def resolve(self, db: str, model: str, version: str) -> Resolved:
        key = (db, model)
        with self.lock:
            hit = self.cache.get(key)
        if hit is not None and hit.version == version:
            return hit
        import psycopg

        host, port = postmaster_socket(self.data)
        user = os.environ.get("INDB_RUNTIME_DBUSER", "postgres")
        try:
            with psycopg.connect(
                host=host, port=port, dbname=db, user=user, application_name="indb runtime", connect_timeout=5
            ) as c:
                row = c.execute(self.QUERY, [model]).fetchone()
        except psycopg.Error as e:
            raise wire_error(
                "58000", f'the runtime service cannot read the model catalog of database "{db}": {e}'
            ) from None
        if row is None:
            raise wire_error("42704", f'embedding model "{model}" is not registered in database "{db}"')
        if row[3] != version:
            raise wire_error(
                "55000",
                f'embedding model "{model}" was registered again in a transaction that has not committed',
                hint="commit the registration, then embed (or SET indb.runtime = 'backend' in that transaction)",
            )
        from . import embedding

        folder = embedding.source_path(row[0])
        res = Resolved(model, folder, row[1], bool(row[2]), row[3])
        with self.lock:
            self.cache[key] = res
        return res


class WireError(Exception):
    def __init__(self, code: str, message: str, hint: str | None = None):
        super().__init__(message)
        self.code, self.message, self.hint = code, message, hint


def wire_error(code: str, message: str, hint: str | None = None) -> WireError:
    return WireError(code, message, hint)


# -- models ----------------------------------------------------------------------------------------
class Models:
    """One loaded copy per (folder, max_tokens); loaded by the first request that needs it, with its ONNX Runtime
    engine (onnx_engine.py; the graph kept in ``onnx_dir``) unless ``engine`` is torch."""

    def __init__(self, onnx_dir: Path | None = None, engine: str | None = None) -> None:
        self.onnx_dir = onnx_dir
        self.engine = engine
        self.models: dict[tuple[str, int | None], Any] = {}
        self.info: dict[tuple[str, int | None], dict] = {}
        self.lock = threading.Lock()

    def get(self, r: Resolved) -> Any:
        key = (r.folder, r.max_tokens)
        m = self.models.get(key)
        if m is not None:
            self.info[key]["names"].add(r.name)
            return m
        with self.lock:
            m = self.models.get(key)
            if m is not None:
                return m
            from . import embedding

            t0 = time.time()
            try:
                m = embedding.load(embedding.ModelSpec(r.name, r.folder, None, r.max_tokens, r.normalize))
            except Exception as e:
                code = getattr(e, "sqlstate", "38000")
                raise wire_error(code, getattr(e, "message", str(e))) from None
            params = sum(p.numel() * p.element_size() for p in m.parameters())
            eng = None
            if self.onnx_dir is not None:
                from . import onnx_engine

                eng = onnx_engine.prepare(m, self.onnx_dir, self.engine, source=r.folder)
            self.info[key] = {
                "names": {r.name},
                "folder": r.folder,
                "max_tokens": r.max_tokens,
                "dimensions": embedding.dimensions(m),
                "load_seconds": round(time.time() - t0, 3),
                "parameter_bytes": int(params),
                "device": str(m.device),
                "engine": eng.describe() if eng is not None else "torch",
            }
            self.models[key] = m
            log.info("loaded model %s from %s in %.2f s", r.name, r.folder, time.time() - t0)
            return m

    def describe(self) -> list[dict]:
        return [{**v, "names": sorted(v["names"])} for v in self.info.values()]


# -- the queue and the batcher ---------------------------------------------------------------------
@dataclass(eq=False)
class Job:
    key: tuple
    model: Any
    normalize: bool
    texts: list[str]
    source: int = 0  # the connection it came on
    arrived: float = field(default_factory=time.monotonic)
    taken: int = 0  # texts handed to the model so far
    filled: int = 0  # texts embedded so far
    out: Any = None
    error: WireError | None = None
    cancelled: bool = False
    done: threading.Event = field(default_factory=threading.Event)


OVERLAP_S = 1.0  # for this long after two requests overlapped, each worker's model call keeps to its core share


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def workers_arg(value: str) -> int:
    """--workers / INDB_RUNTIME_WORKERS: 1-64 model workers (each is a thread that holds a model call)."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers {value!r}: give a whole number from 1 to 64") from None
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError(
            f"--workers {n}: give a whole number from 1 to 64 (default: one per core, at most 4)"
        )
    return n


def engine_arg(value: str) -> str:
    """--engine / INDB_RUNTIME_ENGINE: auto (ONNX Runtime where it reproduces the model, onnx_engine.py) or torch."""
    from .onnx_engine import ENGINES

    if value not in ENGINES:
        raise argparse.ArgumentTypeError(f"--engine {value!r}: give {' or '.join(ENGINES)}")
    return value


class Batcher:
    def __init__(self, window_ms: float, max_batch: int, workers: int = 1):
        self.window = window_ms / 1000.0
        self.max_batch = max_batch
        self.workers = max(1, workers)
        self.cond = threading.Condition()
        self.pending: list[Job] = []
        self.inflight: dict[int, int] = {}  # id(job) -> pieces of it that a worker is embedding now
        self.busy = 0  # workers in a model call
        self.most_busy = 0  # the most workers in model calls at once, since the start
        self.connections = 0
        self.requests = 0
        self.texts = 0
        self.batches = 0
        self.batched_texts = 0
        self.cancelled = 0
        self.stopping = False
        self.overlapped = -1e9  # when a request last arrived while another was queued or being embedded
        self.sent: dict[int, float] = {}  # connection -> when it last sent a request

    def _received(self, job: Job) -> None:
        """Count a request that arrived (under ``cond``): submit and try_inline."""
        self.sent[job.source] = job.arrived
        self.requests += 1
        self.texts += len(job.texts)

    def _call_started(self) -> None:
        """Count a worker going into a model call (under ``cond``): next_batch and try_inline."""
        self.busy += 1
        self.most_busy = max(self.most_busy, self.busy)

    def submit(self, job: Job) -> None:
        with self.cond:
            if self.pending or self.inflight:
                self.overlapped = job.arrived
            self._received(job)
            self.pending.append(job)
            self.cond.notify_all()

    def cancel(self, job: Job) -> None:
        with self.cond:
            job.cancelled = True
            if job in self.pending:
                self.pending.remove(job)
            self.cancelled += 1

    def _waiting(self, key: tuple) -> int:
        return sum(len(j.texts) - j.taken for j in self.pending if j.key == key)

    def next_batch(self) -> list[tuple[Job, int, int]]:
        with self.cond:
            # wait for a request, and for a free slot: a lone request embedded by the thread that received it
            # (try_inline) counts as busy, and model calls stay within ``workers``
            while (not self.pending or self.busy >= self.workers) and not self.stopping:
                self.cond.wait(0.5)
            if self.stopping:
                return []
            first = self.pending[0]
            deadline = first.arrived + self.window
            # wait for more only while requests overlap, and only for connections that are embedding now: a
            # lone request, or one among idle pooled connections, starts at once
            now = time.monotonic()
            active = 0
            if now - self.overlapped < OVERLAP_S:
                for source, at in list(self.sent.items()):
                    if now - at < OVERLAP_S:
                        active += 1
                    else:
                        del self.sent[source]
            while (
                self._waiting(first.key) < self.max_batch
                and len({id(j) for j in self.pending} | self.inflight.keys()) < active
                and not first.cancelled
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            if not self.pending:  # its requests were cancelled, or another worker took them during the window
                return []
            key = self.pending[0].key
            # small requests first: a big one gets what is left of max_batch, its next piece next time
            jobs = sorted((j for j in self.pending if j.key == key), key=lambda j: len(j.texts) - j.taken)
            batch: list[tuple[Job, int, int]] = []
            # share the waiting texts with the idle workers: on a CPU, workers that each run a part on one core
            # embed more per second than one worker that runs all of it on every core
            # (at least this worker: others may have gone into calls while it waited for the window)
            idle = max(1, self.workers - self.busy)
            if not str(getattr(self.pending[0].model, "device", "cpu")).startswith("cpu"):
                idle = 1  # on a GPU one call on all of them is faster: calls from several workers queue on it
            room = min(self.max_batch, -(-self._waiting(key) // idle))
            for j in jobs:
                if room <= 0:
                    break
                n = min(room, len(j.texts) - j.taken)
                batch.append((j, j.taken, j.taken + n))
                self.inflight[id(j)] = self.inflight.get(id(j), 0) + 1
                j.taken += n
                room -= n
                if j.taken == len(j.texts):
                    self.pending.remove(j)
            self._call_started()
            return batch

    def threads_for_call(self, cores: int, texts: list[str] | None = None) -> int:
        """torch threads for the model call a worker is about to make on ``texts``: one for a small call
        (device.SMALL_CALL_CHARS); else every core when no other worker is in one or about to take one, else an
        equal share (called under ``cond``, after next_batch counted this worker as busy; texts still waiting will
        be taken by idle workers)."""
        if texts is not None and device.is_small_call(texts):
            return 1
        if time.monotonic() - self.overlapped < OVERLAP_S:
            # requests overlap: several connections are embedding, and each worker is best on its own core
            return max(1, cores // self.workers)
        soon = min(self.workers, self.busy + sum(len(j.texts) - j.taken for j in self.pending))
        return max(1, cores // max(1, soon))

    def run(self) -> None:
        """A worker: batches until the service stops. An unexpected error is logged and the worker goes on (a
        worker that died silently would leave the others to do all the work)."""
        while not self.stopping:
            try:
                self._work()
            except Exception:
                log.exception(
                    "runtime worker %s: unexpected error; the worker goes on", threading.current_thread().name
                )

    def try_inline(self, job: Job) -> list[tuple[Job, int, int]] | None:
        """Take ``job`` for the thread that received it when nothing else is queued or in a model call, no
        requests overlapped in the last OVERLAP_S and a worker is free: a lone request then goes to the model
        without two thread hand-offs (to a worker and back, ~0.3 ms of a single-sentence call). None: queue it
        (submit). The job counts as a busy worker while it runs, so model calls stay within ``workers``."""
        with self.cond:
            if (
                self.pending
                or self.inflight
                or self.stopping
                or self.busy >= self.workers
                or len(job.texts) > self.max_batch
                or job.arrived - self.overlapped < OVERLAP_S
            ):
                return None
            self._received(job)
            job.taken = len(job.texts)
            self.inflight[id(job)] = 1
            self._call_started()
            return [(job, 0, len(job.texts))]

    def embed_batch(self, batch: list[tuple[Job, int, int]]) -> None:
        """One model call on the texts of ``batch`` (from next_batch or try_inline, which counted it busy); fills
        the jobs' outputs, or their error, and sets each job done once all its texts are in."""
        import numpy as np

        from . import embedding, onnx_engine

        job0 = batch[0][0]
        texts = [t for j, a, b in batch for t in j.texts[a:b]]
        try:
            with self.cond:
                threads = self.threads_for_call(os.cpu_count() or 1, texts)
            eng = onnx_engine.attached(job0.model)
            if eng is not None:
                vecs = eng.embed(texts, job0.normalize, threads)
            else:
                device.set_torch_threads(threads)
                vecs = embedding.model_call(job0.model, texts, job0.normalize)
            err = None
        except Exception as e:
            # a failure (of the model, or of setting its threads) fails the requests of this batch, not the
            # service: busy and inflight are given back below, so the workers' count stays right
            log.exception("model call failed")
            err = wire_error("38000", f"the model failed: {e}")
        # several workers may hold pieces of one big request: its output is filled under the lock
        with self.cond:
            self.busy -= 1
            self.batches += 1
            self.batched_texts += len(texts)
            pos = 0
            for j, a, b in batch:
                left = self.inflight[id(j)] - 1
                if left:
                    self.inflight[id(j)] = left
                else:
                    del self.inflight[id(j)]
                if err is not None:
                    j.error = err
                    j.done.set()
                    continue
                if j.out is None:
                    j.out = np.empty((len(j.texts), vecs.shape[1]), dtype=np.float32)
                j.out[a:b] = vecs[pos : pos + (b - a)]
                pos += b - a
                j.filled += b - a
                if j.filled == len(j.texts):
                    j.done.set()
            self.cond.notify_all()

    def _work(self) -> None:
        import ctypes

        try:
            trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            trim = None
        last_trim = time.monotonic()
        while not self.stopping:
            batch = self.next_batch()
            if not batch:
                continue
            self.embed_batch(batch)
            # give the memory of a big batch back when the queue is empty (at most once a second)
            if trim is not None and not self.pending and time.monotonic() - last_trim > 1.0:
                trim(0)
                last_trim = time.monotonic()

    def stats(self) -> dict:
        from . import onnx_engine, packing

        packed = packing.counts()
        onnx = onnx_engine.counts()
        with self.cond:
            return {
                "requests": self.requests,
                "texts": self.texts,
                "batches": self.batches,
                "mean_batch_size": round(self.batched_texts / self.batches, 2) if self.batches else None,
                # batches of texts of different lengths embedded without padding (packing.py)
                "packed_batches": packed["batches"],
                "packed_texts": packed["texts"],
                # ONNX Runtime session calls (texts alike in length, padded to the longest of each group)
                "onnx_calls": onnx["calls"],
                "onnx_texts": onnx["texts"],
                "onnx_tokens": onnx["tokens"],
                "onnx_padding_tokens": onnx["padding"],
                "workers": self.workers,
                "busy_workers": self.busy,
                "most_busy_workers": self.most_busy,
                "queue_depth": len(self.pending),
                "queued_texts": sum(len(j.texts) - j.taken for j in self.pending),
                "cancelled_requests": self.cancelled,
                "connections": self.connections,
            }


# -- the server ------------------------------------------------------------------------------------
def _memory() -> dict:
    out: dict[str, int] = {}
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in ("Rss:", "Pss:"):
                    out[parts[0][:-1].lower() + "_bytes"] = int(parts[1]) * 1024
    except OSError:
        pass
    return out


class Service:
    def __init__(
        self,
        data: Path,
        window_ms: float,
        max_batch: int,
        max_request_bytes: int,
        workers: int = 1,
        engine: str | None = None,
    ):
        self.data = data
        self.dir = wire.runtime_dir(data)
        self.path = self.dir / wire.SOCKET_NAME
        self.max_request_bytes = max_request_bytes
        self.catalog = Catalog(data)
        self.models = Models(self.dir / "onnx", engine)
        self.batcher = Batcher(window_ms, max_batch, workers)
        self.started = time.time()
        self.listener: socket.socket | None = None

    # folder and socket: the server's OS user only
    def prepare(self) -> None:
        os.umask(0o077)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = self.dir.stat()
        if st.st_uid != os.geteuid():
            raise SystemExit(f"{self.dir} belongs to uid {st.st_uid}, not to this user ({os.geteuid()}): refusing")
        if st.st_mode & 0o077:
            os.chmod(self.dir, 0o700)
        if self.path.exists():
            try:
                wire.stats(self.path, timeout=1.0)
            except (wire.Unavailable, ValueError, OSError):
                self.path.unlink()  # left by a service that died
            else:
                raise SystemExit(f"a runtime service already answers on {self.path}")

    def listen(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(self.path))
        os.chmod(self.path, 0o600)
        s.listen(128)
        self.listener = s
        (self.dir / "service.pid").write_text(f"{os.getpid()}\n")

    def stats(self) -> dict:
        return {
            "ok": True,
            "version": wire.VERSION,
            "indb_runtime": bootstrap.__version__,
            "pid": os.getpid(),
            "started_at": self.started,
            "uptime_s": round(time.time() - self.started, 1),
            "socket": str(self.path),
            "window_ms": self.batcher.window * 1000,
            "max_batch": self.batcher.max_batch,
            "max_request_bytes": self.max_request_bytes,
            "models": self.models.describe(),
            "memory": _memory(),
            **self.batcher.stats(),
        }

    def serve_forever(self) -> None:
        for i in range(self.batcher.workers):
            threading.Thread(target=self.batcher.run, name=f"worker-{i + 1}", daemon=True).start()
        assert self.listener is not None
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                if self.batcher.stopping:
                    return
                raise
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def stop(self) -> None:
        self.batcher.stopping = True
        with self.batcher.cond:
            self.batcher.cond.notify_all()
        if self.listener is not None:
            self.listener.close()
        try:
            self.path.unlink()
        except OSError:
            pass

    # one connection: requests one after another
    def handle(self, conn: socket.socket) -> None:
        with self.batcher.cond:
            self.batcher.connections += 1
        try:
            while True:
                head = _recv_exact(conn, wire.HEADER.size)
                if head is None:
                    return
                try:
                    version, jlen, blen = wire.parse_header(head)
                except ValueError:
                    return
                if version != wire.VERSION:
                    conn.sendall(wire.pack(_err(wire.MISMATCH, f"this service speaks wire version {wire.VERSION}")))
                    return
                if jlen + blen > self.max_request_bytes:
                    conn.sendall(
                        wire.pack(
                            _err(
                                wire.TOO_LARGE,
                                f"a request of {jlen + blen} bytes is over the service's limit of "
                                f"{self.max_request_bytes} bytes",
                                "send fewer or shorter texts per request",
                            )
                        )
                    )
                    return
                raw = _recv_exact(conn, jlen + blen)
                if raw is None:
                    return
                try:
                    req = json.loads(raw[:jlen])
                    if not isinstance(req, dict):
                        raise ValueError("not an object")
                    answer, body = self.answer(conn, req)
                except WireError as e:
                    answer, body = _err(e.code, e.message, e.hint), b""
                except (ValueError, UnicodeDecodeError) as e:
                    answer, body = _err("08P01", f"malformed request: {e}"), b""
                if answer is None:
                    return  # the client went away
                conn.sendall(wire.pack(answer, body))
        except OSError:
            return
        finally:
            with self.batcher.cond:
                self.batcher.connections -= 1
                self.batcher.sent.pop(id(conn), None)
            conn.close()

    def answer(self, conn: socket.socket, req: dict) -> tuple[dict | None, bytes]:
        op = req.get("op")
        if op == "hello":
            return {
                "ok": True,
                "version": wire.VERSION,
                "pid": os.getpid(),
                "max_request_bytes": self.max_request_bytes,
            }, b""
        if op == "stats":
            return self.stats(), b""
        if op != "embed":
            raise wire_error("08P01", f"unknown request {op!r}")
        db, model, version, texts = req.get("db"), req.get("model"), req.get("version"), req.get("texts")
        if not all(isinstance(x, str) for x in (db, model, version)) or not isinstance(texts, list):
            raise wire_error("08P01", "an embed request has db, model, version (strings) and texts (a list)")
        if not all(isinstance(t, str) for t in texts):
            raise wire_error("08P01", "texts must be strings")
        r = self.catalog.resolve(str(db), str(model), str(version))
        m = self.models.get(r)
        if not texts:
            return {"ok": True, "dims": 0, "n": 0}, b""
        # longest first, as sentence-transformers orders one call: the pieces a big request is cut into then
        # hold texts of similar length, so a model batch pads little; the answer is put back in request order
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        job = Job((r.folder, r.max_tokens, r.normalize), m, r.normalize, [texts[i] for i in order], id(conn))
        inline = self.batcher.try_inline(job)
        if inline is not None:
            self.batcher.embed_batch(inline)
        else:
            self.batcher.submit(job)
        while not job.done.wait(0.05):
            if _closed(conn):
                self.batcher.cancel(job)
                return None, b""
        if job.error is not None:
            raise job.error
        out = job.out.copy()
        out[order] = job.out
        return {"ok": True, "dims": int(out.shape[1]), "n": len(texts)}, wire.vectors_to_bytes(out)


def _err(code: str, message: str, hint: str | None = None) -> dict:
    return {"ok": False, "code": code, "message": message, "hint": hint}


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _closed(conn: socket.socket) -> bool:
    """True when the client hung up (its statement was cancelled or its backend ended)."""
    r, _, _ = select.select([conn], [], [], 0)
    if not r:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


# -- entry points ----------------------------------------------------------------------------------
def _setup_logging(path: Path | None) -> None:
    handler: logging.Handler
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(process)d] %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def default_log(data: Path) -> Path:
    return Path(data).resolve().parent / "log" / "runtime.log"


def serve(args: argparse.Namespace) -> int:
    for k, v in bootstrap.RUNTIME_ENV.items():
        os.environ.setdefault(k, v)
    data = Path(args.data).resolve()
    _setup_logging(None if args.log == "-" else Path(args.log or default_log(data)))
    svc = Service(data, args.window_ms, args.max_batch, args.max_request_bytes, args.workers, args.engine)
    svc.prepare()
    svc.listen()

    def on_term(signum, _frame):
        log.info("%s: stopping", signal.Signals(signum).name)
        svc.stop()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    log.info(
        "serving on %s (pid %d, window %.1f ms, max batch %d, %d workers, engine %s)",
        svc.path,
        os.getpid(),
        args.window_ms,
        args.max_batch,
        svc.batcher.workers,
        args.engine,
    )
    for item in args.preload or []:
        db, _, model = item.partition("/")
        threading.Thread(target=_preload, args=(svc, db, model), daemon=True).start()
    svc.serve_forever()
    log.info("stopped")
    return 0


def _preload(svc: Service, db: str, model: str) -> None:
    try:
        host, port = postmaster_socket(svc.data)
        import psycopg

        with psycopg.connect(host=host, port=port, dbname=db, user="postgres", connect_timeout=5) as c:
            row = c.execute(
                "select extract(epoch from registered_at)::numeric::text from ml.embedding_models where name = %s",
                [model],
            ).fetchone()
        if row is None:
            log.info("preload: model %s is not registered in %s", model, db)
            return
        m = svc.models.get(svc.catalog.resolve(db, model, row[0]))
        from . import onnx_engine, packing

        eng = onnx_engine.attached(m)
        if eng is not None:  # the model runs on ONNX Runtime (checked when Models.get made it): no PyTorch call
            eng.embed(["warm-up"], True)
            return
        m.encode(["warm-up"], show_progress_bar=False)
        packing.packer(m)  # its self-check now, not in the first batch that packs
    except Exception as e:  # preloading is an optimisation: the first request loads it otherwise
        log.info("preload of %s/%s skipped: %s", db, model, e)


def supervise(args: argparse.Namespace) -> int:
    """Run the service and start it again whenever it dies (SIGKILL, out of memory, a crash)."""
    data = Path(args.data).resolve()
    _setup_logging(None if args.log == "-" else Path(args.log or default_log(data)))
    rdir = wire.runtime_dir(data)
    rdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (rdir / "supervisor.pid").write_text(f"{os.getpid()}\n")
    argv = [sys.executable, "-m", "indb_runtime.service", "serve", *_passthrough(args)]
    stopping = False
    child: subprocess.Popen | None = None
    quiet: dict = {} if args.log == "-" else {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}

    def on_term(signum, _frame):
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    delay = 0.2
    while not stopping:
        t0 = time.time()
        # few malloc arenas: every connection is a thread, and each arena would keep its own freed memory
        # the service logs to its file itself; what else it would print (progress bars of model loading) is
        # dropped, unless it logs to stderr (indb runtime serve: the terminal)
        child = subprocess.Popen(argv, env={"MALLOC_ARENA_MAX": "2", **os.environ}, **quiet)
        log.info("supervisor %d: service started (pid %d)", os.getpid(), child.pid)
        code = child.wait()
        if stopping:
            break
        ran = time.time() - t0
        delay = 0.2 if ran > 30 else min(10.0, delay * 2)
        log.warning(
            "service pid %d exited with status %s after %.1f s; restarting in %.1f s", child.pid, code, ran, delay
        )
        time.sleep(delay)
    (rdir / "supervisor.pid").unlink(missing_ok=True)
    return 0


def _passthrough(args: argparse.Namespace) -> list[str]:
    out = ["--data", str(args.data), "--window-ms", str(args.window_ms), "--max-batch", str(args.max_batch)]
    out += ["--max-request-bytes", str(args.max_request_bytes), "--workers", str(args.workers)]
    out += ["--engine", args.engine]
    if args.log:
        out += ["--log", args.log]
    for p in args.preload or []:
        out += ["--preload", p]
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m indb_runtime.service", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["serve", "supervise"])
    p.add_argument("--data", required=True, help="the cluster's data directory")
    p.add_argument("--log", help="log file (default: log/runtime.log beside the data directory; - for stderr)")
    p.add_argument("--window-ms", type=float, default=float(os.environ.get("INDB_RUNTIME_WINDOW_MS", "20")))
    p.add_argument("--max-batch", type=int, default=int(os.environ.get("INDB_RUNTIME_MAX_BATCH", "64")))
    p.add_argument("--max-request-bytes", type=int, default=wire.DEFAULT_MAX_REQUEST_BYTES)
    p.add_argument(
        "--workers",
        type=workers_arg,
        default=os.environ.get("INDB_RUNTIME_WORKERS") or str(default_workers()),
        help="threads that make model calls side by side (default: one per core, at most 4)",
    )
    p.add_argument("--preload", action="append", help="db/model to load at start (repeatable)")
    p.add_argument(
        "--engine",
        type=engine_arg,
        default=os.environ.get("INDB_RUNTIME_ENGINE") or "auto",
        help="auto: ONNX Runtime for the models it reproduces on a CPU, else PyTorch (onnx_engine.py); torch: PyTorch",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return serve(args) if args.action == "serve" else supervise(args)


if __name__ == "__main__":
    sys.exit(main())
