"""Client methods for vector collections and search (SQL: ml.create_collection, ml.search, ml.hybrid_search, ...)."""
from __future__ import annotations

from .client import Base


class CollectionsAPI(Base):
    pass
