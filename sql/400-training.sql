-- Training, prediction, explanation and deployment in SQL (issue 5).
-- Tables: migrations/versions/0002 (registry core) and 0005 (training_projects, training_trials,
-- prediction_log). Python: plpython/indb_runtime/{training,preprocess,algorithms,explain,mlp}.py.

create or replace function ml.train(
    project text,
    task text default null,
    relation text default null,
    target text default null,
    algorithm text default 'xgboost',
    hyperparams jsonb default '{}',
    test_size float8 default 0.25,
    test_sampling text default 'random',
    preprocess jsonb default '{}',
    search text default null,
    search_params jsonb default '{}',
    automatic_deploy bool default true,
    materialize bool default false)
returns table (project text, model_id bigint, algorithm text, metrics jsonb, deployed bool)
language plpython3u volatile parallel unsafe
-- no pinned search_path: relation names and queries resolve like in the caller's session (invoker rights)
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import training, errors
r = errors.call(plpy, training.train, plpy, project, task, relation, target, algorithm, hyperparams, test_size,
                test_sampling, preprocess, search, search_params, automatic_deploy, materialize)
return [(r['project'], r['model_id'], r['algorithm'], r['metrics'], r['deployed'])]
$$;
comment on function ml.train(text, text, text, text, text, jsonb, float8, text, jsonb, text, jsonb, bool, bool) is
'train a model for a project on a table, view or SELECT; records run, snapshot, metrics, curves, model; deploys it when it beats the deployed one';

create or replace function ml.deploy(project text, strategy text default 'best_score', model_id bigint default null)
returns table (project text, model_id bigint, strategy text, deployed bool)
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import training, errors
r = errors.call(plpy, training.deploy, plpy, project, strategy, model_id)
return [(r['project'], r['model_id'], r['strategy'], r['deployed'])]
$$;
comment on function ml.deploy(text, text, bigint) is
'deploy a model of a project: best_score, most_recent, rollback (the previously deployed) or a specific model_id';

-- ---- views -----------------------------------------------------------------------------------------------
create or replace view ml.models as
select v.id as model_id, m.name as project, v.version, v.algorithm, v.task, v.metrics, v.hyperparams,
       v.run_id, v.created_at, v.created_by, length(v.artifact) as artifact_bytes,
       (v.id = d.version_id) as deployed
from registry.model_versions v
join registry.registered_models m on m.id = v.model_id
left join lateral (select version_id from registry.deployments where model_id = m.id order by id desc limit 1) d on true
where v.source = 'ml.train';
comment on view ml.models is 'models trained by ml.train, one row per model version';

create or replace view ml.deployments as
select d.id as deployment_id, m.name as project, d.version_id as model_id, v.algorithm, d.strategy,
       d.previous_id, d.deployed_at, d.deployed_by,
       d.id = max(d.id) over (partition by d.model_id) as active
from registry.deployments d
join registry.registered_models m on m.id = d.model_id
join registry.model_versions v on v.id = d.version_id;
comment on view ml.deployments is 'deployment history of ml.train projects; active marks the current one';

create or replace view ml.projects_overview as
select m.name as project, s.task, d.version_id as deployed_model_id, v.algorithm,
       case s.task when 'regression' then 'r2' when 'classification' then 'f1' else 'silhouette' end as key_metric,
       (v.metrics ->> case s.task when 'regression' then 'r2' when 'classification' then 'f1' else 'silhouette' end)::float8
           as score,
       v.created_at as trained_at, ds.row_count as rows, s.relation, s.target,
       (select count(*) from registry.model_versions x where x.model_id = m.id) as models,
       s.log_predictions
from registry.registered_models m
join registry.training_projects s on s.model_id = m.id
left join lateral (select version_id from registry.deployments where model_id = m.id order by id desc limit 1) d on true
left join registry.model_versions v on v.id = d.version_id
left join lateral (select x.row_count from registry.run_inputs ri join registry.datasets x on x.id = ri.dataset_id
                   where ri.run_id = v.run_id order by x.id desc limit 1) ds on true;
comment on view ml.projects_overview is 'one row per ml.train project: deployed model, its key metric, when it was trained, rows';
