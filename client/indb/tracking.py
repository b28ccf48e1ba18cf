"""Client methods for experiment tracking and the model registry (SQL: registry.*).

Familiar to MLflow users::

    with client.start_run(experiment="churn", run_name="xgb-depth-6") as run:
        run.log_params({"max_depth": 6, "eta": 0.1})
        for step in range(100):
            run.log_metric("rmse", rmse, step=step)      # buffered, sent in batches (registry.log_batch)
        run.log_artifact("confusion.png")
    client.register_model("churn", model, run=run.id)   # next version; lineage run -> model_version
    client.set_alias("churn", "champion", 3)
    model = client.load_model("churn", alias="champion")
    df = client.search_runs(["churn"], "metrics.rmse < 0.5 and params.max_depth = '6'")

Model artifact formats (registry.model_versions.artifact_format), chosen per flavor. None of them can carry
code, so loading a model never runs anything its registrant wrote (SECURITY.md, "No executable
deserialization"):
  xgboost-ubj       xgboost Booster / XGBModel: booster.save_raw('ubj'); sklearn wrappers come back as their class
  lightgbm-text     lightgbm Booster or sklearn wrapper: the booster's model text; loads as a lightgbm Booster
  sklearn-skops     scikit-learn estimators and pipelines: skops; loaded only when every type it holds is
                    trusted (scikit-learn, numpy and scipy types, plus the ones you pass as trusted=[...])
  torch-state-dict  torch.nn.Module: its state_dict; load_model returns the state_dict (loaded with
                    weights_only=True), or loads it into the module you pass as into=
  bytes             anything already serialized (flavor given by the caller); load_model returns the bytes
  indb-bundle-v2    ml.train's models: load_model returns the bundle (a dict with the estimator under "est")
The sha256 of every artifact is checked when it is read back. Pickled formats of indb 0.1.0 (sklearn-pickle,
torch-save, indb-pickle) are refused: re-register the model (or retrain it with ml.train).
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from .base import Base, as_texts, jsonb, mapping
from .errors import InvalidInput

LEGACY_FORMATS = ("sklearn-pickle", "pickle", "torch-save")
TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.")


# ----------------------------------------------------------------------------------------------
# model (de)serialization
def _cls_path(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def serialize_model(model: Any, flavor: str | None = None) -> tuple[str, str, bytes, str | None]:
    """(flavor, artifact_format, bytes, algorithm) for a model object."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        if not flavor:
            raise InvalidInput("register_model got raw bytes: say which flavor they are (flavor='xgboost', ...)")
        return flavor, "bytes", bytes(model), None
    mod = type(model).__module__.split(".")[0]
    if mod == "xgboost":
        import xgboost as xgb

        booster = model if isinstance(model, xgb.Booster) else model.get_booster()
        return "xgboost", "xgboost-ubj", bytes(booster.save_raw("ubj")), _cls_path(model)
    if mod == "lightgbm":
        import lightgbm as lgb

        booster = model if isinstance(model, lgb.Booster) else model.booster_
        return "lightgbm", "lightgbm-text", booster.model_to_string().encode(), _cls_path(model)
    if mod == "torch" or _is_torch_module(model):
        import torch

        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        return "torch", "torch-state-dict", buf.getvalue(), _cls_path(model)
    if mod == "sklearn" or hasattr(model, "get_params"):
        import skops.io as sio

        return "sklearn", "sklearn-skops", sio.dumps(model), _cls_path(model)
    raise InvalidInput(
        f"cannot register a {_cls_path(model)}: supported are xgboost, lightgbm, scikit-learn and "
        "torch models, or bytes with flavor="
    )


def _is_torch_module(model) -> bool:
    try:
        import sys

        torch = sys.modules.get("torch")
        return torch is not None and isinstance(model, torch.nn.Module)
    except Exception:
        return False


def _load_skops(data: bytes, trusted: Iterable[str] = ()) -> Any:
    import skops.io as sio

    extra = set(trusted)
    types = set(sio.get_untrusted_types(data=data))
    bad = sorted(t for t in types if not t.startswith(TRUSTED_PREFIXES) and t not in extra)
    if bad:
        raise InvalidInput(
            "the model holds types that are not trusted: " + ", ".join(bad),
            hint="if you trust them, pass them: load_model(..., trusted=[...])",
        )
    return sio.loads(data, trusted=sorted(types))


