"""ml.train / ml.predict / ml.explain / ml.evaluate inside Postgres (ml.deploy is SQL: sql/400-training.sql).

ml.train runs with the caller's rights (it reads the caller's relation) and writes the registry only through
the registry's functions (registry.start_run, log_batch, register_dataset, log_input, log_trials,
register_model, add_lineage, end_run; ml._save_training_project, ml._deploy_version), all in the caller's
transaction after the model is fitted: a failed or cancelled ml.train leaves nothing behind and the deployed
model stays. Models are stored in formats that hold no code (indb_runtime.model_store); every load checks
the stored sha256. Deployed models are cached per backend, keyed by deployment and model-row version; every
prediction does one cheap lookup (ml._serving_model).

The ``plpy`` object is passed in, so the pure parts (splits, search grids, bundles) are unit-testable.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import algorithms as algs
from . import explain as ex
from . import model_store, spi
from .errors import IndbRuntimeError, invalid, undefined
from .preprocess import Preprocessor, column_kind, validate_options
from .progress import Progress

TEST_SAMPLING = ("random", "last", "stratified")
SEARCH = ("grid", "random")
DEFAULT_TEST_SIZE = 0.25
MAX_PARAM_CHARS = 6000  # registry.log_batch's limit for one param value

# project name -> (serving stamp: deployment id and model-row version, bundle)
CACHE: dict[str, tuple[str, dict]] = {}


def _loads(s):
    if s is None:
        return {}
    if isinstance(s, (dict, list)):
        return s
    return json.loads(s)


def key_metric(plpy: spi.Plpy, task: str) -> str:
    """The metric (higher is better) that ranks a task's models: one table, ml.key_metric (400-training.sql)."""
    return spi.one(plpy, "select ml.key_metric($1) as k", ["text"], [task])["k"]  # type: ignore[index]


# ---------------------------------------------------------------------------------------------------------
# progress and cancel points
# ---------------------------------------------------------------------------------------------------------
class Tracker:
    """One long call's entry in ``ml.progress`` (indb_runtime.progress: another session sees the phase, done
    and total) and its cancel points (statement_timeout and pg_cancel_backend act between chunks of work).

        with Tracker(plpy, "ml.train", project) as tr:
            tr.phase("reading", unit="rows")
            tr(done, total)          # a cancel point and progress
            tr.cancel_point()        # a cancel point only (e.g. inside a search trial's cross-validation)
    """

    def __init__(self, plpy, command: str, target: str | None):
        self.plpy = plpy
        self.p = Progress(plpy, command, target=target) if plpy is not None else None

    def __enter__(self) -> Tracker:
        if self.p is not None:
            self.p.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.p is not None:
            self.p.close()

    def phase(self, name: str, total: int | None = None, unit: str = "rows") -> None:
        """A new phase: done starts at 0, and so do the rate and time left of ml.progress (its started_at is
        the start of the phase: the rate of rows read says nothing about the rate of boosting rounds)."""
        if self.p is not None:
            self.p.state.update(unit=unit, total=None if total is None else int(total), started_at=time.time())
            self.p.update(0, phase=name)

    def __call__(self, done: int, total: int | None = None) -> None:
        self.cancel_point()
        if self.p is not None:
            first_total = total is not None and self.p.state["total"] is None
            self.p.update(done, total)
            if first_total:  # show the total at once (update writes at most every progress.EVERY_S)
                self.p._write(force=True)

    def cancel_point(self) -> None:
        spi.tick(self.plpy)


# ---------------------------------------------------------------------------------------------------------
# reading a relation
# ---------------------------------------------------------------------------------------------------------
def relation_sql(plpy, relation: str) -> str:
    """A FROM item for a table/view name or one read-only SELECT, from the one resolver ml._relation_sql
    (sql/020-common.sql): several statements or a writing query are refused before anything runs. A query is
    the caller's own SQL and runs with the caller's privileges (these functions are SECURITY INVOKER)."""
    if relation is None or not str(relation).strip():
        raise invalid("relation is empty", hint="pass a table, view or SELECT")
    q = spi.one(plpy, "select ml._relation_sql($1, 'relation') as q", ["text"], [relation])
    return f"({q['q']})"  # type: ignore[index]


def describe_relation(plpy, from_sql: str) -> list[dict]:
    """[{name, type, kind, enum}] for the columns of a FROM item."""
    res = plpy.execute(f"select * from {from_sql} as _src limit 0")
    names, oids = res.colnames(), res.coltypes()
    info = spi.run(
        plpy,
        "select t.oid::int8 as oid, format_type(t.oid, null) as name, t.typtype = 'e' as is_enum "
        "from pg_type t where t.oid = any($1::oid[])",
        ["int8[]"],
        [list(oids)],
    )
    by = {r["oid"]: r for r in info}
    out = []
    for n, o in zip(names, oids):
        t = by[o]
        out.append({"name": n, "type": t["name"], "kind": column_kind(t["name"], t["is_enum"]), "enum": t["is_enum"]})
    return out


def _select_expr(col: dict) -> str:
    q = spi.ident(col["name"])
    if col["kind"] == "vector":
        return f"{q}::real[]"
    if col["kind"] == "numeric":
        return f"{q}::float8"
    if col["kind"] == "array":
        return f"{q}::float8[]"
    if col["kind"] == "text" and col.get("enum"):
        return f"{q}::text"
    return q


def _select_item(col: dict) -> str:
    return f"{_select_expr(col)} as {spi.ident(col['name'])}"


def _each_row(cur):
    """The rows of a PL/Python cursor one at a time (each row of the chunked reads below is a whole chunk)."""
    while rows := cur.fetch(1):
        yield rows[0]


def fetch_chunks(plpy, from_sql: str, cols: list[dict], chunk: int = 50000):
    """Yield (row numbers, {column: [values]}, total rows or None) chunk by chunk, in scan order.

    Scalar columns travel as one array per column and chunk (array_agg grouped by row_number() / chunk):
    PL/Python converts arrays much faster than it builds a dict per row, and the query counts the rows on
    the way (the total for ml.progress). Array and vector columns use a plain cursor (no total). Between
    chunks the caller runs its cancel point."""
    names = [c["name"] for c in cols]
    if _scalar(cols):
        aggs = ", ".join(f"array_agg(c{i}) as c{i}" for i in range(len(cols)))
        items = ", ".join(f"{_select_expr(c)} as c{i}" for i, c in enumerate(cols))
        cur = plpy.cursor(
            f"select g, array_agg(rn) as rn, max(total) as total, {aggs} from (select (row_number() over () - 1) "
            f"/ {int(chunk)} as g, row_number() over () as rn, count(*) over () as total, {items} "
            f"from {from_sql} as _src) s group by g order by g"
        )
        for r in _each_row(cur):
            rn = np.asarray(r["rn"], dtype=np.int64)
            order = np.argsort(rn, kind="stable")
            if np.all(order == np.arange(len(order))):
                yield rn, {n: r[f"c{i}"] for i, n in enumerate(names)}, r["total"]
            else:
                yield rn[order], {n: [r[f"c{i}"][j] for j in order] for i, n in enumerate(names)}, r["total"]
        return
    sel = ", ".join(_select_item(c) for c in cols) or "1"
    cur = plpy.cursor(f"select {sel} from {from_sql} as _src")
    n = 0
    while True:
        rows = cur.fetch(chunk)
        if not rows:
            break
        yield np.arange(n + 1, n + len(rows) + 1), {name: [r[name] for r in rows] for name in names}, None
        n += len(rows)
        if len(rows) < chunk:
            break


def fetch_columns(
    plpy, from_sql: str, cols: list[dict], tick: Callable | None = None, chunk: int = 50000
) -> tuple[dict[str, list], int]:
    """All rows of the FROM item as {column: [values]} in scan order, fetched in chunks; ``tick(done, total)``
    after each chunk (a cancel point and progress)."""
    out: dict[str, list] = {c["name"]: [] for c in cols}
    n = 0
    for rn, data, total in fetch_chunks(plpy, from_sql, cols, chunk):
        for name, vals in data.items():
            out[name].extend(vals)
        n += len(rn)
        if tick:
            tick(n, total)
    return out, n


