"""Client methods for the feature store (SQL: features.*); exposed as client.features."""
from __future__ import annotations

from .client import Base


class FeaturesMixin(Base):
    pass
