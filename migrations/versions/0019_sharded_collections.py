"""sharded collections on postgres_fdw foreign partitions (issue 15, Build item 4)

* Extensions postgres_fdw (foreign partitions: INSERT/COPY routing, plain SELECT through the parent with
  async_capable) and dblink (remote DDL and ml.add_documents on a shard, and the concurrent per-shard
  ml.search / keyword_search calls, which postgres_fdw cannot make: it scans remote tables, it does not call
  remote functions), both in schema indb_link, which only indb_owner may use (PUBLIC keeps no EXECUTE on
  their functions and no USAGE on the foreign-data wrapper; sql/240-shards.sql grants them to indb_owner, which
  sql/005-roles.sql makes after the migrations on a new database).
* ml.shards: the shards ml.add_shard made (a foreign server of the same name each; the password lives only in
  the server's user mappings, never in a table).
* ml.collections.shards: the shards of a sharded collection (null: a collection on this node).
* ml.create_collection and ml._create_collection gain the argument shards: the old signatures are dropped
  here (sql/210-collections-api.sql re-creates them).

Revision ID: 0019
Revises: 0018
"""

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        create schema if not exists indb_link;
        revoke all on schema indb_link from public;
        create extension if not exists postgres_fdw schema indb_link;
        create extension if not exists dblink schema indb_link;
        revoke all on all functions in schema indb_link from public;
        revoke all on foreign data wrapper postgres_fdw from public;

        create table ml.shards (
          name          text primary key check (name ~ '^[a-z_][a-z0-9_]{0,47}$'),
          host          text not null,
          port          int not null,
          dbname        text not null,
          remote_user   text not null,
          vector_schema text not null default 'public',
          indb_version  text,
          revision      text,
          added_at      timestamptz not null default now(),
          added_by      text not null default ml.caller()
        );
        comment on table ml.shards is
          'shards made by ml.add_shard: one postgres_fdw foreign server of the same name each (no password here)';

        alter table ml.collections add column shards text[];

        drop function if exists ml.create_collection(text, text, text, text, text, jsonb);
        drop function if exists ml._create_collection(text, text, text, text, text, jsonb);
        """
    )


def downgrade() -> None:
    raise NotImplementedError("forward-only migrations")
