-- indb runtime bootstrap: activates the runtime venv inside PL/Python and reports on it.
-- Stateless: re-applied (create or replace) by `indb install` after every upgrade.
-- Every PL/Python function of indb starts with the same two lines:
--     import sys
--     if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
-- and then imports what it needs from the indb_runtime package (plpython/indb_runtime).

create or replace function ml.version() returns text
language sql immutable parallel safe
as $$ select '@INDB_VERSION@'::text $$;
comment on function ml.version() is 'version of the installed indb SQL objects';

-- The runtime venv is the one `indb install` recorded (ml.installs, which only the installer writes), never a
-- setting: any role may SET a custom setting, and the venv's .pth files and the packages imported from it run
-- as the server's OS user. (Until 0.2.0 it was the setting indb.venv, which let an
-- application role run code of its choosing from any folder the server could read.)
create or replace function ml._runtime_venv() returns text
language sql stable security definer parallel safe
set search_path = pg_catalog, pg_temp
as $$ select i.venv from ml.installs i order by i.id desc limit 1 $$;
comment on function ml._runtime_venv() is 'internal: the runtime venv the newest `indb install` recorded (ml.installs)';

-- The search_path of indb's functions. Every function pins `search_path = pg_catalog, pg_temp` and writes pgvector's
-- types, functions, operators and operator classes with their schema (@VS@, which `indb install` renders as the
-- quoted schema of the vector extension, usually "public"). A function or operator that another role makes in
-- public is then never picked by name resolution inside indb's functions: before 0.2.0 every function also
-- searched that schema, and a writer's public.to_jsonb(registry.experiments), an exact match that beats
-- pg_catalog's polymorphic one, ran as indb_owner in the audit trigger of registry.create_experiment.
-- USER_SQL_PATH: the few SECURITY INVOKER functions that run a caller's own SQL or table name (a feature view's
-- source, an entity query) search that schema as well, after pg_catalog, so that `events` means public.events
-- there as in the caller's session (an on-demand feature's expression is compiled and served without it). They
-- run as their caller, no SECURITY DEFINER function or trigger calls them, and tests/security/test_vector_schema.py
-- checks both.
-- Defence in depth on top: the roles other than superusers and PostgreSQL's own pg_* roles that may create
-- objects in the vector extension's schema ('PUBLIC' when every role may): `indb install` refuses while there
-- is one, an event trigger refuses their functions and operators there, and ml.runtime_info() warns.
create or replace function ml._vector_schema_creators() returns text[]
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select coalesce(case when exists (select 1 from aclexplode(n.nspacl) a where a.grantee = 0 and a.privilege_type = 'CREATE')
                       then array['PUBLIC'] end,
                  array(select r.rolname::text from pg_roles r
                         where not r.rolsuper and r.rolname !~ '^pg_'
                           and r.rolname not in ('indb_owner', 'indb_tenant_manager')
                           and has_schema_privilege(r.oid, n.oid, 'CREATE')
                         order by r.rolname))
    from pg_extension e join pg_namespace n on n.oid = e.extnamespace
   where e.extname = 'vector'
$$;
comment on function ml._vector_schema_creators() is
  'internal: the roles (or PUBLIC) other than superusers that may create objects in the vector extension''s schema, which indb''s functions search';

-- The same hazard made earlier: functions, procedures, aggregates and operators in that schema that belong to a
-- role other than a superuser and to no extension (`indb install` refuses while there is one).
create or replace function ml._vector_schema_foreign_routines() returns text[]
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select array(
    select x.name from (
      select p.oid::regprocedure::text as name, p.proowner as owner, 'pg_proc'::regclass as cls, p.oid
        from pg_proc p where p.pronamespace = n.oid
      union all
      select o.oid::regoperator::text, o.oprowner, 'pg_operator'::regclass, o.oid
        from pg_operator o where o.oprnamespace = n.oid) x
     where not (select r.rolsuper from pg_roles r where r.oid = x.owner)
       and not exists (select 1 from pg_depend d where d.classid = x.cls and d.objid = x.oid and d.deptype = 'e')
     order by x.name)
    from pg_extension e join pg_namespace n on n.oid = e.extnamespace
   where e.extname = 'vector'
$$;
comment on function ml._vector_schema_foreign_routines() is
  'internal: functions and operators in the vector extension''s schema that belong to a non-superuser and to no extension';