# ---------------------------------------------------------------------------------------------------------
# pure helpers (unit-tested)
# ---------------------------------------------------------------------------------------------------------
def split_indices(
    n: int, test_size: float, sampling: str, y: np.ndarray | None, task: str, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    if sampling not in TEST_SAMPLING:
        raise invalid(
            f'unknown test_sampling "{sampling}"',
            detail="valid: " + ", ".join(TEST_SAMPLING),
            hint="e.g. test_sampling => 'stratified'",
        )
    if not (0 < test_size < 1):
        raise invalid(f"test_size must be between 0 and 1 (exclusive), got {test_size}", hint="e.g. test_size => 0.2")
    n_test = max(1, int(round(n * test_size)))
    if n - n_test < 2:
        raise IndbRuntimeError(
            "22023",
            f"{n} rows are too few to train with test_size {test_size}",
            hint="use more rows or a smaller test_size",
        )
    idx = np.arange(n)
    if sampling == "last":
        return idx[: n - n_test], idx[n - n_test :]
    rng = np.random.RandomState(seed)
    if sampling == "random" or y is None:
        perm = rng.permutation(n)
        return np.sort(perm[n_test:]), np.sort(perm[:n_test])
    # stratified: by class, or by target decile for regression
    if task == "classification":
        strata = y.astype(int)
    else:
        edges = np.unique(np.quantile(y, np.linspace(0, 1, 11)[1:-1]))
        strata = np.searchsorted(edges, y, side="right")
    picked: list[int] = []
    for s in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == s))
        k = int(round(len(members) * test_size))
        picked.extend(members[:k].tolist())
    test = np.array(sorted(picked), dtype=int)
    return np.setdiff1d(idx, test), test


def search_candidates(search: str, search_params: dict, seed: int = 0) -> tuple[list[dict], int]:
    """Parameter sets to try and the number of CV folds. List values are searched; scalar ``cv`` (folds,
    default 3) and ``n_iter`` (random search size, default 10) configure the search."""
    if search not in SEARCH:
        raise invalid(f'unknown search "{search}"', detail="valid: grid, random", hint="e.g. search => 'grid'")
    if not isinstance(search_params, dict) or not search_params:
        raise invalid(
            "search needs search_params: a JSON object of lists",
            hint='e.g. search_params => \'{"max_depth": [3, 6], "n_estimators": [50, 100]}\'',
        )
    cfg = {k: v for k, v in search_params.items() if not isinstance(v, list)}
    grid = {k: v for k, v in search_params.items() if isinstance(v, list)}
    unknown = set(cfg) - {"cv", "n_iter"}
    if unknown:
        raise invalid(
            f'search_params value for "{sorted(unknown)[0]}" must be a list of candidates',
            hint="only cv and n_iter take a single number",
        )
    folds = int(cfg.get("cv", 3))
    if folds < 2:
        raise invalid(
            f"search_params cv must be at least 2, got {folds}", hint="e.g. search_params => '{\"cv\": 3, ...}'"
        )
    if not grid or any(len(v) == 0 for v in grid.values()):
        raise invalid(
            "search_params needs at least one non-empty list of candidate values",
            hint="e.g. search_params => '{\"max_depth\": [3, 6]}'",
        )
    keys = sorted(grid)
    combos = [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]
    if search == "random":
        n_iter = int(cfg.get("n_iter", 10))
        rng = np.random.RandomState(seed)
        if n_iter < len(combos):
            combos = [combos[i] for i in sorted(rng.choice(len(combos), n_iter, replace=False))]
    return combos, folds


def encode_target(values: list, task: str, type_name: str) -> tuple[np.ndarray, list | None]:
    """Target values -> y (float for regression, class index for classification) and the class labels."""
    nulls = sum(1 for v in values if v is None)
    if nulls:
        raise IndbRuntimeError(
            "22004",
            f"the target column has {nulls} NULL value(s)",
            hint="filter them out: relation => 'select ... where <target> is not null'",
        )
    if task == "regression":
        try:
            y = np.array([float(v) for v in values], dtype=np.float64)
        except (TypeError, ValueError):
            raise invalid(
                f"regression needs a numeric target; the target column is {type_name}",
                hint="use task => 'classification' for labels",
            ) from None
        if not np.all(np.isfinite(y)):
            raise IndbRuntimeError("22000", "the target column holds NaN or Infinity", hint="filter those rows out")
        return y, None
    if isinstance(values[0], float) and any(not math.isfinite(v) for v in values):
        raise IndbRuntimeError("22000", "the target column holds NaN or Infinity", hint="filter those rows out")
    classes = sorted(set(values), key=lambda v: (str(type(v)), v))
    if len(classes) < 2:
        raise IndbRuntimeError(
            "22023",
            f"classification needs at least two classes; the target has only {classes!r}",
            hint="check the relation's filter, or use regression",
        )
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[v] for v in values], dtype=np.int64), classes


def label_value(label) -> float:
    """What ml.predict returns for a class: the label when numeric or boolean, else its class index."""
    if isinstance(label, bool):
        return 1.0 if label else 0.0
    return float(label)


def prediction_values(bundle: dict, raw: np.ndarray) -> np.ndarray:
    classes = bundle.get("classes")
    if bundle["task"] == "classification" and classes is not None:
        idx = raw.astype(int)
        if all(isinstance(c, (int, float, bool)) for c in classes):
            lut = np.array([label_value(c) for c in classes])
            return lut[idx]
        return idx.astype(np.float64)
    return raw.astype(np.float64)


def metrics_for(task: str, est, X: np.ndarray, y: np.ndarray | None, n_classes: int | None) -> dict:
    if task != "clustering":
        assert y is not None and (task == "regression" or n_classes is not None)
    if task == "regression":
        return algs.regression_metrics(y, algs.predict(task, est, X))  # type: ignore[arg-type]
    if task == "classification":
        p = algs.predict(task, est, X)
        return algs.classification_metrics(y, p, algs.predict_proba(est, X), n_classes)  # type: ignore[arg-type]
    return algs.clustering_metrics(X, np.asarray(est.predict(X)))


def cv_score(
    task: str,
    algorithm: str,
    params: dict,
    X: np.ndarray,
    y: np.ndarray | None,
    folds: int,
    n_classes: int | None,
    tick: Callable,
    key: str,
) -> tuple[float, float]:
    """Mean and standard deviation of the key metric ``key`` over ``folds`` cross-validation folds."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if task == "classification":
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0).split(X, y)
    else:
        splitter = KFold(n_splits=folds, shuffle=True, random_state=0).split(X)
    scores = []
    for tr, te in splitter:
        est = algs.make(task, algorithm, params)
        algs.fit(task, algorithm, est, X[tr], None if y is None else y[tr], tick=tick)
        m = metrics_for(task, est, X[te], None if y is None else y[te], n_classes)
        scores.append(m[key] if m.get(key) is not None else float("nan"))
    return float(np.nanmean(scores)), float(np.nanstd(scores))


def content_digest(data: dict[str, list], target: list | None) -> str:
    h = hashlib.sha256()
    for name in sorted(data):
        h.update(name.encode())
        h.update(json.dumps(data[name], default=str).encode())
    if target is not None:
        h.update(b"\0target")
        h.update(json.dumps(target, default=str).encode())
    return h.hexdigest()


def profile_columns(cols: list[dict], data: dict[str, list]) -> dict:
    prof = {}
    for c in cols:
        vals = data[c["name"]]
        present = [v for v in vals if v is not None]
        p: dict[str, Any] = {"type": c["type"], "nulls": len(vals) - len(present)}
        if c["kind"] in ("numeric", "bool") and present:
            x = np.array([float(v) for v in present], dtype=np.float64)
            fin = x[np.isfinite(x)]
            if len(fin):
                p.update(min=float(fin.min()), max=float(fin.max()), mean=float(fin.mean()), std=float(fin.std()))
        elif c["kind"] == "text" and present:
            from collections import Counter

            cnt = Counter(str(v) for v in present)
            p.update(distinct=len(cnt), top=[[k, n] for k, n in cnt.most_common(5)])
        elif c["kind"] in ("array", "vector") and present:
            p["dims"] = len(present[0])
        prof[c["name"]] = p
    return prof


# ---------------------------------------------------------------------------------------------------------
# ml.train, in named steps: settings -> read_data -> prepare -> search_and_fit -> record -> decide_deploy
# ---------------------------------------------------------------------------------------------------------
@dataclass
class Settings:
    """What one ml.train call does, after the project's stored settings filled what the call left out."""

    project: str
    task: str
    relation: str
    target: str | None
    algorithm: str
    params: dict
    test_size: float
    test_sampling: str
    preprocess: dict
    search: str | None
    search_params: dict
    automatic_deploy: bool
    materialize: bool
    relation_given: bool
    key: str


