"""ml.train / ml.predict / ml.deploy / ml.explain / ml.evaluate inside Postgres.

Everything a training run writes (run, snapshot, model version, deployment, lineage) is written in the
caller's transaction after the model is fitted: a failed or cancelled ml.train leaves nothing behind
and the deployed model stays. Deployed models are cached per backend, keyed by deployment id; every
prediction does one cheap SPI lookup of the current deployment id.

The ``plpy`` object is passed in, so the pure parts (splits, search grids, bundles) are unit-testable.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import pickle
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import algorithms as algs
from .errors import IndbRuntimeError, invalid, undefined
from .preprocess import Preprocessor, column_kind, validate_options

TEST_SAMPLING = ("random", "last", "stratified")
SEARCH = ("grid", "random")
BUNDLE_FORMAT = 1

PLANS: dict[str, Any] = {}
# project name -> (deployment id, version id, bundle)
CACHE: dict[str, tuple] = {}


def _plan(plpy, key: str, sql: str, types: Sequence[str]):
    p = PLANS.get(key)
    if p is None:
        p = PLANS[key] = plpy.prepare(sql, list(types))
    return p


def _loads(s):
    if s is None:
        return {}
    if isinstance(s, (dict, list)):
        return s
    return json.loads(s)


# ---------------------------------------------------------------------------------------------------------
# progress and cancel points
# ---------------------------------------------------------------------------------------------------------
class Ticker:
    """Called between chunks of work: a cheap plpy.execute (so cancel/statement_timeout fire) and a NOTICE
    with progress (done/total, rate, time left) at most every ``every_s`` seconds."""

    def __init__(self, plpy, label: str, every_s: float = 2.0):
        self.plpy, self.label, self.every_s = plpy, label, every_s
        self.t0 = self.last = time.time()
        self.stage = ""

    def __call__(self, done: int, total: int) -> None:
        if self.plpy is None:
            return
        self.plpy.execute(_plan(self.plpy, "tick", "select 1", []))
        now = time.time()
        if now - self.last >= self.every_s or (done == total and now - self.t0 > self.every_s):
            self.last = now
            el = now - self.t0
            rate = done / el if el > 0 else 0
            left = f", ~{(total - done) / rate:.0f} s left" if rate > 0 and total > done else ""
            self.plpy.notice(f"{self.label}{self.stage}: {done}/{total} done, {rate:.1f}/s, {el:.1f} s elapsed{left}")


# ---------------------------------------------------------------------------------------------------------
# reading a relation
# ---------------------------------------------------------------------------------------------------------
def relation_sql(plpy, relation: str) -> str:
    """A FROM item for a table/view name or one read-only SELECT, from the one resolver ml._relation_sql
    (sql/020-common.sql): several statements or a writing query are refused before anything runs. A query is
    the caller's own SQL and runs with the caller's privileges (these functions are SECURITY INVOKER)."""
    if relation is None or not str(relation).strip():
        raise invalid("relation is empty", hint="pass a table, view or SELECT")
    q = plpy.execute(_plan(plpy, "relation", "select ml._relation_sql($1, 'relation') as q", ["text"]), [relation])
    return f"({q[0]['q']})"


def describe_relation(plpy, from_sql: str) -> list[dict]:
    """[{name, type, kind, enum}] for the columns of a FROM item."""
    res = plpy.execute(f"select * from {from_sql} as _src limit 0")
    names, oids = res.colnames(), res.coltypes()
    info = plpy.execute(
        _plan(
            plpy,
            "types",
            "select t.oid::int8 as oid, format_type(t.oid, null) as name, t.typtype = 'e' as is_enum "
            "from pg_type t where t.oid = any($1::oid[])",
            ["int8[]"],
        ),
        [list(oids)],
    )
    by = {r["oid"]: r for r in info}
    out = []
    for n, o in zip(names, oids):
        t = by[o]
        out.append({"name": n, "type": t["name"], "kind": column_kind(t["name"], t["is_enum"]), "enum": t["is_enum"]})
    return out


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _select_expr(col: dict) -> str:
    q = _quote(col["name"])
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
    return f"{_select_expr(col)} as {_quote(col['name'])}"


def fetch_chunks(plpy, from_sql: str, cols: list[dict], chunk: int = 50000):
    """Yield (row numbers, {column: [values]}) chunk by chunk, in scan order.

    Scalar columns travel as one array per column and chunk (array_agg grouped by row_number() / chunk):
    PL/Python converts arrays much faster than it builds a dict per row. Array and vector columns use a
    plain cursor. Between chunks the caller runs its cancel point."""
    names = [c["name"] for c in cols]
    if cols and all(c["kind"] in ("numeric", "bool", "text", None) and not c["type"].endswith("[]") for c in cols):
        aggs = ", ".join(f"array_agg(c{i}) as c{i}" for i in range(len(cols)))
        items = ", ".join(f"{_select_expr(c)} as c{i}" for i, c in enumerate(cols))
        cur = plpy.cursor(
            f"select g, array_agg(rn) as rn, {aggs} from (select (row_number() over () - 1) / {int(chunk)} "
            f"as g, row_number() over () as rn, {items} from {from_sql} as _src) s group by g order by g"
        )
        while True:
            rows = cur.fetch(1)
            if not rows:
                break
            r = rows[0]
            rn = np.asarray(r["rn"], dtype=np.int64)
            order = np.argsort(rn, kind="stable")
            if np.all(order == np.arange(len(order))):
                yield rn, {n: r[f"c{i}"] for i, n in enumerate(names)}
            else:
                yield rn[order], {n: [r[f"c{i}"][j] for j in order] for i, n in enumerate(names)}
        return
    sel = ", ".join(_select_item(c) for c in cols) or "1"
    cur = plpy.cursor(f"select {sel} from {from_sql} as _src")
    n = 0
    while True:
        rows = cur.fetch(chunk)
        if not rows:
            break
        yield np.arange(n + 1, n + len(rows) + 1), {name: [r[name] for r in rows] for name in names}
        n += len(rows)
        if len(rows) < chunk:
            break


def fetch_columns(
    plpy, from_sql: str, cols: list[dict], tick: Callable | None = None, chunk: int = 50000
) -> tuple[dict[str, list], int]:
    """All rows of the FROM item as {column: [values]} in scan order, fetched in chunks with a cancel point."""
    out: dict[str, list] = {c["name"]: [] for c in cols}
    n = 0
    for rn, data in fetch_chunks(plpy, from_sql, cols, chunk):
        for name, vals in data.items():
            out[name].extend(vals)
        n += len(rn)
        if tick:
            tick(n, n)
    return out, n


# ---------------------------------------------------------------------------------------------------------
# pure helpers (unit-tested)
# ---------------------------------------------------------------------------------------------------------
def split_indices(
    n: int, test_size: float, sampling: str, y: np.ndarray | None, task: str, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    if sampling not in TEST_SAMPLING:
        raise invalid(f'unknown test_sampling "{sampling}"', detail="valid: " + ", ".join(TEST_SAMPLING))
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
    test = []
    for s in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == s))
        k = int(round(len(members) * test_size))
        test.extend(members[:k].tolist())
    test = np.array(sorted(test), dtype=int)
    train = np.setdiff1d(idx, test)
    return train, test


def search_candidates(search: str, search_params: dict, seed: int = 0) -> tuple[list[dict], int]:
    """Parameter sets to try and the number of CV folds. List values are searched; scalar ``cv`` (folds,
    default 3) and ``n_iter`` (random search size, default 10) configure the search."""
    if search not in SEARCH:
        raise invalid(f'unknown search "{search}"', detail="valid: grid, random")
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
        raise invalid("search_params cv must be at least 2")
    if not grid or any(len(v) == 0 for v in grid.values()):
        raise invalid("search_params needs at least one non-empty list of candidate values")
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
    if task == "regression":
        return algs.regression_metrics(y, algs.predict(task, est, X))
    if task == "classification":
        p = algs.predict(task, est, X)
        return algs.classification_metrics(y, p, algs.predict_proba(est, X), n_classes)
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
) -> tuple[float, float]:
    from sklearn.model_selection import KFold, StratifiedKFold

    key = algs.KEY_METRIC[task]
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
# ml.train
# ---------------------------------------------------------------------------------------------------------
def _project_row(plpy, project: str):
    rows = plpy.execute(
        _plan(
            plpy,
            "project",
            "select m.id, m.task, s.relation, s.target, s.log_predictions "
            "from registry.registered_models m "
            "left join registry.training_projects s on s.model_id = m.id where m.name = $1",
            ["text"],
        ),
        [project],
    )
    return rows[0] if rows else None


def train(
    plpy,
    project: str,
    task: str | None,
    relation: str | None,
    target: str | None,
    algorithm: str,
    hyperparams,
    test_size: float,
    test_sampling: str,
    preprocess,
    search: str | None,
    search_params,
    automatic_deploy: bool,
    materialize: bool = False,
) -> dict:
    t_start = time.time()
    if not project or not str(project).strip():
        raise invalid("project name is empty")
    hyperparams, preprocess, search_params = _loads(hyperparams), _loads(preprocess), _loads(search_params)
    existing = _project_row(plpy, project)
    if existing is not None:
        if task is not None and existing["task"] and task != existing["task"]:
            raise invalid(
                f'project "{project}" is a {existing["task"]} project; cannot train it for {task}',
                hint="use a new project name for another task",
            )
        task = task or existing["task"]
        relation = relation or existing["relation"]
        target = target if target is not None else existing["target"]
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
    test_size = 0.25 if test_size is None else float(test_size)
    test_sampling = test_sampling or "random"
    if test_sampling not in TEST_SAMPLING:
        raise invalid(f'unknown test_sampling "{test_sampling}"', detail="valid: " + ", ".join(TEST_SAMPLING))
    tick = Ticker(plpy, f"ml.train {project} ({algorithm})")
    tenant_rows = plpy.execute("select current_setting('indb.tenant', true) as t")
    tenant = tenant_rows[0]["t"] or None

    # --- data ------------------------------------------------------------------------------------------
    from_sql = relation_sql(plpy, relation)
    cols = describe_relation(plpy, from_sql)
    names = [c["name"] for c in cols]
    if task != "clustering" and target not in names:
        raise IndbRuntimeError(
            "42703", f'target column "{target}" does not exist in {relation}', detail="columns: " + ", ".join(names)
        )
    feats = [c for c in cols if c["name"] != target]
    if not feats:
        raise invalid("the relation has no feature columns besides the target")
    validate_options(preprocess, [c["name"] for c in feats])
    # materialize first so the model is trained on exactly the kept copy
    mat_table = None
    if materialize:
        mat_table = f"snapshot_{int(time.time() * 1000)}_{abs(hash(project)) % 100000}"
        plpy.execute(f"create table registry.{mat_table} as select * from {from_sql} as _src")
        from_sql = f"registry.{mat_table}"
    tick.stage = " reading"
    data, n = fetch_columns(plpy, from_sql, cols, tick)
    if n == 0:
        raise IndbRuntimeError("22000", f"{relation} has no rows", hint="train on a relation with data")
    target_values = data.pop(target) if task != "clustering" else None
    target_col = next((c for c in cols if c["name"] == target), None)
    if task != "clustering" and target_col["kind"] in ("array", "vector"):
        raise invalid(f'target column "{target}" is an array; it must be a number or a label')
    y_all, classes = (
        encode_target(target_values, task, target_col["type"]) if target_values is not None else (None, None)
    )
    digest = content_digest(data, target_values)
    profile = profile_columns(feats, data)

    # --- split, preprocess, fit ---------------------------------------------------------------------------
    tr, te = split_indices(n, test_size, test_sampling, y_all, task)
    train_cols = {k: [v[i] for i in tr] for k, v in data.items()}
    test_cols = {k: [v[i] for i in te] for k, v in data.items()}
    y_tr = None if y_all is None else y_all[tr]
    y_te = None if y_all is None else y_all[te]
    if task == "classification" and len(np.unique(y_tr)) < 2:
        raise IndbRuntimeError(
            "22023", "the training split holds a single class", hint="use test_sampling => 'stratified'"
        )
    enc_y = y_tr.astype(np.float64) if y_tr is not None else None
    pre, X_tr = Preprocessor.fit(
        train_cols,
        {c["name"]: c["type"] for c in feats},
        preprocess,
        enc_y,
        enums={c["name"] for c in feats if c["enum"]},
    )
    X_te = pre.transform(test_cols, len(te))
    n_classes = len(classes) if classes else None
    if task == "classification" and algorithm in ("xgboost", "lightgbm") and n_classes and n_classes > 2:
        params.setdefault("objective", "multi:softprob" if algorithm == "xgboost" else "multiclass")

    trials = []
    if search:
        combos, folds = search_candidates(search, search_params)
        for i, combo in enumerate(combos):
            p = dict(params)
            p.update(algs.check_hyperparams(task, algorithm, combo))
            p.update({k: v for k, v in combo.items()})
            if algorithm == "mlp":
                p["task"] = task
            tick.stage = f" search trial {i + 1}/{len(combos)}"
            t0 = time.time()
            mean, std = cv_score(task, algorithm, p, X_tr, y_tr, folds, n_classes, tick)
            trials.append(
                {"trial": i + 1, "params": combo, "score": mean, "score_std": std, "seconds": time.time() - t0}
            )
        best = max(trials, key=lambda t: -math.inf if math.isnan(t["score"]) else t["score"])
        params.update(best["params"])
    est = algs.make(task, algorithm, params)
    tick.stage = " fitting"
    t_fit = time.time()
    eval_set = (X_te, y_te) if algorithm in ("xgboost", "lightgbm") and task != "clustering" else None
    curves = algs.fit(task, algorithm, est, X_tr, y_tr, eval_set=eval_set, tick=tick)
    fit_seconds = time.time() - t_fit
    metrics = metrics_for(task, est, X_te, y_te, n_classes)
    metrics["fit_seconds"] = fit_seconds
    bundle = {
        "format": BUNDLE_FORMAT,
        "task": task,
        "algorithm": algorithm,
        "est": est,
        "pre": pre.state,
        "classes": classes,
        "target": target,
        "groups": pre.groups,
        "feature_names": pre.feature_names,
        "x_mean": X_tr.mean(axis=0).tolist(),
        "x_std": X_tr.std(axis=0).tolist(),
    }
    blob = pickle.dumps(bundle, protocol=pickle.HIGHEST_PROTOCOL)
    sha = hashlib.sha256(blob).hexdigest()
    params_out = {k: v for k, v in params.items() if k != "callbacks"}

    # --- write everything (one transaction: the caller's) -------------------------------------------------
    tick.stage = " saving"
    tick(1, 1)
    plpy.execute(
        _plan(
            plpy,
            "exp",
            "insert into registry.experiments (name, tenant, description) "
            "values ($1, $2, 'ml.train project') on conflict (name) do nothing",
            ["text", "text"],
        ),
        [project, tenant],
    )
    plpy.execute(
        _plan(
            plpy,
            "regmodel",
            "insert into registry.registered_models (name, task, tenant, description) "
            "values ($1, $2, $3, 'ml.train project') on conflict (name) do nothing",
            ["text", "text", "text"],
        ),
        [project, task, tenant],
    )
    # serializes concurrent ml.train of one project for version numbering and the deploy decision
    model_id = plpy.execute(
        _plan(plpy, "lockproj", "select id, task from registry.registered_models where name = $1 for update", ["text"]),
        [project],
    )[0]["id"]
    exp_id = plpy.execute(
        _plan(plpy, "expid", "select id from registry.experiments where name = $1", ["text"]), [project]
    )[0]["id"]
    run = plpy.execute(
        _plan(
            plpy,
            "run",
            "insert into registry.runs (experiment_id, name, status, start_time, end_time, "
            "tags, tenant) values ($1, $2, 'FINISHED', to_timestamp($3), clock_timestamp(), $4, $5) "
            "returning id",
            ["int8", "text", "float8", "jsonb", "text"],
        ),
        [exp_id, f"{algorithm}", t_start, json.dumps({"source": "ml.train", "project": project}), tenant],
    )[0]["id"]
    ds = plpy.execute(
        _plan(
            plpy,
            "dataset",
            "insert into registry.datasets (name, digest, source, kind, row_count, schema, profile, "
            "materialized) values ($1, $2, $3, 'snapshot', $4, $5, $6, $7::regclass) "
            "on conflict (name, digest) do update set materialized = "
            "coalesce(excluded.materialized, registry.datasets.materialized) returning id",
            ["text", "text", "text", "int8", "jsonb", "jsonb", "text"],
        ),
        [
            project,
            digest,
            relation,
            n,
            json.dumps([{"name": c["name"], "type": c["type"]} for c in cols]),
            json.dumps(profile),
            f"registry.{mat_table}" if mat_table else None,
        ],
    )[0]["id"]
    plpy.execute(
        _plan(
            plpy,
            "runinput",
            "insert into registry.run_inputs (run_id, dataset_id, context) "
            "values ($1, $2, 'training') on conflict do nothing",
            ["int8", "int8"],
        ),
        [run, ds],
    )
    pkeys = {
        "algorithm": algorithm,
        "task": task,
        "relation": relation,
        "target": target,
        "test_size": test_size,
        "test_sampling": test_sampling,
        "preprocess": json.dumps(preprocess),
        "search": search,
        "rows_train": len(tr),
        "rows_test": len(te),
    }
    pkeys.update({f"hp.{k}": json.dumps(v) if not isinstance(v, str) else v for k, v in params_out.items()})
    plpy.execute(
        _plan(
            plpy,
            "params",
            "insert into registry.params (run_id, key, value) "
            "select $1, k, v from unnest($2::text[], $3::text[]) as t(k, v)",
            ["int8", "text[]", "text[]"],
        ),
        [run, list(pkeys), [None if v is None else str(v) for v in pkeys.values()]],
    )
    mk = [k for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None and math.isfinite(v)]
    mv = [float(metrics[k]) for k in mk]
    ck, cv, cs = [], [], []
    for name, vals in curves.items():
        for i, v in enumerate(vals):
            if math.isfinite(v):
                ck.append("curve." + name)
                cv.append(float(v))
                cs.append(i)
    plpy.execute(
        _plan(
            plpy,
            "metrics",
            "insert into registry.metrics (run_id, key, value, step) "
            "select $1, k, v, s from unnest($2::text[], $3::float8[], $4::int8[]) as t(k, v, s)",
            ["int8", "text[]", "float8[]", "int8[]"],
        ),
        [run, mk + ck, mv + cv, [0] * len(mk) + cs],
    )
    plpy.execute(
        _plan(
            plpy,
            "latest",
            "insert into registry.latest_metrics (run_id, key, value, step, ts) "
            "select $1, k, v, 0, now() from unnest($2::text[], $3::float8[]) as t(k, v)",
            ["int8", "text[]", "float8[]"],
        ),
        [run, mk, mv],
    )
    for t in trials:
        plpy.execute(
            _plan(
                plpy,
                "trial",
                "insert into registry.training_trials (run_id, trial, params, score, score_std, "
                "metric, seconds) values ($1, $2, $3, $4, $5, $6, $7)",
                ["int8", "int4", "jsonb", "float8", "float8", "text", "float8"],
            ),
            [
                run,
                t["trial"],
                json.dumps(t["params"]),
                None if math.isnan(t["score"]) else t["score"],
                None if math.isnan(t["score_std"]) else t["score_std"],
                algs.KEY_METRIC[task],
                t["seconds"],
            ],
        )
    version_id = plpy.execute(
        _plan(
            plpy,
            "version",
            "insert into registry.model_versions (model_id, version, run_id, source, flavor, "
            "algorithm, task, artifact, artifact_sha256, input_schema, output_schema, metrics, "
            "hyperparams, status) values ($1, (select coalesce(max(version), 0) + 1 from "
            "registry.model_versions where model_id = $1), $2, 'ml.train', 'indb-pickle', $3, $4, "
            "$5, $6, $7, $8, $9, $10, 'READY') returning id",
            ["int8", "int8", "text", "text", "bytea", "text", "jsonb", "jsonb", "jsonb", "jsonb"],
        ),
        [
            model_id,
            run,
            algorithm,
            task,
            blob,
            sha,
            json.dumps(pre.describe()),
            json.dumps({"task": task, "classes": [str(c) for c in classes] if classes else None, "target": target}),
            json.dumps(_json_safe(metrics)),
            json.dumps(_json_safe(params_out)),
        ],
    )[0]["id"]
    _edge(plpy, "dataset", ds, "run", run, "input")
    _edge(plpy, "run", run, "model_version", version_id, "produced")
    # a feature-store training set read by this run: training_set -> snapshot, so lineage walks on from
    # the feature view versions to the model (matched by the training set's table name in the relation)
    plpy.execute(
        _plan(
            plpy,
            "tset_edge",
            "insert into registry.lineage_edges (src_kind, src_id, dst_kind, dst_id, relation) "
            "select 'training_set', d.id::text, 'dataset', $1::text, 'snapshot_of' "
            "from registry.datasets d join pg_class c on c.oid = d.materialized "
            "where d.kind = 'training_set' and $2 ~* ('(^|[^a-z0-9_$])' || c.relname || '($|[^a-z0-9_$])') "
            "on conflict do nothing",
            ["int8", "text"],
        ),
        [ds, relation],
    )
    plpy.execute(
        _plan(
            plpy,
            "settings",
            "insert into registry.training_projects (model_id, task, relation, target) values ($1, $2, $3, $4) "
            "on conflict (model_id) do update set relation = excluded.relation, target = excluded.target, "
            "updated_at = now()",
            ["int8", "text", "text", "text"],
        ),
        [model_id, task, relation, target],
    )
    plpy.execute(
        _plan(
            plpy,
            "touch",
            "update registry.registered_models set updated_at = now(), task = coalesce(task, $2) where id = $1",
            ["int8", "text"],
        ),
        [model_id, task],
    )
    deployed = False
    if automatic_deploy:
        key = algs.KEY_METRIC[task]
        cur = _current_deployment(plpy, model_id)
        new_score = metrics.get(key)
        if cur is None:
            deployed = True
        else:
            old = cur["metrics"]
            old_score = _loads(old).get(key) if old else None
            deployed = new_score is not None and (old_score is None or new_score > old_score)
        if deployed:
            _insert_deployment(plpy, model_id, version_id, "automatic", cur["id"] if cur else None)
    key = algs.KEY_METRIC[task]
    plpy.notice(
        f"ml.train {project}: {algorithm} trained on {len(tr)} rows, tested on {len(te)} rows in "
        f"{time.time() - t_start:.1f} s; {key} = {metrics.get(key)}; model {version_id}"
        + (" deployed" if deployed else " not deployed")
    )
    return {
        "project": project,
        "model_id": version_id,
        "algorithm": algorithm,
        "metrics": json.dumps(_json_safe(metrics)),
        "deployed": deployed,
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


def _edge(plpy, sk, si, dk, di, rel):
    plpy.execute(
        _plan(
            plpy,
            "edge",
            "insert into registry.lineage_edges (src_kind, src_id, dst_kind, dst_id, relation) "
            "values ($1, $2, $3, $4, $5) on conflict do nothing",
            ["text", "text", "text", "text", "text"],
        ),
        [sk, str(si), dk, str(di), rel],
    )


def _current_deployment(plpy, model_id: int):
    rows = plpy.execute(
        _plan(
            plpy,
            "curdep",
            "select d.id, d.version_id, d.previous_id, v.metrics from registry.deployments d "
            "join registry.model_versions v on v.id = d.version_id "
            "where d.model_id = $1 order by d.id desc limit 1",
            ["int8"],
        ),
        [model_id],
    )
    return rows[0] if rows else None


def _insert_deployment(plpy, model_id: int, version_id: int, strategy: str, previous_id) -> int:
    dep = plpy.execute(
        _plan(
            plpy,
            "deploy",
            "insert into registry.deployments (model_id, version_id, strategy, previous_id) "
            "values ($1, $2, $3, $4) returning id",
            ["int8", "int8", "text", "int8"],
        ),
        [model_id, version_id, strategy, previous_id],
    )[0]["id"]
    _edge(plpy, "model_version", version_id, "deployment", dep, "deployed_as")
    return dep


# ---------------------------------------------------------------------------------------------------------
# ml.deploy
# ---------------------------------------------------------------------------------------------------------
def deploy(plpy, project: str, strategy: str, model_id) -> dict:
    strategies = ("best_score", "most_recent", "rollback", "specific")
    rows = plpy.execute(
        _plan(
            plpy, "lockproj2", "select id, task from registry.registered_models where name = $1 for update", ["text"]
        ),
        [project],
    )
    if not rows:
        raise undefined(f'project "{project}" does not exist', hint="train it first with ml.train")
    pid, task = rows[0]["id"], rows[0]["task"]
    cur = _current_deployment(plpy, pid)
    if model_id is not None:
        ok = plpy.execute(
            _plan(
                plpy,
                "ownver",
                "select id from registry.model_versions where id = $1 and model_id = $2",
                ["int8", "int8"],
            ),
            [model_id, pid],
        )
        if not ok:
            raise undefined(
                f'model {model_id} does not belong to project "{project}"',
                hint=f"see select model_id from ml.models where project = '{project}'",
            )
        version, strategy = model_id, "specific" if strategy in (None, "best_score") else strategy
    elif strategy == "best_score":
        key = algs.KEY_METRIC.get(task, "r2")
        r = plpy.execute(
            _plan(
                plpy,
                "best",
                "select id from registry.model_versions where model_id = $1 "
                "and source = 'ml.train' and (metrics->>$2) is not null "
                "order by (metrics->>$2)::float8 desc, id desc limit 1",
                ["int8", "text"],
            ),
            [pid, key],
        )
        if not r:
            raise undefined(f'project "{project}" has no scored models to deploy')
        version = r[0]["id"]
    elif strategy == "most_recent":
        r = plpy.execute(
            _plan(
                plpy,
                "recent",
                "select id from registry.model_versions where model_id = $1 "
                "and source = 'ml.train' order by id desc limit 1",
                ["int8"],
            ),
            [pid],
        )
        if not r:
            raise undefined(f'project "{project}" has no models')
        version = r[0]["id"]
    elif strategy == "rollback":
        if cur is None or cur["previous_id"] is None:
            raise IndbRuntimeError(
                "55000",
                f'project "{project}" has no previous deployment to roll back to',
                hint="deploy a specific model with ml.deploy(project, model_id => ...)",
            )
        version = plpy.execute(
            _plan(plpy, "prevdep", "select version_id from registry.deployments where id = $1", ["int8"]),
            [cur["previous_id"]],
        )[0]["version_id"]
    else:
        raise invalid(
            f'unknown deploy strategy "{strategy}"', detail="valid: " + ", ".join(strategies[:3]) + ", or pass model_id"
        )
    if cur is not None and cur["version_id"] == version and strategy != "rollback":
        return {"project": project, "model_id": version, "strategy": strategy, "deployed": False}
    _insert_deployment(plpy, pid, version, strategy, cur["id"] if cur else None)
    return {"project": project, "model_id": version, "strategy": strategy, "deployed": True}


# ---------------------------------------------------------------------------------------------------------
# prediction: cached deployed model, one SPI lookup per call
# ---------------------------------------------------------------------------------------------------------
def _load_bundle(plpy, version_id: int) -> dict:
    rows = plpy.execute(
        _plan(plpy, "artifact", "select artifact from registry.model_versions where id = $1", ["int8"]), [version_id]
    )
    if not rows or rows[0]["artifact"] is None:
        raise undefined(f"model {version_id} has no stored artifact")
    b = pickle.loads(rows[0]["artifact"])
    b["_pre"] = Preprocessor(b["pre"])
    b["_version"] = version_id
    if b["algorithm"] == "xgboost":
        b["_booster"] = b["est"].get_booster()
    return b


def deployed(plpy, project: str) -> tuple[dict, tuple]:
    """The deployed bundle of a project (cached per backend by deployment id) and (project id, log flag)."""
    r = plpy.execute(
        _plan(
            plpy,
            "hot",
            "select m.id, d.id as dep, d.version_id, coalesce(s.log_predictions, false) as log "
            "from registry.registered_models m "
            "left join lateral (select id, version_id from registry.deployments where model_id = m.id "
            "order by id desc limit 1) d on true "
            "left join registry.training_projects s on s.model_id = m.id where m.name = $1",
            ["text"],
        ),
        [project],
    )
    if not r:
        raise undefined(f'project "{project}" does not exist', hint="train it with ml.train; see ml.projects_overview")
    row = r[0]
    if row["dep"] is None:
        raise IndbRuntimeError(
            "55000",
            f'project "{project}" has no deployed model',
            hint=f"deploy one: select ml.deploy('{project}', 'best_score')",
        )
    hit = CACHE.get(project)
    if hit is None or hit[0] != row["dep"]:
        bundle = _load_bundle(plpy, row["version_id"])
        CACHE[project] = hit = (row["dep"], row["version_id"], bundle)
    return hit[2], (row["id"], row["log"])


def bundle_for(plpy, project: str, model_id) -> dict:
    if model_id is None:
        return deployed(plpy, project)[0]
    r = plpy.execute(
        _plan(
            plpy,
            "ver",
            "select v.id from registry.model_versions v join registry.registered_models m "
            "on m.id = v.model_id where m.name = $1 and v.id = $2",
            ["text", "int8"],
        ),
        [project, model_id],
    )
    if not r:
        raise undefined(f'model {model_id} does not belong to project "{project}"')
    return _load_bundle(plpy, model_id)


def _raw_predict(bundle: dict, X: np.ndarray) -> np.ndarray:
    if bundle["algorithm"] == "xgboost" and bundle["task"] == "regression":
        return np.asarray(bundle["_booster"].inplace_predict(X), dtype=np.float64).reshape(-1)
    return np.asarray(bundle["est"].predict(X), dtype=np.float64).reshape(-1)


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
            "42703", "missing feature(s): " + ", ".join(missing), detail="the model needs: " + ", ".join(pre.columns)
        )
    if strict:
        extra = [k for k in obj if k not in pre.columns and k != bundle.get("target")]
        if extra:
            raise IndbRuntimeError(
                "42703", "unknown feature(s): " + ", ".join(extra), detail="the model needs: " + ", ".join(pre.columns)
            )
    out = {}
    kinds = {c["name"]: c["kind"] for c in pre.state["columns"]}
    for c in pre.columns:
        v = obj[c]
        if kinds[c] in ("numeric", "bool") and v is not None and not isinstance(v, (int, float)):
            try:
                v = float(v)  # NaN / Infinity arrive as strings from to_jsonb
            except (TypeError, ValueError):
                raise invalid(f'feature "{c}" must be a number, got {v!r}') from None
        out[c] = [v]
    return out


def features_matrix(bundle: dict, features, kind: str) -> np.ndarray:
    pre = bundle["_pre"]
    if kind == "array":
        if features is None:
            raise invalid("features is NULL")
        if not pre.fast_numeric():
            raise invalid(
                "this model has text, array or vector features; a float8[] cannot carry them",
                hint="use ml.predict(project, jsonb) or ml.predict(project, row)",
            )
        return pre.fast_row(features)
    return pre.transform(rows_from_json(bundle, features, strict=(kind == "json")), 1)


def _log(plpy, info, bundle, features, value, t0):
    pid, log = info
    if not log:
        return
    h = hashlib.md5(json.dumps(features, default=str, sort_keys=True).encode()).hexdigest()
    plpy.execute(
        _plan(
            plpy,
            "log",
            "insert into registry.prediction_log (project_id, model_id, inputs_hash, prediction, "
            "latency_ms) values ($1, $2, $3, $4, $5)",
            ["int8", "int8", "text", "float8", "float8"],
        ),
        [pid, bundle["_version"], h, value, (time.perf_counter() - t0) * 1000.0],
    )


def predict(plpy, project: str, features, kind: str) -> float:
    t0 = time.perf_counter()
    bundle, info = deployed(plpy, project)
    X = features_matrix(bundle, features, kind)
    if bundle["task"] == "clustering":
        value = float(bundle["est"].predict(X)[0])
    else:
        value = float(prediction_values(bundle, _raw_predict(bundle, X))[0])
    if info[1]:
        _log(plpy, info, bundle, features, value, t0)
    return value


def predict_proba(plpy, project: str, features, kind: str) -> list:
    bundle, info = deployed(plpy, project)
    if bundle["task"] != "classification":
        raise invalid(
            f'predict_proba needs a classification project; "{project}" is {bundle["task"]}', hint="use ml.predict"
        )
    X = features_matrix(bundle, features, kind)
    p = algs.predict_proba(bundle["est"], X)
    return [float(v) for v in p[0]]


def predict_batch(plpy, project: str, relation: str) -> list:
    bundle, info = deployed(plpy, project)
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
        )
    use = [have[c] for c in pre.columns]
    tick = Ticker(plpy, f"ml.predict_batch {project}")
    parts: list = []
    done = 0
    setting = plpy.execute("select current_setting('indb.predict_batch_chunk', true) as v")[0]["v"]
    chunk = int(setting) if setting and setting.isdigit() and int(setting) > 0 else 50000
    for rn, data in fetch_chunks(plpy, from_sql, use, chunk):
        X = pre.transform(data, len(rn))
        if bundle["task"] == "clustering":
            p = np.asarray(bundle["est"].predict(X), dtype=np.float64)
        else:
            p = prediction_values(bundle, _raw_predict(bundle, X))
        parts.append(p)
        done += len(rn)
        tick(done, done)
    return np.concatenate(parts).tolist() if parts else []


def explain(plpy, project: str, features, kind: str) -> str:
    from . import explain as ex

    bundle, _ = deployed(plpy, project)
    X = features_matrix(bundle, features, kind)
    out = ex.contributions(bundle, X)
    if bundle["task"] == "clustering":
        out["prediction"] = float(bundle["est"].predict(X)[0])
    else:
        out["prediction"] = float(prediction_values(bundle, _raw_predict(bundle, X))[0])
    out["model_id"] = bundle["_version"]
    return json.dumps(out)


def feature_importance(plpy, project: str) -> list:
    from . import explain as ex

    bundle, _ = deployed(plpy, project)
    imp = ex.importance(bundle)
    return sorted(imp.items(), key=lambda kv: -kv[1])


def evaluate(plpy, project: str, relation: str, model_id) -> str:
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
        )
    data, n = fetch_columns(plpy, from_sql, [have[c] for c in need], Ticker(plpy, f"ml.evaluate {project}"))
    if n == 0:
        raise IndbRuntimeError("22000", f"{relation} has no rows")
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
        unknown = sorted({str(v) for v in vals if v not in index})
        if unknown:
            raise invalid("the target holds labels the model never saw: " + ", ".join(unknown[:10]))
        y = np.array([index[v] for v in vals])
        p = np.asarray(bundle["est"].predict(X)).astype(int)
        m = algs.classification_metrics(y, p, algs.predict_proba(bundle["est"], X), len(classes))
    m["rows"] = n
    m["model_id"] = bundle["_version"]
    return json.dumps(_json_safe(m))
