"""Client methods for experiment tracking and the model registry (SQL: registry.*)."""
from __future__ import annotations

from .client import Base


class TrackingAPI(Base):
    pass