@dataclass
class TrainingData:
    cols: list[dict]
    feats: list[dict]
    data: dict[str, list]  # feature columns, in scan order
    n: int
    target_values: list | None
    y: np.ndarray | None
    classes: list | None
    digest: str
    profile: dict


@dataclass
class Split:
    tr: np.ndarray
    te: np.ndarray
    pre: Preprocessor
    X_tr: np.ndarray
    X_te: np.ndarray
    y_tr: np.ndarray | None
    y_te: np.ndarray | None
    test_cols: dict[str, list]
    n_classes: int | None


@dataclass
class Fitted:
    est: Any
    params: dict
    metrics: dict
    curves: dict
    trials: list = field(default_factory=list)


def _project_row(plpy, project: str) -> dict | None:
    return spi.one(
        plpy,
        "select m.id, m.task, s.relation, s.target, s.test_size, s.test_sampling, s.preprocess, "
        "s.author::text as author, ml._may_run_code_of(s.author) as trusted from registry.registered_models m "
        "left join registry.training_projects s on s.model_id = m.id where m.name = $1",
        ["text"],
        [project],
    )


def _stored_relation(project: str, row: dict) -> str:
    """The project's stored relation, only for a role that may run its author's code (SECURITY.md)."""
    if row["relation"] is None:
        raise undefined(
            f'project "{project}" has no stored relation to train on',
            hint=f"pass it: ml.train('{project}', relation => 'table, view or SELECT')",
        )
    if not row["trusted"]:
        author = row["author"] or "an unknown role"
        raise IndbRuntimeError(
            "42501",
            f'the stored relation of project "{project}" was written by {author}; it runs only for its author '
            "or when its author is an indb_admin",
            detail="a stored relation is SQL: running it would run its author's code with your rights",
            hint=f"read it (ml.projects_overview), then pass it again: ml.train('{project}', relation => '...')",
        )
    return row["relation"]


def settings(
    plpy,
    project: str,
    task: str | None,
    relation: str | None,
    target: str | None,
    algorithm: str | None,
    hyperparams,
    test_size: float | None,
    test_sampling: str | None,
    preprocess,
    search: str | None,
    search_params,
    automatic_deploy: bool | None,
    materialize: bool | None,
) -> Settings:
    """Validate the call and fill what it leaves out from the project (task, relation, target, test_size,
    test_sampling and preprocess are remembered per project: a retrain splits and prepares the data the same
    way unless told otherwise)."""
    if not project or not str(project).strip():
        raise invalid("project name is empty", hint="name the project: ml.train('house_prices', ...)")
    preprocess_given = preprocess is not None
    hyperparams, preprocess, search_params = _loads(hyperparams), _loads(preprocess), _loads(search_params)
    relation_given = relation is not None
    existing = _project_row(plpy, project)
    if existing is not None:
        if task is not None and existing["task"] and task != existing["task"]:
            raise invalid(
                f'project "{project}" is a {existing["task"]} project; cannot train it for {task}',
                hint="use a new project name for another task",
            )
        task = task or existing["task"]
        relation = relation if relation_given else _stored_relation(project, existing)
        target = target if target is not None else existing["target"]
        test_size = test_size if test_size is not None else existing["test_size"]
        test_sampling = test_sampling or existing["test_sampling"]
        if not preprocess_given and existing["preprocess"] is not None:
            preprocess = _loads(existing["preprocess"])
    elif relation is None:
        raise undefined(
            f'project "{project}" does not exist yet',
            hint="the first ml.train of a project needs task, relation and target",
        )
    task = algs.check_task(task)
    algorithm = algs.check_algorithm(task, algorithm or "xgboost")
    if task != "clustering" and not target:
        raise invalid(f"{task} needs a target column", hint="pass target => 'column_name'")
    params = algs.check_hyperparams(task, algorithm, hyperparams)
    if algorithm == "mlp":
        params["task"] = task
    test_size = DEFAULT_TEST_SIZE if test_size is None else float(test_size)
    if not (0 < test_size < 1):
        raise invalid(f"test_size must be between 0 and 1 (exclusive), got {test_size}", hint="e.g. test_size => 0.2")
    test_sampling = test_sampling or "random"
    if test_sampling not in TEST_SAMPLING:
        raise invalid(
            f'unknown test_sampling "{test_sampling}"',
            detail="valid: " + ", ".join(TEST_SAMPLING),
            hint="e.g. test_sampling => 'stratified'",
        )
    return Settings(
        project=project,
        task=task,
        relation=str(relation),
        target=target,
        algorithm=algorithm,
        params=params,
        test_size=test_size,
        test_sampling=test_sampling,
        preprocess=preprocess,
        search=search,
        search_params=search_params,
        automatic_deploy=True if automatic_deploy is None else bool(automatic_deploy),
        materialize=bool(materialize),
        relation_given=relation_given,
        key=key_metric(plpy, task),
    )


def read_data(plpy, s: Settings, tr: Tracker) -> TrainingData:
    """Read the relation (the caller's SQL, with the caller's rights) and encode the target."""
    from_sql = relation_sql(plpy, s.relation)
    cols = describe_relation(plpy, from_sql)
    names = [c["name"] for c in cols]
    if s.task != "clustering" and s.target not in names:
        raise IndbRuntimeError(
            "42703",
            f'target column "{s.target}" does not exist in {s.relation}',
            detail="columns: " + ", ".join(names),
            hint="pass one of the columns as target => '...'",
        )
    feats = [c for c in cols if c["name"] != s.target]
    if not feats:
        raise invalid(
            "the relation has no feature columns besides the target",
            hint="train on a table, view or SELECT with at least one column besides the target",
        )
    validate_options(s.preprocess, [c["name"] for c in feats])
    tr.phase("reading", unit="rows")
    data, n = fetch_columns(plpy, from_sql, cols, tr)
    if n == 0:
        raise IndbRuntimeError("22000", f"{s.relation} has no rows", hint="train on a relation with data")
    target_values = data.pop(s.target) if s.task != "clustering" and s.target is not None else None
    target_col = next((c for c in cols if c["name"] == s.target), None)
    y, classes = None, None
    if target_values is not None and target_col is not None:
        if target_col["kind"] in ("array", "vector"):
            raise invalid(
                f'target column "{s.target}" is an array; it must be a number or a label',
                hint="pick a scalar column as the target",
            )
        y, classes = encode_target(target_values, s.task, target_col["type"])
    return TrainingData(
        cols=cols,
        feats=feats,
        data=data,
        n=n,
        target_values=target_values,
        y=y,
        classes=classes,
        digest=content_digest(data, target_values),
        profile=profile_columns(feats, data),
    )


