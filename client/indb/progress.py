"""Progress of long work on the client side, as tqdm bars (rows done, rate, time left).

Two kinds of long work:

* loops of the client itself (sending documents in batches, draining a queue): ``Progress(total, label)``,
  then ``update(n)`` per batch and ``finish()``. On a terminal it draws a tqdm bar on stderr; given
  ``out=callable`` it instead hands that callable one line of text every ``every_s`` seconds (for programs,
  notebooks and tests that collect lines).
* one long SQL call (ml.train, features.materialize, a backfill, a reindex): ``watch(dsn, command)`` polls
  ``ml.progress`` from a second connection while the call runs in the first, and draws the same bar from what
  the server reports. Use it as a context manager around the call::

      with watch(client_dsn, "ml.train", target="housing_model"):
          client.train(...)
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any


class Progress:
    """A tqdm bar (or lines handed to ``out``) for a loop the client runs itself."""

    def __init__(
        self,
        total: int | None,
        label: str,
        out: Callable[[str], Any] | None = None,
        every_s: float = 2.0,
        unit: str = "rows",
    ):
        self._total = total
        self.label = label
        self.done = 0
        self.unit = unit
        self.out = out
        self.every_s = every_s
        self.t0 = time.time()
        self.last = 0.0
        self._bar = None
        if out is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, unit=f" {unit}", file=sys.stderr, dynamic_ncols=True)

    def line(self) -> str:
        elapsed = max(time.time() - self.t0, 1e-9)
        rate = self.done / elapsed
        parts = [
            f"{self.label}: {self.done:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit}",
            f"{rate:,.1f} {self.unit}/s",
            f"{elapsed:,.1f} s elapsed",
        ]
        if self.total and rate > 0:
            parts.append(f"~{max(self.total - self.done, 0) / rate:,.0f} s left")
        return ", ".join(parts)

    @property
    def total(self) -> int | None:
        return self._total

    @total.setter
    def total(self, total: int | None) -> None:
        self._total = total
        bar = getattr(self, "_bar", None)
        if bar is not None:
            bar.total = total
            bar.refresh()

    def update(self, n: int, force: bool = False) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.time()
        if self.out is not None and (force or now - self.last >= self.every_s):
            self.last = now
            self.out(self.line())

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.out is not None:
            self.out(self.line() + " - done")


class watch:  # lower case: used like a function, with watch(...):
    """Draw a tqdm bar from ``ml.progress`` while a long call of ``command`` runs in another connection of the
    same role (the first matching row that is not this watcher's own backend)."""

    def __init__(self, dsn: str, command: str, target: str | None = None, every_s: float = 0.5, enabled: bool = True):
        self.dsn, self.command, self.target, self.every_s = dsn, command, target, every_s
        self.enabled = enabled and sys.stderr.isatty()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> watch:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        import psycopg
        from tqdm import tqdm

        bar = None
        try:
            with psycopg.connect(self.dsn, autocommit=True) as c:
                while not self._stop.wait(self.every_s):
                    row = c.execute(
                        "select phase, done, total, unit from ml.progress where command = %s "
                        "and (%s::text is null or target = %s) and pid <> pg_backend_pid() "
                        "order by started_at desc limit 1",
                        [self.command, self.target, self.target],
                    ).fetchone()
                    if row is None:
                        continue
                    phase, done, total, unit = row
                    if bar is None:
                        bar = tqdm(total=total, desc=self.command, unit=f" {unit}", file=sys.stderr, dynamic_ncols=True)
                    if total is not None and bar.total != total:
                        bar.total = total
                    bar.set_postfix_str(phase or "", refresh=False)
                    bar.n = done or 0
                    bar.refresh()
        except Exception:
            pass  # progress is best effort: the call itself reports its own errors
        finally:
            if bar is not None:
                bar.close()
