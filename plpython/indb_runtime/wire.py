"""The shared runtime's wire format and the backend's side of it (plain sockets, no heavy imports).

One frame, both ways::

    magic b"INDB" | version u16 | flags u16 | json length u32 | binary length u32 | JSON | binary

The JSON part is an object of plain values; the binary part is float32 vectors (little-endian, row-major).
Nothing else travels: no code, no pickle. A request names a database, a model (as registered in that
database's ``ml.embedding_models``) and the catalog row's version, and carries texts; the service reads the
model's folder from the catalog itself, so a client cannot point it at a folder an administrator did not register.

Requests: ``{"op": "hello"}`` (the service answers with its version and limits), ``{"op": "embed", "db",
"model", "version", "texts"}``, ``{"op": "stats"}``. Answers: ``{"ok": true, ...}`` or ``{"ok": false, "code":
SQLSTATE, "message", "hint"}``.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import IndbRuntimeError

MAGIC = b"INDB"
VERSION = 1
HEADER = struct.Struct("<4sHHII")
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
SOCKET_NAME = "runtime.sock"

# SQLSTATEs of the shared runtime (class 58: system errors outside PostgreSQL)
UNAVAILABLE = "58R01"  # the service does not answer or died during the request
MISMATCH = "58R02"  # the service speaks another wire version
TOO_LARGE = "54000"  # program_limit_exceeded: a request over the service's size limit

STATUS_HINT = "run `indb runtime status`; `indb db start` (re)starts the service, or SET indb.runtime = 'backend'"


# -- where the service listens ---------------------------------------------------------------------
def runtime_dir(datadir: str | os.PathLike) -> Path:
    """The service's folder for a cluster: ``runtime/`` beside the data directory (``.state/runtime``), or a
    short folder in /tmp when that would make the socket path longer than a Unix socket allows."""
    data = Path(datadir).resolve()
    here = data.parent / "runtime"
    if len(str(here / SOCKET_NAME)) <= 100:
        return here
    import hashlib  # only here: its import is a tenth of a connection's first embedding

    return Path("/tmp") / f"indb-runtime-{hashlib.sha256(str(data).encode()).hexdigest()[:12]}"


def socket_path(datadir: str | os.PathLike | None = None) -> Path:
    """The service's socket. In a backend the working directory is the data directory."""
    env = os.environ.get("INDB_RUNTIME_SOCKET")
    if env:
        return Path(env)
    return runtime_dir(datadir if datadir is not None else os.getcwd()) / SOCKET_NAME


# -- frames ----------------------------------------------------------------------------------------
def pack(obj: dict, binary: bytes = b"") -> bytes:
    js = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    return HEADER.pack(MAGIC, VERSION, 0, len(js), len(binary)) + js + binary


def parse_header(head: bytes) -> tuple[int, int, int]:
    """(version, json length, binary length); ValueError when it is not an indb frame."""
    magic, version, _flags, jlen, blen = HEADER.unpack(head)
    if magic != MAGIC:
        raise ValueError("not an indb runtime frame")
    return version, jlen, blen


def vectors_to_bytes(rows: Any) -> bytes:
    """float32 rows (a numpy array) -> little-endian bytes."""
    return rows.astype("<f4", copy=False).tobytes()


def bytes_to_vectors(raw: bytes, n: int, dims: int) -> list[list[float]]:
    a = array("f")
    a.frombytes(raw)
    if sys.byteorder != "little":
        a.byteswap()
    flat = a.tolist()
    return [flat[i * dims : (i + 1) * dims] for i in range(n)]


# -- the backend's client --------------------------------------------------------------------------
class Unavailable(Exception):
    """The service did not answer (not running, restarting, or died while we waited)."""