def prepare(s: Settings, d: TrainingData) -> Split:
    """Split (the project's test_size and sampling) and fit the preprocessing on the training rows."""
    tr, te = split_indices(d.n, s.test_size, s.test_sampling, d.y, s.task)
    train_cols = {k: [v[i] for i in tr] for k, v in d.data.items()}
    test_cols = {k: [v[i] for i in te] for k, v in d.data.items()}
    y_tr = None if d.y is None else d.y[tr]
    y_te = None if d.y is None else d.y[te]
    if s.task == "classification" and y_tr is not None and len(np.unique(y_tr)) < 2:
        raise IndbRuntimeError(
            "22023", "the training split holds a single class", hint="use test_sampling => 'stratified'"
        )
    pre, X_tr = Preprocessor.fit(
        train_cols,
        {c["name"]: c["type"] for c in d.feats},
        s.preprocess,
        y_tr.astype(np.float64) if y_tr is not None else None,
        enums={c["name"] for c in d.feats if c["enum"]},
    )
    X_te = pre.transform(test_cols, len(te))
    n_classes = len(d.classes) if d.classes else None
    return Split(tr, te, pre, X_tr, X_te, y_tr, y_te, test_cols, n_classes)


def search_and_fit(s: Settings, sp: Split, tr: Tracker) -> Fitted:
    """Hyperparameter search (cross-validated on the training rows), then the final fit and test metrics.
    ml.progress shows the search as trials done of all, the fit as iterations (boosting rounds, trees,
    epochs) done of all."""
    params = dict(s.params)
    if s.task == "classification" and s.algorithm in ("xgboost", "lightgbm") and (sp.n_classes or 0) > 2:
        params.setdefault("objective", "multi:softprob" if s.algorithm == "xgboost" else "multiclass")
    trials: list[dict[str, Any]] = []
    if s.search:
        combos, folds = search_candidates(s.search, s.search_params)
        tr.phase(f"searching ({s.search}, {folds}-fold cross-validation)", total=len(combos), unit="trials")
        for i, combo in enumerate(combos):
            p = dict(params)
            p.update(algs.check_hyperparams(s.task, s.algorithm, combo))
            p.update(combo)
            if s.algorithm == "mlp":
                p["task"] = s.task
            t0 = time.time()
            mean, std = cv_score(
                s.task, s.algorithm, p, sp.X_tr, sp.y_tr, folds, sp.n_classes, lambda d, t: tr.cancel_point(), s.key
            )
            trials.append(
                {"trial": i + 1, "params": combo, "score": mean, "score_std": std, "seconds": time.time() - t0}
            )
            tr(i + 1)
        best = max(trials, key=lambda t: -math.inf if math.isnan(t["score"]) else t["score"])
        params.update(best["params"])
    est = algs.make(s.task, s.algorithm, params)
    tr.phase("fitting", total=fit_iterations(est), unit="iterations")
    t_fit = time.time()
    eval_set = (sp.X_te, sp.y_te) if s.algorithm in ("xgboost", "lightgbm") and s.task != "clustering" else None
    curves = algs.fit(s.task, s.algorithm, est, sp.X_tr, sp.y_tr, eval_set=eval_set, tick=tr)
    metrics = metrics_for(s.task, est, sp.X_te, sp.y_te, sp.n_classes)
    metrics["fit_seconds"] = time.time() - t_fit
    used = _json_safe({k: v for k, v in params.items() if k != "callbacks"})
    return Fitted(est=est, params=used, metrics=metrics, curves=curves, trials=trials)


def importance_on_test_rows(meta: dict, est, X_te: np.ndarray, tr: Tracker) -> dict | None:
    """Mean |contribution| per column on the test rows (what ml.feature_importance reports first, in
    agreement with ml.explain); None where ml.explain has no method for the algorithm or the model is too
    large to explain enough rows quickly (ml.feature_importance then shows the model's own importance)."""
    try:
        return ex.shap_importance(dict(meta, est=est), X_te, tick=tr)
    except IndbRuntimeError:
        return None


def fit_iterations(est) -> int | None:
    """How many iterations a fit reports through its tick (boosting rounds, trees, epochs), where known."""
    try:
        params = est.get_params()
    except AttributeError:
        params = {}
    n = params.get("n_estimators") or params.get("epochs") or getattr(est, "epochs", None)
    return int(n) if isinstance(n, (int, float)) and n > 0 else None


def bundle_meta(s: Settings, d: TrainingData, sp: Split) -> dict:
    return {
        "task": s.task,
        "algorithm": s.algorithm,
        "pre": sp.pre.state,
        "classes": d.classes,
        "target": s.target,
        "groups": sp.pre.groups,
        "feature_names": sp.pre.feature_names,
        "x_mean": sp.X_tr.mean(axis=0).tolist(),
        "x_std": sp.X_tr.std(axis=0).tolist(),
    }


def _param_text(v) -> str | None:
    if v is None:
        return None
    t = v if isinstance(v, str) else json.dumps(v)
    return t if len(t) <= MAX_PARAM_CHARS else t[: MAX_PARAM_CHARS - 4] + " ..."


def _run_params(s: Settings, sp: Split, f: Fitted) -> dict[str, str | None]:
    p: dict[str, Any] = {
        "algorithm": s.algorithm,
        "task": s.task,
        "relation": s.relation,
        "target": s.target,
        "test_size": s.test_size,
        "test_sampling": s.test_sampling,
        "preprocess": s.preprocess,
        "search": s.search,
        "rows_train": len(sp.tr),
        "rows_test": len(sp.te),
    }
    p.update({f"hp.{k}": v for k, v in f.params.items()})
    return {k: _param_text(v) for k, v in p.items()}


def _metric_points(f: Fitted) -> tuple[list[str], list[float], list[int]]:
    """The test metrics (step 0) and the training curves (one point per iteration), finite values only."""
    keys, values, steps = [], [], []
    for k, v in f.metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            keys.append(k)
            values.append(float(v))
            steps.append(0)
    for name, vals in f.curves.items():
        for i, v in enumerate(vals):
            if math.isfinite(v):
                keys.append("curve." + name)
                values.append(float(v))
                steps.append(i)
    return keys, values, steps


SNAPSHOT_TYPES = {"numeric": "float8", "bool": "boolean", "text": "text", "array": "float8[]", "vector": "real[]"}


def _store_snapshot(plpy, s: Settings, d: TrainingData) -> str:
    """Keep a copy of exactly the rows trained on, in a table indb_owner owns (registry._store_snapshot)."""
    names = [c["name"] for c in d.cols]
    columns = dict(d.data)
    if d.target_values is not None and s.target is not None:
        columns[s.target] = d.target_values
    rows = [{c: columns[c][i] for c in names} for i in range(d.n)]
    r = spi.one(
        plpy,
        "select registry._store_snapshot($1, $2, $3, $4::jsonb)::text as rel",
        ["text", "text[]", "text[]", "text"],
        [
            s.project,
            names,
            [SNAPSHOT_TYPES.get(c["kind"] or "", "text") for c in d.cols],
            json.dumps(rows, default=str),
        ],
    )
    return r["rel"]  # type: ignore[index]


