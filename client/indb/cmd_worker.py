"""`indb worker [--once] [--batch N] [--vectorizer NAME]`: embed queued rows of async vectorizers, and seal
the audit log.

Several workers can run at once (the queue is taken FOR UPDATE SKIP LOCKED). A tqdm bar on stderr shows rows
done of those pending, the rate and the time left (``--quiet``: none). ``--once`` drains what is due and exits;
otherwise it keeps polling until interrupted (Ctrl-C). It exits 1 when items failed for good (moved to
ml.vectorizer_failed) and on errors (an unknown --vectorizer, no connection).
Every SEAL_EVERY_S seconds, and before it exits, the worker runs audit.seal() (idempotent; it skips when
another sealer, such as pg_cron's job, is at work) and merges the BM25 index deltas of the collections
(ml._bm25_merge_pending, what pg_cron's indb_bm25_merge job does every minute).

The worker works with the rights of the role it connects as: it processes the vectorizers that role may change
(its tenant's). Run by a superuser (or a BYPASSRLS role), ml.process_queue does SET ROLE to each vectorizer's
creator (and its tenant) before it reads that vectorizer's source table: a worker shared by every vectorizer
would otherwise let each source owner run code with every other source's grants (SECURITY.md, "Workers").
"""

from __future__ import annotations

import sys
import time


def register(sub) -> None:
    p = sub.add_parser(
        "worker",
        help="embed queued rows of async vectorizers, with a progress bar (run several for parallelism)",
        description="Embed the rows that async vectorizers queued (ml.process_queue, batch by batch, one "
        "transaction each) and seal the audit log every 10 s. It processes the vectorizers the connecting role "
        "may change; a superuser's worker reads each source table as the vectorizer's creator.",
    )
    p.add_argument("--dsn", help="database (default: $INDB_DSN, else the local cluster)")
    p.add_argument("--once", action="store_true", help="drain what is due now and exit (default: keep polling)")
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="rows per transaction, at least 1 (default: 4 x the vectorizer's batch_size)",
    )
    p.add_argument("--vectorizer", default=None, help="only this vectorizer (default: every one the role may change)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds to wait when the queue is empty (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar; errors and failed items are still reported")
    p.set_defaults(func=run)


SEAL_EVERY_S = 10.0


def seal(client) -> None:
    """Seal the audit log's pending events; a role that may not (or an older indb) leaves it to others."""
    from .errors import IndbError

    try:
        client.scalar("select audit.seal()")
    except IndbError:
        pass
    try:
        client.scalar("select ml._bm25_merge_pending()")
    except IndbError:
        pass


def pending(client, vectorizer) -> int:
    """Queued items of ``vectorizer`` (of every vectorizer this role may see when None)."""
    return client.scalar(
        "select count(*) from ml.vectorizer_queue q join ml.vectorizers v on v.id = q.vectorizer_id "
        "where %s::text is null or v.name = %s",
        [vectorizer, vectorizer],
    )


def run(args) -> int:
    from .client import connect
    from .errors import IndbError
    from .progress import Progress

    if args.batch is not None and args.batch < 1:
        print(f"indb worker: error: --batch must be at least 1, got {args.batch}", file=sys.stderr)
        return 2
    out = (lambda line: None) if args.quiet else None
    try:
        client = connect(args.dsn)
    except IndbError as e:
        print(f"indb worker: error: {e}", file=sys.stderr)
        return 2
    with client:
        if args.vectorizer is not None:
            client.vectorizer_status(args.vectorizer)  # an unknown --vectorizer fails here (exit 1)
        total = pending(client, args.vectorizer)
        client.warmup()
        bar = Progress(total or None, "worker" + (f" {args.vectorizer}" if args.vectorizer else ""), out=out)
        failed = 0
        reported: set[tuple[str, str]] = set()
        sealed_at = time.monotonic()
        try:
            while True:
                if time.monotonic() - sealed_at >= SEAL_EVERY_S:
                    seal(client)
                    sealed_at = time.monotonic()
                r = client.process_queue(args.vectorizer, args.batch)
                n = r["processed"] + r["deleted"]
                failed += r["failed"]
                for name, err in (r.get("errors") or {}).items():
                    if (name, err) not in reported:  # once per vectorizer and error, not once per poll
                        reported.add((name, err))
                        print(f"indb worker: vectorizer {name} was skipped: {err}", file=sys.stderr)
                left = pending(client, args.vectorizer)
                if left + bar.done + n > (bar.total or 0):
                    bar.total = left + bar.done + n  # rows queued since the worker started
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
                f"indb worker: error: {failed} item(s) moved to ml.vectorizer_failed; see ml.vectorizer_status, "
                f"fix the cause and run ml.retry_vectorizer(name) (or indb vectorizer retry NAME)",
                file=sys.stderr,
            )
            return 1
    return 0
