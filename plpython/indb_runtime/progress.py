"""Progress of long calls, visible from other sessions (the ``ml.progress`` view) and as NOTICEs.

PostgreSQL shows the progress of its own long commands in pg_stat_progress_* views; an extension written in
SQL and Python cannot add rows there, and nothing written in a transaction is visible to other sessions
before it commits. So a long call (ml.train, features.materialize, a vectorizer backfill or refresh,
ml.reindex_collection) writes a small JSON file per backend into ``indb_progress/`` inside the cluster's
data directory (a backend's working directory), replaced atomically, at most every ``EVERY_S`` seconds.
``ml.progress`` lists the files of live backends. Nothing here touches the database's tables: a rolled-back
call leaves nothing behind, and the file goes when the call ends (or, after a crash, when it is next read).

    with Progress(plpy, "ml.train", target="housing_model", total=n, unit="rows") as p:
        for done in ...:
            p.update(done, phase="fitting")
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

DIRNAME = "indb_progress"
EVERY_S = 0.5


def folder() -> str:
    """The progress folder of this cluster (backends run inside the data directory)."""
    return os.path.join(os.getcwd(), DIRNAME)


def _path(pid: int) -> str:
    return os.path.join(folder(), f"{pid}.json")


class Progress:
    """One long call's progress. ``update`` is cheap: it writes the file at most every EVERY_S seconds and
    sends a NOTICE at most every ``notice_every_s`` (0: never)."""

    def __init__(
        self,
        plpy: Any,
        command: str,
        target: str | None = None,
        total: int | None = None,
        unit: str = "rows",
        notice_every_s: float = 2.0,
    ):
        self.plpy = plpy
        self.state: dict[str, Any] = {
            "command": command,
            "target": target,
            "phase": "starting",
            "done": 0,
            "total": total,
            "unit": unit,
            "started_at": time.time(),
        }
        self.notice_every_s = notice_every_s
        self._last_write = 0.0
        self._last_notice = time.time()
        self.pid: int | None = None
        if plpy is not None:
            row = plpy.execute(
                "select pg_backend_pid() as pid, current_database() as db, ml.caller()::text as who, "
                "extract(epoch from backend_start)::float8 as started "
                "from pg_stat_activity where pid = pg_backend_pid()"
            )[0]
            self.pid = row["pid"]
            self.state.update(pid=row["pid"], database=row["db"], role=row["who"], backend_start=row["started"])

    def __enter__(self) -> Progress:
        self._write(force=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, done: int, total: int | None = None, phase: str | None = None) -> None:
        self.state["done"] = int(done)
        if total is not None:
            self.state["total"] = int(total)
        if phase is not None and phase != self.state["phase"]:
            self.state["phase"] = phase
            self._write(force=True)
            return
        self._write()
        now = time.time()
        if self.plpy is not None and self.notice_every_s and now - self._last_notice >= self.notice_every_s:
            self._last_notice = now
            self.plpy.notice(self.describe())

    def describe(self) -> str:
        s = self.state
        el = max(time.time() - s["started_at"], 1e-9)
        rate = s["done"] / el
        of = f"/{s['total']}" if s["total"] is not None else ""
        left = ""
        if s["total"] and rate > 0 and s["total"] > s["done"]:
            left = f", ~{(s['total'] - s['done']) / rate:.0f} s left"
        what = s["command"] + (f" {s['target']}" if s["target"] else "")
        return f"{what} ({s['phase']}): {s['done']}{of} {s['unit']}, {rate:.1f}/s, {el:.1f} s elapsed{left}"

    def _write(self, force: bool = False) -> None:
        if self.pid is None:
            return
        now = time.time()
        if not force and now - self._last_write < EVERY_S:
            return
        self._last_write = now
        self.state["updated_at"] = now
        try:
            os.makedirs(folder(), mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder(), prefix=f".{self.pid}.")
            with os.fdopen(fd, "w") as f:
                json.dump(self.state, f)
            os.replace(tmp, _path(self.pid))
        except OSError:
            pass  # progress is best effort: never fail the work because of it

    def close(self) -> None:
        if self.pid is None:
            return
        try:
            os.unlink(_path(self.pid))
        except OSError:
            pass


def read_all(live: dict[int, float | None]) -> list[dict[str, Any]]:
    """The progress of every live backend (``live``: pid -> backend start, when this session may see it);
    files of backends that are gone, or of an earlier backend with the same pid, are removed."""
    out = []
    try:
        names = os.listdir(folder())
    except OSError:
        return []
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            pid = int(name[:-5])
        except ValueError:
            continue
        path = os.path.join(folder(), name)
        try:
            with open(path) as f:
                state = json.load(f)
        except (OSError, ValueError):
            continue
        started = live.get(pid, -1.0)
        stale = pid not in live or (
            started is not None
            and state.get("backend_start") is not None
            and abs(started - state["backend_start"]) > 1e-3
        )
        if stale:
            try:
                os.unlink(path)
            except OSError:
                pass
            continue
        out.append(state)
    return out


# The progress of the one long call this backend runs from plpgsql, which cannot hold a Progress object
# between statements (ml._report_progress, sql/030-progress.sql).
_current: Progress | None = None
NOTICE_EVERY_S = 10.0  # psql users of a long SQL call see a line now and then; short calls stay quiet


def report(
    plpy: Any,
    command: str | None,
    target: str | None = None,
    phase: str | None = None,
    done: int | None = None,
    total: int | None = None,
    unit: str | None = None,
) -> None:
    """One step of a long plpgsql call's progress. With a command: start its entry (ending one a failed call
    left behind) or move it on when the command and target are those of the current one. Without a command:
    move the current entry on (phase, done and total that are NULL stay as they are), or end it when every
    argument is NULL. Nothing started: an update does nothing."""
    global _current
    if command is None:
        if phase is None and done is None and total is None:
            if _current is not None:
                _current.close()
                _current = None
            return
        if _current is not None:
            _current.update(_current.state["done"] if done is None else done, total=total, phase=phase)
        return
    if _current is None or _current.state["command"] != command or _current.state["target"] != target:
        if _current is not None:
            _current.close()
        _current = Progress(
            plpy, command, target=target, total=total, unit=unit or "rows", notice_every_s=NOTICE_EVERY_S
        )
        if phase:
            _current.state["phase"] = phase
        _current.__enter__()
    _current.update(_current.state["done"] if done is None else done, total=total, phase=phase)
