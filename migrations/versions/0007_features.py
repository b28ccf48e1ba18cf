"""feature store (issue 7): entities, versioned feature views, online store, materialization runs,
statistics, quarantine, on-demand features.

Each feature view version also owns an offline table ``features.fv_<id>_offline``, range-partitioned by
event time; those tables and their partitions are created by features.create_feature_view and on demand
by materialize/push (sql/500-features.sql), because they depend on the view's definition.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        create table features.entities (
            id          bigint generated always as identity primary key,
            name        text not null unique check (name ~ '^[A-Za-z_][A-Za-z0-9_]*$'),
            join_keys   text[] not null check (cardinality(join_keys) between 1 and 8),
            description text,
            tenant      text default current_setting('indb.tenant', true),
            created_at  timestamptz not null default now(),
            created_by  text not null default session_user
        );
        comment on table features.entities is 'what features describe (user, movie, ...) and the columns that identify one';

        -- one row per version; definitions are immutable (trigger in sql/500-features.sql)
        create table features.feature_views (
            id               bigint generated always as identity primary key,
            name             text not null check (name ~ '^[A-Za-z_][A-Za-z0-9_]*$'),
            version          int not null check (version >= 1),
            entity_id        bigint not null references features.entities(id),
            source           text not null,
            source_sql       text not null,
            timestamp_column text not null,
            join_keys        text[] not null,
            key_types        text[] not null,
            features         jsonb not null,
            checks           jsonb not null default '[]',
            ttl              interval check (ttl is null or ttl > interval '0'),
            partition_by     text not null default 'year' check (partition_by in ('day', 'week', 'month', 'year')),
            offline_table    text not null,
            description      text,
            owner            text,
            tenant           text default current_setting('indb.tenant', true),
            created_at       timestamptz not null default now(),
            created_by       text not null default session_user,
            unique (name, version)
        );
        comment on table features.feature_views is 'versioned, immutable feature view definitions; name@version';

        -- latest value per (view version, entity key); entity_key is the canonical jsonb array text of the keys
        create table features.online_store (
            view_id    bigint not null references features.feature_views(id),
            entity_key text not null,
            values     jsonb not null,
            event_ts   timestamptz not null,
            written_at timestamptz not null default clock_timestamp(),
            primary key (view_id, entity_key)
        ) with (fillfactor = 80);
        comment on table features.online_store is 'online store: latest feature values per entity with their event time';

        create table features.materialization_runs (
            id               bigint generated always as identity primary key,
            view_id          bigint not null references features.feature_views(id),
            kind             text not null check (kind in ('materialize', 'incremental', 'push')),
            start_ts         timestamptz,
            end_ts           timestamptz,
            status           text not null default 'running' check (status in ('running', 'succeeded', 'failed')),
            rows_read        bigint not null default 0,
            rows_written     bigint not null default 0,
            rows_quarantined bigint not null default 0,
            online_updated   bigint not null default 0,
            min_event_ts     timestamptz,
            max_event_ts     timestamptz,
            started_at       timestamptz not null default clock_timestamp(),
            finished_at      timestamptz,
            seconds          float8,
            error            text
        );
        create index materialization_runs_view_idx on features.materialization_runs (view_id, id desc);

        create table features.statistics (
            run_id      bigint not null references features.materialization_runs(id),
            view_id     bigint not null references features.feature_views(id),
            feature     text not null,
            stats       jsonb not null,
            computed_at timestamptz not null default now(),
            primary key (run_id, feature)
        );
        create index statistics_view_idx on features.statistics (view_id, feature, run_id desc);

        -- rows that failed an expectation: kept (not lost), with the reasons
        create table features.quarantine (
            id             bigint generated always as identity primary key,
            view_id        bigint not null references features.feature_views(id),
            run_id         bigint references features.materialization_runs(id),
            entity_key     text,
            event_ts       timestamptz,
            row            jsonb not null,
            failures       text[] not null,
            quarantined_at timestamptz not null default now()
        );
        create index quarantine_view_idx on features.quarantine (view_id, id);

        -- on-demand features: one SQL expression over request fields and stored features, compiled into
        -- one SQL function that get_online and get_historical both call
        create table features.on_demand_features (
            id             bigint generated always as identity primary key,
            name           text not null unique check (name ~ '^[A-Za-z_][A-Za-z0-9_]*$'),
            expression     text not null,
            type           text not null,
            inputs         text[] not null,
            request_fields jsonb not null default '{}',
            function_name  text not null,
            description    text,
            tenant         text default current_setting('indb.tenant', true),
            created_at     timestamptz not null default now(),
            created_by     text not null default session_user
        );
        """
    )


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