-- And while one may (a grant after the install): an event trigger refuses a function, procedure, aggregate or
-- operator that a role other than a superuser creates in that schema or moves into it (ALTER ... SET SCHEMA).
-- Tables and views stay allowed: indb names every relation it reads with its schema (temporary ones pg_temp.).
-- Objects of an extension (CREATE EXTENSION of a trusted one) are its author's, not the role's.
create or replace function ml._guard_vector_schema() returns event_trigger
language plpgsql parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  o record;
begin
  if (select r.rolsuper from pg_roles r where r.rolname = current_user) then
    return;
  end if;
  for o in select c.object_type, c.object_identity, c.schema_name from pg_event_trigger_ddl_commands() c
            where not c.in_extension
              and c.object_type in ('function', 'procedure', 'aggregate', 'operator')
              and c.schema_name = (select n.nspname from pg_extension e join pg_namespace n on n.oid = e.extnamespace
                                    where e.extname = 'vector') loop
    raise exception 'only a superuser may put functions, procedures, aggregates or operators in schema %, which holds pgvector',
                    o.schema_name
      using errcode = '42501',
            detail = format('%s %s: indb''s functions search that schema for pgvector''s types and operators, and '
                            'would call it in place of PostgreSQL''s own where its argument types match better',
                            o.object_type, o.object_identity),
            hint = 'create it in a schema of your own';
  end loop;
end $$;
comment on function ml._guard_vector_schema() is
  'internal: event trigger; refuses functions and operators that a non-superuser puts in the vector extension''s schema';

do $$
begin
  if (select rolsuper from pg_roles where rolname = current_user) then
    drop event trigger if exists indb_guard_vector_schema;
    create event trigger indb_guard_vector_schema on ddl_command_end
      when tag in ('CREATE FUNCTION', 'CREATE PROCEDURE', 'CREATE AGGREGATE', 'CREATE OPERATOR', 'ALTER FUNCTION',
                   'ALTER PROCEDURE', 'ALTER ROUTINE', 'ALTER AGGREGATE', 'ALTER OPERATOR')
      execute function ml._guard_vector_schema();
  else
    raise notice 'indb: not a superuser, the guard of the vector extension''s schema (event trigger) not installed';
  end if;
end $$;

create or replace function ml._activate() returns text
language plpython3u parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
mod = sys.modules.get('indb_runtime.bootstrap')
if mod is not None and mod.STATE.get('activated_at'):
    return mod.STATE['venv']
import os, site
venv = plpy.execute("select ml._runtime_venv() as v")[0]['v']
if not venv:
    plpy.error('indb runtime venv is not configured for this database',
               detail="no `indb install` recorded a runtime venv in this database (ml.installs)",
               hint='run `indb install` (with --venv <the runtime venv> when it is not the one indb runs from)',
               sqlstate='58P01')
pyver = 'python%d.%d' % sys.version_info[:2]
sp = os.path.join(venv, 'lib', pyver, 'site-packages')
if not os.path.isdir(sp):
    plpy.error('indb runtime venv not usable: %s does not exist or the server cannot read it' % sp,
               detail='PL/Python embeds %s (%s); the venv must be made with that interpreter' % (pyver, sys.version.split()[0]),
               hint='make the venv with /usr/bin/python3.11 -m venv and make sure the database server user can read it',
               sqlstate='58P01')
before = list(sys.path)
site.addsitedir(sp)
added = [p for p in sys.path if p not in before]
sys.path[:] = added + before
try:
    from indb_runtime import bootstrap
except ImportError as e:
    plpy.error('cannot import the indb runtime package from %s: %s' % (venv, e),
               hint='install it into the venv: pip install -e plpython', sqlstate='58P01')
try:
    bootstrap.activate(venv, plpy.execute('select ml.version() as v')[0]['v'])
except bootstrap.RuntimeMismatch as e:
    plpy.error(str(e), hint='re-run `indb install` with the venv that holds the matching runtime', sqlstate='55000')
return venv
$$;
comment on function ml._activate() is 'internal: put the runtime venv (ml._runtime_venv()) on sys.path and check versions';

