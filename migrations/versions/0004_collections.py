"""vector collections and hybrid search (issue 4): the catalog ml.collections, BM25 statistics, and the
schema `collections` that holds the collection tables (created at run time by ml.create_collection).

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("create schema if not exists collections")
    op.execute(
        "comment on schema collections is 'indb collection tables (one per ml.create_collection); "
        "plain INSERT/UPDATE/DELETE/COPY into them work'"
    )
    op.execute(
        """
        create table ml.collections (
            id             bigint generated always as identity primary key,
            name           text not null unique check (name ~ '^[a-z_][a-z0-9_]{0,47}$'),
            table_schema   text not null default 'collections',
            table_name     text not null,
            model          text,
            dimensions     int not null check (dimensions between 1 and 16000),
            index_type     text not null check (index_type in ('hnsw', 'ivfflat', 'none')),
            metric         text not null check (metric in ('cosine', 'l2', 'inner_product')),
            storage        text not null default 'vector' check (storage in ('vector', 'halfvec')),
            binary_rerank  boolean not null default false,
            partition_by   text check (partition_by in ('tenant', 'time')),
            ts_config      text not null default 'english',
            rls            boolean not null default false,
            options        jsonb not null default '{}',
            tenant         text default current_setting('indb.tenant', true),
            created_at     timestamptz not null default now(),
            created_by     text not null default session_user,
            unique (table_schema, table_name)
        )
        """
    )
    op.execute("comment on table ml.collections is 'one row per vector collection (ml.create_collection)'")
    # BM25 statistics, kept current by the collection's statement-level triggers (transition tables):
    # document count and total length, and document frequency per lexeme. Separate from the catalog so
    # that writes to a collection never touch (or audit) the ml.collections row.
    op.execute(
        """
        create table ml.collection_stats (
            collection_id bigint primary key references ml.collections(id) on delete cascade,
            n_docs        bigint not null default 0,
            total_len     bigint not null default 0,
            updated_at    timestamptz not null default now()
        );
        create table ml.collection_terms (
            collection_id bigint not null references ml.collections(id) on delete cascade,
            term          text not null,
            df            bigint not null,
            primary key (collection_id, term)
        );
        """
    )
    op.execute(
        "comment on table ml.collection_stats is 'BM25 statistics per collection: documents and total token count'"
    )
    op.execute("comment on table ml.collection_terms is 'BM25 document frequency per lexeme per collection'")


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
