-- Registry and experiment tracking (issue 6): experiments, runs, params, metrics (batched), artifacts,
-- datasets, registered models and versions, aliases, lineage, search_runs.
--
-- The registry's tables are catalogs: no indb role may INSERT, UPDATE or DELETE them. The public functions that
-- write (310-registry-api.sql, 320-lineage.sql, and ml.train / ml.deploy through them) are SECURITY DEFINER:
-- they run as indb_owner with search_path pinned, validate every argument, and check the caller's tenant
-- (ml.current_tenant, ml.is_admin); the forced tenant policies filter what they see exactly as for the caller.
-- Reading functions stay SECURITY INVOKER (readers SELECT the tables through the same policies). The helpers
-- here are SECURITY INVOKER: called by a definer they run as indb_owner, called directly they can do no more
-- than the caller's own rights. Values are always passed as parameters.
-- metrics, params, training trials and the prediction log are append-only, and latest_metrics holds only logged
-- points (written by registry.log_batch): triggers for everyone, attached with the audit's in 810-audit-api.sql.
--
-- Lineage node ids (registry.lineage_edges.src_id/dst_id, text): the primary key of the row, as text:
--   dataset -> registry.datasets.id, run -> registry.runs.id, model_version -> registry.model_versions.id,
--   deployment -> registry.deployments.id, feature_view_version / training_set / prediction_log -> the
--   owning issue's primary key. registry.lineage() also accepts a run's uuid and 'model/3', 'model@alias'.
-- Edges written automatically by triggers (whoever writes the rows, ml.train or the client):
--   run_inputs    -> dataset -(input, or input:<context> when not training)-> run
--   model_versions-> run -(produced)-> model_version
--   deployments   -> model_version -(deployed)-> deployment

-- validation helpers
create or replace function registry._check_key(what text, key text) returns void
language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
  if key is null or key = '' then
    raise exception '% name is empty', what using errcode = '22023', hint = format('give every %s a name', what);
  end if;
  if length(key) > 250 then
    raise exception '% name is too long (% characters, at most 250)', what, length(key) using errcode = '22023',
      hint = 'use a shorter name';
  end if;
  if key !~ '^[A-Za-z0-9_./: -]+$' then
    raise exception 'invalid % name %', what, quote_literal(key)
      using errcode = '22023',
            hint = 'names may contain letters, digits, underscores, dashes, periods, spaces, slashes and colons';
  end if;
end $$;

create or replace function registry._check_name(what text, name text) returns void
language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
  if name is null or btrim(name) = '' then
    raise exception '% name is empty', what using errcode = '22023', hint = format('give the %s a name', what);
  end if;
  if length(name) > 256 then
    raise exception '% name is too long (% characters, at most 256)', what, length(name) using errcode = '22023',
      hint = 'use a shorter name';
  end if;
  if name ~ '[[:cntrl:]]' then
    raise exception '% name contains control characters', what using errcode = '22023',
      hint = 'use printable characters only';
  end if;
end $$;

create or replace function registry._run(run uuid, for_write boolean) returns registry.runs
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare r registry.runs;
begin
  if run is null then
    raise exception 'run id is null' using errcode = '22004', hint = 'pass the uuid returned by registry.start_run';
  end if;
  select * into r from registry.runs where run_uuid = run;
  if not found then
    raise exception 'run % not found', run using errcode = '42704',
      hint = 'check the run id and the session''s tenant (setting indb.tenant)';
  end if;
  if for_write then
    if r.status <> 'RUNNING' then
      raise exception 'run % is %, it no longer accepts params, metrics or artifacts', run, r.status
        using errcode = '55000', hint = 'start a new run (tags can still be set on a finished run)';
    end if;
  end if;
  if (for_write is not null) and r.tenant is distinct from ml.current_tenant() and not ml.is_admin() then
    raise exception 'run % is shared (no tenant); a tenant session cannot change it', run using errcode = '42501',
      hint = 'an indb_admin, or a writer acting for no tenant, changes shared runs; or start a run of your own';
  end if;
  return r;
end $$;

