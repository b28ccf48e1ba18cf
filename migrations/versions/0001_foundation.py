"""foundation: extensions and the four schemas

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("create extension if not exists vector")
    op.execute("create extension if not exists plpython3u")
    # pg_cron can only live in the database named by cron.database_name, and only when preloaded.
    op.execute(
        """
        do $$
        begin
          if current_setting('shared_preload_libraries', true) ~ '(^|[ ,])pg_cron($|[ ,])'
             and current_setting('cron.database_name', true) = current_database()
             and exists (select 1 from pg_available_extensions where name = 'pg_cron') then
            create extension if not exists pg_cron;
          end if;
        end $$
        """
    )
    for schema, comment in [
        ("ml", "indb public API: embeddings, collections, search, training, prediction"),
        ("registry", "indb experiments, runs, metrics, artifacts, model versions, aliases, deployments, lineage"),
        ("audit", "indb append-only, hash-chained event log"),
        ("features", "indb feature store: entities, feature views, offline and online stores"),
    ]:
        op.execute(f"create schema if not exists {schema}")
        op.execute(f"comment on schema {schema} is '{comment}'")
    op.execute(
        """
        create table ml.installs (
            id           bigint generated always as identity primary key,
            version      text not null,
            revision     text not null,
            venv         text,
            installed_at timestamptz not null default now(),
            installed_by text not null default session_user
        )
        """
    )
    op.execute("comment on table ml.installs is 'one row per `indb install`: SQL version, alembic head, runtime venv'")


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
