"""`indb train|predict|deploy|models`: ml.train and friends from the shell, with training progress.

    indb train house --task regression --relation housing --target median_house_value \
        --preprocess '{"ocean_proximity": {"encode": "one_hot"}, "total_bedrooms": {"impute": "median"}}'
    indb predict house '{"median_income": 8.3, ...}'
    indb deploy house rollback
    indb models [house]
"""

from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model with ml.train (progress on stderr)")
    p.add_argument("project")
    p.add_argument("--task", choices=["regression", "classification", "clustering"])
    p.add_argument("--relation", help="table, view or SELECT (first training of a project)")
    p.add_argument("--target")
    p.add_argument("--algorithm", default="xgboost")
    p.add_argument("--hyperparams", default="{}", help="JSON object")
    p.add_argument("--preprocess", help="JSON object keyed by column (default: the project's, or none)")
    p.add_argument(
        "--test-size", type=float, help="share of rows held out for testing (default: the project's, or 0.25)"
    )
    p.add_argument(
        "--test-sampling",
        choices=["random", "last", "stratified"],
        help="how test rows are chosen (default: the project's, or random)",
    )
    p.add_argument("--search", choices=["grid", "random"])
    p.add_argument("--search-params", default="{}", help="JSON object of candidate lists")
    p.add_argument("--no-deploy", action="store_true", help="do not deploy even when the new model is better")
    p.add_argument("--materialize", action="store_true", help="keep a copy of the training data")
    p.add_argument("--dsn")
    p.set_defaults(func=run_train)

    q = sub.add_parser("predict", help="predict with a project's deployed model (ml.predict)")
    q.add_argument("project")
    q.add_argument("features", help="JSON object by column name, or a JSON list in feature order")
    q.add_argument("--explain", action="store_true", help="print ml.explain's contributions instead")
    q.add_argument("--dsn")
    q.set_defaults(func=run_predict)

    d = sub.add_parser("deploy", help="deploy a model (ml.deploy): best_score, most_recent, rollback, or --model-id")
    d.add_argument("project")
    d.add_argument("strategy", nargs="?", default="best_score", choices=["best_score", "most_recent", "rollback"])
    d.add_argument("--model-id", type=int, help="deploy this model of the project")
    d.add_argument("--dsn")
    d.set_defaults(func=run_deploy)

    m = sub.add_parser("models", help="projects (ml.projects_overview) or one project's models (ml.models)")
    m.add_argument("project", nargs="?")
    m.add_argument("--dsn")
    m.set_defaults(func=run_models)


def _json(text: str, what: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"indb: {what} is not valid JSON: {e}") from None


def run_train(args) -> int:
    from .client import connect

    with connect(args.dsn) as c:
        r = c.train(
            args.project,
            task=args.task,
            relation=args.relation,
            target=args.target,
            algorithm=args.algorithm,
            hyperparams=_json(args.hyperparams, "--hyperparams"),
            test_size=args.test_size,
            test_sampling=args.test_sampling,
            preprocess=_json(args.preprocess, "--preprocess") if args.preprocess is not None else None,
            search=args.search,
            search_params=_json(args.search_params, "--search-params"),
            automatic_deploy=not args.no_deploy,
            materialize=args.materialize,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
        print(json.dumps(r, default=str))
    return 0


def run_predict(args) -> int:
    from .client import connect

    feats = _json(args.features, "features")
    with connect(args.dsn) as c:
        print(json.dumps(c.explain(args.project, feats)) if args.explain else c.predict(args.project, feats))
    return 0


def run_deploy(args) -> int:
    from .client import connect

    with connect(args.dsn) as c:
        print(json.dumps(c.deploy(args.project, args.strategy, args.model_id)))
    return 0


def run_models(args) -> int:
    from .client import connect

    with connect(args.dsn) as c:
        rows = c.models(args.project) if args.project else c.projects()
        for r in rows:
            print(json.dumps(r, default=str))
    return 0