create or replace function registry._experiment(name text, create_missing boolean) returns bigint
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare eid bigint;
begin
  perform registry._check_name('experiment', name);
  select id into eid from registry.experiments e where e.name = _experiment.name;
  if eid is null and create_missing then
    insert into registry.experiments(name) values (name)
    on conflict on constraint experiments_name_key do nothing returning id into eid;
    if eid is null then
      select id into eid from registry.experiments e where e.name = _experiment.name;
      if eid is null then
        raise exception 'experiment name % is taken by another tenant', quote_literal(name) using errcode = '42710',
          hint = 'experiment names are unique across tenants; pick another name';
      end if;
    end if;
  end if;
  if eid is null then
    raise exception 'experiment % not found', quote_literal(ml._clip(name)) using errcode = '42704',
      hint = 'check the name and the session''s tenant; registry.start_run creates a missing experiment';
  end if;
  return eid;
end $$;

create or replace function registry._tags_of(tags jsonb) returns jsonb
language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$ select coalesce(jsonb_object_agg(key, case when jsonb_typeof(value) = 'string' then value
                                                  when jsonb_typeof(value) = 'null' then 'null'::jsonb
                                                  else to_jsonb(value::text) end), '{}')
      from jsonb_each(tags) $$;

-- artifacts: bytes in the database (sha256 + size, limit `indb.max_artifact_bytes`, default 64 MiB) or a URI
create or replace function registry.max_artifact_bytes() returns bigint
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$ select coalesce(nullif(current_setting('indb.max_artifact_bytes', true), '')::bigint, 67108864) $$;

-- registered models, versions, aliases
-- lock: the caller is about to change the model (new version, alias, deployment): it must be its tenant's
-- (a shared model is read-only to a tenant session: 42501 naming why), and the row is locked
create or replace function registry._model(name text, lock boolean) returns registry.registered_models
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare m registry.registered_models;
begin
  select * into m from registry.registered_models r where r.name = _model.name;
  if not found then
    raise exception 'registered model % not found', coalesce(quote_literal(ml._clip(name)), 'NULL') using errcode = '42704',
      hint = 'register it first (registry.register_model), and check the session''s tenant';
  end if;
  if lock then
    perform registry._check_writable('registered model ' || quote_literal(name), m.tenant);
    perform 1 from registry.registered_models r where r.id = m.id for update;
  end if;
  return m;
end $$;

-- a row the caller can see but may not change: a shared row (no tenant) seen from a tenant session
create or replace function registry._check_writable(what text, row_tenant text) returns void
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare t text := ml.current_tenant();
begin
  if row_tenant is distinct from t and not ml.is_admin() then
    raise exception '% is shared (it belongs to no tenant); a session acting for tenant % cannot change it', what,
      coalesce(quote_literal(t), 'NULL') using errcode = '42501',
      hint = 'an indb_admin, or a writer acting for no tenant, changes shared objects; or make your own under another name';
  end if;
end $$;

create or replace function registry._version(model text, ref text) returns registry.model_versions
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare m registry.registered_models := registry._model(model, false); mv registry.model_versions;
begin
  if ref is null or ref = '' or ref = 'latest' then
    select * into mv from registry.model_versions where model_id = m.id order by version desc limit 1;
  elsif ref ~ '^v?[0-9]{1,9}$' then
    select * into mv from registry.model_versions where model_id = m.id and version = ltrim(ref, 'v')::int;
  else
    select v.* into mv from registry.aliases a join registry.model_versions v on v.id = a.version_id
     where a.model_id = m.id and a.alias = ref;
    if not found then
      raise exception 'model % has no alias %', quote_literal(model), quote_literal(ref) using errcode = '42704',
        detail = format('aliases: %s', coalesce((select string_agg(alias, ', ' order by alias)
                                                   from registry.aliases where model_id = m.id), 'none')),
        hint = 'name a version by number (''3''), ''latest'', or an alias set with registry.set_alias';
    end if;
  end if;
  if mv.id is null then
    raise exception 'model % has no version %', quote_literal(model), quote_literal(coalesce(ref, 'latest'))
      using errcode = '42704',
            detail = format('versions: %s', coalesce((select string_agg(version::text, ', ' order by version)
                                                        from registry.model_versions where model_id = m.id), 'none')),
            hint = 'name one of its versions, or register one with registry.register_model';
  end if;
  return mv;
