-- search_runs: MLflow filter syntax, parsed in Python (plpython/indb_runtime/search_runs.py) into SQL with
-- $n parameters; the SQL text only ever contains fixed fragments chosen by the parser. SECURITY INVOKER: the
-- runs are read with the caller's rights, through the tenant policies.
create or replace function registry._search_runs_py(experiments text[] default null, filter text default '',
                                                    order_by text[] default null, max_results int default 1000)
returns table(run_id uuid, experiment text, run_name text, status text, user_name text,
              start_time timestamptz, end_time timestamptz, params jsonb, metrics jsonb, tags jsonb)
language plpython3u stable parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.search_runs' not in sys.modules:
    if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import search_runs, errors
return errors.call(plpy, search_runs.execute, plpy, experiments, filter, order_by, max_results)
$$;
select ml._wrap_python('registry.search_runs', 'registry._search_runs_py(text[], text, text[], int)');
comment on function registry.search_runs(text[], text, text[], int) is
  'runs matching an MLflow-style filter (metrics.rmse < 0.5 and params.depth = ''6'' and tags.team = ''x'' and attributes.status = ''FINISHED'')';
