"""Client methods for the feature store (SQL: features.*); exposed as ``client.features``.

fs = client.features
fs.get_online(["user_stats:avg_rating"], {"user_id": 1})          -> dict
fs.get_historical(entity_df_or_sql, ["user_stats:avg_rating"])   -> pandas.DataFrame
fs.materialize("user_stats", "2018-01-01", "2019-01-01")         -> dict (the run's row)
fs.dataset("movielens_train")                                    -> torch.utils.data.Dataset

Methods of SQL functions that return one typed row (materialize, materialize_incremental, push,
create_training_set, training_set, drift, check_skew) return that row as a dict of its columns.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from psycopg import sql as psql

from .base import Base, as_texts, json_text
from .errors import InvalidInput


class FeaturesMixin(Base):
    @property
    def features(self) -> FeatureStore:
        fs = self.__dict__.get("_features")
        if fs is None:
            fs = self.__dict__["_features"] = FeatureStore(self)
        return fs


def _pg_type(dtype) -> str:
    import pandas as pd

    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "bigint"
    if pd.api.types.is_float_dtype(dtype):
        return "float8"
    if isinstance(dtype, pd.DatetimeTZDtype):
        return "timestamptz"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "timestamp"
    return "text"


class FeatureStore:
    """The feature store API of one client connection; every method calls one features.* SQL function."""

    def __init__(self, client: Base):
        self._c = client

    # -- definitions ---------------------------------------------------------------------------
    def create_entity(self, name: str, join_keys: Sequence[str], description: str | None = None) -> int:
        return self._c.scalar("select features.create_entity(%s, %s, %s)", [name, list(join_keys), description])

    def create_feature_view(
        self,
        name: str,
        entity: str,
        source: str,
        timestamp_column: str,
        features: list,
        ttl: str | None = None,
        description: str | None = None,
        owner: str | None = None,
        partition_by: str = "year",
        breaking: bool = False,
    ) -> str:
        return self._c.scalar(
            "select features.create_feature_view(%s, %s, %s, %s, %s::jsonb, %s::interval, %s, %s, %s, %s)",
            [
                name,
                entity,
                source,
                timestamp_column,
                json_text(features, "features"),
                ttl,
                description,
                owner,
                partition_by,
                breaking,
            ],
        )

    def create_on_demand_feature(
        self,
        name: str,
        expression: str,
        type: str,
        inputs: Sequence[str],
        request_fields: dict | None = None,
        description: str | None = None,
    ) -> str:
        return self._c.scalar(
            "select features.create_on_demand_feature(%s, %s, %s, %s, %s::jsonb, %s)",
            [name, expression, type, as_texts(inputs), json_text(request_fields or {}, "request_fields"), description],
        )

    # -- writes ----------------------------------------------------------------------------------
    def _one(self, sql: str, params: Sequence[Any]) -> dict:
        """The one row of a features.* function that returns a typed row, as a dict."""
        rows = self._c.call(sql, params)
        return rows[0] if rows else {}

    def _watch(self, command: str, view: str, progress: bool):
        """A tqdm bar drawn from ml.progress while the call runs (on a terminal; nothing otherwise)."""
        from contextlib import nullcontext

        if not progress:
            return nullcontext()
        from psycopg.conninfo import make_conninfo

        from .progress import watch

        info = self._c.conn.info
        dsn = make_conninfo(info.dsn, password=info.password) if info.password else info.dsn
        target = view.strip()
        if "@" not in target:  # 'name' means its latest version, which is what the server reports
            latest = self._c.scalar("select max(version) from features.feature_views where name = %s", [target])
            target = f"{target}@{latest}" if latest is not None else target
        return watch(dsn, command, target=target)

    def materialize(self, view: str, start_ts, end_ts, statistics: bool = True, progress: bool = False) -> dict:
        """Compute ``view`` over [start_ts, end_ts) of event time into the offline and online stores.

        Returns the run's row: run_id, feature_view, kind, rows_read, rows_written, rows_quarantined,
        duplicates_replaced, online_updated, min_event_ts, max_event_ts, window_start, window_end, seconds.
        ``progress=True`` draws a tqdm bar on a terminal from what the server reports in ml.progress."""
        with self._watch("features.materialize", view, progress):
            return self._one("select * from features.materialize(%s, %s, %s, %s)", [view, start_ts, end_ts, statistics])

    def materialize_incremental(self, view: str, statistics: bool = True, progress: bool = False) -> dict:
        """Materialize from the end of the last run up to now(); the same row as :meth:`materialize`."""
        with self._watch("features.materialize_incremental", view, progress):
            return self._one("select * from features.materialize_incremental(%s, %s)", [view, statistics])

    def push(self, view: str, rows: list[dict] | dict, target: str = "online_and_offline") -> dict:
        """Write computed feature rows (``target``: online, offline or online_and_offline); the same row as
        :meth:`materialize` (kind 'push'). A float NaN or infinity is refused before anything is sent (JSON has
        none): pass None for a missing value, or the string 'NaN' to store a float feature's NaN."""
        return self._one("select * from features.push(%s, %s::jsonb, %s)", [view, json_text(rows, "rows"), target])

    # -- reads -----------------------------------------------------------------------------------
    def get_online(
        self, features: Sequence[str], entity_keys: dict, request: dict | None = None, full_names: bool = False
    ) -> dict:
        """Latest values for one entity.

        Returns {key..., feature: value, '_status': {feature: present|not_found|outside_ttl}}."""
        return self._c.scalar(
            "select features.get_online(%s, %s::jsonb, %s::jsonb, %s)",
            [
                as_texts(features),
                json_text(entity_keys, "entity_keys"),
                None if request is None else json_text(request, "request"),
                full_names,
            ],
        )

    def get_online_batch(
        self, features: Sequence[str], entity_keys: Iterable[dict], request: Any = None, full_names: bool = False
    ) -> list[dict]:
        rows = self._c.call(
            "select features.get_online_batch(%s, %s::jsonb, %s::jsonb, %s) as r",
            [
                as_texts(features),
                json_text(list(entity_keys), "entity_keys"),
                None if request is None else json_text(request, "request"),
                full_names,
            ],
        )
        return [r["r"] for r in rows]

    def entity_query(self, entity_df) -> str:
        """A SELECT over a pandas DataFrame's rows (jsonb_to_recordset of one quoted literal, typed by dtype)."""
        import pandas as pd

        df = entity_df
        if not isinstance(df, pd.DataFrame):
            raise InvalidInput(
                f"the entity rows are a pandas DataFrame or a SQL query, got {type(df).__name__}",
                hint="a DataFrame of the join keys and an event timestamp, or 'select ... from ...'",
            )
        cols = [str(c) for c in df.columns]
        types = [_pg_type(df[c].dtype) for c in df.columns]
        records = json.loads(df.to_json(orient="records", date_format="iso", date_unit="us"))
        defs = psql.SQL(", ").join(
            psql.SQL("{} {}").format(psql.Identifier(c), psql.SQL(t)) for c, t in zip(cols, types)
        )
        q = psql.SQL("select {} from jsonb_to_recordset({}::jsonb) as e({})").format(
            psql.SQL(", ").join(psql.Identifier(c) for c in cols), psql.Literal(json.dumps(records)), defs
        )
        return q.as_string(self._c.conn)

    def historical_query(
        self,
        entity,
        features: Sequence[str],
        ttl_override: str | None = None,
        full_names: bool = False,
        timestamp_column: str | None = None,
        created_cutoff: bool = False,
    ) -> str:
        q = entity if isinstance(entity, str) else self.entity_query(entity)
        return self._c.scalar(
            "select features.historical_query(%s, %s, %s::interval, %s, %s, %s)",
            [q, as_texts(features), ttl_override, full_names, timestamp_column, created_cutoff],
        )

    def get_historical(
        self,
        entity,
        features: Sequence[str],
        ttl_override: str | None = None,
        full_names: bool = False,
        timestamp_column: str | None = None,
        created_cutoff: bool = False,
    ):
        """Point-in-time join: ``entity`` is a DataFrame (keys + event timestamp) or a SQL query/table name.
        Returns a typed pandas DataFrame, one row per entity row in entity order: the entity columns, then one
        column per feature, typed as the server typed them (features.get_historical_cursor, fetched as is).
        ``created_cutoff=True`` keeps out values written after the entity row's time (bitemporal)."""
        import pandas as pd

        q = entity if isinstance(entity, str) else self.entity_query(entity)
        with self._c._errors(), self._c.conn.transaction(), self._c.conn.cursor() as cur:
            cur.execute(
                "select features.get_historical_cursor(%s, %s, %s::interval, %s, %s, %s, '_indb_historical')",
                [q, as_texts(features), ttl_override, full_names, timestamp_column, created_cutoff],
            )
            cur.execute("fetch all from _indb_historical")
            cols = [d.name for d in cur.description or []]
            rows = cur.fetchall()
        return pd.DataFrame.from_records(rows, columns=cols)

    def create_training_set(
        self,
        name: str,
        entity,
        features: Sequence[str],
        label: str | None = None,
        ttl_override: str | None = None,
        created_cutoff: bool = False,
    ) -> dict:
        """Keep a point-in-time join as a table, registered as a training set. Returns its row: dataset_id,
        relation, rows, label_column, feature_views."""
        q = entity if isinstance(entity, str) else self.entity_query(entity)
        return self._one(
            "select * from features.create_training_set(%s, %s, %s, %s, %s::interval, null, %s)",
            [name, q, as_texts(features), label, ttl_override, created_cutoff],
        )

    def training_set(self, name: str) -> dict:
        """The latest training set of that name: dataset_id, relation, rows, label_column, feature_columns,
        columns ([{name, type}]), created_at. Raises NotFound (42704) when there is none."""
        return self._one("select * from features.training_set(%s)", [name])

    def dataset(self, name: str, label: str | None = None, features: Sequence[str] | None = None):
        """A torch.utils.data.Dataset over a training set: (float32 features, label) per row."""
        return TrainingSetDataset(self, name, label=label, features=features)

    # -- monitoring ------------------------------------------------------------------------------
    def drift(
        self,
        view: str,
        feature: str,
        baseline: str,
        current: str,
        psi_threshold: float = 0.2,
        ks_threshold: float = 0.1,
    ) -> dict:
        """PSI and KS of one numeric feature between two windows ('online', 'latest', 'previous', 'run:<id>' or a
        tstzrange): feature_view, baseline_window, current_window, psi, ks, ks_pvalue, drifted, and per window
        n, mean, std (baseline_n, ..., current_std)."""
        return self._one(
            "select * from features.drift(%s, %s, %s, %s, %s, %s)",
            [view, feature, baseline, current, psi_threshold, ks_threshold],
        )

    def check_skew(self, view: str, sample: int = 100, strict: bool = False, threshold: float = 0.0) -> dict:
        """Online values of sampled entities against the offline store and the source recomputed: feature_view,
        sampled, mismatches, mismatch_rate, offline_mismatches, source_mismatches, not_in_source, examples."""
        return self._one("select * from features.check_skew(%s, %s, %s, %s)", [view, sample, strict, threshold])

    def freshness(self) -> list[dict]:
        return self._c.call("select * from features.freshness order by name, version")


