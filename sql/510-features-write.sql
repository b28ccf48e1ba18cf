-- Feature store, writes: the offline store and its partitions, the online store's tenant, staging,
-- expectations, run records, statistics, materialize, push, schedule.
--
-- materialize and push are SECURITY INVOKER: they read the source (materialize) with the caller's rights and
-- write the stores (data tables) with the caller's writer rights. What they must not do themselves (create
-- tables and partitions, write runs, statistics and quarantine) they hand, as values, to SECURITY DEFINER
-- helpers that check the caller again: _ensure_partitions, _start_run, _quarantine, _finish_run.

create or replace function features._partition_start(unit text, ts timestamptz) returns timestamptz
language sql immutable parallel safe
as $$ select date_trunc(unit, ts, 'UTC') $$;

create or replace function features._partition_next(unit text, p timestamptz) returns timestamptz
language sql immutable parallel safe
as $$ select (p at time zone 'UTC' + ('1 ' || unit)::interval) at time zone 'UTC' $$;

-- the offline store of a new view version: typed, range-partitioned by event time, (keys, event_ts) unique (a
-- later write of the same entity and event time replaces the earlier one); every row carries the view's
-- tenant (default and check). Called by _register_view only (DEFINER_NOBODY).
create or replace function features._create_offline_table(view_id bigint, keys jsonb, feats jsonb, tenant text)
returns regclass
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  tbl text := 'fv_' || view_id || '_offline';
  rel regclass;
begin
  if to_regclass(format('features.%I', tbl)) is not null then
    raise exception 'the offline store of feature view id % exists already', view_id using errcode = '42P07',
      hint = 'views and their stores are created by features.create_feature_view only';
  end if;
  execute format('create table features.%I (%s, event_ts timestamptz not null, written_at timestamptz not null default now(), '
                 '%s, tenant text default %L check (tenant is not distinct from %L), primary key (%s, event_ts)) '
                 'partition by range (event_ts)',
                 tbl,
                 (select string_agg(format('%I %s not null', k->>'name',
                                           features._check_type('join key', k->>'type')), ', ' order by o)
                    from jsonb_array_elements(keys) with ordinality u(k, o)),
                 (select string_agg(format('%I %s', x->>'name', features._check_type('feature', x->>'type')), ', ' order by o)
                    from jsonb_array_elements(feats) with ordinality u(x, o)),
                 tenant, tenant,
                 (select string_agg(format('%I', k->>'name'), ', ' order by o)
                    from jsonb_array_elements(keys) with ordinality u(k, o)));
  rel := format('features.%I', tbl)::regclass;
  execute format('comment on table %s is %L', rel, format('offline store of feature view id %s', view_id));
  perform ml._apply_table_grants(rel);
  perform ml._apply_tenant_policies(rel);
  return rel;
end $$;

-- create the missing partitions of a view's offline table between two event times. Cheap when they exist;
-- otherwise under the view's lock, so concurrent writers of one view do not race to create the same partition.
create or replace function features._ensure_partitions(view_id bigint, lo timestamptz, hi timestamptz)
returns int
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v features.feature_views;
  rel regclass;
  p timestamptz;
  starts timestamptz[] := '{}';
  pname text;
  made int := 0;
begin
  select * into v from features.feature_views x where x.id = view_id;
  if v.id is null then
    raise exception 'feature view id % does not exist', coalesce(view_id::text, 'NULL') using errcode = '42704',
      hint = 'list the views: select id, name, version from features.feature_views';
  end if;
  perform features._assert_may_write(v);
  if lo is null or hi is null then
    return 0;
  end if;
  if not isfinite(lo) or not isfinite(hi) or lo > hi then
    raise exception 'event times must be finite and ordered, got [%, %]', lo, hi using errcode = '22008',
      hint = 'filter out infinite timestamps in the source';
  end if;
  rel := ml._assert_indb_owned(features._offline_rel(v.id));
  p := features._partition_start(v.partition_by, lo);
  while p <= hi loop
    if to_regclass(format('features.%I', features._partition_name(v.id, p))) is null then
      starts := starts || p;
      if cardinality(starts) > 10000 then
        raise exception 'event times from % to % would need more than 10000 new % partitions', lo, hi, v.partition_by
          using errcode = '54000', hint = 'check the event times of the rows (a wrong year?), or write in smaller ranges';
      end if;
    end if;
    p := features._partition_next(v.partition_by, p);
  end loop;
  if cardinality(starts) = 0 then
    return 0;
  end if;
  perform features._lock_view(v.id);
  foreach p in array starts loop
    pname := features._partition_name(v.id, p);
    -- made meanwhile by the session that held the lock before: pg_class read with this statement's snapshot
    -- (to_regclass may answer from a cache that has not seen that commit yet)
    continue when exists (select 1 from pg_class c where c.relname = pname and c.relnamespace = 'features'::regnamespace);
    begin
      execute format('create table features.%I partition of %s for values from (%L) to (%L)',
                     pname, rel, p, features._partition_next(v.partition_by, p));
    exception when duplicate_table then
      continue;   -- a repeatable-read snapshot did not see it: it exists, which is all we need
    end;
    perform ml._apply_table_grants(format('features.%I', pname)::regclass);
    made := made + 1;
  end loop;
  return made;
