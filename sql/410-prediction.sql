-- Prediction, explanation, evaluation and prediction logging of ml.train projects.
--
-- Serving reads the registry through three SECURITY DEFINER functions that indb_app may call
-- (015-privileges.sql, DEFINER_APP): ml._serving_model (which model is deployed), ml._model_artifact (its bytes,
-- loaded by indb_runtime.model_store after the sha256 check, never unpickled) and ml._log_prediction (the
-- append-only prediction log). indb_app reads no registry table itself. Relations (predict_batch, evaluate) are
-- read with the caller's own rights.

-- ---- the serving path ------------------------------------------------------------------------------------
create or replace function ml._serving_model(project text)
returns table (project_id bigint, deployment_id bigint, version_id bigint, stamp text, log_predictions boolean,
               task text)
language plpgsql stable security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare m registry.registered_models; d registry.deployments;
begin
  if project is null then
    raise exception 'project is NULL' using errcode = '22004', hint = 'name the project, e.g. ml.predict(''house'', ...)';
  end if;
  select * into m from registry.registered_models r where r.name = _serving_model.project;
  if not found then
    raise exception 'project "%" does not exist', ml._clip(_serving_model.project) using errcode = '42704',
      hint = 'train it with ml.train; see ml.projects_overview';
  end if;
  select * into d from registry.deployments x where x.model_id = m.id order by x.id desc limit 1;
  if not found then
    raise exception 'project "%" has no deployed model', _serving_model.project using errcode = '55000',
      hint = format('deploy one: select ml.deploy(%L, ''best_score'')', _serving_model.project);
  end if;
  -- the stamp changes with the deployment and with any change of the model's row (a changed artifact is
  -- loaded, and refused by its sha256 check, instead of served from a backend's cache)
  return query
  select m.id, d.id, d.version_id, d.id::text || ':' || v.xmin::text, coalesce(s.log_predictions, false),
         coalesce(m.task, s.task)
    from registry.model_versions v left join registry.training_projects s on s.model_id = m.id
   where v.id = d.version_id;
end $$;
comment on function ml._serving_model(text) is
  'internal (serving): the deployed model of a project, for ml.predict and friends (callable by indb_app)';

create or replace function ml._model_artifact(project text, version_id bigint)
returns table (artifact bytea, artifact_sha256 text, artifact_format text, flavor text)
language plpgsql stable security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare v registry.model_versions;
begin
  select x.* into v from registry.model_versions x join registry.registered_models m on m.id = x.model_id
   where m.name = _model_artifact.project and x.id = _model_artifact.version_id;
  if not found then
    raise exception 'model % does not belong to project "%"', coalesce(version_id::text, 'NULL'),
      coalesce(project, 'NULL') using errcode = '42704',
      hint = 'see select model_id from ml.models where project = ''<project>''';
  end if;
  if v.artifact is null then
    raise exception 'model % of project "%" has no stored artifact', version_id, project using errcode = '55000',
      hint = 'retrain the project with ml.train';
  end if;
  return query select v.artifact, v.artifact_sha256, v.artifact_format, v.flavor;
end $$;
comment on function ml._model_artifact(text, bigint) is
  'internal (serving): the stored bytes of a model version of a project, with its sha256 (callable by indb_app)';

-- the prediction log is append-only: rows get the session's tenant (a tenant's predictions with a shared
-- project are that tenant's), and only projects with logging on take rows
create or replace function ml._log_prediction(project_id bigint, model_id bigint, inputs_hash text,
                                              prediction float8, latency_ms float8) returns void
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
begin
  if pg_catalog.pg_is_in_recovery() then
    -- a hot standby cannot append to the log, and a prediction is never served unlogged
    raise exception 'this server is a read-only replica and the project logs its predictions (ml.set_prediction_logging is on)'
      using errcode = '25006',
      hint = 'predict on the primary (indb.connect(dsn, read_dsn=...) does so by itself), or turn logging off '
             'there: select ml.set_prediction_logging(project, false)';
  end if;
  if not exists (select 1 from registry.training_projects s join registry.model_versions v on v.model_id = s.model_id
                  where s.model_id = _log_prediction.project_id and v.id = _log_prediction.model_id
                    and s.log_predictions) then
    raise exception 'project % does not log predictions of model %', coalesce(project_id::text, 'NULL'),
      coalesce(model_id::text, 'NULL') using errcode = '55000', hint = 'turn logging on: ml.set_prediction_logging';
  end if;
  if inputs_hash is null or inputs_hash !~ '^[0-9a-f]{32,64}$' or latency_ms < 0 then
    raise exception 'invalid prediction log entry' using errcode = '22023',
      hint = 'inputs_hash is an md5 or sha256 hex string, latency_ms is not negative';
  end if;
  insert into registry.prediction_log (project_id, model_id, inputs_hash, prediction, latency_ms)
  values (project_id, model_id, inputs_hash, prediction, latency_ms);
