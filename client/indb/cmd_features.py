"""`indb features materialize|incremental|freshness|drift|skew`: the feature store from the shell.

Results are rows, printed as tables. ``materialize`` and ``incremental`` draw a progress bar (rows, rate, time
left) from what the server reports in ml.progress while the call runs, when stderr is a terminal. Errors (an
unknown view, a bad window, strict skew) exit with status 1 and the server's message and hint.
"""

from __future__ import annotations

import sys

ACTIONS = {
    "materialize": "compute VIEW over [START, END) of event time into the offline and online stores",
    "incremental": "materialize VIEW from the end of its last run up to now()",
    "freshness": "per feature view: entities online, last event time, ttl breaches, last run",
    "drift": "PSI and KS of VIEW's FEATURE between two windows (latest, previous, run:<id>, online, a tstzrange)",
    "skew": "online values of sampled entities against the offline store and the source recomputed",
}
DSN_HELP = "database (default: $INDB_DSN, else the local cluster)"
RUN_COLUMNS = [
    "run_id",
    "feature_view",
    "kind",
    "rows_read",
    "rows_written",
    "rows_quarantined",
    "duplicates_replaced",
    "online_updated",
    "min_event_ts",
    "max_event_ts",
    "seconds",
]
FRESHNESS_COLUMNS = ["view", "entities", "last_event_ts", "ttl_breaches", "last_status", "quarantined"]


def register(sub) -> None:
    p = sub.add_parser(
        "features",
        help="feature store: materialize with a progress bar, freshness, drift, skew (tables)",
        description="The feature store of the database (features.* functions); results print as tables.",
    )
    acts = p.add_subparsers(dest="action", required=True, metavar="ACTION", help="one of the actions below")

    m = acts.add_parser("materialize", help=ACTIONS["materialize"], description=ACTIONS["materialize"])
    m.add_argument("view", help="feature view: name (latest version) or name@version")
    m.add_argument("start", help="first event time included, e.g. 2018-01-01")
    m.add_argument("end", help="first event time excluded, e.g. 2019-01-01")
    m.add_argument("--no-statistics", action="store_true", help="skip the per-feature statistics of the run")
    m.add_argument("--dsn", help=DSN_HELP)
    m.set_defaults(func=run)

    i = acts.add_parser("incremental", help=ACTIONS["incremental"], description=ACTIONS["incremental"])
    i.add_argument("view", help="feature view: name (latest version) or name@version")
    i.add_argument("--no-statistics", action="store_true", help="skip the per-feature statistics of the run")
    i.add_argument("--dsn", help=DSN_HELP)
    i.set_defaults(func=run)

    f = acts.add_parser("freshness", help=ACTIONS["freshness"], description=ACTIONS["freshness"])
    f.add_argument("view", nargs="?", help="only this feature view's versions (default: all this role may see)")
    f.add_argument("--dsn", help=DSN_HELP)
    f.set_defaults(func=run)

    d = acts.add_parser("drift", help=ACTIONS["drift"], description=ACTIONS["drift"])
    d.add_argument("view", help="feature view: name or name@version")
    d.add_argument("feature", help="a numeric feature of the view")
    d.add_argument("baseline", help="window: latest, previous, run:<id>, online, or a tstzrange '[a,b)'")
    d.add_argument("current", help="window, as baseline")
    d.add_argument("--psi-threshold", type=float, default=0.2, help="drifted when PSI >= this (default 0.2)")
    d.add_argument("--ks-threshold", type=float, default=0.1, help="or when KS >= this with p < 0.01 (default 0.1)")
    d.add_argument("--dsn", help=DSN_HELP)
    d.set_defaults(func=run)

    s = acts.add_parser("skew", help=ACTIONS["skew"], description=ACTIONS["skew"])
    s.add_argument("view", help="feature view: name or name@version")
    s.add_argument("--sample", type=int, default=100, help="entities sampled from the online store (default 100)")
    s.add_argument("--strict", action="store_true", help="fail (exit 1) when the mismatch rate exceeds --threshold")
    s.add_argument("--threshold", type=float, default=0.0, help="mismatch rate allowed with --strict (default 0)")
    s.add_argument("--dsn", help=DSN_HELP)
    s.set_defaults(func=run)


def record(row: dict, columns: list[str] | None = None) -> None:
    """One result row as a two-column table (column, value): a wide row stays readable in 80 columns."""
    from . import render

    render.table([{"column": k, "value": row.get(k)} for k in (columns or list(row))])


def run(args) -> int:
    from . import render
    from .client import connect

    with connect(args.dsn) as c:
        fs = c.features
        if args.action == "materialize":
            row = fs.materialize(args.view, args.start, args.end, statistics=not args.no_statistics, progress=True)
            record(row, RUN_COLUMNS)
        elif args.action == "incremental":
            row = fs.materialize_incremental(args.view, statistics=not args.no_statistics, progress=True)
            record(row, RUN_COLUMNS)
        elif args.action == "freshness":
            rows = fs.freshness()
            if args.view:
                rows = [r for r in rows if args.view in (r["name"], r["view"])]
                if not rows:
                    print(
                        f'indb features freshness: error: feature view "{args.view}" does not exist (or is another '
                        "tenant's)\nhint: list the views this role sees: indb features freshness",
                        file=sys.stderr,
                    )
                    return 1
            render.table(rows, FRESHNESS_COLUMNS, title=None if rows else "feature views")
        elif args.action == "drift":
            record(
                fs.drift(args.view, args.feature, args.baseline, args.current, args.psi_threshold, args.ks_threshold)
            )
        else:
            row = fs.check_skew(args.view, args.sample, args.strict, args.threshold)
            examples = row.pop("examples")
            record(row)
            if examples:
                render.table(examples, title="mismatches (up to 10)")
    return 0