end $$;

create or replace function features._partition_name(view_id bigint, p timestamptz) returns text
language sql immutable parallel safe
as $$
  select format('fv_%s_p%s%s', view_id, to_char(p at time zone 'UTC', 'YYYYMMDD'),
                case when extract(year from p at time zone 'UTC') < 1 then 'bc' else '' end)
$$;

-- every online row carries the tenant of its view (looked up with the writer's own rights: a view the writer
-- cannot see is refused), so a writer cannot plant rows in another tenant's view or block its upserts
create or replace function features._online_tenant() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  t text;
  seen boolean;
begin
  select v.tenant, true into t, seen from features.feature_views v where v.id = new.view_id;
  if seen is null then
    raise exception 'feature view id % does not exist', new.view_id using errcode = '42704',
      hint = 'write online values with features.push';
  end if;
  new.tenant := t;
  return new;
end $$;

drop trigger if exists online_store_tenant on features.online_store;
create trigger online_store_tenant before insert or update on features.online_store
  for each row execute function features._online_tenant();

-- ---------------------------------------------------------------------------------------------------------
-- run records (SECURITY DEFINER): a run is started, given its quarantined rows and finished by one caller

create or replace function features._start_run(view_id bigint, kind text, start_ts timestamptz default null,
                                               end_ts timestamptz default null)
returns bigint
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v features.feature_views;
  run_id bigint;
begin
  select * into v from features.feature_views x where x.id = view_id;
  if v.id is null then
    raise exception 'feature view id % does not exist', coalesce(view_id::text, 'NULL') using errcode = '42704',
      hint = 'list the views: select id, name, version from features.feature_views';
  end if;
  perform features._assert_may_write(v);
  if kind is null or kind not in ('materialize', 'incremental', 'push') then
    raise exception 'invalid run kind %', coalesce(quote_literal(kind), 'NULL') using errcode = '22023',
      hint = 'runs are materialize, incremental or push, started by features.materialize and features.push';
  end if;
  insert into features.materialization_runs (view_id, kind, start_ts, end_ts, tenant, started_by)
  values (v.id, kind, start_ts, end_ts, v.tenant, ml.caller())
  returning id into run_id;
  return run_id;
end $$;

-- the running run of the caller, locked (internal: used by the definers below)
create or replace function features._own_run(run_id bigint) returns features.materialization_runs
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare r features.materialization_runs;
begin
  select * into r from features.materialization_runs x where x.id = run_id for update;
  if r.id is null then
    raise exception 'materialization run % does not exist', coalesce(run_id::text, 'NULL') using errcode = '42704',
      hint = 'runs are recorded by features.materialize and features.push';
  end if;
  if r.status <> 'running' or r.started_by is distinct from ml.caller()::text then
    raise exception 'materialization run % is not a running run of role %', run_id, ml.caller() using errcode = '42501',
      hint = 'runs are recorded by features.materialize and features.push';
  end if;
  return r;
end $$;

create or replace function features._quarantine(run_id bigint, rows jsonb) returns bigint
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  r features.materialization_runs := features._own_run(run_id);
  n bigint;
begin
  if jsonb_typeof(rows) is distinct from 'array' or exists (
       select 1 from jsonb_array_elements(rows) x
        where jsonb_typeof(x) <> 'object' or jsonb_typeof(x -> 'row') is distinct from 'object'
           or jsonb_typeof(x -> 'failures') is distinct from 'array' or jsonb_array_length(x -> 'failures') = 0) then
    raise exception 'quarantined rows must be an array of {row, failures, entity_key, event_ts}' using errcode = '22023',
      hint = 'rows are quarantined by features.materialize and features.push';
  end if;
  insert into features.quarantine (view_id, run_id, entity_key, event_ts, row, failures, tenant)
  select r.view_id, r.id, x ->> 'entity_key', (x ->> 'event_ts')::timestamptz, x -> 'row',
         array(select jsonb_array_elements_text(x -> 'failures')), r.tenant
    from jsonb_array_elements(rows) x;
  get diagnostics n = row_count;
  return n;
end $$;

create or replace function features._finish_run(run_id bigint, result jsonb, stats jsonb default null) returns void
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  r features.materialization_runs := features._own_run(run_id);
  names text[] := array(select x->>'name' from features.feature_views v, jsonb_array_elements(v.features) x
                         where v.id = r.view_id);
  k text;
