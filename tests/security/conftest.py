"""Attacks on indb as its users would make them: LOGIN roles that are not superusers, one per indb role, a
role with no indb rights, and two tenants (acme, globex) with their own writers, readers and apps.

Every test here connects as one of these roles (never as the superuser) to do the attack, and uses the
superuser connection only to look at the outcome.
"""

from __future__ import annotations

import psycopg
import pytest
from helpers import login_name

# name -> (indb group or None, tenant or None)
LOGINS = {
    "app": ("indb_app", None),
    "reader": ("indb_reader", None),
    "writer": ("indb_writer", None),
    "admin": ("indb_admin", None),
    "norights": (None, None),
    "acme_writer": ("indb_writer", "acme"),
    "acme_reader": ("indb_reader", "acme"),
    "acme_app": ("indb_app", "acme"),
    "globex_writer": ("indb_writer", "globex"),
    "globex_reader": ("indb_reader", "globex"),
    "globex_app": ("indb_app", "globex"),
}
TENANTS = ("acme", "globex")


@pytest.fixture(scope="session")
def logins(db_dsn) -> dict[str, str]:
    """DSN of each attacker login (see LOGINS); roles are cluster-wide and reused across test sessions."""
    with psycopg.connect(db_dsn, autocommit=True) as c:
        for t in TENANTS:
            c.execute("select ml.create_tenant(%s)", [t])
        for key, (group, tenant) in LOGINS.items():
            role = login_name(key)
            if not c.execute("select 1 from pg_roles where rolname = %s", [role]).fetchone():
                c.execute(f'create role "{role}" login')
            if group:
                c.execute(f'grant {group} to "{role}"')
            if tenant:
                c.execute("select ml.create_tenant(%s, %s)", [tenant, role])
    return {key: psycopg.conninfo.make_conninfo(db_dsn, user=login_name(key)) for key in LOGINS}


@pytest.fixture
def connect_as(logins):
    """connect_as('acme_writer') -> an autocommit connection as that login; closed after the test."""
    opened: list[psycopg.Connection] = []

    def make(key: str) -> psycopg.Connection:
        from indb.client import register_types

        c = psycopg.connect(logins[key], autocommit=True)
        register_types(c)
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()
