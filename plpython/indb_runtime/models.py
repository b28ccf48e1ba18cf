"""ml.register_embedding_model and ml.chunk: the catalog of embedding models and token-aware chunking.

Registering a model is trusted to administrators (the function is ADMIN_ONLY, and ml._embedding_model_save,
the one writer of ml.embedding_models, checks again): a model folder is code the server's Python loads.
A source is an absolute folder path that holds a sentence-transformers model, or ``package:<module>`` for a
model package of the runtime venv (embedding.package_folder). Whatever is wrong with a path, the error is the
same, so that the function does not tell which server paths exist.
"""

from __future__ import annotations

import os

from . import chunking, embedding, spi
from .errors import IndbRuntimeError, invalid

# files one of which a sentence-transformers (or transformers) model folder holds
MODEL_FILES = ("modules.json", "config_sentence_transformers.json", "config.json")


def _no_folder(path: str) -> IndbRuntimeError:
    return IndbRuntimeError(
        "58P01",
        f"no sentence-transformers model folder the server can read at {path}",
        hint="give the absolute path of a model folder the database server user can read (nothing is downloaded), "
        "or package:<module> of a model package installed in the runtime venv",
    )


def model_folder(path: str) -> str:
    """The folder a registration names, checked; one error for every way a path can be wrong."""
    if path.startswith(embedding.PACKAGE_PREFIX):
        return embedding.package_folder(path[len(embedding.PACKAGE_PREFIX) :])
    if not os.path.isabs(path):
        raise _no_folder(path)
    try:
        ok = (
            os.path.isdir(path)
            and os.access(path, os.R_OK | os.X_OK)
            and any(os.path.isfile(os.path.join(path, f)) for f in MODEL_FILES)
        )
    except OSError:
        ok = False
    if not ok:
        raise _no_folder(path)
    return path


def register(
    plpy: spi.Plpy,
    name: str,
    path: str,
    dimensions: int | None,
    max_tokens: int | None,
    normalize: bool,
    replace: bool,
) -> dict:
    if not name or not name.strip():
        raise invalid(
            "model name must not be empty", hint="name the model as vectorizers and collections will, e.g. 'my-model'"
        )
    if not spi.one(plpy, "select ml.is_admin() as ok")["ok"]:  # type: ignore[index]
        raise IndbRuntimeError(
            "42501",
            "only indb_admin may register embedding models",
            hint="ask an administrator (a member of indb_admin)",
        )
    if not path:
        raise invalid(
            "path must not be empty",
            hint="give the absolute path of a local sentence-transformers model folder the server can read, "
            "or package:<module> of a model package in the runtime venv",
        )
    folder = model_folder(path)
    if dimensions is not None and dimensions <= 0:
        raise invalid(
            f"dimensions must be positive, got {dimensions}", hint="leave dimensions NULL to read them from the model"
        )
    if dimensions is None or max_tokens is None:
        model = embedding.load(embedding.ModelSpec(name, folder, dimensions, max_tokens, normalize))
        dimensions = dimensions or embedding.dimensions(model)
        max_tokens = max_tokens or int(model.max_seq_length or 0) or None
    spi.run(
        plpy,
        "select ml._embedding_model_save($1, $2, $3, $4, $5, $6)",
        ["text", "text", "int4", "int4", "bool", "bool"],
        [name, path, dimensions, max_tokens, normalize, replace],
    )
    embedding.forget(name)  # a copy loaded from the old folder
    return {
        "name": name,
        "source_path": path,
        "folder": folder,
        "dimensions": dimensions,
        "max_tokens": max_tokens,
        "normalize": normalize,
    }


def chunk(
    plpy: spi.Plpy, text: str | None, chunk_size: int, overlap: int, by: str, model: str
) -> list[tuple[int, str]]:
    if chunk_size is None:
        raise invalid("chunk_size must not be NULL", hint="pass the size of a chunk, e.g. chunk_size => 200")
    tok = None
    max_tokens = None
    if by == "tokens":
        spec = embedding.resolve(plpy, model)
        max_tokens = spec.max_tokens
        chunking.validate(chunk_size, overlap, by, max_tokens)
        if text is None:
            return []
        tok = embedding.tokenizer(spec)
    else:
        chunking.validate(chunk_size, overlap, by)
    return list(enumerate(chunking.chunk(text, chunk_size, overlap or 0, by, tok)))
