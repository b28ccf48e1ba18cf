"""indb: machine learning inside PostgreSQL - the thin Python client."""

__version__ = "0.1.0"

from .client import Client, connect  # noqa: E402
from .errors import (  # noqa: E402
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
