-- Prediction, explanation, evaluation and prediction logging of ml.train projects.

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
