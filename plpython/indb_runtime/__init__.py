"""The Python that runs inside PostgreSQL for indb: PL/Python functions import this package."""

from __future__ import annotations

import os
import sys


def _installed_version() -> str:
    """The version of the installed ``indb`` distribution (written only in pyproject.toml), read from the name of
    its dist-info folder: importing importlib.metadata costs ~90 ms, paid by the first call of every new
    connection."""
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.startswith("indb-") and name.endswith(".dist-info"):
                return name[len("indb-") : -len(".dist-info")]
    from importlib.metadata import version

    return version("indb")


# the one version of indb (the client reads the same distribution's metadata)
__version__ = _installed_version()