def _torch_dataset_base() -> type:
    try:
        from torch.utils.data import Dataset
    except ImportError:  # pragma: no cover - torch is in the runtime venv
        return object
    return Dataset


if TYPE_CHECKING:
    _DatasetBase = object
else:
    _DatasetBase = _torch_dataset_base()


class TrainingSetDataset(_DatasetBase):
    """Loads a training set table once; numeric feature columns become a float32 tensor (NULL -> NaN)."""

    def __init__(self, store: FeatureStore, name: str, label: str | None = None, features: Sequence[str] | None = None):
        import numpy as np
        import torch

        info = store.training_set(name)
        self.name = name
        self.relation = info["relation"]
        self.label = label or info.get("label_column")
        numeric = {"smallint", "integer", "bigint", "real", "double precision", "numeric", "boolean"}
        cols = info["columns"]
        skip = {self.label, "event_timestamp"}
        if features is None:
            wanted = set(info.get("feature_columns") or [c["name"] for c in cols])
            features = [
                c["name"]
                for c in cols
                if c["name"] not in skip
                and c["name"] in wanted
                and (c["type"] in numeric or c["type"].startswith("numeric"))
            ]
        self.feature_names = list(features)
        parts = [psql.Identifier(f) for f in self.feature_names]
        if self.label:
            parts.append(psql.Identifier(self.label))
        # relation is regclass text written by the server (quoted as needed), not user input
        q = psql.SQL("select {} from {}").format(psql.SQL(", ").join(parts), psql.SQL(self.relation))
        with store._c._errors(), store._c.conn.cursor() as cur:
            cur.execute(q)
            rows = cur.fetchall()
        arr = np.array([[np.nan if v is None else float(v) for v in r] for r in rows], dtype=np.float32).reshape(
            len(rows), len(parts)
        )
        n = len(self.feature_names)
        self.X = torch.from_numpy(arr[:, :n].copy())
        self.y = torch.from_numpy(arr[:, n].copy()) if self.label else None

    def __len__(self) -> int:
        return self.X.shape[0]

    def __getitem__(self, i):
        return (self.X[i], self.y[i]) if self.y is not None else self.X[i]
