"""ml.register_embedding_model and ml.chunk: the catalog of embedding models and token-aware chunking."""

from __future__ import annotations

import os

from . import chunking, embedding
from .errors import IndbRuntimeError, invalid


def register(
    plpy, name: str, path: str, dimensions: int | None, max_tokens: int | None, normalize: bool, replace: bool
) -> dict:
    if not name or not name.strip():
        raise invalid("model name must not be empty")
    if not path:
        raise invalid("path must name a local sentence-transformers model folder (or package:<module>)")
    folder = embedding.source_path(path)
    if not os.path.isdir(folder):
        raise IndbRuntimeError(
            "58P01",
            f"model folder {folder} does not exist or the server cannot read it",
            hint="give a folder the database server user can read; nothing is downloaded",
        )
    exists = plpy.execute(plpy.prepare("select 1 from ml.embedding_models where name = $1", ["text"]), [name])
    if exists and not replace:
        raise IndbRuntimeError(
            "42710",
            f'embedding model "{name}" is already registered',
            hint="pass replace => true to point it at another folder",
        )
    if dimensions is None or max_tokens is None:
        spec = embedding.ModelSpec(name, folder, dimensions, max_tokens, normalize)
        model = embedding.load(spec)
        dimensions = dimensions or int(model.get_sentence_embedding_dimension())
        max_tokens = max_tokens or int(model.max_seq_length or 0) or None
    if dimensions <= 0:
        raise invalid(f"dimensions must be positive, got {dimensions}")
    if exists:
        used = plpy.execute(
            plpy.prepare(
                "select d.name from ml.vectorizers d join ml.embedding_models m on m.name = $1 "
                "where (d.model = $1 or d.staging_model = $1) and m.dimensions <> $2",
                ["text", "int4"],
            ),
            [name, dimensions],
        )
        if used:
            raise invalid(
                f'embedding model "{name}" is used by vectorizer(s) '
                + ", ".join(r["name"] for r in used)
                + f" with other dimensions than {dimensions}",
                hint="register the new folder under a new name and use ml.migrate_vectorizer",
            )
    plpy.execute(
        plpy.prepare(
            "insert into ml.embedding_models (name, source_path, dimensions, max_tokens, normalize) "
            "values ($1, $2, $3, $4, $5) "
            "on conflict (name) do update set source_path = excluded.source_path, dimensions = excluded.dimensions, "
            "max_tokens = excluded.max_tokens, normalize = excluded.normalize, registered_at = now(), "
            "registered_by = session_user",
            ["text", "text", "int4", "int4", "bool"],
        ),
        [name, path, dimensions, max_tokens, normalize],
    )
    # drop a cached copy loaded from the old folder
    for key in [k for k in embedding._MODELS if k.split("|")[0] == name]:
        embedding._MODELS.pop(key, None)
    return {
        "name": name,
        "source_path": path,
        "folder": folder,
        "dimensions": dimensions,
        "max_tokens": max_tokens,
        "normalize": normalize,
    }


def chunk(plpy, text: str | None, chunk_size: int, overlap: int, by: str, model: str) -> list[tuple[int, str]]:
    if chunk_size is None:
        raise invalid("chunk_size must not be NULL")
    tok = None
    max_tokens = None
    if by == "tokens":
        spec = embedding.resolve(plpy, model)
        max_tokens = spec.max_tokens
        chunking.validate(chunk_size, overlap, by, max_tokens)
        if text is None:
            return []
        tok = embedding.load(spec).tokenizer
    else:
        chunking.validate(chunk_size, overlap, by)
    return list(enumerate(chunking.chunk(text, chunk_size, overlap or 0, by, tok)))
