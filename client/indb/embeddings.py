"""Client methods for embeddings and vectorizers (SQL: ml.embed, ml.*vectorizer*)."""
from __future__ import annotations

from .client import Base


class EmbeddingsAPI(Base):
    def embed(self, inputs, model: str = "all-MiniLM-L6-v2"):
        """One text -> numpy vector; a list -> list of vectors (one model call in the server)."""
        if isinstance(inputs, str):
            return as_numpy(self.scalar("select ml.embed(%s, %s::text)", [model, inputs]))
        return [as_numpy(v) for v in self.scalar("select ml.embed(%s, %s::text[])", [model, list(inputs)])]


def as_numpy(v):
    """pgvector's Vector/HalfVector (or None) -> numpy float32 array."""
    if v is None:
        return None
    return v.to_numpy() if hasattr(v, "to_numpy") else v
