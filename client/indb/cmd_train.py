"""`indb train|predict|deploy|models|deployments`: ml.train and friends from the shell.

    indb train house --task regression --relation housing --target median_house_value \\
        --preprocess '{"ocean_proximity": {"encode": "one_hot"}, "total_bedrooms": {"impute": "median"}}'
    indb predict house '{"median_income": 8.3, ...}'      # or numbers in feature order: '[8.3, 41, 880]'
    indb predict house '{"median_income": 8.3, ...}' --explain
    indb deploy house rollback
    indb models [house]
    indb deployments [house]

`indb train` shows a progress bar per phase (rows read, search trials, boosting rounds) with rate and time
left, fed by the call's row of ml.progress; results print as tables.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model with ml.train (progress bars on stderr, the result as a table)",
        description="Train a model of a project with ml.train: the first training needs --task, --relation and "
        "--target; a retrain reuses the project's relation, target, split and preprocessing unless given. "
        "The new model is deployed when it beats the deployed one on the same test rows.",
    )
    p.add_argument("project", help="project name (a registered model; created by its first training)")
    p.add_argument(
        "--task", choices=["regression", "classification", "clustering"], help="what to learn (first training)"
    )
    p.add_argument("--relation", help="table, view or SELECT to train on (default: the project's)")
    p.add_argument("--target", help="column to predict (default: the project's; none for clustering)")
    p.add_argument("--algorithm", default="xgboost", help="xgboost (default), lightgbm, random_forest, linear, ...")
    p.add_argument("--hyperparams", default="{}", help="JSON object, e.g. '{\"max_depth\": 6}'")
    p.add_argument("--preprocess", help="JSON object keyed by column (default: the project's, or none)")
    p.add_argument(
        "--test-size", type=float, help="share of rows held out for testing (default: the project's, or 0.25)"
    )
    p.add_argument(
        "--test-sampling",
        choices=["random", "last", "stratified"],
        help="how test rows are chosen (default: the project's, or random)",
    )
    p.add_argument("--search", choices=["grid", "random"], help="hyperparameter search over --search-params")
    p.add_argument(
        "--search-params", default="{}", help='JSON object of candidate lists, e.g. \'{"max_depth": [4, 6], "cv": 3}\''
    )
    p.add_argument("--no-deploy", action="store_true", help="do not deploy even when the new model is better")
    p.add_argument("--materialize", action="store_true", help="keep a copy of the training rows in the registry")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--dsn", help="connection string (default: $INDB_DSN or this checkout's cluster)")
    p.set_defaults(func=run_train)

    q = sub.add_parser(
        "predict",
        help="predict with a project's deployed model (ml.predict), or explain the prediction (ml.explain)",
        description="Predict with the deployed model of a project. FEATURES is a JSON object by column name, or a "
        "JSON list of numbers in feature order (all-numeric models; ints and floats may mix).",
    )
    q.add_argument("project", help="project name")
    q.add_argument("features", help="JSON object by column name, or a JSON list in feature order: '[8.3, 41, 880]'")
    q.add_argument(
        "--explain", action="store_true", help="print ml.explain's contributions per column (a table) instead"
    )
    q.add_argument("--dsn", help="connection string (default: $INDB_DSN or this checkout's cluster)")
    q.set_defaults(func=run_predict)

    d = sub.add_parser(
        "deploy",
        help="deploy a model (ml.deploy): best_score, most_recent, rollback, or --model-id",
        description="Deploy a model of a project: the best on its own test rows (best_score), the newest "
        "(most_recent), the previously deployed one (rollback), or a given model (--model-id).",
    )
    d.add_argument("project", help="project name")
    d.add_argument(
        "strategy",
        nargs="?",
        default="best_score",
        choices=["best_score", "most_recent", "rollback"],
        help="how to choose the model (default: best_score); ignored with --model-id",
    )
    d.add_argument("--model-id", type=int, help="deploy this model of the project (ml.models.model_id)")
    d.add_argument("--dsn", help="connection string (default: $INDB_DSN or this checkout's cluster)")
    d.set_defaults(func=run_deploy)

    m = sub.add_parser(
        "models",
        help="projects (ml.projects_overview) or one project's models (ml.models), as a table",
        description="Without a project: one row per project with its deployed model and score. With a project: "
        "its models; model_id numbers models across all projects, version counts them within the project.",
    )
    m.add_argument("project", nargs="?", help="list the models of this project")
    m.add_argument("--dsn", help="connection string (default: $INDB_DSN or this checkout's cluster)")
    m.set_defaults(func=run_models)

    h = sub.add_parser(
        "deployments",
        help="deployment history (ml.deployments), oldest first, as a table",
        description="Deployment history of all projects or one: the deployed model (model_id and version), the "
        "strategy, the deployment it replaced, and which one is active.",
    )
    h.add_argument("project", nargs="?", help="only this project")
    h.add_argument("--dsn", help="connection string (default: $INDB_DSN or this checkout's cluster)")
    h.set_defaults(func=run_deployments)


def _short(rows: list[dict], rename: dict[str, str] | None = None) -> list[dict]:
    """Rows for a narrow terminal: times to the second, a few long column names shortened."""
    from datetime import datetime

    out = []
    for r in rows:
        d = {}
        for k, v in r.items():
            if isinstance(v, datetime):
                v = v.strftime("%Y-%m-%d %H:%M:%S")
            d[(rename or {}).get(k, k)] = v
        out.append(d)
    return out


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"indb: {what} is not valid JSON: {e}") from None


def _object(text: str, what: str) -> dict:
    v = _json(text, what)
    if not isinstance(v, dict):
        raise SystemExit(f"indb: {what} must be a JSON object, got {type(v).__name__}")
    return v


def run_train(args: argparse.Namespace) -> int:
    from . import render
    from .client import connect

    with connect(args.dsn) as c:
        r = c.train(
            args.project,
            task=args.task,
            relation=args.relation,
            target=args.target,
            algorithm=args.algorithm,
            hyperparams=_object(args.hyperparams, "--hyperparams"),
            test_size=args.test_size,
            test_sampling=args.test_sampling,
            preprocess=_object(args.preprocess, "--preprocess") if args.preprocess is not None else None,
            search=args.search,
            search_params=_object(args.search_params, "--search-params"),
            automatic_deploy=not args.no_deploy,
            materialize=args.materialize,
            progress=not args.quiet,
        )
    render.table([r], ["project", "model_id", "algorithm", "deployed", "status"])
    render.table(
        [{"metric": k, "value": v} for k, v in sorted(r["metrics"].items())],
        title=f"test metrics of model {r['model_id']}",
    )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from . import render
    from .client import connect

    feats = _json(args.features, "features")
    if not isinstance(feats, (dict, list)):
        raise SystemExit("indb: features must be a JSON object by column name or a JSON list of numbers")
    with connect(args.dsn) as c:
        if not args.explain:
            print(c.predict(args.project, feats))
            return 0
        e = c.explain(args.project, feats)
    contributions = sorted(e["contributions"].items(), key=lambda kv: -abs(kv[1]))
    print(
        f"model {e['model_id']} ({e['algorithm']}): prediction {e['prediction']:.6g}; "
        f"raw output ({e['output']}"
        + (f" of class {e['explained_class']}" if e.get("explained_class") is not None else "")
        + f") {e['raw_output']:.6g} = base {e['base_value']:.6g} + the contributions:"
    )
    render.table([{"feature": k, "contribution": v} for k, v in contributions])
    return 0


def run_deploy(args: argparse.Namespace) -> int:
    from . import render
    from .client import connect

    with connect(args.dsn) as c:
        render.table([c.deploy(args.project, args.strategy, args.model_id)])
    return 0


def run_models(args: argparse.Namespace) -> int:
    from . import render
    from .client import connect

    with connect(args.dsn) as c:
        if args.project:
            rows = c.call(
                "select m.model_id, m.version, m.algorithm, s.key_metric, "
                "(m.metrics ->> s.key_metric)::float8 as score, m.deployed, m.created_at "
                "from ml.models m join ml.projects_overview s using (project) where m.project = %s "
                "order by m.version",
                [args.project],
            )
            if not rows and not c.scalar(
                "select count(*) from ml.projects_overview where project = %s", [args.project]
            ):
                raise SystemExit(f'indb: project "{args.project}" does not exist (see: indb models)')
            render.table(_short(rows, {"created_at": "trained_at"}), title=f"models of {args.project}")
        else:
            rows = c.call(
                "select project, deployed_model_id, deployed_version, algorithm, key_metric, score, rows, trained_at "
                "from ml.projects_overview order by project"
            )
            short = {"deployed_model_id": "model_id", "deployed_version": "version"}
            render.table(_short(rows, short), title="projects (model_id, version: the deployed model)")
    return 0


def run_deployments(args: argparse.Namespace) -> int:
    from . import render
    from .client import connect

    with connect(args.dsn) as c:
        rows = c.deployments(args.project)
        if (
            args.project
            and not rows
            and not c.scalar("select count(*) from ml.projects_overview where project = %s", [args.project])
        ):
            raise SystemExit(f'indb: project "{args.project}" does not exist (see: indb models)')
    render.table(
        _short(rows, {"deployment_id": "deployment", "previous_deployment_id": "replaced"}),
        ["deployment", "project", "model_id", "version", "algorithm", "strategy", "replaced", "deployed_at", "active"],
        title="deployments (oldest first)",
    )
    return 0