begin
  if jsonb_typeof(result) is distinct from 'object' then
    raise exception 'a run result must be a JSON object' using errcode = '22023',
      hint = 'runs are finished by features.materialize and features.push';
  end if;
  foreach k in array array['rows_read', 'rows_written', 'rows_quarantined', 'online_updated'] loop
    if jsonb_typeof(result -> k) is distinct from 'number' or (result ->> k)::numeric < 0 then
      raise exception 'run result % must be a count, got %', k, coalesce(result ->> k, 'nothing') using errcode = '22023',
        hint = 'runs are finished by features.materialize and features.push';
    end if;
  end loop;
  if stats is not null and (jsonb_typeof(stats) <> 'object'
      or exists (select 1 from jsonb_each(stats) s where s.key <> all (names) or jsonb_typeof(s.value) <> 'object')) then
    raise exception 'statistics must be a JSON object {feature: {...}} over the view''s features' using errcode = '22023',
      hint = 'statistics are computed by features.materialize';
  end if;
  update features.materialization_runs
     set status = 'succeeded', rows_read = (result ->> 'rows_read')::bigint,
         rows_written = (result ->> 'rows_written')::bigint, rows_quarantined = (result ->> 'rows_quarantined')::bigint,
         online_updated = (result ->> 'online_updated')::bigint, min_event_ts = (result ->> 'min_event_ts')::timestamptz,
         max_event_ts = (result ->> 'max_event_ts')::timestamptz, finished_at = clock_timestamp(),
         seconds = extract(epoch from clock_timestamp() - started_at)
   where id = r.id;
  insert into features.statistics (run_id, view_id, feature, stats, tenant)
  select r.id, r.view_id, s.key, s.value, r.tenant from jsonb_each(coalesce(stats, '{}')) s;
end $$;

-- ---------------------------------------------------------------------------------------------------------
-- staging: the session's temporary table of typed rows (keys, event_ts, features, _failures, _ord)

-- created once per view layout and reused (rows vanish at commit), so a stream of pushes to one view does no DDL.
-- Its columns come from the catalog (pg_attribute), not from a query on the offline store: no lock is taken on
-- the store before its partitions are ensured (a lock held there made concurrent writers deadlock with the
-- partition creation, which needs the store to itself).
create or replace function features._new_stage(v features.feature_views) returns void
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  rel regclass := features._offline_rel(v.id);
begin
  if to_regclass('pg_temp._fv_stage') is not null then
    if current_setting('indb.fv_stage_view', true) = v.id::text then
      execute 'delete from pg_temp._fv_stage';
      return;
    end if;
    drop table pg_temp._fv_stage;
  end if;
  execute format('create temp table _fv_stage (%s, event_ts timestamptz, %s, _failures text[] not null default ''{}'', '
                 '_ord bigint) on commit delete rows',
                 (select string_agg(format('%I %s', k, format_type(a.atttypid, a.atttypmod)), ', ' order by o)
                    from unnest(v.join_keys) with ordinality u(k, o)
                    join pg_attribute a on a.attrelid = rel and a.attname = u.k and not a.attisdropped),
                 (select string_agg(format('%I %s', x->>'name', format_type(a.atttypid, a.atttypmod)), ', ' order by o)
                    from jsonb_array_elements(v.features) with ordinality u(x, o)
                    join pg_attribute a on a.attrelid = rel and a.attname = x->>'name' and not a.attisdropped));
  create index _fv_stage_ts on pg_temp._fv_stage (event_ts);
  perform set_config('indb.fv_stage_view', v.id::text, false);
end $$;

-- failures array expression: built-in key/time checks + the view's expectations
create or replace function features._failures_sql(v features.feature_views) returns text
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select 'array_remove(array[' ||
         (select string_agg(format('case when %I is null then %L end', k, k || ': missing key'), ', ') from unnest(v.join_keys) k)
         || ', case when event_ts is null then ''event_ts: missing timestamp'' end'
         || ', case when not isfinite(event_ts) then ''event_ts: infinite timestamp'' end'
         || coalesce((select ', ' || string_agg(format('case when not coalesce((%s), false) then %L end', e.predicate,
                                                        e.feature || ': ' || e.rule), ', ')
                        from jsonb_array_elements(v.features) x, features._expectations(x) e), '')
         || ']::text[], null)'
$$;

-- statistics of every feature over the good staged rows: {feature: {...}}. Numeric features: count, nulls,
-- non_finite (NaN, Infinity, -Infinity: float8 values a source may hold), and over the finite values mean, std,
-- min, max, quantiles and a 10-bin histogram between min and max (the max in the last bin; one value: every row
-- in the first). Computed in float8; where float8 overflows (a sum of squares above ~1.8e308, e.g. values of
-- 1e200) again in numeric, which does not (quantiles then by percentile_disc). Statistics never make a
-- materialization fail: before, a NaN or an infinite value, a value of 1e200 or a constant feature of 100000
-- (min = max + 1e-12 in float8) failed it.
create or replace function features._stage_stats(v features.feature_views) returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  f jsonb;
  s jsonb;
  h jsonb;
  t text;
  out jsonb := '{}';