end $$;

-- lineage
create or replace function registry._check_kind(kind text) returns void
language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
  if kind is null or kind not in ('dataset', 'feature_view_version', 'training_set', 'run', 'model_version',
                                  'deployment', 'prediction_log') then
    raise exception 'unknown lineage kind %', coalesce(quote_literal(kind), 'NULL') using errcode = '22023',
      hint = 'kinds: dataset, feature_view_version, training_set, run, model_version, deployment, prediction_log';
  end if;
end $$;

-- the node id of (kind, id) as lineage_edges stores it; a run may be named by its uuid, a model version by
-- 'model/3' or 'model@alias'. The node must exist and be visible to the caller (42704 otherwise): nodes of the
-- registry by their row, feature view versions by features.feature_views (prediction logs have no table).
create or replace function registry._node_id(kind text, id text) returns text
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare mname text; ref text; found_it boolean;
begin
  perform registry._check_kind(kind);
  if id is null or id = '' then
    raise exception 'lineage node id is empty' using errcode = '22023',
      hint = 'pass the id of the node, e.g. registry.lineage(''model_version'', ''house/2'')';
  end if;
  if kind = 'run' and id ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
    return (registry._run(id::uuid, null)).id::text;
  end if;
  if kind = 'model_version' and id !~ '^[0-9]+$' then
    if position('@' in id) > 0 then
      mname := split_part(id, '@', 1); ref := substr(id, length(mname) + 2);
    elsif id ~ '/v?[0-9]+$' then
      mname := regexp_replace(id, '/v?[0-9]+$', ''); ref := substring(id from '/v?([0-9]+)$');
    else
      mname := id; ref := 'latest';
    end if;
    return (registry._version(mname, ref)).id::text;
  end if;
  if kind in ('dataset', 'training_set', 'run', 'model_version', 'deployment', 'feature_view_version')
     and id !~ '^[0-9]{1,18}$' then
    raise exception '% id % is not a number', kind, quote_literal(id) using errcode = '22023',
      hint = 'lineage ids are the primary keys of the rows (a run may also be named by its uuid)';
  end if;
  found_it := case kind
    when 'dataset' then exists (select 1 from registry.datasets d where d.id = _node_id.id::bigint)
    when 'training_set' then exists (select 1 from registry.datasets d where d.id = _node_id.id::bigint
                                                                        and d.kind = 'training_set')
    when 'run' then exists (select 1 from registry.runs r where r.id = _node_id.id::bigint)
    when 'model_version' then exists (select 1 from registry.model_versions v where v.id = _node_id.id::bigint)
    when 'deployment' then exists (select 1 from registry.deployments d where d.id = _node_id.id::bigint)
    when 'feature_view_version' then exists (select 1 from features.feature_views v where v.id = _node_id.id::bigint)
    else true   -- prediction_log: no table of its own (registry.lineage asks for an edge)
  end;
  if not found_it then
    raise exception '% % not found', replace(kind, '_', ' '), quote_literal(ml._clip(id)) using errcode = '42704',
      hint = 'check the id and the session''s tenant (setting indb.tenant)';
  end if;
  return id;
end $$;