-- ----------------------------------------------------------------------------------------------------------
-- The public face of a PL/Python function. PL/Python reports every error with its exception class in the
-- message ("plpy.Error: ...") and a Python traceback in CONTEXT. indb keeps its Python in internal functions
-- named ..._py and gives each a plpgsql wrapper, generated here from the internal function's own signature,
-- that re-raises any error with the same SQLSTATE, detail and hint, a clean message and no traceback.
-- Errors that are bugs (SQLSTATE 38000, an unexpected Python exception) keep their traceback in the server log.
-- Cancellation (57014) is not caught (plpgsql's OTHERS excludes it), so statement_timeout acts as before.
--   select ml._wrap_python('ml.embed', 'ml._embed_py(text, text)');
create or replace function ml._wrap_python(public_name text, target regprocedure, volatility text default null)
returns regprocedure
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  p pg_proc;
  args text;
  call_args text;
  result text;
  body text;
  settings text;
  vol text;
begin
  select * into p from pg_proc where oid = target;
  if p.prolang <> (select oid from pg_language where lanname = 'plpython3u') then
    raise exception '% is not a PL/Python function', target using errcode = '22023';
  end if;
  args := pg_get_function_arguments(target);
  result := pg_get_function_result(target);
  select string_agg(format('%I => %I', n, n), ', ' order by o) into call_args
    from unnest(p.proargnames[1:p.pronargs]) with ordinality u(n, o);
  vol := coalesce(volatility, case p.provolatile when 'i' then 'immutable' when 's' then 'stable' else 'volatile' end);
  select coalesce(' set ' || string_agg(split_part(c, '=', 1) || ' = ' || substr(c, strpos(c, '=') + 1), ' set '), '')
    into settings from unnest(p.proconfig) c;
  if p.proretset then
    body := format('return query select * from %s(%s);', target::regproc, coalesce(call_args, ''));
  elsif p.prorettype = 'void'::regtype then
    body := format('perform %s(%s); return;', target::regproc, coalesce(call_args, ''));
  else
    body := format('return %s(%s);', target::regproc, coalesce(call_args, ''));
  end if;
  execute format($f$
    create or replace function %s(%s) returns %s
    language plpgsql %s parallel unsafe%s
    as $w$
    declare e_state text; e_msg text; e_detail text; e_hint text; e_ctx text;
    begin
      %s
    exception
    when query_canceled then
      -- a cancel or statement_timeout while Python ran: the same error, without the Python traceback that
      -- came with it as its context (and the "spiexceptions.QueryCanceled: " before its message)
      get stacked diagnostics e_msg = message_text;
      raise exception using errcode = 'query_canceled', message = ml._errmsg(e_msg);
    when others then
      get stacked diagnostics e_state = returned_sqlstate, e_msg = message_text, e_detail = pg_exception_detail,
                              e_hint = pg_exception_hint, e_ctx = pg_exception_context;
      if e_state in ('38000', 'XX000') and e_msg like 'RecursionError:%%' then
        -- JSON (or a filter) nested deeper than Python's recursion limit: bad input, not a bug
        e_state := '54001';
        e_msg := 'the input is nested too deeply to process (JSON values or filters hundreds of levels deep)';
        e_hint := 'nest JSON values less deeply';
      end if;
      if e_state in ('38000', 'XX000') then
        raise log 'indb: %% failed: %%', %L, e_msg using detail = e_ctx;
        e_hint := coalesce(nullif(e_hint, ''), 'this is a bug in indb or its runtime; the server log has the Python traceback');
      end if;
      e_msg := ml._errmsg(e_msg);
      if e_detail = '' and e_hint = '' then
        raise exception using errcode = e_state, message = e_msg;
      elsif e_detail = '' then
        raise exception using errcode = e_state, message = e_msg, hint = e_hint;
      elsif e_hint = '' then
        raise exception using errcode = e_state, message = e_msg, detail = e_detail;
      end if;
      raise exception using errcode = e_state, message = e_msg, detail = e_detail, hint = e_hint;
    end $w$ $f$, public_name, args, result, vol, settings, body, public_name);
  return (public_name || '(' || oidvectortypes(p.proargtypes) || ')')::regprocedure;
end $$;
comment on function ml._wrap_python(text, regprocedure, text) is
  'internal (install time): create the plpgsql wrapper of a PL/Python function, with clean errors (DEVELOPERS.md)';

-- ----------------------------------------------------------------------------------------------------------
-- The runtime's own functions, wrapped like every PL/Python function of indb

create or replace function ml._runtime_check_py() returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import bootstrap, errors
return json.dumps(errors.call(plpy, bootstrap.runtime_info, import_heavy=False))
$$;
select ml._wrap_python('ml.runtime_check', 'ml._runtime_check_py()');
comment on function ml.runtime_check() is 'activates the runtime without heavy imports and returns its versions (used by indb install)';

-- warns (in the result and as a WARNING) when the session skips row-level security: a superuser or a
-- BYPASSRLS role sees every tenant's rows, so applications must not connect as one
create or replace function ml._runtime_info_py() returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import bootstrap, errors
return json.dumps(errors.call(plpy, bootstrap.session_runtime_info, plpy))
$$;
select ml._wrap_python('ml.runtime_info', 'ml._runtime_info_py()');
comment on function ml.runtime_info() is
  'python version, venv, torch/xgboost/sentence-transformers versions, device, threads, loaded models; warnings (a session that skips row-level security)';

create or replace function ml._warmup_py(model text default 'all-MiniLM-L6-v2') returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import warmup, errors
return json.dumps(errors.call(plpy, warmup.warmup, plpy, model))
$$;
select ml._wrap_python('ml._warmup', 'ml._warmup_py(text)');
comment on function ml._warmup(text) is 'internal: ml.warmup''s timings as one jsonb object';

-- One row, seconds per step: a second call in the same backend takes next to nothing
create or replace function ml.warmup(model text default 'all-MiniLM-L6-v2')
returns table(model text, import_torch_s float8, import_xgboost_s float8, import_sentence_transformers_s float8,
              load_model_s float8, total_s float8)
language sql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
  select r.model, r.import_torch_s, r.import_xgboost_s, r.import_sentence_transformers_s, r.load_model_s, r.total_s
    from jsonb_to_record(ml._warmup(warmup.model)) as r(model text, import_torch_s float8, import_xgboost_s float8,
                                                         import_sentence_transformers_s float8, load_model_s float8,
                                                         total_s float8)
$$;
comment on function ml.warmup(text) is
  'import torch, xgboost, sentence-transformers and load the model (NULL: none) in this backend; one row of seconds per step';
