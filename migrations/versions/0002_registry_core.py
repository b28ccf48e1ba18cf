"""registry core: experiments, runs, params, metrics, artifacts, datasets, registered models, versions,
aliases, deployments, lineage edges. Shared by ml.train (training) and client tracking (registry).

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        create table registry.experiments (
            id          bigint generated always as identity primary key,
            name        text not null unique,
            description text,
            tags        jsonb not null default '{}',
            tenant      text,
            created_at  timestamptz not null default now(),
            created_by  text not null default session_user
        );

        create table registry.runs (
            id            bigint generated always as identity primary key,
            run_uuid      uuid not null unique default gen_random_uuid(),
            experiment_id bigint not null references registry.experiments(id),
            parent_run_id bigint references registry.runs(id),
            name          text,
            status        text not null default 'RUNNING'
                          check (status in ('RUNNING', 'SCHEDULED', 'FINISHED', 'FAILED', 'KILLED')),
            user_name     text not null default session_user,
            start_time    timestamptz not null default now(),
            end_time      timestamptz,
            tags          jsonb not null default '{}',
            tenant        text
        );
        create index runs_experiment_idx on registry.runs (experiment_id, start_time desc);
        create index runs_parent_idx on registry.runs (parent_run_id) where parent_run_id is not null;

        create table registry.params (
            run_id bigint not null references registry.runs(id) on delete cascade,
            key    text not null,
            value  text,
            primary key (run_id, key)
        );
        create index params_key_value_idx on registry.params (key, value);

        -- every logged point (history); latest_metrics keeps the newest value per key for fast search
        create table registry.metrics (
            run_id bigint not null references registry.runs(id) on delete cascade,
            key    text not null,
            value  float8 not null,
            step   bigint not null default 0,
            ts     timestamptz not null default now()
        );
        create index metrics_run_key_step_idx on registry.metrics (run_id, key, step);

        create table registry.latest_metrics (
            run_id bigint not null references registry.runs(id) on delete cascade,
            key    text not null,
            value  float8 not null,
            step   bigint not null,
            ts     timestamptz not null,
            primary key (run_id, key)
        );
        create index latest_metrics_key_value_idx on registry.latest_metrics (key, value);

        create table registry.artifacts (
            id         bigint generated always as identity primary key,
            run_id     bigint not null references registry.runs(id) on delete cascade,
            path       text not null,
            uri        text,
            content    bytea,
            sha256     text,
            size_bytes bigint,
            created_at timestamptz not null default now(),
            unique (run_id, path),
            check (content is not null or uri is not null)
        );

        -- data sets and snapshots: what a run read (name, digest, profile; optionally a materialized copy)
        create table registry.datasets (
            id           bigint generated always as identity primary key,
            name         text not null,
            digest       text not null,
            source       text,
            kind         text not null default 'dataset',
            row_count    bigint,
            schema       jsonb,
            profile      jsonb,
            materialized regclass,
            created_at   timestamptz not null default now(),
            unique (name, digest)
        );

        create table registry.run_inputs (
            run_id     bigint not null references registry.runs(id) on delete cascade,
            dataset_id bigint not null references registry.datasets(id),
            context    text not null default 'training',
            primary key (run_id, dataset_id, context)
        );

        -- a registered model; ml.train's "project" is a registered model of the same name
        create table registry.registered_models (
            id          bigint generated always as identity primary key,
            name        text not null unique,
            task        text,
            description text,
            tags        jsonb not null default '{}',
            tenant      text,
            created_at  timestamptz not null default now(),
            updated_at  timestamptz not null default now()
        );

        create table registry.model_versions (
            id              bigint generated always as identity primary key,
            model_id        bigint not null references registry.registered_models(id),
            version         int not null,
            run_id          bigint references registry.runs(id),
            source          text not null default 'client' check (source in ('ml.train', 'client')),
            flavor          text,
            algorithm       text,
            task            text,
            artifact        bytea,
            artifact_uri    text,
            artifact_sha256 text,
            input_schema    jsonb,
            output_schema   jsonb,
            metrics         jsonb not null default '{}',
            hyperparams     jsonb not null default '{}',
            description     text,
            tags            jsonb not null default '{}',
            status          text not null default 'READY',
            created_at      timestamptz not null default now(),
            created_by      text not null default session_user,
            unique (model_id, version)
        );
        create index model_versions_run_idx on registry.model_versions (run_id);

        create table registry.aliases (
            model_id   bigint not null references registry.registered_models(id),
            alias      text not null,
            version_id bigint not null references registry.model_versions(id),
            updated_at timestamptz not null default now(),
            primary key (model_id, alias)
        );

        create table registry.deployments (
            id            bigint generated always as identity primary key,
            model_id      bigint not null references registry.registered_models(id),
            version_id    bigint not null references registry.model_versions(id),
            strategy      text not null,
            previous_id   bigint references registry.deployments(id),
            deployed_at   timestamptz not null default now(),
            deployed_by   text not null default session_user
        );
        create index deployments_model_idx on registry.deployments (model_id, id desc);

        -- lineage as typed edges: (kind, id) -> (kind, id); kinds: dataset, feature_view_version, run,
        -- model_version, deployment, prediction_log, training_set
        create table registry.lineage_edges (
            src_kind   text not null,
            src_id     text not null,
            dst_kind   text not null,
            dst_id     text not null,
            relation   text not null,
            created_at timestamptz not null default now(),
            primary key (src_kind, src_id, dst_kind, dst_id, relation)
        );
        create index lineage_dst_idx on registry.lineage_edges (dst_kind, dst_id);
        """
    )


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