end $$;
comment on function ml._log_prediction(bigint, bigint, text, float8, float8) is
  'internal (serving): append one single-row prediction to registry.prediction_log (callable by indb_app)';

-- ---- prediction ----------------------------------------------------------------------------------------
create or replace function ml._predict_py(project text, features float8[]) returns float8
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import training, errors
return errors.call(plpy, training.predict, plpy, project, features, 'array')
$$;
select ml._wrap_python('ml.predict', 'ml._predict_py(text, float8[])');

create or replace function ml._predict_py(project text, features jsonb) returns float8
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import training, errors
return errors.call(plpy, training.predict, plpy, project, features, 'json')
$$;
select ml._wrap_python('ml.predict', 'ml._predict_py(text, jsonb)');

create or replace function ml._predict_row_py(project text, features jsonb) returns float8
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import training, errors
f = json.loads(features) if features is not None else None
return errors.call(plpy, training.predict, plpy, project, f, 'array' if isinstance(f, list) else 'row')
$$;
select ml._wrap_python('ml._predict_row', 'ml._predict_row_py(text, jsonb)');
comment on function ml._predict_row(text, jsonb) is 'internal: ml.predict(project, row) (extra columns such as ids and the target are ignored)';

-- the row forms take `record` (not anyelement) so that ml.predict(p, array[1, 2]) resolves to float8[]
create or replace function ml.predict(project text, "row" record) returns float8
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$ begin return ml._predict_row(project, to_jsonb("row")); end $$;
comment on function ml.predict(text, record) is 'predict with the deployed model of a project from a table row (features matched by column name)';

create or replace function ml._predict_proba_py(project text, features float8[]) returns float8[]
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import training, errors
return errors.call(plpy, training.predict_proba, plpy, project, features, 'array')
$$;
select ml._wrap_python('ml.predict_proba', 'ml._predict_proba_py(text, float8[])');

create or replace function ml._predict_proba_py(project text, features jsonb) returns float8[]
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import training, errors
return errors.call(plpy, training.predict_proba, plpy, project, features, 'json')
$$;
select ml._wrap_python('ml.predict_proba', 'ml._predict_proba_py(text, jsonb)');

create or replace function ml._predict_proba_row_py(project text, features jsonb) returns float8[]
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import training, errors
f = json.loads(features) if features is not None else None
return errors.call(plpy, training.predict_proba, plpy, project, f, 'array' if isinstance(f, list) else 'row')
$$;
select ml._wrap_python('ml._predict_proba_row', 'ml._predict_proba_row_py(text, jsonb)');

create or replace function ml.predict_proba(project text, "row" record) returns float8[]
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$ begin return ml._predict_proba_row(project, to_jsonb("row")); end $$;

create or replace function ml._predict_batch_py(project text, relation text) returns float8[]
language plpython3u volatile parallel unsafe
-- no pinned search_path: relation names and queries resolve like in the caller's session (invoker rights)
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import training, errors
return errors.call(plpy, training.predict_batch, plpy, project, relation)
$$;
select ml._wrap_python('ml._predict_batch', 'ml._predict_batch_py(text, text)');

create or replace function ml.predict_batch(project text, relation text)
returns table (row_number bigint, prediction float8)
language sql volatile parallel unsafe
as $$ select t.o, t.p from unnest(ml._predict_batch(project, relation)) with ordinality as t(p, o) $$;
comment on function ml.predict_batch(text, text) is
'predictions of the deployed model for every row of a table, view or SELECT, numbered in scan order (1-based)';

-- ---- explanation, evaluation ---------------------------------------------------------------------------
create or replace function ml._explain_py(project text, features jsonb, kind text) returns jsonb
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
select ml._wrap_python('ml._explain', 'ml._explain_py(text, jsonb, text)');

-- ml.explain: one row; contributions is a map keyed by feature column (jsonb), the rest are columns
create or replace function ml._explain_row(e jsonb)
returns table (model_id bigint, algorithm text, prediction float8, output text, base_value float8,
               raw_output float8, explained_class text, contributions jsonb)
language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select (e ->> 'model_id')::bigint, e ->> 'algorithm', (e ->> 'prediction')::float8, e ->> 'output',
         (e ->> 'base_value')::float8, (e ->> 'raw_output')::float8, e ->> 'explained_class', e -> 'contributions'
$$;
comment on function ml._explain_row(jsonb) is 'internal: the columns of ml.explain from ml._explain''s document';

create or replace function ml.explain(project text, features jsonb)
returns table (model_id bigint, algorithm text, prediction float8, output text, base_value float8,
               raw_output float8, explained_class text, contributions jsonb)
language sql volatile parallel unsafe
as $$ select * from ml._explain_row(ml._explain(project, features, 'json')) $$;

