"""indb: machine learning inside PostgreSQL - the thin Python client."""

__version__ = "0.1.0"

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
    "__version__",
]
