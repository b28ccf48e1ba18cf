"""indb: machine learning inside PostgreSQL - the thin Python client."""

from importlib.metadata import version as _version

# the one version of indb, written in pyproject.toml; `indb install` writes it into ml.version()
__version__ = _version("indb")

from .client import Client, connect
from .errors import (
    Canceled,
    ClusterError,
    ConflictError,
    IndbError,
    InstallError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ReplicaLagError,
    RuntimeFailure,
)

__all__ = [
    "Client",
    "connect",
    "IndbError",
    "ClusterError",
    "InstallError",
    "InvalidInput",
    "NotFound",
    "PermissionDenied",
    "ConflictError",
    "RuntimeFailure",
    "Canceled",
    "ReplicaLagError",
    "__version__",
]
