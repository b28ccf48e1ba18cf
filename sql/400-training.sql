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

-- ---- prediction ----------------------------------------------------------------------------------------
create or replace function ml.predict(project text, features float8[]) returns float8
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import training, errors
return errors.call(plpy, training.predict, plpy, project, features, 'array')
$$;

create or replace function ml.predict(project text, features jsonb) returns float8
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import training, errors
return errors.call(plpy, training.predict, plpy, project, features, 'json')
$$;

create or replace function ml._predict_row(project text, features jsonb) returns float8
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import training, errors
f = json.loads(features) if features is not None else None
return errors.call(plpy, training.predict, plpy, project, f, 'array' if isinstance(f, list) else 'row')
$$;
comment on function ml._predict_row(text, jsonb) is 'internal: ml.predict(project, row) (extra columns such as ids and the target are ignored)';

-- the row forms take `record` (not anyelement) so that ml.predict(p, array[1, 2]) resolves to float8[]
drop function if exists ml.predict(text, anyelement);
drop function if exists ml.predict_proba(text, anyelement);
drop function if exists ml.explain(text, anyelement);

create or replace function ml.predict(project text, "row" record) returns float8
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$ begin return ml._predict_row(project, to_jsonb("row")); end $$;
comment on function ml.predict(text, record) is 'predict with the deployed model of a project from a table row (features matched by column name)';

create or replace function ml.predict_proba(project text, features float8[]) returns float8[]
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import training, errors
return errors.call(plpy, training.predict_proba, plpy, project, features, 'array')
$$;

create or replace function ml.predict_proba(project text, features jsonb) returns float8[]
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import training, errors
return errors.call(plpy, training.predict_proba, plpy, project, features, 'json')
$$;

create or replace function ml._predict_proba_row(project text, features jsonb) returns float8[]
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import training, errors
f = json.loads(features) if features is not None else None
return errors.call(plpy, training.predict_proba, plpy, project, f, 'array' if isinstance(f, list) else 'row')
$$;

create or replace function ml.predict_proba(project text, "row" record) returns float8[]
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$ begin return ml._predict_proba_row(project, to_jsonb("row")); end $$;

create or replace function ml._predict_batch(project text, relation text) returns float8[]
language plpython3u volatile parallel unsafe
-- no pinned search_path: relation names and queries resolve like in the caller's session (invoker rights)
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import training, errors
return errors.call(plpy, training.predict_batch, plpy, project, relation)
$$;

create or replace function ml.predict_batch(project text, relation text)
returns table (row_number bigint, prediction float8)
language sql volatile parallel unsafe
as $$ select t.o, t.p from unnest(ml._predict_batch(project, relation)) with ordinality as t(p, o) $$;
comment on function ml.predict_batch(text, text) is
'predictions of the deployed model for every row of a table, view or SELECT, numbered in scan order (1-based)';

-- ---- explanation, evaluation ---------------------------------------------------------------------------
create or replace function ml._explain(project text, features jsonb, kind text) returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import training, errors
f = json.loads(features) if features is not None else None
how = 'array' if isinstance(f, list) else kind
return errors.call(plpy, training.explain, plpy, project, f, how)
$$;

create or replace function ml.explain(project text, features jsonb) returns jsonb
language sql volatile parallel unsafe
as $$ select ml._explain(project, features, 'json') $$;

create or replace function ml.explain(project text, features float8[]) returns jsonb
language sql volatile parallel unsafe
as $$ select ml._explain(project, to_jsonb(features), 'array') $$;

create or replace function ml.explain(project text, "row" record) returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$ begin return ml._explain(project, to_jsonb("row"), 'row'); end $$;
comment on function ml.explain(text, jsonb) is
'per-feature contributions of one prediction (SHAP for tree models, exact for linear ones); base_value + contributions = raw_output';

create or replace function ml.feature_importance(project text) returns table (feature text, importance float8)
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import training, errors
return errors.call(plpy, training.feature_importance, plpy, project)
$$;
comment on function ml.feature_importance(text) is 'importance of each feature column of the deployed model (sums to 1)';

create or replace function ml.evaluate(project text, relation text, model_id bigint default null) returns jsonb
language plpython3u volatile parallel unsafe
-- no pinned search_path: relation names and queries resolve like in the caller's session (invoker rights)
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import training, errors
return errors.call(plpy, training.evaluate, plpy, project, relation, model_id)
$$;
comment on function ml.evaluate(text, text, bigint) is 'metrics of the deployed (or a given) model on any labelled table, view or SELECT';

-- ---- prediction logging ----------------------------------------------------------------------------------
create or replace function ml.prediction_log_partitions(months_ahead int default 2) returns int
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
    m date := date_trunc('month', now())::date;
    made int := 0;
    name text;
begin
    for i in 0..greatest(months_ahead, 0) loop
        name := 'prediction_log_' || to_char(m, 'YYYYMM');
        if to_regclass('registry.' || name) is null then
            begin
                execute format('create table registry.%I partition of registry.prediction_log for values from (%L) to (%L)',
                               name, m, (m + interval '1 month')::date);
                made := made + 1;
            exception when check_violation then
                -- rows for this month already sit in the default partition: keep them there
                null;
            end;
        end if;
        m := (m + interval '1 month')::date;
    end loop;
    return made;
end $$;
comment on function ml.prediction_log_partitions(int) is 'create monthly partitions of registry.prediction_log (this month and the next ones)';

create or replace function ml.set_prediction_logging(project text, enabled bool default true) returns bool
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
    pid bigint;
begin
    select m.id into pid from registry.registered_models m
      join registry.training_projects s on s.model_id = m.id where m.name = project;
    if pid is null then
        raise exception 'project "%" does not exist', project using errcode = '42704',
              hint = 'train it first with ml.train';
    end if;
    update registry.training_projects set log_predictions = enabled, updated_at = now() where model_id = pid;
    if enabled then
        perform ml.prediction_log_partitions(2);
    end if;
    return enabled;
end $$;
comment on function ml.set_prediction_logging(text, bool) is
'log every single-row ml.predict of a project (model id, inputs hash, prediction, latency, time) to registry.prediction_log';

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