def deserialize_model(
    data: bytes,
    flavor: str | None,
    fmt: str | None,
    algorithm: str | None = None,
    into: Any = None,
    trusted: Iterable[str] = (),
) -> Any:
    """The model object of an artifact; never unpickles (legacy pickled formats are refused)."""
    if fmt in LEGACY_FORMATS or flavor == "indb-pickle" or (fmt is None and data[:1] == b"\x80"):
        raise InvalidInput(
            f"the model is stored as a pickle ({fmt or flavor}), which indb no longer loads: a pickle can run code",
            hint="register it again from the model object (register_model), or retrain it with ml.train",
        )
    if fmt in ("xgboost-ubj", "xgboost-json"):
        import xgboost as xgb

        cls = (algorithm or "").rsplit(".", 1)[-1]
        if cls in ("XGBClassifier", "XGBRegressor", "XGBRanker", "XGBRFClassifier", "XGBRFRegressor"):
            model = getattr(xgb, cls)()
            model.load_model(bytearray(data))
            return model
        booster = xgb.Booster()
        booster.load_model(bytearray(data))
        return booster
    if fmt == "lightgbm-text":
        import lightgbm as lgb

        return lgb.Booster(model_str=data.decode())
    if fmt == "sklearn-skops":
        return _load_skops(data, trusted)
    if fmt == "torch-state-dict":
        import torch

        state = torch.load(io.BytesIO(data), weights_only=True)
        if into is None:
            return state
        into.load_state_dict(state)
        return into
    if fmt == "indb-bundle-v2":
        from indb_runtime import model_store

        return model_store.load_bundle(data, hashlib.sha256(data).hexdigest(), fmt, flavor)
    return data


