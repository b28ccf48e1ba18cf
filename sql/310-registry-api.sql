-- Registry, public API: experiments, runs, params, metrics, artifacts, datasets, registered models,
-- versions and aliases. Values are always passed as parameters.
-- The functions that write are SECURITY DEFINER (the only writers of the registry's tables, ml.train included):
-- each validates its arguments and checks the caller's tenant before it writes (300-registry-int.sql).

-- experiments and runs
create or replace function registry.create_experiment(name text, description text default null,
                                                      tags jsonb default '{}') returns bigint
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare eid bigint;
begin
  perform registry._check_name('experiment', name);
  if tags is not null and jsonb_typeof(tags) <> 'object' then
    raise exception 'tags must be a JSON object, got %', jsonb_typeof(tags) using errcode = '22023',
      hint = 'e.g. tags => ''{"team": "pricing"}''';
  end if;
  insert into registry.experiments(name, description, tags) values (name, description, coalesce(tags, '{}'))
  on conflict on constraint experiments_name_key do nothing returning id into eid;
  if eid is null then
    raise exception 'experiment % already exists', quote_literal(name) using errcode = '42710',
      hint = 'pick another name, or use registry.start_run(experiment => ...) which reuses it';
  end if;
  return eid;
end $$;

create or replace function registry.start_run(experiment text, run_name text default null,
                                              tags jsonb default '{}', parent_run uuid default null)
returns uuid
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare eid bigint; pid bigint; rid uuid; nid bigint;
begin
  if run_name is not null then perform registry._check_name('run', run_name); end if;
  if tags is not null then
    if jsonb_typeof(tags) <> 'object' then
      raise exception 'tags must be a JSON object, got %', jsonb_typeof(tags) using errcode = '22023',
      hint = 'e.g. tags => ''{"team": "pricing"}''';
    end if;
    perform registry._check_key('tag', k) from jsonb_object_keys(tags) k;
  end if;
  if parent_run is not null then
    pid := (registry._run(parent_run, null)).id;
  end if;
  eid := registry._experiment(experiment, true);
  insert into registry.runs(experiment_id, parent_run_id, name, tags)
  values (eid, pid, run_name, registry._tags_of(coalesce(tags, '{}')))
  returning run_uuid, id into rid, nid;
  -- the search mirror (registry.search_runs reads it): params, latest metrics and tags of each run
  insert into registry.run_search(run_id, experiment_id, start_time, tags, tenant)
  select r.id, r.experiment_id, r.start_time, r.tags, r.tenant from registry.runs r where r.id = nid;
  return rid;
end $$;
comment on function registry.start_run(text, text, jsonb, uuid) is
  'start a RUNNING run in an experiment (created if missing); returns its uuid';

create or replace function registry.end_run(run uuid, status text default 'FINISHED') returns void
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare r registry.runs;
begin
  if status not in ('FINISHED', 'FAILED', 'KILLED') then
    raise exception 'invalid end status %', quote_literal(status) using errcode = '22023',
      hint = 'use FINISHED, FAILED or KILLED';
  end if;
  r := registry._run(run, true);
  update registry.runs set status = end_run.status, end_time = clock_timestamp() where id = r.id;
end $$;

-- the one batch entry point: metrics (parallel arrays), params and tags in one statement
create or replace function registry.log_batch(run uuid, metric_keys text[] default null,
                                              metric_values float8[] default null,
                                              metric_steps bigint[] default null,
                                              metric_ts timestamptz[] default null,
                                              params jsonb default null, tags jsonb default null)
returns int
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  r registry.runs;
  nk int := coalesce(cardinality(metric_keys), 0);
  bad text;
  n int := 0;
begin
  r := registry._run(run, nk > 0 or params is not null);
  if coalesce(cardinality(metric_values), 0) <> nk
     or (metric_steps is not null and cardinality(metric_steps) <> nk)
     or (metric_ts is not null and cardinality(metric_ts) <> nk) then
    raise exception 'metric arrays differ in length (keys %, values %, steps %, timestamps %)',
      nk, coalesce(cardinality(metric_values), 0), cardinality(metric_steps), cardinality(metric_ts)
      using errcode = '22023', hint = 'pass one value (and one step/timestamp, if any) per key';
  end if;
  if nk > 0 then
    perform registry._check_key('metric', k) from (select distinct k from unnest(metric_keys) k) d;
    if array_position(metric_values, null) is not null then
      raise exception 'metric value at position % is null', array_position(metric_values, null)
        using errcode = '22004', hint = 'log NaN for a missing value, or leave the point out';
    end if;
    insert into registry.metrics(run_id, key, value, step, ts, tenant)
    select r.id, u.k, u.v, coalesce(u.s, 0), coalesce(u.t, now()), r.tenant
      from unnest(metric_keys, metric_values, metric_steps, metric_ts) as u(k, v, s, t);
    insert into registry.latest_metrics as l (run_id, key, value, step, ts, tenant)
    -- grouped by bytes (collate "C": the same groups as the database collation's equality, sorted without it)
    select distinct on (u.k collate "C") r.id, u.k, u.v, coalesce(u.s, 0), coalesce(u.t, now()), r.tenant
      from unnest(metric_keys, metric_values, metric_steps, metric_ts) with ordinality as u(k, v, s, t, o)
     order by u.k collate "C", coalesce(u.s, 0) desc, coalesce(u.t, now()) desc, u.o desc
    on conflict (run_id, key) do update set value = excluded.value, step = excluded.step, ts = excluded.ts
     where (excluded.step, excluded.ts) >= (l.step, l.ts);
    update registry.run_search s
       set metrics = s.metrics || (select jsonb_object_agg(l.key, l.value) from registry.latest_metrics l
                                    where l.run_id = r.id and l.key = any (metric_keys))
     where s.run_id = r.id;
    n := nk;
  end if;
  if params is not null then
    if jsonb_typeof(params) <> 'object' then
      raise exception 'params must be a JSON object, got %', jsonb_typeof(params) using errcode = '22023',
        hint = 'e.g. params => ''{"max_depth": "6"}''';
    end if;
    perform registry._check_key('param', k) from jsonb_object_keys(params) k;
    select p.key into bad from jsonb_each_text(params) p where length(p.value) > 6000 limit 1;
    if bad is not null then
      raise exception 'value of param % is longer than 6000 characters', quote_literal(bad) using errcode = '22001',
        hint = 'log a long value as an artifact (registry.log_artifact)';
    end if;
    select p.key into bad
      from jsonb_each_text(params) p join registry.params x on x.run_id = r.id and x.key = p.key
     where x.value is distinct from p.value limit 1;
    if bad is not null then
      raise exception 'param % was already logged for run % with a different value', quote_literal(bad), run
        using errcode = '22023', detail = 'params are immutable once logged',
              hint = 'log the new value under another key, or start a new run';
    end if;
    insert into registry.params(run_id, key, value, tenant)
    select r.id, p.key, p.value, r.tenant from jsonb_each_text(params) p
    on conflict (run_id, key) do nothing;
    update registry.run_search s
       set params = s.params || (select jsonb_object_agg(p.key, p.value) from jsonb_each_text(log_batch.params) p)
     where s.run_id = r.id;
    n := n + (select count(*) from jsonb_object_keys(params));
  end if;
  if tags is not null then
    if jsonb_typeof(tags) <> 'object' then
      raise exception 'tags must be a JSON object, got %', jsonb_typeof(tags) using errcode = '22023',
      hint = 'e.g. tags => ''{"team": "pricing"}''';
    end if;
    perform registry._check_key('tag', k) from jsonb_object_keys(tags) k;
    update registry.runs set tags = runs.tags || registry._tags_of(log_batch.tags) where id = r.id;
    update registry.run_search s set tags = x.tags from registry.runs x where x.id = r.id and s.run_id = r.id;
    n := n + (select count(*) from jsonb_object_keys(tags));
  end if;
  return n;
end $$;
comment on function registry.log_batch(uuid, text[], float8[], bigint[], timestamptz[], jsonb, jsonb) is
  'log many metric points (parallel arrays key/value/step/timestamp), params and tags to a RUNNING run in one call';

create or replace function registry.log_metric(run uuid, key text, value float8, step bigint default 0,
                                               ts timestamptz default null) returns void
language sql volatile
set search_path = pg_catalog, pg_temp
as $$ select registry.log_batch(run, array[key], array[value], array[step], array[ts]); $$;

create or replace function registry.log_metrics(run uuid, metrics jsonb, step bigint default 0) returns int
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare bad text;
begin
  if metrics is null or jsonb_typeof(metrics) <> 'object' then
    raise exception 'metrics must be a JSON object of key: number' using errcode = '22023',
      hint = 'e.g. ''{"rmse": 0.52, "r2": 0.81}''';
  end if;
  select key into bad from jsonb_each(metrics) where jsonb_typeof(value) <> 'number' limit 1;
  if bad is not null then
    raise exception 'metric % is not a number', quote_literal(bad) using errcode = '22023',
      hint = 'metrics are numbers; log text as a tag or a param';
  end if;
  return registry.log_batch(run, array(select key from jsonb_each(metrics) order by key),
                            array(select value::text::float8 from jsonb_each(metrics) order by key),
                            array_fill(step, array[(select count(*)::int from jsonb_object_keys(metrics))]));
end $$;

create or replace function registry.log_param(run uuid, key text, value text) returns void
language sql volatile
set search_path = pg_catalog, pg_temp
as $$ select registry.log_batch(run, params => jsonb_build_object(key, value)); $$;

create or replace function registry.log_params(run uuid, params jsonb) returns int
language sql volatile
set search_path = pg_catalog, pg_temp
as $$ select registry.log_batch(run, params => params); $$;

create or replace function registry.set_tag(run uuid, key text, value text) returns void
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  perform registry._check_key('tag', key);
  perform registry.log_batch(run, tags => jsonb_build_object(key, value));
end $$;

-- a run: one row; params, latest metrics and tags are maps (jsonb), its artifacts and inputs are lists of
-- their own (registry.list_artifacts, registry.list_inputs)
create or replace function registry.get_run(run uuid)
returns table(run_id uuid, run_name text, experiment text, status text, user_name text, parent_run_id uuid,
              start_time timestamptz, end_time timestamptz, tenant text, tags jsonb, params jsonb, metrics jsonb)
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare r registry.runs := registry._run(run, null);
begin
  return query
  select r.run_uuid, r.name, (select e.name from registry.experiments e where e.id = r.experiment_id), r.status,
         r.user_name, (select p.run_uuid from registry.runs p where p.id = r.parent_run_id), r.start_time,
         r.end_time, r.tenant, r.tags,
         (select coalesce(jsonb_object_agg(p.key, p.value), '{}') from registry.params p where p.run_id = r.id),
         (select coalesce(jsonb_object_agg(m.key, m.value), '{}') from registry.latest_metrics m where m.run_id = r.id);
end $$;
comment on function registry.get_run(uuid) is
  'a run: name, experiment, status, times, tags, params and latest metrics (artifacts: list_artifacts, inputs: list_inputs)';

create or replace function registry.metric_history(run uuid, key text)
returns table(step bigint, value float8, ts timestamptz)
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare rid bigint := (registry._run(run, null)).id;
begin
  return query select m.step, m.value, m.ts from registry.metrics m
                where m.run_id = rid and m.key = metric_history.key order by m.step, m.ts;
end $$;

-- the internal writer (a PL/pgSQL function cannot return columns named like its arguments)
create or replace function registry._log_artifact(run uuid, path text, content bytea, uri text)
returns table(out_path text, out_sha256 text, out_size_bytes bigint, out_uri text)
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare r registry.runs; lim bigint := registry.max_artifact_bytes(); h text; sz bigint;
begin
  r := registry._run(run, true);
  if path is null or path = '' or path ~ '(^/|(^|/)\.\.(/|$)|[[:cntrl:]])' or length(path) > 1024 then
    raise exception 'invalid artifact path %', coalesce(quote_literal(path), 'NULL') using errcode = '22023',
      hint = 'use a relative path such as model/model.ubj (no leading /, no .., at most 1024 characters)';
  end if;
  if (content is null) = (uri is null) then
    raise exception 'give exactly one of content or uri for artifact %', quote_literal(path) using errcode = '22023',
      hint = 'registry.log_artifact(run, path, content => <bytea>) or registry.log_artifact(run, path, uri => ''s3://...'')';
  end if;
  if content is not null then
    sz := octet_length(content);
    if sz > lim then
      raise exception 'artifact % is % bytes, over the limit of % bytes', quote_literal(path), sz, lim
        using errcode = '54000',
              hint = 'store it elsewhere and log its uri, or raise the limit: SET indb.max_artifact_bytes = <bytes>';
    end if;
    h := encode(sha256(content), 'hex');
  end if;
  insert into registry.artifacts(run_id, path, uri, content, sha256, size_bytes, tenant)
  values (r.id, path, uri, content, h, sz, r.tenant)
  on conflict on constraint artifacts_run_id_path_key do update set uri = excluded.uri, content = excluded.content,
      sha256 = excluded.sha256, size_bytes = excluded.size_bytes, created_at = now();
  return query select path, h, sz, uri;
end $$;
comment on function registry._log_artifact(uuid, text, bytea, text) is 'internal: registry.log_artifact';

create or replace function registry.log_artifact(run uuid, path text, content bytea default null,
                                                 uri text default null)
returns table(path text, sha256 text, size_bytes bigint, uri text)
language sql volatile
set search_path = pg_catalog, pg_temp
as $$ select * from registry._log_artifact(run, path, content, uri) $$;
comment on function registry.log_artifact(uuid, text, bytea, text) is
  'store a file of a RUNNING run: its bytes (sha256 and size recorded, at most indb.max_artifact_bytes) or a uri';

create or replace function registry.get_artifact(run uuid, path text) returns bytea
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare rid bigint := (registry._run(run, null)).id; a registry.artifacts;
begin
  select * into a from registry.artifacts where run_id = rid and artifacts.path = get_artifact.path;
  if not found then
    raise exception 'run % has no artifact %', run, quote_literal(path) using errcode = '42704',
      hint = 'see its artifacts: select * from registry.list_artifacts(run)';
  end if;
  if a.content is null then
    raise exception 'artifact % is stored at %, not in the database', quote_literal(path), a.uri using errcode = '55000',
      hint = 'read it from that uri';
  end if;
  if encode(sha256(a.content), 'hex') <> a.sha256 then
    raise exception 'artifact % of run % fails its sha256 check', quote_literal(path), run using errcode = 'XX001',
      hint = 'the stored bytes were changed: do not use them; log the artifact again';
  end if;
  return a.content;
end $$;

create or replace function registry.list_artifacts(run uuid)
returns table(path text, size_bytes bigint, sha256 text, uri text, created_at timestamptz)
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare rid bigint := (registry._run(run, null)).id;
begin
  return query select a.path, a.size_bytes, a.sha256, a.uri, a.created_at from registry.artifacts a
                where a.run_id = rid order by a.path;
end $$;

-- datasets a run used
create or replace function registry.list_inputs(run uuid)
returns table(dataset_id bigint, dataset text, digest text, context text, kind text, source text, row_count bigint)
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare rid bigint := (registry._run(run, null)).id;
begin
  return query select d.id, d.name, d.digest, i.context, d.kind, d.source, d.row_count
                 from registry.run_inputs i join registry.datasets d on d.id = i.dataset_id
                where i.run_id = rid order by d.name, d.id, i.context;
end $$;
comment on function registry.list_inputs(uuid) is 'the datasets a run used (registry.log_input), with their context';

create or replace function registry.log_input(run uuid, dataset text, digest text,
                                              context text default 'training', source text default null,
                                              row_count bigint default null, schema jsonb default null)
returns bigint
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare r registry.runs; did bigint;
begin
  r := registry._run(run, true);
  perform registry._check_name('dataset', dataset);
  perform registry._check_key('dataset context', context);
  if digest is null or digest !~ '^[A-Za-z0-9:_-]{1,128}$' then
    raise exception 'invalid dataset digest %', coalesce(quote_literal(digest), 'NULL') using errcode = '22023',
      hint = 'a digest is a hash such as a sha256 hex string';
  end if;
  insert into registry.datasets(name, digest, source, row_count, schema)
  values (dataset, digest, source, row_count, schema)
  on conflict on constraint datasets_name_digest_key do nothing returning id into did;
  if did is null then
    select id into did from registry.datasets d where d.name = dataset and d.digest = log_input.digest;
    if did is null then
      raise exception 'dataset %@% belongs to another tenant', dataset, digest using errcode = '42710',
        hint = 'dataset names are unique per digest across tenants; pick another name';
    end if;
  end if;
  insert into registry.run_inputs(run_id, dataset_id, context, tenant) values (r.id, did, context, r.tenant)
  on conflict do nothing;
  return did;
end $$;

-- the trials of a hyperparameter search (ml.train search => grid/random): one row per tried parameter set
create or replace function registry.log_trials(run uuid, metric text, trials jsonb) returns int
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare r registry.runs; n int;
begin
  r := registry._run(run, true);
  perform registry._check_key('metric', metric);
  if trials is null or jsonb_typeof(trials) <> 'array' then
    raise exception 'trials must be a JSON array of {"trial", "params", "score", "score_std", "seconds"}'
      using errcode = '22023', hint = 'e.g. ''[{"trial": 1, "params": {"max_depth": 3}, "score": 0.8}]''';
  end if;
  if exists (select 1 from jsonb_array_elements(trials) t
              where jsonb_typeof(t) <> 'object' or jsonb_typeof(t -> 'trial') is distinct from 'number'
                 or jsonb_typeof(t -> 'params') is distinct from 'object'
                 or coalesce(jsonb_typeof(t -> 'score'), 'null') not in ('number', 'null')
                 or coalesce(jsonb_typeof(t -> 'score_std'), 'null') not in ('number', 'null')
                 or coalesce(jsonb_typeof(t -> 'seconds'), 'null') not in ('number', 'null')) then
    raise exception 'every trial is an object with a number "trial", an object "params" and numbers (or null) '
                    '"score", "score_std", "seconds"' using errcode = '22023',
      hint = 'e.g. ''[{"trial": 1, "params": {"max_depth": 3}, "score": 0.8}]''';
  end if;
  insert into registry.training_trials(run_id, trial, params, metric, score, score_std, seconds, tenant)
  select r.id, (t ->> 'trial')::int, t -> 'params', metric, (t ->> 'score')::float8, (t ->> 'score_std')::float8,
         (t ->> 'seconds')::float8, r.tenant
    from jsonb_array_elements(trials) t;
  get diagnostics n = row_count;
  return n;
end $$;
comment on function registry.log_trials(uuid, text, jsonb) is
  'record the trials of a hyperparameter search (params, cross-validated score of metric) for a RUNNING run';

-- a dataset that is not (yet) a run's input: a snapshot or a feature-store training set. Same (name, digest)
-- is the same dataset: returns its id. materialized names the table holding a kept copy, if any.
create or replace function registry.register_dataset(name text, digest text, kind text default 'dataset',
                                                     source text default null, row_count bigint default null,
                                                     schema jsonb default null, profile jsonb default null,
                                                     materialized regclass default null)
returns bigint
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare did bigint; owner_tenant text;
begin
  perform registry._check_name('dataset', name);
  if digest is null or digest !~ '^[A-Za-z0-9:_-]{1,128}$' then
    raise exception 'invalid dataset digest %', coalesce(quote_literal(digest), 'NULL') using errcode = '22023',
      hint = 'a digest is a hash such as a sha256 hex string';
  end if;
  if kind is not null and kind !~ '^[a-z][a-z_]{0,31}$' then
    raise exception 'invalid dataset kind %', quote_literal(kind) using errcode = '22023',
      hint = 'kinds are short lowercase words: dataset, snapshot, training_set';
  end if;
  if row_count is not null and row_count < 0 then
    raise exception 'row_count must not be negative, got %', row_count using errcode = '22023',
      hint = 'pass the number of rows, or null';
  end if;
  insert into registry.datasets(name, digest, source, kind, row_count, schema, profile, materialized)
  values (name, digest, source, coalesce(kind, 'dataset'), row_count, schema, profile, materialized)
  on conflict on constraint datasets_name_digest_key do nothing
  returning id into did;
  if did is null then   -- it exists: the caller's, a shared one, or another tenant's (row-level security hides it)
    select d.id, d.tenant into did, owner_tenant from registry.datasets d
     where d.name = register_dataset.name and d.digest = register_dataset.digest;
    if did is null then
      raise exception 'dataset %@% belongs to another tenant', name, digest using errcode = '42710',
        hint = 'dataset names are unique per digest across tenants; pick another name';
    end if;
    if materialized is not null then
      perform registry._check_writable(format('dataset %s@%s', name, digest), owner_tenant);
      update registry.datasets d set materialized = register_dataset.materialized
       where d.id = did and d.materialized is distinct from register_dataset.materialized;
    end if;
  end if;
  return did;
end $$;
comment on function registry.register_dataset(text, text, text, text, bigint, jsonb, jsonb, regclass) is
  'record a dataset (snapshot, training set) by name and digest; returns its id (the same for the same name and digest)';

create or replace function registry.register_model(
    name text, run uuid default null, artifact bytea default null, artifact_uri text default null,
    flavor text default null, artifact_format text default null, source text default 'client',
    algorithm text default null, task text default null, input_schema jsonb default null,
    output_schema jsonb default null, metrics jsonb default '{}', hyperparams jsonb default '{}',
    description text default null, tags jsonb default '{}')
returns table(model text, version int, version_id bigint)
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare m registry.registered_models; rid bigint; v int; vid bigint; lim bigint := registry.max_artifact_bytes();
begin
  perform registry._check_name('model', name);
  if source is null or source not in ('client', 'ml.train') then
    raise exception 'invalid source %', coalesce(quote_literal(source), 'NULL') using errcode = '22023',
      hint = 'use client or ml.train';
  end if;
  if flavor !~ '^[A-Za-z0-9_.:-]{1,64}$' or artifact_format !~ '^[A-Za-z0-9_.:-]{1,64}$' then
    raise exception 'invalid flavor or artifact format %', quote_literal(coalesce(flavor, artifact_format))
      using errcode = '22023', hint = 'flavors and formats are short names such as xgboost or xgboost-ubj';
  end if;
  if artifact is not null and octet_length(artifact) > lim then
    raise exception 'model artifact is % bytes, over the limit of % bytes', octet_length(artifact), lim
      using errcode = '54000', hint = 'store it elsewhere and pass artifact_uri, or SET indb.max_artifact_bytes';
  end if;
  if tags is not null then perform registry._check_key('tag', k) from jsonb_object_keys(tags) k; end if;
  if run is not null then
    rid := (registry._run(run, null)).id;
  end if;
  insert into registry.registered_models(name, task, description)
  values (name, task, null) on conflict on constraint registered_models_name_key do nothing;
  begin
    m := registry._model(name, true);
  exception when undefined_object then
    raise exception 'model name % is taken by another tenant', quote_literal(name) using errcode = '42710',
      hint = 'registered model names are unique across tenants; pick another name';
  end;
  select coalesce(max(mv.version), 0) + 1 into v from registry.model_versions mv where mv.model_id = m.id;
  insert into registry.model_versions(model_id, version, run_id, source, flavor, algorithm, task, artifact,
                                      artifact_uri, artifact_sha256, artifact_format, artifact_size,
                                      input_schema, output_schema, metrics, hyperparams, description, tags, tenant)
  values (m.id, v, rid, source, flavor, algorithm, coalesce(task, m.task), artifact, artifact_uri,
          encode(sha256(artifact), 'hex'), artifact_format, octet_length(artifact), input_schema, output_schema,
          coalesce(metrics, '{}'), coalesce(hyperparams, '{}'), description, registry._tags_of(coalesce(tags, '{}')),
          m.tenant)
  returning id into vid;
  update registry.registered_models set updated_at = now(), task = coalesce(registered_models.task, register_model.task)
   where id = m.id;
  return query select m.name, v, vid;
end $$;
comment on function registry.register_model(text, uuid, bytea, text, text, text, text, text, text, jsonb, jsonb, jsonb, jsonb, text, jsonb) is
  'add the next version of a registered model (created if missing); the same kind of version ml.train writes';

create or replace function registry.set_alias(model text, alias text, version int) returns void
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare m registry.registered_models; vid bigint;
begin
  if alias is null or alias !~ '^[A-Za-z][A-Za-z0-9_-]{0,63}$' or alias = 'latest' or alias ~ '^v[0-9]+$' then
    raise exception 'invalid alias %', coalesce(quote_literal(alias), 'NULL') using errcode = '22023',
      hint = 'an alias starts with a letter, has at most 64 letters, digits, _ or -, and is not latest or v<N>';
  end if;
  m := registry._model(model, true);   -- row lock: alias moves of one model are serialized
  select id into vid from registry.model_versions mv where mv.model_id = m.id and mv.version = set_alias.version;
  if vid is null then
    raise exception 'model % has no version %', quote_literal(model), coalesce(version::text, 'NULL')
      using errcode = '42704',
            detail = format('versions: %s', coalesce((select string_agg(mv.version::text, ', ' order by mv.version)
                                                        from registry.model_versions mv where mv.model_id = m.id), 'none')),
            hint = 'the alias was not changed';
  end if;
  insert into registry.aliases as a (model_id, alias, version_id, tenant) values (m.id, alias, vid, m.tenant)
  on conflict on constraint aliases_pkey do update set version_id = excluded.version_id, updated_at = now();
end $$;
comment on function registry.set_alias(text, text, int) is 'point alias (champion, challenger, any name) at a version, atomically';

create or replace function registry.delete_alias(model text, alias text) returns boolean
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare m registry.registered_models := registry._model(model, true);
begin
  delete from registry.aliases a where a.model_id = m.id and a.alias = delete_alias.alias;
  return found;
end $$;

create or replace function registry.get_model_version(model text, ref text default 'latest')
returns table(model_name text, version int, version_id bigint, run_id uuid, source text, flavor text,
              artifact_format text, artifact bytea, artifact_uri text, artifact_sha256 text, algorithm text,
              task text, input_schema jsonb, output_schema jsonb, metrics jsonb, hyperparams jsonb,
              description text, tags jsonb, aliases text[], created_at timestamptz)
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare mv registry.model_versions := registry._version(model, ref);
begin
  if mv.artifact is not null and encode(sha256(mv.artifact), 'hex') is distinct from mv.artifact_sha256 then
    raise exception 'model % version % fails its sha256 check', quote_literal(model), mv.version using errcode = 'XX001',
      hint = 'the stored artifact was changed: do not load it; register the model again';
  end if;
  return query
  select model, mv.version, mv.id, (select r.run_uuid from registry.runs r where r.id = mv.run_id), mv.source, mv.flavor,
         mv.artifact_format, mv.artifact, mv.artifact_uri, mv.artifact_sha256, mv.algorithm, mv.task, mv.input_schema,
         mv.output_schema, mv.metrics, mv.hyperparams, mv.description, mv.tags,
         array(select a.alias from registry.aliases a where a.version_id = mv.id order by a.alias), mv.created_at;
end $$;

create or replace function registry.list_model_versions(model text)
returns table(version int, version_id bigint, source text, flavor text, algorithm text, run_id uuid,
              aliases text[], metrics jsonb, created_at timestamptz)
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare m registry.registered_models := registry._model(model, false);
begin
  return query
  select mv.version, mv.id, mv.source, mv.flavor, mv.algorithm, r.run_uuid,
         array(select a.alias from registry.aliases a where a.version_id = mv.id order by a.alias),
         mv.metrics, mv.created_at
    from registry.model_versions mv left join registry.runs r on r.id = mv.run_id
   where mv.model_id = m.id order by mv.version;
end $$;
