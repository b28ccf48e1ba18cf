"""`indb vectorizer status|backfill|retry|process NAME`: look after vectorizers from the shell."""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("vectorizer", help="vectorizer status, backfill with progress, retry failed items")
    p.add_argument("action", choices=["status", "backfill", "retry"])
    p.add_argument("name", nargs="?", help="vectorizer name (status: all when omitted)")
    p.add_argument("--dsn")
    p.add_argument("--batch", type=int, default=256, help="backfill: rows per transaction")
    p.set_defaults(func=run)


def run(args) -> int:
    from .client import connect

    with connect(args.dsn) as c:
        if args.action == "status":
            rows = c.vectorizer_status(args.name)
            for r in rows:
                age = r["oldest_pending_age"]
                src = "?" if r["source_rows"] is None else f"{r['source_rows']:,}"  # a source it may not read
                print(
                    f"{r['name']}: {r['mode']} {r['model']} -> {r['destination']}  rows {src}, "
                    f"embedded {r['embedded_rows']:,}, pending {r['pending']:,}"
                    + (f" (oldest {age})" if age else "")
                    + f", failed {r['failed']:,}"
                    + (
                        f", staging {r['staging_model']} ({r['staging_role']}, {r['staging_rows']:,} rows)"
                        if r["staging_model"]
                        else ""
                    )
                    + (f"\n  last error: {r['last_error']}" if r["last_error"] else "")
                )
            if not rows and args.name:
                print(f'indb vectorizer status: vectorizer "{args.name}" does not exist', file=sys.stderr)
                return 1
            if not rows:
                print("no vectorizers", file=sys.stderr)
        elif not args.name:
            print(f"indb vectorizer {args.action}: a vectorizer name is required", file=sys.stderr)
            return 2
        elif args.action == "backfill":
            c.warmup()
            print(json.dumps(c.backfill(args.name, batch=args.batch, progress=True)))
        else:
            print(json.dumps(c.retry_vectorizer(args.name)))
    return 0
