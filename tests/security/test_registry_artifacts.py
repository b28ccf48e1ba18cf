"""Reproduction 2 of the trust issue, and its class: model artifacts that run code when they are loaded.

Closed by three rules: the registry's tables take no INSERT/UPDATE/DELETE from any indb role (only indb's
SECURITY DEFINER functions write them); models are stored and loaded only in formats that hold no code
(indb_runtime.model_store: xgboost UBJ, lightgbm text, torch state_dict with weights_only, skops with a
trusted-type list; a pickle is refused); and the stored sha256 is checked on every load."""

from __future__ import annotations

import io
import json
import os
import pickle
import secrets
import zipfile

import psycopg
import pytest

REL = "select g::float8 as x, (g % 7)::float8 as z, g * 2.0 + (g % 5) as y from generate_series(1, 80) g"
REGISTRY_TABLES = [
    "experiments",
    "runs",
    "params",
    "metrics",
    "latest_metrics",
    "artifacts",
    "datasets",
    "run_inputs",
    "registered_models",
    "model_versions",
    "aliases",
    "deployments",
    "lineage_edges",
    "training_projects",
    "training_trials",
    "prediction_log",
]


def uid(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(3)}"


def train_small(conn, project: str, relation: str = REL) -> int:
    return conn.execute(
        "select model_id from ml.train(%s, 'regression', %s, 'y', 'linear')", [project, relation]
    ).fetchone()[0]


class Evil:
    """Unpickling this runs a shell command: what a writer would have stored in 0.1.0."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("who", ["app", "reader", "writer", "admin", "acme_writer", "globex_app"])
def test_no_indb_role_writes_a_registry_table(connect_as, who):
    c = connect_as(who)
    for t in REGISTRY_TABLES:
        for sql in (
            f"insert into registry.{t} default values",
            f"update registry.{t} set tenant = tenant",
            f"delete from registry.{t}",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(sql)


def test_writer_cannot_swap_a_model_artifact(connect_as):
    w = connect_as("writer")
    p = uid("art")
    vid = train_small(w, p)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        w.execute("update registry.model_versions set artifact = %s where id = %s", [pickle.dumps(1), vid])


def test_a_tampered_artifact_is_refused_at_predict_time(connect_as, sconn):
    w = connect_as("acme_writer")
    p = uid("tamper")
    vid = train_small(w, p)
    warm = connect_as("acme_app")
    good = warm.execute("select ml.predict(%s, array[3.0, 2.0])", [p]).fetchone()[0]
    assert good > 0
    # the superuser (or a disk-level attacker) changes the bytes but not the stored hash
    sconn.execute(
        "update registry.model_versions set artifact = overlay(artifact placing '\\x00'::bytea from 200 for 1) "
        "where id = %s",
        [vid],
    )
    for c in (connect_as("acme_app"), warm):  # a new backend, and one that had the model cached
        with pytest.raises(psycopg.Error, match="fails its sha256 check") as e:
            c.execute("select ml.predict(%s, array[3.0, 2.0])", [p])
        assert e.value.sqlstate == "XX001" and "retrain" in e.value.diag.message_hint


@pytest.mark.parametrize("how", ["legacy-flavor", "bundle-format", "skops-function"])
def test_a_model_that_would_run_code_is_refused_and_runs_nothing(connect_as, sconn, tmp_path, how):
    w = connect_as("writer")
    p = uid("pwn")
    train_small(w, p)
    marker = f"/tmp/indb_pwned_{secrets.token_hex(4)}"
    if how == "skops-function":
        import skops.io as sio
        from sklearn.preprocessing import FunctionTransformer

        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            meta = {"task": "regression", "algorithm": "linear", "format": "indb-bundle-v2"}
            z.writestr("meta.json", json.dumps({**meta, "model_entry": "model.skops", "pre": {}}))
            z.writestr("model.skops", sio.dumps(FunctionTransformer(func=os.system, kw_args={"command": "x"})))
        blob, flavor, fmt = buf.getvalue(), "indb", "indb-bundle-v2"
    else:
        blob = pickle.dumps(Evil(marker))
        flavor, fmt = ("indb-pickle", None) if how == "legacy-flavor" else ("indb", "indb-bundle-v2")
    # a writer may register any bytes through the registry's function, and deploy them
    vid = w.execute(
        "select version_id from registry.register_model(%s, artifact => %s, flavor => %s, artifact_format => %s, "
        "source => 'ml.train', algorithm => 'linear', task => 'regression')",
        [p, blob, flavor, fmt],
    ).fetchone()[0]
    w.execute("select ml.deploy(%s, model_id => %s)", [p, vid])
    for who in ("reader", "app"):
        with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
            connect_as(who).execute("select ml.predict(%s, array[3.0, 2.0])", [p])
        msg = e.value.diag.message_primary
        assert ("pickle" in msg or "does not trust" in msg) and "ml.train" in e.value.diag.message_hint
        assert "Traceback" not in (e.value.diag.context or "")
    assert not os.path.exists(marker)


def test_the_client_refuses_pickles_too(connect_as, logins, sconn):
    import indb

    w = connect_as("writer")
    name = uid("cli")
    marker = f"/tmp/indb_pwned_{secrets.token_hex(4)}"
    w.execute(
        "select registry.register_model(%s, artifact => %s, flavor => 'sklearn', artifact_format => 'sklearn-pickle')",
        [name, pickle.dumps(Evil(marker))],
    )
    with indb.connect(logins["reader"]) as c, pytest.raises(indb.InvalidInput, match="pickle"):
        c.load_model(name)
    assert not os.path.exists(marker)


def test_metrics_params_and_the_prediction_log_are_append_only_even_for_the_owner(sconn, connect_as):
    w = connect_as("writer")
    run = w.execute("select registry.start_run(%s)", [uid("exp")]).fetchone()[0]
    w.execute("select registry.log_batch(%s, array['rmse'], array[0.5], params => '{\"a\": \"1\"}')", [run])
    for t in ("metrics", "params"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            sconn.execute(
                f"update registry.{t} set key = key where run_id = (select id from registry.runs where run_uuid = %s)",
                [run],
            )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            sconn.execute(
                f"delete from registry.{t} where run_id = (select id from registry.runs where run_uuid = %s)", [run]
            )
    sconn.execute("insert into registry.prediction_log (project_id, model_id, inputs_hash) values (-1, -1, 'x')")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        sconn.execute("delete from registry.prediction_log where project_id = -1")
    # latest_metrics moves only through registry.log_batch
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        w.execute("update registry.latest_metrics set value = 0.0001")
    w.execute("select registry.log_metric(%s, 'rmse', 0.4, 1)", [run])
    assert w.execute("select metrics from registry.get_run(%s)", [run]).fetchone()[0] == {"rmse": 0.4}