begin
  for f in select x from jsonb_array_elements(v.features) x loop
    if (f->>'type') in ('smallint', 'integer', 'bigint', 'real', 'double precision', 'numeric')
       or (f->>'type') like 'numeric(%' then
      foreach t in array array['float8', 'numeric'] loop
        begin
          -- y: the finite values (abs(NaN) is above Infinity in PostgreSQL's order)
          execute format($q$
            select jsonb_build_object('kind', 'numeric', 'count', count(*), 'nulls', count(*) - count(x),
                   'non_finite', count(x) - count(y), 'mean', avg(y)::float8,
                   'std', case when stddev_samp(y) <= 1.7976931348623157e308 then stddev_samp(y)::float8 end,
                   'min', min(y)::float8, 'max', max(y)::float8,
                   'quantiles', jsonb_build_object('p01', q[1], 'p05', q[2], 'p25', q[3], 'p50', q[4], 'p75', q[5], 'p95', q[6], 'p99', q[7]))
              from (select x, case when abs(x) < 'Infinity' then x::%2$s end as y
                      from (select %1$I::float8 as x from pg_temp._fv_stage where cardinality(_failures) = 0) s0) s,
                   lateral (select percentile_%3$s(array[0.01,0.05,0.25,0.5,0.75,0.95,0.99])
                                     within group (order by case when abs(%1$I::float8) < 'Infinity' then %1$I::float8 end) as q
                              from pg_temp._fv_stage where cardinality(_failures) = 0) qq
             group by q $q$, f->>'name', t, case t when 'float8' then 'cont' else 'disc' end) into s;
          if s is null then
            s := jsonb_build_object('kind', 'numeric', 'count', 0, 'nulls', 0, 'non_finite', 0);
          elsif (s->>'max') is not null then
            execute format($q$
              select jsonb_build_object('edges', (select jsonb_agg(($1::%2$s + ($2::%2$s - $1::%2$s) * i / 10)::float8)
                                                    from generate_series(0, 10) i),
                                        'counts', (select jsonb_agg(coalesce(c, 0) order by b) from generate_series(1, 10) b
                                                     left join (select case when $1 = $2 then 1
                                                                            else least(width_bucket(y, $1::%2$s, $2::%2$s, 10), 10) end as bk,
                                                                       count(*) c
                                                                  from (select %1$I::float8::%2$s as y from pg_temp._fv_stage
                                                                         where cardinality(_failures) = 0 and abs(%1$I::float8) < 'Infinity') s
                                                                 group by 1) hh on hh.bk = b)) $q$,
              f->>'name', t) into h using (s->>'min')::float8, (s->>'max')::float8;
            s := s || jsonb_build_object('histogram', h);
          end if;
          exit;
        exception when numeric_value_out_of_range then
          -- float8 overflowed: the same in numeric (quantiles by percentile_disc, which takes stored values
          -- instead of interpolating between them), where nothing overflows
          s := jsonb_build_object('kind', 'numeric');
        end;
      end loop;
    else
      execute format($q$
        select jsonb_build_object('kind', 'categorical', 'count', count(*), 'nulls', count(*) - count(x),
               'distinct', count(distinct x),
               'top', (select jsonb_agg(jsonb_build_object('value', y, 'count', c)) from
                         (select %I::text as y, count(*) c from pg_temp._fv_stage where cardinality(_failures) = 0 and %I is not null
                           group by 1 order by 2 desc, 1 limit 10) t))
          from (select %I::text as x from pg_temp._fv_stage where cardinality(_failures) = 0) s $q$,
        f->>'name', f->>'name', f->>'name') into s;
    end if;
    out := out || jsonb_build_object(f->>'name', s);
  end loop;
  return out;
end $$;

-- ---------------------------------------------------------------------------------------------------------
-- progress (ml.progress): materialize, materialize_incremental and large pushes report their phase and rows
-- done through ml._report_progress (sql/030): a command starts the entry, no command moves it on, all NULL ends
-- it. Their exception handlers end it too, so a failed or cancelled call leaves nothing in ml.progress.

-- pushes of at least this many rows report their progress (smaller ones stay on the fast path)
create or replace function features._push_progress_rows() returns int
language sql immutable parallel safe
as $$ select 10000 $$;

-- the good staged rows into the offline store, one partition's worth per statement (progress, cancel and
-- statement_timeout act between chunks); returns the rows written
create or replace function features._write_offline(v features.feature_views, lo timestamptz, hi timestamptz,
                                                   progress boolean default false)
returns bigint
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  keycols text := (select string_agg(format('%I', k), ', ') from unnest(v.join_keys) k);
  featcols text := (select string_agg(format('%I', x->>'name'), ', ') from jsonb_array_elements(v.features) x);
  sql text;
  p timestamptz;
  nxt timestamptz;
  starts timestamptz[];
  n bigint := 0;
  c bigint;
  staged bigint := 0;
  reported timestamptz := clock_timestamp();