def record(plpy, s: Settings, d: TrainingData, sp: Split, f: Fitted, blob: bytes) -> tuple[str, int, int]:
    """Write the run, its data set, params, metrics, trials and the model version, through the registry's
    functions only (in the caller's transaction). Returns (run uuid, model version id, snapshot id)."""
    run = spi.one(
        plpy,
        "select registry.start_run($1, $2, $3::jsonb)::text as r",
        ["text", "text", "text"],
        [s.project, s.algorithm, json.dumps({"source": "ml.train", "project": s.project})],
    )["r"]  # type: ignore[index]
    params = _run_params(s, sp, f)
    keys, values, steps = _metric_points(f)
    spi.run(
        plpy,
        "select registry.log_batch($1::uuid, $2, $3, $4, null, $5::jsonb)",
        ["text", "text[]", "float8[]", "int8[]", "text"],
        [run, keys, values, steps, json.dumps(params)],
    )
    if f.trials:
        spi.run(
            plpy,
            "select registry.log_trials($1::uuid, $2, $3::jsonb)",
            ["text", "text", "text"],
            [run, s.key, json.dumps([_json_safe(t) for t in f.trials])],
        )
    output = {"task": s.task, "classes": [str(c) for c in d.classes] if d.classes else None, "target": s.target}
    version_id = spi.one(
        plpy,
        "select version_id from registry.register_model(name => $1, run => $2::uuid, artifact => $3, "
        "flavor => $4, artifact_format => $5, source => 'ml.train', algorithm => $6, task => $7, "
        "input_schema => $8::jsonb, output_schema => $9::jsonb, metrics => $10::jsonb, hyperparams => $11::jsonb)",
        ["text", "text", "bytea", "text", "text", "text", "text", "text", "text", "text", "text"],
        [
            s.project,
            run,
            blob,
            model_store.FLAVOR,
            model_store.BUNDLE_FORMAT,
            s.algorithm,
            s.task,
            json.dumps(sp.pre.describe()),
            json.dumps(output),
            json.dumps(_json_safe(f.metrics)),
            json.dumps(f.params),
        ],
    )["version_id"]  # type: ignore[index]
    snapshot = _record_dataset(plpy, s, d, run)
    spi.run(
        plpy,
        "select ml._save_training_project($1, $2, $3, $4, $5, $6, $7::jsonb, $8)",
        ["text", "text", "text", "text", "float8", "text", "text", "bool"],
        [
            s.project,
            s.task,
            s.relation,
            s.target,
            s.test_size,
            s.test_sampling,
            json.dumps(s.preprocess),
            s.relation_given,
        ],
    )
    spi.run(plpy, "select registry.end_run($1::uuid)", ["text"], [run])
    return run, version_id, snapshot


def _record_dataset(plpy, s: Settings, d: TrainingData, run: str) -> int:
    """The snapshot (name = project, digest of the rows) as the run's input, linked to the feature-store
    training sets the relation reads (training_set -snapshot_of-> dataset)."""
    mat = _store_snapshot(plpy, s, d) if s.materialize else None
    schema = json.dumps([{"name": c["name"], "type": c["type"]} for c in d.cols])
    ds = spi.one(
        plpy,
        "select registry.register_dataset($1, $2, 'snapshot', $3, $4, $5::jsonb, $6::jsonb, $7::regclass) as id",
        ["text", "text", "text", "int8", "text", "text", "text"],
        [s.project, d.digest, s.relation, d.n, schema, json.dumps(d.profile), mat],
    )["id"]  # type: ignore[index]
    spi.run(
        plpy,
        "select registry.log_input($1::uuid, $2, $3, 'training')",
        ["text", "text", "text"],
        [run, s.project, d.digest],
    )
    sets = spi.run(
        plpy,
        "select d.id::text as id from registry.datasets d join pg_class c on c.oid = d.materialized "
        "where d.kind = 'training_set' and $1 ~* ('(^|[^a-z0-9_$])' || c.relname || '($|[^a-z0-9_$])')",
        ["text"],
        [s.relation],
    )
    for t in sets:
        spi.run(
            plpy,
            "select registry.add_lineage('training_set', $1, 'dataset', $2, 'snapshot_of')",
            ["text", "text"],
            [t["id"], str(ds)],
        )
    return ds


def _deployed_version(plpy, project: str) -> int | None:
    r = spi.one(
        plpy,
        "select d.version_id from registry.deployments d join registry.registered_models m on m.id = d.model_id "
        "where m.name = $1 order by d.id desc limit 1",
        ["text"],
        [project],
    )
    return None if r is None else r["version_id"]


def score_on_split(old: dict, s: Settings, d: TrainingData, sp: Split) -> float | None:
    """The key metric of another model of the project on this run's test rows (None: it cannot read them)."""
    pre = old["_pre"]
    if any(c not in sp.test_cols for c in pre.columns):
        return None
    try:
        X = pre.transform({c: sp.test_cols[c] for c in pre.columns}, len(sp.te))
    except IndbRuntimeError:
        return None
    if s.task == "clustering":
        return algs.clustering_metrics(sp.X_te, np.asarray(old["est"].predict(X))).get(s.key)
    if s.task == "regression":
        assert sp.y_te is not None
        try:
            return algs.regression_metrics(sp.y_te, _raw_predict(old, X)).get(s.key)
        except IndbRuntimeError:  # values it cannot take (beyond float32 for an xgboost model)
            return None
    # classification: compare labels, in one index space holding both models' classes
    new_classes, old_classes = list(d.classes or []), list(old["classes"] or [])
    union = new_classes + [c for c in old_classes if c not in new_classes]
    index = {c: i for i, c in enumerate(union)}
    y = np.array([index[new_classes[int(i)]] for i in sp.y_te])  # type: ignore[union-attr]
    p = np.array([index[old_classes[int(i)]] for i in np.asarray(old["est"].predict(X)).astype(int)])
    return algs.classification_metrics(y, p, None, len(union)).get(s.key)


def decide_deploy(plpy, s: Settings, d: TrainingData, sp: Split, f: Fitted, version_id: int) -> tuple[bool, str]:
    """Automatic deploy: the first model of a project, or a model whose key metric beats the deployed model's
    on the same test rows (the deployed model is scored again on this run's test split)."""
    if not s.automatic_deploy:
        return False, "not deployed: automatic_deploy is off"
    new = f.metrics.get(s.key)
    cur = _deployed_version(plpy, s.project)
    if cur is None:
        deployed, status = True, "deployed: the first deployed model of the project"
    else:
        try:
            old_bundle = load_version(plpy, s.project, cur)
        except IndbRuntimeError as e:
            old_bundle, deployed, status = (
                None,
                True,
                f"deployed: the deployed model {cur} cannot be loaded ({e.message})",
            )
        if old_bundle is not None:
            old = score_on_split(old_bundle, s, d, sp)
            if old is None:
                deployed = False
                status = (
                    f"not deployed: the deployed model {cur} cannot be scored on this test split (its feature "
                    f"columns differ, or it cannot take their values); deploy the new one with "
                    f"ml.deploy('{s.project}', model_id => {version_id})"
                )
            elif new is not None and (math.isnan(old) or new > old):
                deployed, status = (
                    True,
                    f"deployed: {s.key} {new:.6g} beats {old:.6g} of model {cur} on the same test rows",
                )
            else:
                deployed = False
                status = (
                    f"not deployed: {s.key} {_fmt(new)} does not beat {old:.6g} of model {cur} on the same test rows"
                )
    if deployed:
        spi.run(
            plpy,
            "select * from ml._deploy_version($1, $2, 'automatic')",
            ["text", "int8"],
            [s.project, version_id],
        )
    return deployed, status


def _fmt(v) -> str:
    return "none" if v is None else f"{v:.6g}"


def train(
    plpy,
    project: str,
    task: str | None,
    relation: str | None,
    target: str | None,
    algorithm: str | None,
    hyperparams,
    test_size: float | None,
    test_sampling: str | None,
    preprocess,
    search: str | None,
    search_params,
    automatic_deploy: bool | None,
    materialize: bool | None = False,
) -> dict:
    t_start = time.time()
    s = settings(
        plpy,
        project,
        task,
        relation,
        target,
        algorithm,
        hyperparams,
        test_size,
        test_sampling,
        preprocess,
        search,
        search_params,
        automatic_deploy,
        materialize,
    )
    with Tracker(plpy, "ml.train", s.project) as tr:
        d = read_data(plpy, s, tr)
        tr.phase("preparing")
        sp = prepare(s, d)
        f = search_and_fit(s, sp, tr)
        meta = bundle_meta(s, d, sp)
        tr.phase("explaining", unit="rows")
        meta["importance"] = importance_on_test_rows(meta, f.est, sp.X_te, tr)
        tr.phase("saving")
        blob = model_store.dump_bundle(meta, f.est)
        _, version_id, _ = record(plpy, s, d, sp, f, blob)
        tr.phase("deciding the deployment")
        deployed, status = decide_deploy(plpy, s, d, sp, f, version_id)
    plpy.notice(
        f"ml.train {s.project}: {s.algorithm} trained on {len(sp.tr)} rows, tested on {len(sp.te)} rows in "
        f"{time.time() - t_start:.1f} s; {s.key} = {_fmt(f.metrics.get(s.key))}; model {version_id} {status}"
    )
    return {
        "project": s.project,
        "model_id": version_id,
        "algorithm": s.algorithm,
        "metrics": json.dumps(_json_safe(f.metrics)),
        "deployed": deployed,
        "status": status,
        "hyperparams": json.dumps(f.params),
        "test_size": s.test_size,
    }


