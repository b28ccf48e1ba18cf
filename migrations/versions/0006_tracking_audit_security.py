"""tracking, audit log, roles and row-level security (issue 6)

Additive on top of the registry core (0002): nothing there is renamed or dropped.

* tenant columns (default: the session's `indb.tenant` setting) on every tenant-owned registry table,
  so row-level security (sql/900-security.sql) can filter each table on its own column;
* model_versions.artifact_format / artifact_size (how the client and ml.train store model bytes);
* search indexes for registry.search_runs;
* the audit log: audit.events, range-partitioned by month on ts, hash-chained through audit.chain_head;
  audit.anchors keeps the last hash of partitions dropped by audit.apply_retention().

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# registry.current_tenant() is replaced by its full definition in sql/300-registry.sql (setting checked
# against indb_tenant_<name> roles, or derived from role membership); created here because column
# defaults below depend on it.
TENANT_DEFAULT = "registry.current_tenant()"
CURRENT_TENANT_STUB = """
create or replace function registry.current_tenant() returns text
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$ select nullif(current_setting('indb.tenant', true), '') $$
"""

# every registry table whose rows belong to a tenant (experiments, runs, registered_models already have it)
TENANT_TABLES = [
    "experiments",
    "runs",
    "params",
    "metrics",
    "latest_metrics",
    "artifacts",
    "datasets",
    "run_inputs",
    "registered_models",
    "model_versions",
    "aliases",
    "deployments",
    "lineage_edges",
]


def upgrade() -> None:
    op.execute(CURRENT_TENANT_STUB)
    for t in TENANT_TABLES:
        op.execute(f"alter table registry.{t} add column if not exists tenant text")
        op.execute(f"alter table registry.{t} alter column tenant set default {TENANT_DEFAULT}")
    op.execute(
        """
        alter table registry.model_versions
            add column if not exists artifact_format text,
            add column if not exists artifact_size   bigint;
        comment on column registry.model_versions.artifact_format is
            'how artifact bytes decode: xgboost-ubj, xgboost-json, lightgbm-text, sklearn-pickle, torch-save, pickle';

        create index if not exists runs_status_idx on registry.runs (experiment_id, status);
        create index if not exists runs_tags_idx on registry.runs using gin (tags jsonb_path_ops);
        create index if not exists runs_name_idx on registry.runs (name);
        create index if not exists lineage_src_idx on registry.lineage_edges (src_kind, src_id);
        create index if not exists model_versions_model_idx on registry.model_versions (model_id, version desc);
        create index if not exists datasets_digest_idx on registry.datasets (digest);

        -- audit: an append-only, hash-chained event log, partitioned by month
        create table audit.events (
            id           bigint      not null,
            ts           timestamptz not null,
            action       text        not null,   -- INSERT UPDATE DELETE TRUNCATE GRANT REVOKE RETENTION
            object       text        not null,   -- schema.table, or the object a GRANT names
            row_key      jsonb,                  -- primary key of the row
            old_values   jsonb,                  -- whole old row (UPDATE: only the changed columns)
            new_values   jsonb,                  -- whole new row (UPDATE: only the changed columns)
            session_user_name text   not null,
            current_user_name text   not null,
            application_name  text,
            client_addr  inet,
            txid         bigint      not null,
            tenant       text,
            prev_hash    bytea       not null,
            hash         bytea       not null
        ) partition by range (ts);
        create table audit.events_default partition of audit.events default;
        create index events_id_idx on audit.events (id);

        -- one row: the newest link of the chain; every append locks it, so ids are gap-free and in order
        create table audit.chain_head (
            singleton boolean primary key default true check (singleton),
            last_id   bigint not null,
            last_hash bytea  not null,
            prev_hash bytea  not null            -- the link before last_hash (lets one UPDATE append)
        );
        insert into audit.chain_head values (true, 0, '\\x0000000000000000000000000000000000000000000000000000000000000000'::bytea,
                                             '\\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);

        -- where the chain resumes after audit.apply_retention() dropped old partitions
        create table audit.anchors (
            last_dropped_id   bigint primary key,
            last_dropped_hash bytea  not null,
            partitions        text[] not null,
            dropped_at        timestamptz not null default now(),
            dropped_by        text not null default session_user
        );
        """
    )
    # monthly partitions: the previous, current and next two months (audit.ensure_partitions adds more)
    op.execute(
        """
        do $$
        declare m date;
        begin
          for i in -1..2 loop
            m := (date_trunc('month', now()) + make_interval(months => i))::date;
            execute format('create table if not exists audit.%I partition of audit.events for values from (%L) to (%L)',
                           'events_' || to_char(m, 'YYYY_MM'), m, (m + interval '1 month')::date);
          end loop;
        end $$
        """
    )


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