begin
  -- the periods the rows fall in, and only those: a row of a wrong year (9999, 1900) made one partition for each
  -- period between it and the others, and as many inserts (thousands: "out of shared memory" when their locks
  -- filled the lock table)
  select array_agg(x.p order by x.p) into starts
    from (select distinct features._partition_start(v.partition_by, s.event_ts) as p
            from pg_temp._fv_stage s where cardinality(s._failures) = 0 and s.event_ts >= lo and s.event_ts <= hi) x;
  c := (select count(*) from unnest(starts) x(p)
         where to_regclass(format('features.%I', features._partition_name(v.id, x.p))) is null);
  if c > 1000 then
    raise exception 'the rows'' event times (% to %) fall in % % periods without a partition: more than 1000 in one call',
                    lo, hi, c, v.partition_by
      using errcode = '54000', hint = 'check the event times of the rows (a wrong year?), or write in smaller ranges';
  end if;
  sql := format($q$insert into %s as o (%s, event_ts, written_at, %s)
                   select distinct on (%s, event_ts) %s, event_ts, now(), %s
                     from pg_temp._fv_stage
                    where cardinality(_failures) = 0 and event_ts >= $1 and event_ts < $2
                    order by %s, event_ts, _ord desc
                   on conflict (%s, event_ts) do update set written_at = excluded.written_at, %s$q$,
                features._offline_rel(v.id), keycols, featcols, keycols, keycols, featcols, keycols, keycols,
                (select string_agg(format('%I = excluded.%I', x->>'name', x->>'name'), ', ')
                   from jsonb_array_elements(v.features) x));
  foreach p in array coalesce(starts, '{}') loop
    perform features._ensure_partitions(v.id, p, p);
    nxt := features._partition_next(v.partition_by, p);
    execute sql using p, nxt;
    get diagnostics c = row_count;
    n := n + c;
    if progress then
      -- rows done: the good staged rows up to this partition's end (duplicates of one key and time included),
      -- reported at most every 0.2 s (many small partitions make many chunks)
      select count(*) into c from pg_temp._fv_stage where cardinality(_failures) = 0 and event_ts >= p and event_ts < nxt;
      staged := staged + c;
      if clock_timestamp() - reported >= interval '0.2 s' or nxt > hi then
        perform ml._report_progress(null, done => staged);
        reported := clock_timestamp();
      end if;
    end if;
  end loop;
  return n;
end $$;

-- latest good staged row per entity into the online store; never overwrites a newer online value (late and
-- out-of-order events); returns the entities updated
create or replace function features._write_online(v features.feature_views) returns bigint
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare n bigint;
begin
  execute format($q$insert into features.online_store as o (view_id, entity_key, values, event_ts, written_at)
                    select distinct on (k) $1, k, vals, event_ts, clock_timestamp()
                      from (select %s as k, to_jsonb(s) - '_failures' - '_ord' - 'event_ts' - %L::text[] as vals, s.event_ts, s._ord
                              from pg_temp._fv_stage s where cardinality(s._failures) = 0) s
                     order by k, event_ts desc, _ord desc
                    on conflict (view_id, entity_key) do update
                      set values = excluded.values, event_ts = excluded.event_ts, written_at = excluded.written_at
                    where o.event_ts <= excluded.event_ts$q$,
                 features._key_sql(v.join_keys, v.key_types, 's'), v.join_keys)
    using v.id;
  get diagnostics n = row_count;
  return n;
end $$;

-- the staged rows where they belong: bad ones to quarantine, good ones to the offline and online stores;
-- statistics, and the run finished. With progress, each phase is reported (the caller started the progress).
create or replace function features._write_stage(v features.feature_views, run_id bigint, target text,
                                                 with_stats boolean, progress boolean default false)
returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  n_read bigint;
  n_bad bigint;
  n_off bigint := 0;
  n_on bigint := 0;
  lo timestamptz;
  hi timestamptz;
  bad jsonb;
  result jsonb;
