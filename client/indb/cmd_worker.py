"""`indb worker [--once] [--batch N] [--vectorizer NAME]`: embed queued rows of async vectorizers, and seal
the audit log.

Several workers can run at once (the queue is taken FOR UPDATE SKIP LOCKED). Progress (rows done, rate,
pending, time left) goes to stderr. ``--once`` drains what is due and exits; otherwise it keeps polling.
Every SEAL_EVERY_S seconds, and before it exits, the worker runs audit.seal() (idempotent; it skips when
another sealer, such as pg_cron's job, is at work).

The worker works with the rights of the role it connects as: it processes the vectorizers that role may change
(its tenant's). Run by a superuser (or a BYPASSRLS role), ml.process_queue does SET ROLE to each vectorizer's
creator (and its tenant) before it reads that vectorizer's source table: a worker shared by every vectorizer
would otherwise let each source owner run code with every other source's grants (SECURITY.md, "Workers").
"""

from __future__ import annotations

import sys
import time


def register(sub) -> None:
    p = sub.add_parser("worker", help="embed queued rows of async vectorizers (run several for parallelism)")
    p.add_argument("--dsn", help="database (default: $INDB_DSN, else the local cluster)")
    p.add_argument("--once", action="store_true", help="drain the queue once and exit")
    p.add_argument(
        "--batch", type=int, default=None, help="rows per transaction (default: the vectorizer's batch_size)"
    )
    p.add_argument("--vectorizer", default=None, help="only this vectorizer (default: all)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds to wait when the queue is empty")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


SEAL_EVERY_S = 10.0


def seal(client) -> None:
    """Seal the audit log's pending events; a role that may not (or an older indb) leaves it to others."""
    from .errors import IndbError

    try:
        client.scalar("select audit.seal()")
    except IndbError:
        pass


def pending(client, vectorizer) -> int:
    rows = client.vectorizer_status(vectorizer)
    return sum(r["pending"] for r in rows)


def run(args) -> int:
    from .client import connect
    from .errors import IndbError
    from .progress import Progress

    out = (lambda line: None) if args.quiet else None
    try:
        client = connect(args.dsn)
    except IndbError as e:
        print(f"indb worker: {e}", file=sys.stderr)
        return 2
    with client:
        client.warmup()
        total = pending(client, args.vectorizer)
        bar = Progress(total or None, "worker" + (f" {args.vectorizer}" if args.vectorizer else ""), out=out)
        failed = 0
        sealed_at = time.monotonic()
        try:
            while True:
                if time.monotonic() - sealed_at >= SEAL_EVERY_S:
                    seal(client)
                    sealed_at = time.monotonic()
                r = client.process_queue(args.vectorizer, args.batch)
                n = r.get("processed", 0) + r.get("deleted", 0)
                failed += r.get("failed", 0)
                if r.get("pending", 0) + bar.done > (bar.total or 0):
                    bar.total = r.get("pending", 0) + bar.done + n
                bar.update(n)
                if n == 0:
                    if args.once:
                        break
                    time.sleep(args.poll)
        except KeyboardInterrupt:
            pass
        seal(client)
        bar.finish()
        if failed:
            print(
                f"indb worker: {failed} item(s) moved to ml.vectorizer_failed; see ml.vectorizer_status, "
                f"fix the cause and run ml.retry_vectorizer(name)",
                file=sys.stderr,
            )
    return 0
