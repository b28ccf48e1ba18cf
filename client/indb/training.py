"""Client methods for training and prediction (SQL: ml.train, ml.predict, ml.deploy, ...)."""
from __future__ import annotations

from .client import Base


class TrainingAPI(Base):
    pass