begin
  select count(*), count(*) filter (where cardinality(_failures) > 0),
         min(event_ts) filter (where cardinality(_failures) = 0), max(event_ts) filter (where cardinality(_failures) = 0)
    into n_read, n_bad, lo, hi from pg_temp._fv_stage;
  if n_bad > 0 then
    if progress then
      perform ml._report_progress(null, phase => 'quarantining rows that fail the expectations', done => 0,
                                 total => n_read - n_bad);
    end if;
    execute format($q$select jsonb_agg(jsonb_build_object('entity_key', %s, 'event_ts', s.event_ts,
                                                          'row', to_jsonb(s) - '_failures' - '_ord', 'failures', s._failures))
                        from pg_temp._fv_stage s where cardinality(s._failures) > 0$q$,
                   features._key_sql(v.join_keys, v.key_types, 's')) into bad;
    perform features._quarantine(run_id, bad);
  end if;
  if n_read > 10000 then
    analyze pg_temp._fv_stage;
  end if;
  if target in ('offline', 'online_and_offline') and lo is not null then
    if progress then
      perform ml._report_progress(null, phase => 'writing the offline store', done => 0, total => n_read - n_bad);
    end if;
    n_off := features._write_offline(v, lo, hi, progress);
  end if;
  if target in ('online', 'online_and_offline') and lo is not null then
    if progress then
      perform ml._report_progress(null, phase => 'writing the online store', done => n_read - n_bad,
                                 total => n_read - n_bad);
    end if;
    n_on := features._write_online(v);
  end if;
  result := jsonb_build_object('rows_read', n_read, 'rows_written', n_off, 'rows_quarantined', n_bad,
                               'online_updated', n_on, 'min_event_ts', lo, 'max_event_ts', hi);
  if progress and with_stats and n_read > n_bad then
    perform ml._report_progress(null, phase => 'computing statistics');
  end if;
  perform features._finish_run(run_id, result,
                               case when with_stats and n_read > n_bad then features._stage_stats(v) end);
  return jsonb_build_object('run_id', run_id, 'view', v.name || '@' || v.version) || result
      || jsonb_build_object('duplicates_replaced',
                            case when n_off > 0 then greatest(n_read - n_bad - n_off, 0) else 0 end);
end $$;

-- the one row materialize, materialize_incremental and push return, from the jsonb the code above builds
create or replace function features._run_row(r jsonb)
returns table (run_id bigint, feature_view text, kind text, rows_read bigint, rows_written bigint,
               rows_quarantined bigint, duplicates_replaced bigint, online_updated bigint,
               min_event_ts timestamptz, max_event_ts timestamptz, window_start timestamptz, window_end timestamptz,
               seconds numeric)
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select (r->>'run_id')::bigint, r->>'view', r->>'kind', (r->>'rows_read')::bigint, (r->>'rows_written')::bigint,
         (r->>'rows_quarantined')::bigint, (r->>'duplicates_replaced')::bigint, (r->>'online_updated')::bigint,
         (r->>'min_event_ts')::timestamptz, (r->>'max_event_ts')::timestamptz,
         (r->>'window_start')::timestamptz, (r->>'window_end')::timestamptz, (r->>'seconds')::numeric
$$;

-- ---------------------------------------------------------------------------------------------------------
-- materialize, push, schedule

create or replace function features._materialize(v features.feature_views, kind text, start_ts timestamptz,
                                                 end_ts timestamptz, with_stats boolean)
returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, @VS@, pg_temp  -- the caller's SQL: USER_SQL_PATH (sql/000-runtime.sql)
as $$
declare
  run_id bigint;
  inner_sel text;
  res jsonb;
  t0 timestamptz := clock_timestamp();
begin
  if start_ts is null or end_ts is null or start_ts >= end_ts then
    raise exception 'materialize needs start_ts < end_ts, got [%, %)', coalesce(start_ts::text, 'NULL'),
      coalesce(end_ts::text, 'NULL') using errcode = '22023',
      hint = 'pass the event-time window to compute, e.g. the whole range of the source: select min(ts), max(ts) from ...';
  end if;
  perform features._assert_may_run(v, 'materialize');
  perform features._assert_may_write(v);
  perform ml._report_progress(case kind when 'incremental' then 'features.materialize_incremental'
                                                else 'features.materialize' end,
                             v.name || '@' || v.version, 'waiting for the view''s lock');
  begin
    -- first of all, the view's lock: concurrent materializations of one view queue here, before any of them
    -- creates a partition or a staging table (taking it later let them deadlock on partition creation)
    perform features._lock_view(v.id);
    run_id := features._start_run(v.id, kind, start_ts, end_ts);
    perform features._new_stage(v);
    perform ml._report_progress(null, phase => 'reading the source');
    inner_sel := format('select %s, (s.%I)::timestamptz as event_ts, %s from (%s) s where (s.%I)::timestamptz >= $1 and (s.%I)::timestamptz < $2',
                        (select string_agg(format('s.%I', k), ', ') from unnest(v.join_keys) k),
                        v.timestamp_column,
                        (select string_agg(format('(%s)::%s as %I', x->>'expr', (x->>'type')::regtype, x->>'name'), ', ')
                           from jsonb_array_elements(v.features) x),
                        v.source_sql, v.timestamp_column, v.timestamp_column);
    execute format('insert into pg_temp._fv_stage select *, %s, row_number() over () from (%s) s',
                   features._failures_sql(v), inner_sel)
      using start_ts, end_ts;
    res := features._write_stage(v, run_id, 'online_and_offline', coalesce(with_stats, true), true);
  exception when others or query_canceled then
    perform ml._report_progress(null);
    raise;
  end;
  perform ml._report_progress(null);
  return res || jsonb_build_object('kind', kind, 'window_start', start_ts, 'window_end', end_ts,
                                   'seconds', round(extract(epoch from clock_timestamp() - t0)::numeric, 3));
