"""`indb vectorizer status|backfill|retry [NAME]`: look after vectorizers from the shell.

``status`` prints ml.vectorizer_status as a table, ``backfill`` embeds (sync) or queues (async) every row that
lacks an up-to-date embedding with a progress bar (rows, rate, time left), ``retry`` moves failed items back
to the queue. A vectorizer that does not exist (or belongs to another tenant) is an error: exit status 1.
"""

from __future__ import annotations

import argparse
import sys

ACTIONS = {
    "status": "one row per vectorizer (all this role may see, or NAME): rows, embedded, pending, failed, last error",
    "backfill": "embed (sync) or queue (async) NAME's rows that lack an up-to-date embedding, with a progress bar",
    "retry": "move NAME's failed items (ml.vectorizer_failed) back to the queue and make every queued item due",
}

# ml.vectorizer_status as a table narrow enough for a terminal: the columns that say whether retrieval is
# current; the last error and a migration's staging model only when some vectorizer has one
STATUS_COLUMNS = {
    "name": "name",
    "mode": "mode",
    "model": "model",
    "source_rows": "rows",
    "embedded_rows": "embedded",
    "pending": "pending",
    "failed": "failed",
}
OPTIONAL_COLUMNS = {"staging_model": "staging", "staging_rows": "staged", "last_error": "last error"}


def status_rows(rows: list[dict]) -> list[dict]:
    """The rows of ml.vectorizer_status with the columns (and names) `indb vectorizer status` shows."""
    cols = dict(STATUS_COLUMNS)
    cols.update({k: v for k, v in OPTIONAL_COLUMNS.items() if any(r.get(k) is not None for r in rows)})
    return [{label: r.get(key) for key, label in cols.items()} for r in rows]


def register(sub) -> None:
    p = sub.add_parser(
        "vectorizer",
        help="vectorizer status (a table), backfill with a progress bar, retry failed items",
        description="Look after the vectorizers of the database (ml.create_vectorizer).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="actions:\n" + "\n".join(f"  {a:<9} {h}" for a, h in ACTIONS.items()),
    )
    p.add_argument("action", choices=list(ACTIONS), help="status, backfill or retry (see below)")
    p.add_argument(
        "name", nargs="?", help="vectorizer name (required for backfill and retry; status: all when omitted)"
    )
    p.add_argument("--dsn", help="database (default: $INDB_DSN, else the local cluster)")
    p.add_argument(
        "--batch", type=int, default=256, help="backfill: rows embedded per transaction (default 256), at least 1"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from . import render
    from .client import connect

    if args.action != "status" and not args.name:
        print(f"indb vectorizer {args.action}: error: a vectorizer name is required", file=sys.stderr)
        return 2
    if args.batch < 1:
        print(f"indb vectorizer: error: --batch must be at least 1, got {args.batch}", file=sys.stderr)
        return 2
    with connect(args.dsn) as c:
        if args.action == "status":
            rows = c.vectorizer_status(args.name)  # NotFound for an unknown NAME: `indb` exits 1
            render.table(status_rows(rows), title=None if rows else "vectorizers")
        elif args.action == "backfill":
            c.vectorizer_status(args.name)  # an unknown NAME fails before the model is loaded
            c.warmup()
            render.table([c.backfill(args.name, batch=args.batch, progress=True)])
        else:
            render.table([c.retry_vectorizer(args.name)])
    return 0
