"""Fixtures of the shared runtime tests: the real service of the project's cluster, the real model."""

from __future__ import annotations

import pytest
from runtime_helpers import MODEL, connect, wait_for_service


@pytest.fixture(scope="module")
def service(cluster, db_dsn):
    """The service answers and has the model loaded (warm)."""
    cluster.runtime_start()
    wait_for_service(cluster)
    with connect(db_dsn, "shared") as c:
        c.execute("select ml.embed(%s, 'warm-up')", [MODEL])
    return cluster