end $$;

create or replace function features.materialize(view text, start_ts timestamptz, end_ts timestamptz,
                                                statistics boolean default true)
returns table (run_id bigint, feature_view text, kind text, rows_read bigint, rows_written bigint,
               rows_quarantined bigint, duplicates_replaced bigint, online_updated bigint,
               min_event_ts timestamptz, max_event_ts timestamptz, window_start timestamptz, window_end timestamptz,
               seconds numeric)
language sql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
  select * from features._run_row(features._materialize(features._view(view), 'materialize', start_ts, end_ts,
                                                        statistics))
$$;
comment on function features.materialize(text, timestamptz, timestamptz, boolean) is
  'compute a view over [start_ts, end_ts) of event time into the offline store and update the online store; one row: '
  'the run, rows read, written, quarantined and replaced, entities updated online, event times written, seconds. '
  'Progress in ml.progress';

-- from the end of the last succeeded materialization (or the beginning of time) up to now()
create or replace function features._materialize_incremental(v features.feature_views, statistics boolean)
returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  since timestamptz;
  upto timestamptz := now();
begin
  -- serialize incremental runs of one view so two schedulers cannot process the same window twice
  perform features._lock_view(v.id);
  select max(r.end_ts) into since from features.materialization_runs r
   where r.view_id = v.id and r.kind in ('materialize', 'incremental') and r.status = 'succeeded'
     and r.end_ts <> 'infinity';
  since := coalesce(since, '-infinity');
  if since >= upto then
    -- materialized up to now() or later already (a run's end in the future): nothing to do, and no run
    raise notice 'feature view %@% is materialized up to %, which is not before now(): nothing to do',
      v.name, v.version, since;
    return jsonb_build_object('view', v.name || '@' || v.version, 'kind', 'incremental', 'rows_read', 0,
                              'rows_written', 0, 'rows_quarantined', 0, 'duplicates_replaced', 0, 'online_updated', 0,
                              'window_start', since, 'window_end', upto, 'seconds', 0);
  end if;
  return features._materialize(v, 'incremental', since, upto, statistics);
end $$;

create or replace function features.materialize_incremental(view text, statistics boolean default true)
returns table (run_id bigint, feature_view text, kind text, rows_read bigint, rows_written bigint,
               rows_quarantined bigint, duplicates_replaced bigint, online_updated bigint,
               min_event_ts timestamptz, max_event_ts timestamptz, window_start timestamptz, window_end timestamptz,
               seconds numeric)
language sql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
  select * from features._run_row(features._materialize_incremental(features._view(view), statistics))
$$;
comment on function features.materialize_incremental(text, boolean) is
  'materialize event times from the end of the last run up to now(); the same row as features.materialize '
  '(no run when the view is materialized up to now() already)';

-- pushed rows: a non-empty array of objects with exactly the view's keys, timestamp column and features
create or replace function features._check_push_rows(v features.feature_views, rows jsonb) returns jsonb
language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  allowed text[] := v.join_keys || v.timestamp_column
                    || array(select x->>'name' from jsonb_array_elements(v.features) x);
  extra text;
  missing text;
begin
  if jsonb_typeof(rows) = 'object' then
    rows := jsonb_build_array(rows);
  end if;
  if rows is null or jsonb_typeof(rows) <> 'array' or jsonb_array_length(rows) = 0 then
    raise exception 'push needs a non-empty JSON array of row objects' using errcode = '22023',
      hint = format('e.g. [{%s}]', (select string_agg(format('"%s": ...', a), ', ') from unnest(allowed) a));
  end if;
  if exists (select 1 from jsonb_array_elements(rows) r where jsonb_typeof(r) <> 'object') then
    raise exception 'every pushed row must be a JSON object' using errcode = '22023',
      hint = format('e.g. [{%s}]', (select string_agg(format('"%s": ...', a), ', ') from unnest(allowed) a));
  end if;
  select string_agg(distinct k, ', ') into extra
    from jsonb_array_elements(rows) r, jsonb_object_keys(r) k where k <> all (allowed);
  if extra is not null then
    raise exception 'pushed rows have fields that feature view %@% does not define: %', v.name, v.version, extra
      using errcode = '42703', hint = 'allowed fields: ' || array_to_string(allowed, ', ');
  end if;
  select string_agg(distinct format('row %s: %s', r.o, a), '; ') into missing
    from jsonb_array_elements(rows) with ordinality r(j, o), unnest(allowed) a where not (r.j ? a);
  if missing is not null then
    raise exception 'pushed rows lack fields of feature view %@%', v.name, v.version using errcode = '22023',
      detail = left(missing, 500), hint = 'every row needs: ' || array_to_string(allowed, ', ') || ' (null is allowed for features)';
  end if;
  if exists (select 1 from jsonb_array_elements(rows) r where jsonb_typeof(r -> v.timestamp_column) = 'null') then
    raise exception 'pushed rows have a null timestamp "%"', v.timestamp_column using errcode = '22004',
      hint = 'every row needs its event time';
  end if;
  return rows;
end $$;


-- the pushed rows staged, typed by the view's definition, and written (the run started here)
create or replace function features._push_stage(v features.feature_views, rows jsonb, target text, progress boolean)
returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  run_id bigint := features._start_run(v.id, 'push');
  coldefs text;
begin
  perform features._new_stage(v);
  coldefs := (select string_agg(format('%I %s', c, t), ', ') from (
                select k as c, case when kt = 'int' then 'bigint' else 'text' end as t
                  from unnest(v.join_keys, v.key_types) u(k, kt)
                union all select v.timestamp_column, 'timestamptz'
                union all select x->>'name', ((x->>'type')::regtype)::text from jsonb_array_elements(v.features) x) d);
  begin
    execute format('insert into pg_temp._fv_stage select %s, event_ts, %s, %s, ord from (select %s, x.%I as event_ts, %s, x.ordinality as ord from rows from (jsonb_to_recordset($1) as (%s)) with ordinality x) s',
                   (select string_agg(format('%I', k), ', ') from unnest(v.join_keys) k),
                   (select string_agg(format('%I', x->>'name'), ', ') from jsonb_array_elements(v.features) x),
                   features._failures_sql(v),
                   (select string_agg(format('x.%I', k), ', ') from unnest(v.join_keys) k),
                   v.timestamp_column,
                   (select string_agg(format('x.%I', x->>'name'), ', ') from jsonb_array_elements(v.features) x),
                   coldefs)
      using rows;
  exception when data_exception then
    raise exception 'push to %@%: a value does not fit its declared type: %', v.name, v.version, sqlerrm
      using errcode = sqlstate, hint = 'declared: ' || coldefs;
  end;
  return features._write_stage(v, run_id, target, false, progress);
end $$;

create or replace function features._push(v features.feature_views, rows jsonb, target text) returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  res jsonb;
  t0 timestamptz := clock_timestamp();
begin
  if target is null or target not in ('online', 'offline', 'online_and_offline') then
    raise exception 'push target must be online, offline or online_and_offline, got %', coalesce(target, 'NULL')
      using errcode = '22023', hint = 'online_and_offline (the default) writes both stores';
  end if;
  rows := features._check_push_rows(v, rows);
  perform features._assert_may_write(v);
  if jsonb_array_length(rows) < features._push_progress_rows() then
    -- the streaming path: no progress, no subtransaction
    res := features._push_stage(v, rows, target, false);
  else
    perform ml._report_progress('features.push', v.name || '@' || v.version, 'reading the pushed rows',
                               total => jsonb_array_length(rows));
    begin
      res := features._push_stage(v, rows, target, true);
    exception when others or query_canceled then
      perform ml._report_progress(null);
      raise;
    end;
    perform ml._report_progress(null);
  end if;
  return res || jsonb_build_object('kind', 'push', 'seconds', round(extract(epoch from clock_timestamp() - t0)::numeric, 3));
end $$;

create or replace function features.push(view text, rows jsonb, target text default 'online_and_offline')
returns table (run_id bigint, feature_view text, kind text, rows_read bigint, rows_written bigint,
               rows_quarantined bigint, duplicates_replaced bigint, online_updated bigint,
               min_event_ts timestamptz, max_event_ts timestamptz, window_start timestamptz, window_end timestamptz,
               seconds numeric)
language sql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
  select * from features._run_row(features._push(features._view(view), rows, target))
$$;
comment on function features.push(text, jsonb, text) is
  'streaming write of computed feature rows (target online, offline or online_and_offline); late events never '
  'overwrite a newer online value; the same row as features.materialize. Pushes of 10000 rows or more report '
  'their progress in ml.progress';

create or replace function features.schedule(view text, cron text) returns bigint
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v features.feature_views := features._view(view);
  job bigint;
begin
  if not exists (select 1 from pg_extension where extname = 'pg_cron') then
    raise exception 'pg_cron is not installed in database "%"', current_database() using errcode = '0A000',
      detail = format('pg_cron runs only in the database named by cron.database_name (%s)',
                      coalesce(ml._cron_database(), 'not set, or not readable by this role')),
      hint = 'schedule from that database, or call features.materialize_incremental from an external scheduler';
  end if;
  -- the job runs as the caller: it must be allowed to run the view's source and write its stores
  perform features._assert_may_run(v, 'schedule');
  perform features._assert_may_write(v);
  execute 'select cron.schedule($1, $2, $3)' into job
    using 'indb_features_' || v.name, cron, format('select features.materialize_incremental(%L)', v.name);
  return job;
end $$;
comment on function features.schedule(text, text) is 'run materialize_incremental(view) from pg_cron on a cron schedule';
