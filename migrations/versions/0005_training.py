"""training, prediction, deployment (issue 5)

Builds on 0002's registry: a project is a registry.registered_models row, its models are
registry.model_versions (source 'ml.train', the pickled model + fitted preprocessing in `artifact`),
snapshots are registry.datasets (kind 'snapshot'), deployments are registry.deployments, each ml.train
is a registry.runs row (params, metrics, per-iteration curves as metrics with steps).

Added here:
  registry.training_projects  per-project settings: task, relation, target (for retraining), prediction logging
  registry.training_trials    one row per hyperparameter-search trial (params, CV score)
  registry.prediction_log     time-partitioned (monthly) log of single-row predictions, per project opt-in

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        create table registry.training_projects (
            model_id        bigint primary key references registry.registered_models(id),
            task            text not null check (task in ('regression', 'classification', 'clustering')),
            relation        text,
            target          text,
            log_predictions boolean not null default false,
            created_at      timestamptz not null default now(),
            updated_at      timestamptz not null default now()
        );
        comment on table registry.training_projects is
            'ml.train project settings: what to retrain on, and whether ml.predict logs to registry.prediction_log';

        create table registry.training_trials (
            run_id    bigint not null references registry.runs(id) on delete cascade,
            trial     int not null,
            params    jsonb not null,
            metric    text not null,
            score     float8,
            score_std float8,
            seconds   float8,
            primary key (run_id, trial)
        );
        comment on table registry.training_trials is
            'hyperparameter search (ml.train search => grid/random): every trial with its cross-validated score';

        create table registry.prediction_log (
            logged_at   timestamptz not null default clock_timestamp(),
            project_id  bigint not null,
            model_id    bigint not null,
            inputs_hash text not null,
            prediction  float8,
            latency_ms  float8
        ) partition by range (logged_at);
        create table registry.prediction_log_default partition of registry.prediction_log default;
        create index prediction_log_project_idx on registry.prediction_log (project_id, logged_at);
        comment on table registry.prediction_log is
            'single-row predictions of projects with logging on (ml.set_prediction_logging); monthly partitions '
            'are created by ml.set_prediction_logging / ml.prediction_log_partitions, others land in the default';
        """
    )
    # Model binaries are pickled arrays (a 100-tree random forest on housing: ~145 MB); pglz spends seconds
    # compressing them on every ml.train, lz4 a fraction of that. Only where the server was built with lz4.
    op.execute(
        """
        do $$
        begin
          alter table registry.model_versions alter column artifact set compression lz4;
        exception when feature_not_supported then
          null;
        end $$
        """
    )


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
