"""registry and training (0.2.0): the changes of the trust and core issues to the registry and ml.train

* registry.training_projects remembers who wrote a project's relation (author: it is SQL, run later only
  for its author or when the author is an indb_admin), and what a retrain reuses unless given (test_size,
  test_sampling, preprocess); backfilled from the newest model version and its run's params.
* ml.train and ml.deploy return more columns (ml.train: status, hyperparams, test_size; ml.deploy: status):
  their old definitions are dropped here, sql/400-training.sql creates the new ones.
* the 0.1.0 row forms ml.predict/predict_proba/explain(text, anyelement) are dropped (they lived as
  drop statements in a re-applied file).
* lineage: a deployment had two edges for one fact ('deployed' by trigger, 'deployed_as' by ml.train); the
  hand-written 'deployed_as' edges go, the trigger's stay.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        alter table registry.training_projects
            add column if not exists author        name,
            add column if not exists test_size     float8 check (test_size > 0 and test_size < 1),
            add column if not exists test_sampling text check (test_sampling in ('random', 'last', 'stratified')),
            add column if not exists preprocess    jsonb;
        comment on column registry.training_projects.author is
            'the role that wrote relation: the stored SQL runs only for it, or for anyone when it is an indb_admin';
        comment on column registry.training_projects.test_size is 'the split of the last ml.train; a retrain reuses it';

        update registry.training_projects s
           set author = (select v.created_by from registry.model_versions v
                          where v.model_id = s.model_id order by v.id desc limit 1)::name
         where s.author is null;
        update registry.training_projects s
           set test_size = case when p.value ~ '^0?\\.[0-9]+$' then p.value::float8 end,
               test_sampling = case when q.value in ('random', 'last', 'stratified') then q.value end,
               preprocess = case when pp.value ~ '^[{]' then pp.value::jsonb end
          from (select distinct on (v.model_id) v.model_id, v.run_id from registry.model_versions v
                 where v.run_id is not null order by v.model_id, v.id desc) last_run
          left join registry.params p on p.run_id = last_run.run_id and p.key = 'test_size'
          left join registry.params q on q.run_id = last_run.run_id and q.key = 'test_sampling'
          left join registry.params pp on pp.run_id = last_run.run_id and pp.key = 'preprocess'
         where last_run.model_id = s.model_id and s.test_size is null;

        drop function if exists ml.train(text, text, text, text, text, jsonb, float8, text, jsonb, text, jsonb, bool, bool);
        drop function if exists ml.deploy(text, text, bigint);
        drop function if exists ml.predict(text, anyelement);
        drop function if exists ml.predict_proba(text, anyelement);
        drop function if exists ml.explain(text, anyelement);

        delete from registry.lineage_edges e
         where e.relation = 'deployed_as' and e.src_kind = 'model_version' and e.dst_kind = 'deployment';
        insert into registry.lineage_edges (src_kind, src_id, dst_kind, dst_id, relation, tenant)
        select 'model_version', d.version_id::text, 'deployment', d.id::text, 'deployed', d.tenant
          from registry.deployments d
        on conflict do nothing;
        """
    )


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
