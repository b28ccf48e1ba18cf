"""feature store and registry at scale (issue 16)

* point-in-time joins take a created-timestamp cutoff (created_cutoff: only values written at or before the
  entity row's time): features.historical_query, get_historical, create_training_set and their internal
  helpers gain an argument, so the old signatures are dropped here (sql/520-features-read.sql re-creates
  them with the new one).
* registry.run_search: one row per run with its latest params, metrics and tags as jsonb (a mirror of
  registry.params, registry.latest_metrics and registry.runs.tags, kept by registry.start_run and
  registry.log_batch, the registry's only writers of those tables), with a GIN index over params and tags and a
  (start_time, run_id) index: registry.search_runs filters and orders on this one table instead of an EXISTS
  per condition. Backfilled here from the tables it mirrors.

Revision ID: 0018
Revises: 0017
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

OLD_FUNCTIONS = [
    "features.historical_query(text, text[], interval, boolean, text)",
    "features.get_historical(text, text[], interval, boolean, text)",
    "features.create_training_set(text, text, text[], text, interval, text)",
    "features._create_training_set(text, text, text[], text, interval, text)",
    "features._pit_lateral(features.feature_views, text[], text, interval, text)",
    "features._pit_merge(features.feature_views, text[], text, interval, text)",
    # progress has one SQL face, ml._report_progress (sql/030-progress.sql)
    "features._progress(text, text, text, text, bigint, bigint)",
    "features._progress_py(text, text, text, text, bigint, bigint)",
]


def upgrade() -> None:
    for sig in OLD_FUNCTIONS:
        op.execute(f"drop function if exists {sig}")
    op.execute("""
        create table registry.run_search (
            run_id        bigint primary key references registry.runs(id) on delete cascade,
            experiment_id bigint not null,
            start_time    timestamptz not null,
            params        jsonb not null default '{}',
            metrics       jsonb not null default '{}',
            tags          jsonb not null default '{}',
            tenant        text
        );
        insert into registry.run_search(run_id, experiment_id, start_time, params, metrics, tags, tenant)
        select r.id, r.experiment_id, r.start_time,
               coalesce((select jsonb_object_agg(p.key, p.value) from registry.params p where p.run_id = r.id), '{}'),
               coalesce((select jsonb_object_agg(m.key, m.value) from registry.latest_metrics m where m.run_id = r.id),
                        '{}'),
               r.tags, r.tenant
          from registry.runs r;
        create index run_search_params_tags_idx on registry.run_search
            using gin (params jsonb_path_ops, tags jsonb_path_ops);
        create index run_search_time_idx on registry.run_search (start_time desc, run_id desc);
        create index run_search_experiment_idx on registry.run_search (experiment_id, start_time desc, run_id desc);
        analyze registry.run_search;
    """)


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
