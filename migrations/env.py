"""Alembic environment for indb: stateful schema changes only (schemas, tables, indexes, partitions).

Functions, triggers, views and grants live in sql/ and are re-applied by `indb install` after the
upgrade, inside the same transaction. The version table lives in the `ml` schema.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, text

config = context.config
VERSION_SCHEMA = "ml"


def _run(connection) -> None:
    connection.execute(text(f"create schema if not exists {VERSION_SCHEMA}"))
    context.configure(
        connection=connection,
        version_table="alembic_version",
        version_table_schema=VERSION_SCHEMA,
        transactional_ddl=True,
        target_metadata=None,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    import psycopg

    dsn = os.environ.get("INDB_DSN") or config.get_main_option("sqlalchemy.url")
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))
    with engine.begin() as conn:
        _run(conn)