# ----------------------------------------------------------------------------------------------
class Run:
    """A RUNNING run. Metric points are buffered and sent with registry.log_batch every
    ``batch_size`` points or ``flush_seconds``, on flush() and when the run ends."""

    def __init__(
        self, client: TrackingAPI, run_id: str, experiment: str, batch_size: int = 5000, flush_seconds: float = 2.0
    ):
        self.client = client
        self.id = str(run_id)
        self.experiment = experiment
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self._keys: list[str] = []
        self._values: list[float] = []
        self._steps: list[int] = []
        self._ts: list[datetime | None] = []
        self._last_flush = time.monotonic()
        self.status = "RUNNING"
        self.points_sent = 0

    run_id = property(lambda self: self.id)

    def __repr__(self) -> str:
        return f"<Run {self.id} experiment={self.experiment!r} {self.status}>"

    # -- params, tags
    def log_param(self, key: str, value: Any) -> None:
        self.client.call("select registry.log_param(%s, %s, %s)", [self.id, key, _str(value)])

    def log_params(self, params: dict) -> None:
        self.client.call("select registry.log_params(%s, %s)", [self.id, _texts(params, "params")])

    def set_tag(self, key: str, value: Any) -> None:
        self.client.call("select registry.set_tag(%s, %s, %s)", [self.id, key, _str(value)])

    def set_tags(self, tags: dict) -> None:
        self.client.call("select registry.log_batch(%s, tags => %s)", [self.id, _texts(tags, "tags")])

    # -- metrics (batched)
    def log_metric(self, key: str, value: float, step: int | None = None, timestamp: datetime | None = None) -> None:
        try:
            v, s = float(value), int(step or 0)
        except (TypeError, ValueError):
            raise InvalidInput(
                f"metric {key!r}: the value must be a number and the step an integer, got {value!r} at step {step!r}",
                hint="log text with log_param or set_tag",
            ) from None
        self._keys.append(key)
        self._values.append(v)
        self._steps.append(s)
        self._ts.append(timestamp)
        if len(self._keys) >= self.batch_size or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def log_metrics(self, metrics: dict, step: int | None = None, timestamp: datetime | None = None) -> None:
        for k, v in metrics.items():
            self.log_metric(k, v, step, timestamp)

    def flush(self) -> int:
        n = len(self._keys)
        if n:
            ts = None if all(t is None for t in self._ts) else self._ts
            self.client.call(
                "select registry.log_batch(%s, %b::text[], %b::float8[], %b::int8[], %s::timestamptz[])",
                [self.id, self._keys, self._values, self._steps, ts],
            )
            self.points_sent += n
            self._keys, self._values, self._steps, self._ts = [], [], [], []
        self._last_flush = time.monotonic()
        return n

    # -- artifacts and inputs
    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> dict:
        p = Path(local_path)
        if not p.is_file():
            raise InvalidInput(f"log_artifact: {p} is not a file")
        name = artifact_path or p.name
        if artifact_path and artifact_path.endswith("/"):
            name = artifact_path + p.name
        return self.log_bytes(name, p.read_bytes())

    def log_bytes(self, path: str, data: bytes) -> dict:
        """Store bytes as an artifact of the run: {path, sha256, size_bytes, uri}."""
        return self.client.call("select * from registry.log_artifact(%s, %s, %s)", [self.id, path, bytes(data)])[0]

    def log_uri(self, path: str, uri: str) -> dict:
        """Record an artifact stored elsewhere: {path, sha256, size_bytes, uri} (no hash nor size)."""
        return self.client.call("select * from registry.log_artifact(%s, %s, null, %s)", [self.id, path, uri])[0]

    def log_input(
        self,
        dataset: str,
        digest: str,
        context: str = "training",
        source: str | None = None,
        row_count: int | None = None,
    ) -> int:
        return self.client.scalar(
            "select registry.log_input(%s, %s, %s, %s, %s, %s)", [self.id, dataset, digest, context, source, row_count]
        )

    # -- lifecycle
    def end(self, status: str = "FINISHED") -> None:
        try:
            self.flush()
        finally:
            if self.status == "RUNNING":
                self.client.call("select registry.end_run(%s, %s)", [self.id, status])
                self.status = status

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.end("FINISHED")
        else:
            try:
                self.end("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
            except Exception:
                pass


def _texts(values: Any, what: str) -> Jsonb:
    """Params or tags (a dict, or None for none) as a jsonb of texts."""
    return Jsonb({k: _str(v) for k, v in mapping(values, what).items()})


def _str(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _metric_values(metrics: dict | None) -> dict:
    """Metric values as floats. They are float8 in the database and come back inside jsonb, which spells NaN and
    the infinities as strings ("NaN", "Infinity") and 1e300 as an integer of 301 digits."""
    return {k: (None if v is None else float(v)) for k, v in (metrics or {}).items()}


class TrackingAPI(Base):
    # -- runs
    def create_experiment(self, name: str, description: str | None = None, tags: dict | None = None) -> int:
        return self.scalar(
            "select registry.create_experiment(%s, %s, %s)", [name, description, jsonb(tags or {}, "tags")]
        )

    def start_run(
        self,
        experiment: str,
        run_name: str | None = None,
        tags: dict | None = None,
        parent_run: str | Run | None = None,
        batch_size: int = 5000,
        flush_seconds: float = 2.0,
    ) -> Run:
        parent = parent_run.id if isinstance(parent_run, Run) else parent_run
        rid = self.scalar(
            "select registry.start_run(%s, %s, %s, %s)",
            [experiment, run_name, _texts(tags, "tags"), parent],
        )
        return Run(self, str(rid), experiment, batch_size=batch_size, flush_seconds=flush_seconds)

    def get_run(self, run_id: str | Run) -> dict:
        """A run as one dict: registry.get_run's columns (run_id, run_name, experiment, status, user_name,
        parent_run_id, start_time, end_time, tenant, tags, params, metrics) plus ``artifacts``
        (registry.list_artifacts) and ``inputs`` (registry.list_inputs) as lists of dicts."""
        rid = run_id.id if isinstance(run_id, Run) else str(run_id)
        info = self.call("select * from registry.get_run(%s)", [rid])[0]
        info["run_id"] = str(info["run_id"])
        info["metrics"] = _metric_values(info["metrics"])
        if info["parent_run_id"] is not None:
            info["parent_run_id"] = str(info["parent_run_id"])
        info["artifacts"] = self.list_artifacts(rid)
        info["inputs"] = self.call("select * from registry.list_inputs(%s)", [rid])
        return info

    def list_artifacts(self, run_id: str | Run) -> list[dict]:
        """The artifacts of a run: path, size_bytes, sha256, uri, created_at."""
        rid = run_id.id if isinstance(run_id, Run) else str(run_id)
        return self.call("select * from registry.list_artifacts(%s)", [rid])

    def metric_history(self, run_id: str, key: str) -> list[dict]:
        return self.call("select * from registry.metric_history(%s, %s)", [str(run_id), key])

    def get_artifact(self, run_id: str, path: str) -> bytes:
        return bytes(self.scalar("select registry.get_artifact(%s, %s)", [str(run_id), path]))

    def search_runs(
        self,
        experiments: Iterable[str] | str | None = None,
        filter: str = "",
        order_by: list[str] | None = None,
        max_results: int = 1000,
    ):
        """Runs as a pandas DataFrame with MLflow's columns: run_id, experiment, status, start_time, end_time,
        params.<key>, metrics.<key>, tags.<key>."""
        import pandas as pd

        rows = self.call(
            "select * from registry.search_runs(%s, %s, %s, %s)",
            [
                as_texts(experiments) if experiments is not None else None,
                filter or "",
                as_texts(order_by) if order_by is not None else None,
                max_results,
            ],
        )
        flat = []
        for r in rows:
            d = {k: r[k] for k in ("run_id", "experiment", "run_name", "status", "user_name", "start_time", "end_time")}
            d["run_id"] = str(d["run_id"])
            for k, v in _metric_values(r["metrics"]).items():
                d[f"metrics.{k}"] = v
            for prefix in ("params", "tags"):
                for k, v in (r[prefix] or {}).items():
                    d[f"{prefix}.{k}"] = v
            flat.append(d)
        cols = ["run_id", "experiment", "run_name", "status", "user_name", "start_time", "end_time"]
        return pd.DataFrame(flat, columns=None if flat else cols)

    # -- registry
    def register_model(
        self,
        name: str,
        model: Any = None,
        run: str | Run | None = None,
        flavor: str | None = None,
        artifact_uri: str | None = None,
        description: str | None = None,
        tags: dict | None = None,
        input_schema: dict | None = None,
        output_schema: dict | None = None,
        metrics: dict | None = None,
        hyperparams: dict | None = None,
        task: str | None = None,
    ) -> dict:
        """Add the next version of registered model ``name`` (created if missing); returns
        {model, version, version_id}."""
        data = fmt = algorithm = None
        if model is not None:
            flavor, fmt, data, algorithm = serialize_model(model, flavor)
        elif artifact_uri is None:
            raise InvalidInput("register_model needs a model object, bytes, or an artifact_uri")
        run_id = run.id if isinstance(run, Run) else (str(run) if run else None)
        rows = self.call(
            "select * from registry.register_model(name => %s, run => %s, artifact => %s, artifact_uri => %s, "
            "flavor => %s, artifact_format => %s, source => 'client', algorithm => %s, task => %s, "
            "input_schema => %s, output_schema => %s, metrics => %s, hyperparams => %s, description => %s, "
            "tags => %s)",
            [
                name,
                run_id,
                data,
                artifact_uri,
                flavor,
                fmt,
                algorithm,
                task,
                Jsonb(input_schema) if input_schema is not None else None,
                Jsonb(output_schema) if output_schema is not None else None,
                jsonb(metrics or {}, "metrics"),
                jsonb(hyperparams or {}, "hyperparams"),
                description,
                _texts(tags, "tags"),
            ],
        )
        return rows[0]

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self.call("select registry.set_alias(%s, %s, %s)", [name, alias, int(version)])

    def delete_alias(self, name: str, alias: str) -> bool:
        return self.scalar("select registry.delete_alias(%s, %s)", [name, alias])

    def get_model_version(self, name: str, alias: str | None = None, version: int | None = None) -> dict:
        ref = _ref(alias, version)
        rows = self.call("select * from registry.get_model_version(%s, %s)", [name, ref])
        return rows[0]

    def list_model_versions(self, name: str) -> list[dict]:
        return self.call("select * from registry.list_model_versions(%s)", [name])

    def load_model(
        self,
        name: str,
        alias: str | None = None,
        version: int | None = None,
        into: Any = None,
        trusted: Iterable[str] = (),
    ) -> Any:
        """The model object of a version (by alias, version number, or the latest): an xgboost Booster or
        sklearn-API model, a lightgbm Booster, a scikit-learn estimator, a torch state_dict (or the module
        ``into``, with the weights loaded), or ml.train's bundle. The artifact's sha256 is checked; pickled
        artifacts are refused; scikit-learn models load only when every type they hold is trusted
        (scikit-learn, numpy, scipy, and ``trusted``)."""
        mv = self.get_model_version(name, alias, version)
        if mv["artifact"] is None:
            raise InvalidInput(
                f"model {name!r} version {mv['version']} has no stored artifact"
                + (f"; it lives at {mv['artifact_uri']}" if mv["artifact_uri"] else "")
            )
        data = bytes(mv["artifact"])
        if hashlib.sha256(data).hexdigest() != mv["artifact_sha256"]:
            raise InvalidInput(
                f"model {name!r} version {mv['version']} fails its sha256 check",
                hint="the stored artifact was changed: do not load it; register the model again",
            )
        return deserialize_model(data, mv["flavor"], mv["artifact_format"], mv["algorithm"], into, trusted)

    # -- lineage and audit
    def lineage(self, kind: str, id: Any, direction: str = "both", max_depth: int = 20) -> list[dict]:
        return self.call("select * from registry.lineage(%s, %s, %s, %s)", [kind, str(id), direction, max_depth])

    def add_lineage(self, src_kind: str, src_id: Any, dst_kind: str, dst_id: Any, relation: str = "derived") -> None:
        self.call(
            "select registry.add_lineage(%s, %s, %s, %s, %s)", [src_kind, str(src_id), dst_kind, str(dst_id), relation]
        )

    def audit_verify(self) -> dict:
        return self.call("select * from audit.verify()")[0]


def _ref(alias: str | None, version: int | None) -> str:
    if alias is not None and version is not None:
        raise InvalidInput("give alias or version, not both")
    if version is not None:
        return str(int(version))
    return alias or "latest"
