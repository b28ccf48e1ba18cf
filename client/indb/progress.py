"""Progress for long work: rows done, rate, time left - printed to stderr (CLI) or any callback."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int | None, label: str, out=None, every_s: float = 2.0):
        self.total = total
        self.label = label
        self.done = 0
        self.t0 = time.time()
        self.last = 0.0
        self.every_s = every_s
        self.out = out or (lambda line: print(line, file=sys.stderr, flush=True))

    def line(self) -> str:
        elapsed = max(time.time() - self.t0, 1e-9)
        rate = self.done / elapsed
        parts = [
            f"{self.label}: {self.done:,}" + (f"/{self.total:,}" if self.total else "") + " rows",
            f"{rate:,.1f} rows/s",
            f"{elapsed:,.1f} s elapsed",
        ]
        if self.total and rate > 0:
            parts.append(f"~{max(self.total - self.done, 0) / rate:,.0f} s left")
        return ", ".join(parts)

    def update(self, n: int, force: bool = False) -> None:
        self.done += n
        now = time.time()
        if force or now - self.last >= self.every_s:
            self.last = now
            self.out(self.line())

    def finish(self) -> None:
        self.out(self.line() + " - done")