def _json_safe(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------------------
# prediction: cached deployed model, one lookup per call (ml._serving_model: definer, callable by indb_app)
# ---------------------------------------------------------------------------------------------------------
def load_version(plpy, project: str, version_id: int) -> dict:
    """A model version of a project, loaded from its code-free bundle after its sha256 check."""
    a = spi.one(plpy, "select * from ml._model_artifact($1, $2)", ["text", "int8"], [project, version_id])
    where = f'model {version_id} of project "{project}"'
    b = model_store.load_bundle(
        a["artifact"],  # type: ignore[index]
        a["artifact_sha256"],  # type: ignore[index]
        a["artifact_format"],  # type: ignore[index]
        a["flavor"],  # type: ignore[index]
        where,
    )
    b["_pre"] = Preprocessor(b["pre"])
    b["_version"] = version_id
    if b["algorithm"] == "xgboost":
        b["_booster"] = b["est"].get_booster()
    return b


def serving(plpy, project: str) -> tuple[dict, dict]:
    """The deployed bundle of a project (cached per backend while the deployment and the model row stay the
    same) and its serving row (project_id, version_id, log_predictions, ...)."""
    if project is None:
        raise IndbRuntimeError("22004", "project is NULL", hint="name the project, e.g. ml.predict('house', ...)")
    row = spi.one(plpy, "select * from ml._serving_model($1)", ["text"], [project])
    hit = CACHE.get(project)
    if hit is None or hit[0] != row["stamp"]:  # type: ignore[index]
        CACHE.pop(project, None)
        bundle = load_version(plpy, project, row["version_id"])  # type: ignore[index]
        CACHE[project] = hit = (row["stamp"], bundle)  # type: ignore[index]
    return hit[1], row  # type: ignore[return-value]


def bundle_for(plpy, project: str, model_id) -> dict:
    if model_id is None:
        return serving(plpy, project)[0]
    return load_version(plpy, project, model_id)


def _model_input(bundle: dict, X):
    """X for the model: a value beyond float32 where the model computes in float32 is an error (xgboost turned
    1e300 into infinity and answered as if the value were missing)."""
    algs.check_float32_range(
        bundle["algorithm"], X, None, hint="the model computes in float32: pass values within +-3.4e38"
    )
    return X


def _raw_predict(bundle: dict, X: np.ndarray) -> np.ndarray:
    X = _model_input(bundle, X)
    if bundle["algorithm"] == "xgboost" and bundle["task"] == "regression":
        return np.asarray(bundle["_booster"].inplace_predict(X), dtype=np.float64).reshape(-1)
    return np.asarray(bundle["est"].predict(X), dtype=np.float64).reshape(-1)


def _finite_number(col: str, v) -> float:
    """A feature value from JSON as a float: 22003 when out of range, 22023 when not a finite number."""
    if isinstance(v, bool):
        return float(v)
    try:
        f = float(v)
    except OverflowError:
        raise IndbRuntimeError(
            "22003",
            f'feature "{col}" is out of range for double precision',
            hint="pass a number between -1.7e308 and 1.7e308",
        ) from None
    except (TypeError, ValueError):
        raise invalid(f'feature "{col}" must be a number, got {v!r}', hint="pass a number, or null") from None
    if not math.isfinite(f):
        raise invalid(
            f'feature "{col}" must be a finite number, got {v!r}',
            hint="NaN and Infinity cannot be features: pass a number, or null where the model imputes the column",
        )
    return f


def rows_from_json(bundle: dict, obj, strict: bool) -> dict:
    if isinstance(obj, str):
        obj = json.loads(obj)
    if not isinstance(obj, dict):
        raise invalid(
            "features must be a JSON object keyed by column name", hint="e.g. '{\"median_income\": 8.3, ...}'::jsonb"
        )
    pre = bundle["_pre"]
    missing = [c for c in pre.columns if c not in obj]
    if missing:
        raise IndbRuntimeError(
            "42703",
            "missing feature(s): " + ", ".join(missing),
            detail="the model needs: " + ", ".join(pre.columns),
            hint="give every feature column by name (null where the model imputes it)",
        )
    if strict:
        extra = [k for k in obj if k not in pre.columns and k != bundle.get("target")]
        if extra:
            raise IndbRuntimeError(
                "42703",
                "unknown feature(s): " + ", ".join(extra),
                detail="the model needs: " + ", ".join(pre.columns),
                hint="leave them out, or pass a table row: ml.predict(project, t) ignores columns it does not use",
            )
    out = {}
    kinds = {c["name"]: c["kind"] for c in pre.state["columns"]}
    for c in pre.columns:
        v = obj[c]
        if kinds[c] in ("numeric", "bool") and v is not None:
            v = _finite_number(c, v)  # NaN / Infinity arrive as strings from to_jsonb, 1e309 as a huge integer
        out[c] = [v]
    return out


def features_matrix(bundle: dict, features, kind: str) -> np.ndarray:
    pre = bundle["_pre"]
    if kind == "array":
        if features is None:
            raise IndbRuntimeError("22004", "features is NULL", hint="pass one number per feature column")
        if not pre.fast_numeric():
            raise invalid(
                "this model has text, array or vector features; a float8[] cannot carry them",
                hint="use ml.predict(project, jsonb) or ml.predict(project, row)",
            )
        return pre.fast_row(features)
    if features is None:
        raise IndbRuntimeError("22004", "features is NULL", hint="pass the feature values as jsonb or a row")
    return pre.transform(rows_from_json(bundle, features, strict=(kind == "json")), 1)


def _log(plpy, row: dict, bundle: dict, features, value: float, t0: float) -> None:
    h = hashlib.md5(json.dumps(features, default=str, sort_keys=True).encode()).hexdigest()
    spi.run(
        plpy,
        "select ml._log_prediction($1, $2, $3, $4, $5)",
        ["int8", "int8", "text", "float8", "float8"],
        [row["project_id"], bundle["_version"], h, value, (time.perf_counter() - t0) * 1000.0],
    )


def _predict_values(bundle: dict, X: np.ndarray) -> np.ndarray:
    if bundle["task"] == "clustering":
        return np.asarray(bundle["est"].predict(_model_input(bundle, X)), dtype=np.float64).reshape(-1)
    return prediction_values(bundle, _raw_predict(bundle, X))


def predict(plpy, project: str, features, kind: str) -> float:
    t0 = time.perf_counter()
    bundle, row = serving(plpy, project)
    value = float(_predict_values(bundle, features_matrix(bundle, features, kind))[0])
    if row["log_predictions"]:
        _log(plpy, row, bundle, features, value, t0)
    return value


def predict_proba(plpy, project: str, features, kind: str) -> list:
    bundle, _ = serving(plpy, project)
    if bundle["task"] != "classification":
        raise invalid(
            f'predict_proba needs a classification project; "{project}" is {bundle["task"]}', hint="use ml.predict"
        )
    p = algs.predict_proba(bundle["est"], _model_input(bundle, features_matrix(bundle, features, kind)))
    if p is None:
        raise IndbRuntimeError(
            "0A000",
            f'the {bundle["algorithm"]} model of "{project}" gives no probabilities',
            hint="use ml.predict for the label, or train the project with an algorithm that has probabilities",
        )
    return [float(v) for v in p[0]]


def _scalar(cols: list[dict]) -> bool:
    return bool(cols) and all(
        c["kind"] in ("numeric", "bool", "text", None) and not c["type"].endswith("[]") for c in cols
    )


def _unsend8(b: bytes, dtype: str) -> np.ndarray:
    """The values of array_send(a one-dimensional array without NULLs of an 8-byte type: float8 or int8) as a
    native numpy array. The binary form is a 20-byte header (ndim, has-nulls flag, element type, length, lower
    bound), then a 4-byte length (8) and the 8 big-endian bytes of each element."""
    ndim, has_nulls = struct.unpack_from(">ii", b, 0)
    if ndim == 0:
        return np.empty(0, dtype=dtype)
    if ndim != 1 or has_nulls:
        raise IndbRuntimeError("XX000", "internal: a chunk's column arrived with NULLs or several dimensions")
    (n,) = struct.unpack_from(">i", b, 12)
    rec = np.frombuffer(b, dtype=np.dtype([("len", ">i4"), ("v", ">" + dtype)]), count=n, offset=20)
    return rec["v"].astype(dtype)


def _numeric_column(x: np.ndarray, rn: np.ndarray, null_rn) -> np.ndarray | list:
    """One numeric column of a chunk for Preprocessor.transform. ``x`` holds the values with NULL read as NaN,
    ``null_rn`` the row numbers of the NULLs. The usual answer: x itself (an ndarray, in which NaN marks NULL).
    Where the data also holds a real NaN or Infinity: a list with None for NULL, so that transform refuses
    those values as it does on every other path."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return x
    is_null = np.isin(rn, np.asarray(null_rn or [], dtype=np.int64))
    if not (bad & ~is_null).any():
        return x
    return [None if m else v for v, m in zip(x.tolist(), is_null.tolist())]


def fetch_scalar_groups(plpy, from_sql: str, cols: list[dict], chunk: int = 50000):
    """Yield (row numbers, {column: values}) per group of ``chunk`` rows, groups in any order (each value's
    row number says where it belongs). For predict_batch: unlike fetch_chunks, no count(*) over () (it spools
    every row into a tuplestore, on disk past work_mem) and no ORDER BY on the groups (a sort of all the
    aggregated arrays, on disk too); the caller places results by row number.

    Row numbers and numeric columns travel in binary (array_send): numpy reads them straight from the bytes
    instead of a Python float per value. The fetch itself is no faster (array_send costs the server about what
    the floats cost PL/Python: 0.74-0.91 s against 0.73-0.94 s for 8 columns x 1,000,000 rows); preprocessing
    takes arrays as they come (0.67 -> 0.26-0.40 s) and the chunk holds 8 bytes a value, not a Python float. A
    numeric column arrives with NULL as NaN, and the row numbers of its NULLs beside it; see _numeric_column."""
    items = ", ".join(f"{_select_expr(c)} as c{i}" for i, c in enumerate(cols))
    aggs = []
    for i, c in enumerate(cols):
        if c["kind"] == "numeric":  # _select_expr casts it to float8
            aggs.append(
                f"array_send(array_agg(coalesce(c{i}, 'NaN'))) as c{i}, "
                f"array_agg(rn) filter (where c{i} is null) as n{i}"
            )
        else:
            aggs.append(f"array_agg(c{i}) as c{i}")
    cur = plpy.cursor(
        f"select array_send(array_agg(rn)) as rn, {', '.join(aggs)} from (select row_number() over () as rn, "
        f"{items} from {from_sql} as _src) s group by (rn - 1) / {int(chunk)}"
    )
    for r in _each_row(cur):
        rn = _unsend8(r["rn"], "i8")
        data = {}
        for i, c in enumerate(cols):
            if c["kind"] == "numeric":
                data[c["name"]] = _numeric_column(_unsend8(r[f"c{i}"], "f8"), rn, r[f"n{i}"])
            else:
                data[c["name"]] = r[f"c{i}"]
        yield rn, data


_LAST_BLOCK = "'(4294967295,0)'::tid"  # past any block number a table can have (InvalidBlockNumber)


def plain_table(plpy, relation: str) -> dict | None:
    """{name, pages, tuples} when ``relation`` names (ml._relation_name: the name rule of ml._relation_sql) a
    plain table or materialized view whose rows are read from its own blocks only (not a view, a query, a
    partitioned table or one with inheritance children); None otherwise (the caller then reads through its
    FROM item)."""
    return spi.one(
        plpy,
        "select c.oid::int8 as oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) as name, "
        "c.relpages::int8 as pages, c.reltuples::float8 as tuples "
        "from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where c.oid = ml._relation_name($1) and c.relkind in ('r', 'm') and not c.relhassubclass",
        ["text"],
        [relation],
    )


def fetch_block_chunks(plpy, table: dict, cols: list[dict], chunk: int = 50000):
    """Yield {column: values} per range of the table's blocks (about ``chunk`` rows each), in block order,
    from one cursor: one snapshot, and each chunk is aggregated and sent as soon as its blocks are read (a
    TID range scan each; tid comparisons are leakproof, so row security keeps the range scan). The model
    starts on the first chunk while the next ones are read. Numeric columns travel in binary (array_send)
    with NULL as NaN, beside their count of values; a column holding a real NaN or Infinity is refused, as
    transform refuses it elsewhere."""
    per_block = table["tuples"] / table["pages"] if table["pages"] > 0 and table["tuples"] > 0 else 50.0
    step = max(1, int(chunk / per_block))
    items, aggs = [], ["count(*) as n"]
    for i, c in enumerate(cols):
        items.append(f"{_select_expr(c)} as c{i}")
        if c["kind"] == "numeric":  # _select_expr casts it to float8
            aggs.append(f"array_send(array_agg(coalesce(c{i}, 'NaN'))) as c{i}, count(c{i}) as f{i}")
        else:
            aggs.append(f"array_agg(c{i}) as c{i}")
    tbl = table["name"]  # quote_ident of schema and name
    cur = plpy.cursor(
        f"select a.* from (select b, b + {step} >= n.blocks as last from (select greatest(pg_relation_size("
        f"{int(table['oid'])}::oid::regclass) / current_setting('block_size')::int8, 1) as blocks) n, "
        f"generate_series(0, n.blocks - 1, {step}) b) g, lateral (select {', '.join(aggs)} from (select "
        f"{', '.join(items) or '1'} from {tbl} x where x.ctid >= format('(%s,0)', g.b)::tid and x.ctid < case "
        f"when g.last then {_LAST_BLOCK} else format('(%s,0)', g.b + {step})::tid end) s) a where a.n > 0"
    )
    for r in _each_row(cur):
        data = {}
        for i, c in enumerate(cols):
            if c["kind"] != "numeric":
                data[c["name"]] = r[f"c{i}"]
                continue
            x = _unsend8(r[f"c{i}"], "f8")
            # NULL arrived as NaN: more NaN than NULLs, or any Infinity, is a value the model cannot take
            bad = int(np.isinf(x).sum()) + int(np.isnan(x).sum()) - (r["n"] - r[f"f{i}"])
            if bad:
                raise IndbRuntimeError(
                    "22000",
                    f'column "{c["name"]}" holds NaN or Infinity in {bad} row(s); features must be finite numbers',
                    hint=f"filter those rows out (where {c['name']} not in ('NaN', 'Infinity', '-Infinity')) "
                    "or replace them with NULL and set an impute strategy",
                )
            data[c["name"]] = x
        yield r["n"], data


class _Phases:
    """Seconds per phase of one call, sent as a NOTICE when ``indb.predict_batch_profile`` is on (the breakdown
    benchmarks/training_batch.py reports)."""

    def __init__(self, on: bool):
        self.on = on
        self.s: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.s[name] = self.s.get(name, 0.0) + now - self._t
        self._t = now


def _batch_chunks(plpy, relation: str, from_sql: str, use: list[dict], chunk: int):
    """(row numbers or None for scan order, rows, {column: values}, total rows or None) per chunk for
    predict_batch. Scalar columns of a plain table: block ranges, streamed in block order, the total counted
    first. Scalar columns of a view or query: groups in any order, placed by row number (the aggregate holds
    every row before it returns its first group). Arrays/vectors: a plain cursor, chunks in scan order, the
    total known."""
    if not _scalar(use):
        for rn, data, total in fetch_chunks(plpy, from_sql, use, chunk):
            yield None, len(rn), data, total
        return
    table = plain_table(plpy, relation)
    if table is not None:
        # the rows to come, counted first (one more scan, ~2% of the call) so that ml.progress shows done of
        # all, and the time left, from the first chunk on, not only once the last block is read
        total = spi.one(plpy, f"select count(*)::int8 as n from {table['name']}")["n"]  # type: ignore[index]
        for size, data in fetch_block_chunks(plpy, table, use, chunk):
            yield None, size, data, total
        return
    for rn, data in fetch_scalar_groups(plpy, from_sql, use, chunk):
        yield rn, len(rn), data, None


def predict_batch(plpy, project: str, relation: str) -> list:
    settings = spi.one(
        plpy,
        "select current_setting('indb.predict_batch_chunk', true) as chunk, "
        "coalesce(current_setting('indb.predict_batch_profile', true), '') in ('on', 'true', '1') as profile",
    )
    ph = _Phases(bool(settings["profile"]))  # type: ignore[index]
    bundle, _ = serving(plpy, project)
    ph.lap("model")
    pre = bundle["_pre"]
    from_sql = relation_sql(plpy, relation)
    cols = describe_relation(plpy, from_sql)
    have = {c["name"]: c for c in cols}
    missing = [c for c in pre.columns if c not in have]
    if missing:
        raise IndbRuntimeError(
            "42703",
            f"{relation} lacks feature column(s): " + ", ".join(missing),
            detail="the model needs: " + ", ".join(pre.columns),
            hint="select the missing columns (or compute them) in the relation: a table, view or SELECT",
        )
    use = [have[c] for c in pre.columns]
    setting = settings["chunk"]  # type: ignore[index]
    chunk = int(setting) if setting and setting.isdigit() and int(setting) > 0 else 50000
    ph.lap("setup")
    # The model runs in one helper thread while this thread fetches and transforms the next chunk: the fetch
    # holds one core, and the model (xgboost, lightgbm, sklearn: native code that releases the GIL) uses what is
    # free. The helper touches no PostgreSQL API; every SPI call stays on this thread. Profile phases: fetch and
    # transform as before; inference is what is left of the model after the last chunk was handed over.
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="indb-predict")
    try:
        with Tracker(plpy, "ml.predict_batch", project) as tr:
            tr.phase("predicting", unit="rows")
            pending: list = []  # (row numbers, or None for scan order; rows; the future of their predictions)
            n = 0
            for rn, size, data, total in _batch_chunks(plpy, relation, from_sql, use, chunk):
                ph.lap("fetch")
                X = pre.transform(data, size)
                ph.lap("transform")
                pending.append((rn, size, pool.submit(_predict_values, bundle, X)))
                n += size
                tr(sum(done_rows for _, done_rows, f in pending if f.done()), total)  # rows predicted so far
            out = np.empty(n, dtype=np.float64)
            done = 0
            for rn, size, fut in pending:
                if rn is None:
                    out[done : done + size] = fut.result()  # scan order
                else:
                    out[rn - 1] = fut.result()  # row numbers are 1..n: each prediction in its scan place
                done += size
                ph.lap("inference")
                tr(done, n)
            del pending
            result = out.tolist()
            ph.lap("to_list")
    finally:
        # a cancel or an error: drop the chunks not started, wait only for the one the model is on
        pool.shutdown(wait=True, cancel_futures=True)
    if ph.on:
        plpy.notice(
            "ml.predict_batch profile: "
            + json.dumps({"rows": len(result), "chunk": chunk} | {k: round(v, 4) for k, v in ph.s.items()})
        )
    return result


def explain(plpy, project: str, features, kind: str) -> str:
    bundle, _ = serving(plpy, project)
    X = features_matrix(bundle, features, kind)
    out = ex.contributions(bundle, X)
    out["prediction"] = float(_predict_values(bundle, X)[0])
    out["model_id"] = bundle["_version"]
    return json.dumps(out, default=str)


def feature_importance(plpy, project: str) -> list[tuple[str, float, str, float, str]]:
    """(feature, importance, kind, model_importance, model_kind) per column of the deployed model, most
    important first. importance: mean |contribution| on the test rows (kind mean_abs_shap), the measure
    ml.explain's contributions add up to, stored by ml.train; models trained before 0.2.0 have none, and
    show the model's own importance there too. model_importance: the algorithm's own (gain, impurity,
    abs_coefficient)."""
    bundle, _ = serving(plpy, project)
    model_kind, model_imp = ex.native_importance(bundle)
    stored = bundle.get("importance")
    if stored:
        kind, imp = stored["kind"], stored["values"]
    else:
        kind, imp = model_kind, model_imp
    names = sorted(set(imp) | set(model_imp), key=lambda k: (-imp.get(k, 0.0), -model_imp.get(k, 0.0), k))
    return [(k, float(imp.get(k, 0.0)), kind, float(model_imp.get(k, 0.0)), model_kind) for k in names]


def evaluate(plpy, project: str, relation: str, model_id) -> list[tuple[int, int, str]]:
    """[(model id, rows, metrics as JSON)]: the metrics of the deployed (or a given) model on labelled rows."""
    bundle = bundle_for(plpy, project, model_id)
    pre, task = bundle["_pre"], bundle["task"]
    from_sql = relation_sql(plpy, relation)
    cols = describe_relation(plpy, from_sql)
    have = {c["name"]: c for c in cols}
    need = list(pre.columns) + ([bundle["target"]] if task != "clustering" else [])
    missing = [c for c in need if c not in have]
    if missing:
        raise IndbRuntimeError(
            "42703",
            f"{relation} lacks column(s): " + ", ".join(missing),
            detail="evaluation needs the features and the target: " + ", ".join(need),
            hint="select the missing columns in the relation: a table, view or SELECT",
        )
    with Tracker(plpy, "ml.evaluate", project) as tr:
        tr.phase("reading", unit="rows")
        data, n = fetch_columns(plpy, from_sql, [have[c] for c in need], tr)
        if n == 0:
            raise IndbRuntimeError(
                "22000",
                f"{relation} has no rows",
                hint="evaluate on a table, view or SELECT that returns labelled rows",
            )
        tr.phase("scoring", total=n, unit="rows")
        X = pre.transform({c: data[c] for c in pre.columns}, n)
        if task == "clustering":
            m = algs.clustering_metrics(X, np.asarray(bundle["est"].predict(X)))
        elif task == "regression":
            y, _ = encode_target(data[bundle["target"]], task, have[bundle["target"]]["type"])
            m = algs.regression_metrics(y, _raw_predict(bundle, X))
        else:
            classes = bundle["classes"]
            index = {c: i for i, c in enumerate(classes)}
            vals = data[bundle["target"]]
            if any(v is None for v in vals):
                raise IndbRuntimeError(
                    "22004",
                    f"the target column {bundle['target']} has {sum(v is None for v in vals)} NULL value(s)",
                    hint=f"filter them out: 'select ... where {bundle['target']} is not null'",
                )
            unknown = sorted({str(v) for v in vals if v not in index})
            if unknown:
                raise invalid(
                    "the target holds labels the model never saw: " + ", ".join(unknown[:10]),
                    detail="the model knows: " + ", ".join(str(c) for c in classes[:20]),
                    hint="filter those rows out, or retrain the project on data that has them",
                )
            y = np.array([index[v] for v in vals])
            p = np.asarray(bundle["est"].predict(X)).astype(int)
            m = algs.classification_metrics(
                y, p, algs.predict_proba(bundle["est"], _model_input(bundle, X)), len(classes)
            )
        tr(n)
    return [(bundle["_version"], n, json.dumps(_json_safe(m)))]