class Client:
    """One connection to the service per backend, reused across statements; dropped on any interruption so
    that a late answer to a cancelled request can never be read as the answer to the next one."""

    POLL_S = 0.1

    def __init__(self, path: Path):
        self.path = path
        self.sock: socket.socket | None = None
        self.hello: dict = {}
        self._next_id = 0

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None

    def _connect(self, check: Callable[[], None] | None) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2.0)
        try:
            s.connect(str(self.path))
        except OSError as e:
            s.close()
            raise Unavailable(f"cannot connect to {self.path}: {e.strerror or e}") from None
        self.sock = s
        head, _ = self._roundtrip({"op": "hello"}, check)
        if head.get("version") != VERSION:
            self.close()
            raise IndbRuntimeError(
                MISMATCH,
                f"the indb runtime service speaks wire version {head.get('version')}, this database's runtime "
                f"speaks {VERSION}",
                hint="restart the service from the same indb installation: `indb db stop && indb db start`",
            )
        self.hello = head

    def _recv_exact(self, n: int, check: Callable[[], None] | None) -> bytes:
        assert self.sock is not None
        buf = bytearray()
        while len(buf) < n:
            ready, _, _ = select.select([self.sock], [], [], self.POLL_S)
            if not ready:
                if check is not None:
                    check()  # raises on a pending cancel or statement_timeout
                continue
            try:
                chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            except OSError as e:
                raise Unavailable(f"the service connection failed: {e}") from None
            if not chunk:
                raise Unavailable("the service closed the connection (it stopped or died)")
            buf += chunk
        return bytes(buf)

    def _roundtrip(self, req: dict, check: Callable[[], None] | None) -> tuple[dict, bytes]:
        assert self.sock is not None
        try:
            self.sock.sendall(pack(req))
        except OSError as e:
            raise Unavailable(f"cannot send to the service: {e}") from None
        version, jlen, blen = parse_header(self._recv_exact(HEADER.size, check))
        head = json.loads(self._recv_exact(jlen, check)) if jlen else {}
        body = self._recv_exact(blen, check) if blen else b""
        if version != VERSION and req.get("op") != "hello":
            raise IndbRuntimeError(MISMATCH, f"the indb runtime service answered in wire version {version}")
        if version != VERSION:
            head["version"] = version
        return head, body

    def connect(self, check: Callable[[], None] | None = None) -> None:
        """Connect and say hello (version check, limits) unless connected already."""
        if self.sock is not None:
            return
        ok = False
        try:
            self._connect(check)
            ok = True
        finally:
            if not ok:
                self.close()

    def request(self, req: dict, check: Callable[[], None] | None = None) -> tuple[dict, bytes]:
        """Send one request and wait for its answer, calling ``check`` every POLL_S while waiting."""
        self.connect(check)
        ok = False
        try:
            head, body = self._roundtrip(req, check)
            ok = True
        finally:
            if not ok:
                self.close()
        return head, body

    def max_request_bytes(self) -> int:
        return int(self.hello.get("max_request_bytes") or DEFAULT_MAX_REQUEST_BYTES)


_CLIENT: Client | None = None


def client() -> Client:
    global _CLIENT
    path = socket_path()
    if _CLIENT is None or _CLIENT.path != path:
        _CLIENT = Client(path)
    return _CLIENT


def _fail(head: dict) -> IndbRuntimeError:
    return IndbRuntimeError(
        head.get("code") or "38000",
        head.get("message") or "the indb runtime service refused the request",
        detail=head.get("detail"),
        hint=head.get("hint"),
    )


def embed(
    db: str,
    model: str,
    version: str,
    texts: Sequence[str],
    check: Callable[[], None] | None = None,
    done: Callable[[int], None] | None = None,
    per_request: int = 256,
) -> list[list[float]]:
    """Embed ``texts`` in the service: requests of up to ``per_request`` texts (and the service's byte limit),
    longest first like the in-backend path; ``check`` runs while waiting (cancel points), ``done`` after each
    request with the number of texts embedded so far. Raises Unavailable or IndbRuntimeError."""
    if not texts:
        return []
    c = client()
    c.connect(check)  # learn the limits before sizing requests
    limit = c.max_request_bytes() - 4096
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    out: list = [None] * len(texts)
    pos = 0
    while pos < len(order):
        idx: list[int] = []
        size = 0
        while pos < len(order) and len(idx) < per_request:
            n = len(texts[order[pos]].encode()) + 8
            if n > limit:
                raise IndbRuntimeError(
                    TOO_LARGE,
                    f"a text of {n - 8} bytes is over the runtime service's request limit of {limit} bytes",
                    hint="chunk long texts (a vectorizer's chunk_size), or start the service with a larger "
                    "--max-request-bytes",
                )
            if idx and size + n > limit:
                break
            idx.append(order[pos])
            size += n
            pos += 1
        head, body = c.request(
            {"op": "embed", "db": db, "model": model, "version": version, "texts": [texts[i] for i in idx]}, check
        )
        if not head.get("ok"):
            raise _fail(head)
        vecs = bytes_to_vectors(body, len(idx), int(head["dims"]))
        for i, v in zip(idx, vecs):
            out[i] = v
        if done is not None:
            done(pos)
    return out


def stats(path: Path | None = None, timeout: float = 2.0) -> dict:
    """The service's statistics (``indb runtime status``, ml.runtime_info); raises Unavailable."""
    c = Client(path or socket_path())
    deadline = time.time() + timeout

    def check() -> None:
        if time.time() > deadline:
            raise Unavailable(f"no answer from {c.path} within {timeout} s")

    try:
        head, _ = c.request({"op": "stats"}, check)
    finally:
        c.close()
    return head
