"""The Python that runs inside PostgreSQL for indb: PL/Python functions import this package."""

from importlib.metadata import version as _version

# the one version of indb, written in pyproject.toml (the client reads the same distribution's metadata)
__version__ = _version("indb")
