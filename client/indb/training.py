"""Client methods for training and prediction (SQL: ml.train, ml.predict, ml.deploy, ml.explain, ...).

Each method calls one SQL function. Long calls (``train``, ``predict_batch``, ``evaluate``) take
``progress``: a callable gets the NOTICE lines the server sends while it works (rows read, iterations done,
rate, time left); ``True`` shows a tqdm bar per phase on stderr, fed by the call's row of ``ml.progress``
(polled from a second connection, so it is what any other session sees too).

Numbers in feature order (``predict("p", [8.3, 41, 880])``) may mix ints and floats; they are sent as
float8[].
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import IO, Any

import psycopg

from .base import Base, json_text, mapping
from .errors import InvalidInput

Progress = Callable[[str], None] | bool | None


def numbers(features: Sequence[Any], what: str = "features") -> list[float | None]:
    """A sequence of numbers (ints, floats, numpy scalars, None) as a list of floats for a float8[] parameter:
    psycopg cannot send a list that mixes ints and floats."""
    if isinstance(features, (str, bytes)):
        raise InvalidInput(
            f"{what} must be numbers in feature order or a dict by column name, got a string",
            hint="parse JSON first: json.loads(text)",
        )
    out: list[float | None] = []
    for i, v in enumerate(features):
        if v is None:
            out.append(None)
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise InvalidInput(
                f"{what}[{i}] must be a number, got {v!r}",
                hint="pass numbers in feature order, or a dict by column name for text columns",
            ) from None
        if math.isnan(f) or math.isinf(f):
            raise InvalidInput(f"{what}[{i}] must be a finite number, got {v!r}", hint="pass None for a missing value")
        out.append(f)
    return out


@contextmanager
def watch_progress(
    conn: psycopg.Connection,
    command: str,
    label: str | None = None,
    poll_s: float = 0.25,
    file: IO[str] | None = None,
) -> Iterator[None]:
    """While the block runs a long call on ``conn``, show that call's ``ml.progress`` row as tqdm bars on
    ``file`` (stderr): one bar per phase that has a total (rows, trials, iterations) with rate and time left.
    The rows are read from a second connection, as another session would see them."""
    from tqdm import tqdm

    pid = conn.info.backend_pid
    stop = threading.Event()
    out = file or sys.stderr

    def loop() -> None:
        try:
            watcher = psycopg.connect(conn.info.dsn, password=conn.info.password or None, autocommit=True)
        except psycopg.Error:
            return  # no second connection: no bar, the call itself is unaffected
        bar: Any = None
        phase: str | None = None

        def finish(complete: bool) -> None:
            nonlocal bar
            if bar is not None:
                if complete and bar.total:
                    bar.update(bar.total - bar.n)
                bar.close()
                bar = None

        with watcher:
            while not stop.wait(poll_s):
                try:
                    row = watcher.execute(
                        "select phase, done, total, unit from ml.progress where pid = %s and command = %s",
                        [pid, command],
                    ).fetchone()
                except psycopg.Error:
                    break
                if row is None:
                    continue
                ph, done, total, unit = row
                if ph != phase:
                    finish(True)
                    phase = ph
                if bar is None and total:
                    bar = tqdm(total=total, unit=f" {unit}", desc=f"{label or command}: {ph}", file=out, leave=True)
                if bar is not None:
                    if total and bar.total != total:
                        bar.total = total
                    if done > bar.n:
                        bar.update(done - bar.n)
        finish(not failed[0])

    failed = [False]
    t = threading.Thread(target=loop, name=f"indb progress {command}", daemon=True)
    t.start()
    try:
        yield
    except BaseException:
        failed[0] = True
        raise
    finally:
        stop.set()
        t.join(timeout=5)


class TrainingAPI(Base):
    @contextmanager
    def _progress(self, progress: Progress, command: str, label: str) -> Iterator[None]:
        """NOTICE lines to a callable, or tqdm bars fed by ml.progress (True), while the block runs."""
        if progress is None or progress is False:
            yield
            return
        if progress is True:
            with watch_progress(self.conn, command, label):
                yield
            return
        out = progress

        def handler(diag) -> None:
            if diag.severity in ("NOTICE", "INFO") and diag.message_primary:
                out(diag.message_primary)

        self.conn.add_notice_handler(handler)
        try:
            yield
        finally:
            self.conn.remove_notice_handler(handler)

    def train(
        self,
        project: str,
        task: str | None = None,
        relation: str | None = None,
        target: str | None = None,
        algorithm: str = "xgboost",
        hyperparams: Mapping | None = None,
        test_size: float | None = None,
        test_sampling: str | None = None,
        preprocess: Mapping | None = None,
        search: str | None = None,
        search_params: Mapping | None = None,
        automatic_deploy: bool = True,
        materialize: bool = False,
        progress: Progress = None,
    ) -> dict:
        """Train a model (ml.train); returns {project, model_id, algorithm, metrics, deployed, status, hyperparams,
        test_size}. test_size and test_sampling left out: the project's (a retrain splits like the last one),
        0.25 and random for a new project. A retrain without relation reuses the project's stored relation.
        ``progress``: a callable gets the server's NOTICE lines; True shows tqdm bars (reading, search trials,
        fitting) from ml.progress."""
        with self._progress(progress, "ml.train", f"ml.train {project}"):
            rows = self.call(
                "select * from ml.train(%s, task => %s, relation => %s, target => %s, algorithm => %s, "
                "hyperparams => %s::jsonb, test_size => %s, test_sampling => %s, preprocess => %s::jsonb, "
                "search => %s, search_params => %s::jsonb, automatic_deploy => %s, materialize => %s)",
                [
                    project,
                    task,
                    relation,
                    target,
                    algorithm,
                    json_text(mapping(hyperparams, "hyperparams"), "hyperparams"),
                    test_size,
                    test_sampling,
                    json_text(mapping(preprocess, "preprocess"), "preprocess") if preprocess is not None else None,
                    search,
                    json_text(mapping(search_params, "search_params"), "search_params"),
                    automatic_deploy,
                    materialize,
                ],
            )
        return rows[0]

    def _features_sql(self, function: str, project: str, features: Mapping[str, Any] | Sequence[Any]) -> tuple:
        """(SQL, params) calling ``function(project, features)`` with jsonb (a dict) or float8[] (numbers)."""
        if isinstance(features, Mapping):
            return f"{function}(%s, %s::jsonb)", [project, json_text(dict(features), "features")]
        return f"{function}(%s, %s::float8[])", [project, numbers(features)]

    def predict(self, project: str, features: Mapping[str, Any] | Sequence[Any]) -> float:
        """One prediction from the deployed model: a dict by column name, or numbers in feature order."""
        sql, params = self._features_sql("ml.predict", project, features)
        return self.scalar(f"select {sql}", params)

    def predict_proba(self, project: str, features: Mapping[str, Any] | Sequence[Any]) -> list[float]:
        """Class probabilities, in the order of the model's classes."""
        sql, params = self._features_sql("ml.predict_proba", project, features)
        return self.scalar(f"select {sql}", params)

    def predict_batch(self, project: str, relation: str, progress: Progress = None) -> list[float]:
        """Predictions for every row of a table, view or SELECT, in scan order."""
        with self._progress(progress, "ml.predict_batch", f"ml.predict_batch {project}"):
            rows = self.call(
                "select row_number, prediction from ml.predict_batch(%s, %s) order by row_number", [project, relation]
            )
        return [r["prediction"] for r in rows]

    def deploy(self, project: str, strategy: str = "best_score", model_id: int | None = None) -> dict:
        """ml.deploy: {project, model_id, strategy, deployed, status}."""
        return self.call("select * from ml.deploy(%s, %s, %s)", [project, strategy, model_id])[0]

    def explain(self, project: str, features: Mapping[str, Any] | Sequence[Any]) -> dict:
        """ml.explain's row: {model_id, algorithm, prediction, output, base_value, raw_output, explained_class,
        contributions: {column: contribution}}; base_value + sum(contributions) = raw_output."""
        sql, params = self._features_sql("ml.explain", project, features)
        return self.call(f"select * from {sql}", params)[0]

    def feature_importance(self, project: str, detail: bool = False) -> dict[str, float] | list[dict]:
        """{column: importance}, most important first: the mean |contribution| on the test rows (kind
        mean_abs_shap, in agreement with explain). ``detail=True``: ml.feature_importance's rows (feature,
        importance, kind, model_importance, model_kind: the algorithm's own gain, impurity or |coefficient|)."""
        rows = self.call("select * from ml.feature_importance(%s)", [project])
        if detail:
            return rows
        return {r["feature"]: r["importance"] for r in rows}

    def evaluate(self, project: str, relation: str, model_id: int | None = None, progress: Progress = None) -> dict:
        """Metrics of the deployed (or a given) model on labelled rows: the task's metrics, plus ``rows`` and
        ``model_id`` (ml.evaluate returns those as columns and the metrics as a map)."""
        with self._progress(progress, "ml.evaluate", f"ml.evaluate {project}"):
            r = self.call("select * from ml.evaluate(%s, %s, %s)", [project, relation, model_id])[0]
        return {**r["metrics"], "rows": r["rows"], "model_id": r["model_id"]}

    def set_prediction_logging(self, project: str, enabled: bool = True) -> bool:
        return self.scalar("select ml.set_prediction_logging(%s, %s)", [project, enabled])

    def models(self, project: str) -> list[dict]:
        """ml.models of a project, by version: model_id (across projects), version (within the project), ..."""
        return self.call(
            "select model_id, version, algorithm, task, metrics, created_at, deployed from ml.models "
            "where project = %s order by version",
            [project],
        )

    def deployments(self, project: str | None = None) -> list[dict]:
        """ml.deployments (of one project, or all), oldest first."""
        if project is None:
            return self.call("select * from ml.deployments order by project, deployment_id")
        return self.call("select * from ml.deployments where project = %s order by deployment_id", [project])

    def projects(self) -> list[dict]:
        return self.call("select * from ml.projects_overview order by project")