create or replace function ml.explain(project text, features float8[])
returns table (model_id bigint, algorithm text, prediction float8, output text, base_value float8,
               raw_output float8, explained_class text, contributions jsonb)
language sql volatile parallel unsafe
as $$ select * from ml._explain_row(ml._explain(project, to_jsonb(features), 'array')) $$;

create or replace function ml.explain(project text, "row" record)
returns table (model_id bigint, algorithm text, prediction float8, output text, base_value float8,
               raw_output float8, explained_class text, contributions jsonb)
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$ begin return query select * from ml._explain_row(ml._explain(project, to_jsonb("row"), 'row')); end $$;
comment on function ml.explain(text, jsonb) is
'per-feature contributions of one prediction of the deployed model (SHAP for tree models, exact for linear ones): '
'base_value + the sum of contributions = raw_output (the prediction for regression, log-odds or probability of '
'explained_class for classification)';
comment on function ml.explain(text, float8[]) is
  'ml.explain with the features as numbers in feature order (all-numeric models)';
comment on function ml.explain(text, record) is
  'ml.explain with the features taken from a table row by column name (other columns are ignored)';

create or replace function ml._feature_importance_py(project text)
returns table (feature text, importance float8, kind text, model_importance float8, model_kind text)
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import training, errors
return errors.call(plpy, training.feature_importance, plpy, project)
$$;
select ml._wrap_python('ml.feature_importance', 'ml._feature_importance_py(text)');
comment on function ml.feature_importance(text) is
'importance of each feature column of the deployed model, most important first. importance (kind mean_abs_shap): '
'the mean |contribution| of the column on the test rows, as ml.explain computes contributions, so both rank '
'columns alike. model_importance (model_kind): the algorithm''s own measure: gain (xgboost, lightgbm: loss '
'reduction of the splits on the column, which favours a column that splits cleanly, such as one category of '
'a one-hot column), impurity (scikit-learn forests) or abs_coefficient (linear models: |coefficient| x the '
'column''s standard deviation). Each sums to 1. Where ml.train stored no test-row importance (models trained '
'before indb 0.2.0, and models too large to explain 20 rows in about a second, such as deep random forests) both '
'columns show the model''s own, and kind says so';

create or replace function ml._evaluate_py(project text, relation text, model_id bigint default null)
returns table (out_model_id bigint, out_rows bigint, out_metrics jsonb)
language plpython3u volatile parallel unsafe
-- no pinned search_path: relation names and queries resolve like in the caller's session (invoker rights)
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import training, errors
return errors.call(plpy, training.evaluate, plpy, project, relation, model_id)
$$;
select ml._wrap_python('ml._evaluate', 'ml._evaluate_py(text, text, bigint)');

-- the public face: result columns named like the arguments they echo (a PL/pgSQL wrapper cannot have that)
create or replace function ml.evaluate(project text, relation text, model_id bigint default null)
returns table (model_id bigint, rows bigint, metrics jsonb)
language sql volatile parallel unsafe
as $$ select * from ml._evaluate(project, relation, model_id) $$;
comment on function ml.evaluate(text, text, bigint) is
'metrics of the deployed (or a given) model on any labelled table, view or SELECT: the model''s id, the rows '
'read and a map of the task''s metrics (regression r2, rmse, mae; classification accuracy, precision, recall, '
'f1, roc_auc, log_loss; clustering silhouette)';

-- ---- prediction logging ----------------------------------------------------------------------------------
-- partitions are made by this SECURITY DEFINER function, so they belong to indb_owner
create or replace function ml.prediction_log_partitions(months_ahead int default 2) returns int
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
    m date := date_trunc('month', now())::date;
    made int := 0;
    name text;
begin
    if months_ahead is null or months_ahead < 0 or months_ahead > 120 then
        raise exception 'months_ahead must be between 0 and 120, got %', coalesce(months_ahead::text, 'NULL')
          using errcode = '22023', hint = 'e.g. ml.prediction_log_partitions(2)';
    end if;
    for i in 0..months_ahead loop
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
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
    m registry.registered_models := ml._project_for_write(project, 'change the prediction logging of');
begin
    if enabled is null then
        raise exception 'enabled is NULL' using errcode = '22004', hint = 'pass true or false';
    end if;
    if not exists (select 1 from registry.training_projects s where s.model_id = m.id) then
        raise exception 'project "%" was not trained with ml.train', project using errcode = '42704',
              hint = 'train it first with ml.train';
    end if;
    update registry.training_projects set log_predictions = enabled, updated_at = now() where model_id = m.id;
    if enabled then
        perform ml.prediction_log_partitions(2);
    end if;
    return enabled;
end $$;
comment on function ml.set_prediction_logging(text, bool) is
'log every single-row ml.predict of a project (model id, inputs hash, prediction, latency, time) to registry.prediction_log';
