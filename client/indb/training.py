"""Client methods for training and prediction (SQL: ml.train, ml.predict, ml.deploy, ml.explain, ...).

Each method calls one SQL function. ``train(..., progress=print)`` forwards the NOTICE lines that
ml.train emits while it works (rows read, iterations done, rate, time left).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from .base import Base


class TrainingAPI(Base):
    @contextmanager
    def _notices(self, progress: Callable[[str], None] | None) -> Iterator[None]:
        if progress is None:
            yield
            return

        def handler(diag) -> None:
            if diag.severity in ("NOTICE", "INFO") and diag.message_primary:
                progress(diag.message_primary)

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
        progress: Callable[[str], None] | None = None,
    ) -> dict:
        """Train a model (ml.train); returns {project, model_id, algorithm, metrics, deployed, status, hyperparams,
        test_size}. test_size and test_sampling left out: the project's (a retrain splits like the last one),
        0.25 and random for a new project. A retrain without relation reuses the project's stored relation."""
        with self._notices(progress):
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
                    json.dumps(dict(hyperparams or {})),
                    test_size,
                    test_sampling,
                    json.dumps(dict(preprocess)) if preprocess is not None else None,
                    search,
                    json.dumps(dict(search_params or {})),
                    automatic_deploy,
                    materialize,
                ],
            )
        return rows[0]

    def predict(self, project: str, features: Mapping[str, Any] | Sequence[float]) -> float:
        """One prediction from the deployed model: a dict by column name, or numbers in feature order."""
        if isinstance(features, Mapping):
            return self.scalar("select ml.predict(%s, %s::jsonb)", [project, json.dumps(dict(features), default=str)])
        return self.scalar("select ml.predict(%s, %s::float8[])", [project, list(features)])

    def predict_proba(self, project: str, features: Mapping[str, Any] | Sequence[float]) -> list[float]:
        if isinstance(features, Mapping):
            return self.scalar(
                "select ml.predict_proba(%s, %s::jsonb)", [project, json.dumps(dict(features), default=str)]
            )
        return self.scalar("select ml.predict_proba(%s, %s::float8[])", [project, list(features)])

    def predict_batch(self, project: str, relation: str) -> list[float]:
        """Predictions for every row of a table, view or SELECT, in scan order."""
        rows = self.call(
            "select row_number, prediction from ml.predict_batch(%s, %s) order by row_number", [project, relation]
        )
        return [r["prediction"] for r in rows]

    def deploy(self, project: str, strategy: str = "best_score", model_id: int | None = None) -> dict:
        return self.call("select * from ml.deploy(%s, %s, %s)", [project, strategy, model_id])[0]

    def explain(self, project: str, features: Mapping[str, Any] | Sequence[float]) -> dict:
        if isinstance(features, Mapping):
            return self.scalar("select ml.explain(%s, %s::jsonb)", [project, json.dumps(dict(features), default=str)])
        return self.scalar("select ml.explain(%s, %s::float8[])", [project, list(features)])

    def feature_importance(self, project: str) -> dict[str, float]:
        return {
            r["feature"]: r["importance"]
            for r in self.call("select feature, importance from ml.feature_importance(%s)", [project])
        }

    def evaluate(self, project: str, relation: str, model_id: int | None = None) -> dict:
        return self.scalar("select ml.evaluate(%s, %s, %s)", [project, relation, model_id])

    def set_prediction_logging(self, project: str, enabled: bool = True) -> bool:
        return self.scalar("select ml.set_prediction_logging(%s, %s)", [project, enabled])

    def models(self, project: str) -> list[dict]:
        return self.call(
            "select model_id, version, algorithm, task, metrics, created_at, deployed from ml.models "
            "where project = %s order by version",
            [project],
        )

    def projects(self) -> list[dict]:
        return self.call("select * from ml.projects_overview order by project")