-- ml.train's materialized snapshot: a copy of exactly the rows a model was trained on, in a table indb_owner
-- owns (the caller's relation is read by ml.train with the caller's rights; only the values come here). The
-- table has a tenant column (the caller's tenant), so the tenant policies and grants of every registry table
-- apply to it. Column types are chosen from a fixed list, never from the caller's catalog.
create or replace function registry._store_snapshot(project text, columns text[], types text[], rows jsonb)
returns regclass
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  name text := format('snapshot_%s_%s', to_char(clock_timestamp(), 'YYYYMMDDHH24MISSUS'),
                      substr(md5(coalesce(project, '') || random()::text), 1, 6));
  rel regclass;
  defs text;
  list text;
  c int;
begin
  perform registry._check_name('project', project);
  if columns is null or types is null or cardinality(columns) <> cardinality(types)
     or cardinality(columns) not between 1 and 1500 then
    raise exception 'a snapshot needs one type per column (1 to 1500 columns)' using errcode = '22023',
      hint = 'train on a relation with 1 to 1500 columns';
  end if;
  for c in 1..cardinality(columns) loop
    perform ml._check_identifier('column', columns[c], 63, '^[^[:cntrl:]]+$');
    if columns[c] = 'tenant' then
      raise exception 'materialize cannot keep a column named tenant' using errcode = '42701',
        hint = 'rename the column in the relation (select tenant as tenant_name, ...)';
    end if;
    if types[c] is null or types[c] not in ('float8', 'boolean', 'text', 'float8[]', 'real[]') then
      raise exception 'invalid snapshot column type %', coalesce(quote_literal(types[c]), 'NULL')
        using errcode = '22023', hint = 'types: float8, boolean, text, float8[], real[]';
    end if;
  end loop;
  if rows is null or jsonb_typeof(rows) <> 'array' then
    raise exception 'snapshot rows must be a JSON array of objects' using errcode = '22023',
      hint = 'pass [{"column": value, ...}, ...]';
  end if;
  select string_agg(format('%I %s', col, typ), ', ' order by o), string_agg(format('%I', col), ', ' order by o)
    into defs, list from unnest(columns, types) with ordinality u(col, typ, o);
  execute format('create table registry.%I (%s, tenant text default ml.current_tenant())', name, defs);
  rel := format('registry.%I', name)::regclass;
  perform ml._apply_table_grants(rel);
  perform ml._apply_tenant_policies(rel);
  execute format('insert into %s (%s) select %s from jsonb_populate_recordset(null::%s, $1)', rel, list, list, rel)
    using rows;
  return rel;
end $$;
comment on function registry._store_snapshot(text, text[], text[], jsonb) is
  'internal (ml.train materialize): keep the rows a model was trained on in a registry table indb_owner owns';

-- registry.metrics has no foreign key to registry.runs (migration 0023): a key checked the run once per point,
-- one query each, a quarter of registry.log_batch's time. These triggers keep the same guarantee per statement.
-- Every run_id of the inserted points is a run, locked FOR KEY SHARE as the key's check locked it (a concurrent
-- delete of that run waits for this transaction, and then finds its points)
create or replace function registry._metrics_runs_exist() returns trigger
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare missing bigint;
begin
  perform 1 from registry.runs r where r.id in (select n.run_id from new_rows n) for key share of r;
  select n.run_id into missing from (select distinct run_id from new_rows) n
   where not exists (select 1 from registry.runs r where r.id = n.run_id) limit 1;
  if missing is not null then
    raise exception 'metric points name run id %, which is not a run', missing using errcode = '23503',
      hint = 'log metrics with registry.log_batch or registry.log_metric, which take the run''s uuid';
  end if;
  return null;
end $$;
drop trigger if exists indb_metrics_run_exists on registry.metrics;
create trigger indb_metrics_run_exists after insert on registry.metrics referencing new table as new_rows
  for each statement execute function registry._metrics_runs_exist();

-- a run with metric points is history: it cannot be deleted (the key cascaded the delete to the points, which
-- their append-only trigger refused). Its id is generated always, so no UPDATE changes it.
create or replace function registry._runs_keep_metrics() returns trigger
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
begin
  if exists (select 1 from registry.metrics m where m.run_id = old.id) then
    raise exception 'run % has metric points in registry.metrics, which is append-only history', old.run_uuid
      using errcode = '23503',
            hint = 'finish or kill the run instead (registry.end_run); its points stay with it';
  end if;
  return old;
end $$;
drop trigger if exists indb_runs_keep_metrics on registry.runs;
create trigger indb_runs_keep_metrics before delete on registry.runs
  for each row execute function registry._runs_keep_metrics();
