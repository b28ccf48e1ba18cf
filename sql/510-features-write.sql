-- Feature store, writes: staging, expectations, offline and online upserts, statistics, materialization, push.

-- statistics of every feature over the good staged rows
create or replace function features._stats(v features.feature_views, run_id bigint) returns int
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  f jsonb;
  s jsonb;
  h jsonb;
  n int := 0;
begin
  for f in select x from jsonb_array_elements(v.features) x loop
    if (f->>'type') in ('smallint', 'integer', 'bigint', 'real', 'double precision', 'numeric')
       or (f->>'type') like 'numeric(%' then
      execute format($q$
        select jsonb_build_object('kind', 'numeric', 'count', count(*), 'nulls', count(*) - count(x),
               'mean', avg(x), 'std', stddev_samp(x), 'min', min(x), 'max', max(x),
               'quantiles', jsonb_build_object('p01', q[1], 'p05', q[2], 'p25', q[3], 'p50', q[4], 'p75', q[5], 'p95', q[6], 'p99', q[7]))
          from (select %I::float8 as x from pg_temp._fv_stage where cardinality(_failures) = 0) s,
               lateral (select percentile_cont(array[0.01,0.05,0.25,0.5,0.75,0.95,0.99]) within group (order by %I::float8) as q
                          from pg_temp._fv_stage where cardinality(_failures) = 0) qq
         group by q $q$, f->>'name', f->>'name') into s;
      if s is null then
        s := jsonb_build_object('kind', 'numeric', 'count', 0, 'nulls', 0);
      elsif (s->>'max') is not null then
        -- 10 equal-width bins between min and max
        execute format($q$
          select jsonb_build_object('edges', (select jsonb_agg($1 + ($2 - $1) * i / 10.0) from generate_series(0, 10) i),
                                    'counts', (select jsonb_agg(coalesce(c, 0) order by b) from generate_series(1, 10) b
                                                 left join (select least(width_bucket(%I::float8, $1, $2 + 1e-12, 10), 10) as bk, count(*) c
                                                              from pg_temp._fv_stage where cardinality(_failures) = 0 and %I is not null
                                                             group by 1) hh on hh.bk = b)) $q$,
          f->>'name', f->>'name') into h using (s->>'min')::float8, (s->>'max')::float8;
        s := s || jsonb_build_object('histogram', h);
      end if;
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
    insert into features.statistics (run_id, view_id, feature, stats) values (run_id, v.id, f->>'name', s);
    n := n + 1;
  end loop;
  return n;
end $$;

-- _fv_stage holds typed rows (keys, event_ts, features, _failures); write them where they belong
create or replace function features._write_stage(v features.feature_views, run_id bigint, target text,
                                                 with_stats boolean)
returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  keycols text := (select string_agg(format('%I', k), ', ') from unnest(v.join_keys) k);
  featcols text := (select string_agg(format('%I', x->>'name'), ', ') from jsonb_array_elements(v.features) x);
  keysql text := features._key_sql(v.join_keys, v.key_types, 's');
  n_read bigint;
  n_bad bigint := 0;
  n_off bigint := 0;
  n_on bigint := 0;
  n_dup bigint := 0;
  lo timestamptz;
  hi timestamptz;
  p timestamptz;
  step interval := ('1 ' || v.partition_by)::interval;
  chunks int;
  done int := 0;
  t0 timestamptz := clock_timestamp();
  c bigint;
begin
  select count(*), count(*) filter (where cardinality(_failures) > 0) into n_read, n_bad from pg_temp._fv_stage;
  if n_bad > 0 then
    execute format($q$insert into features.quarantine (view_id, run_id, entity_key, event_ts, row, failures)
                      select $1, $2, %s, s.event_ts, to_jsonb(s) - '_failures' - '_ord', s._failures
                        from pg_temp._fv_stage s where cardinality(s._failures) > 0$q$, keysql)
      using v.id, run_id;
  end if;
  select min(event_ts), max(event_ts) into lo, hi from pg_temp._fv_stage where cardinality(_failures) = 0;
  if target in ('offline', 'online_and_offline') and lo is not null then
    perform features._ensure_partitions(v, lo, hi);
    if n_read > 10000 then
      analyze pg_temp._fv_stage;
    end if;
    chunks := (extract(epoch from (features._partition_start(v.partition_by, hi) - features._partition_start(v.partition_by, lo)))
               / extract(epoch from step))::int + 1;
    p := features._partition_start(v.partition_by, lo);
    -- one partition's worth of rows per statement: progress, cancel and statement_timeout between chunks
    while p <= hi loop
      execute format($q$insert into %s as o (%s, event_ts, written_at, %s)
                        select distinct on (%s, event_ts) %s, event_ts, now(), %s
                          from pg_temp._fv_stage
                         where cardinality(_failures) = 0 and event_ts >= $1 and event_ts < $2
                         order by %s, event_ts, _ord desc
                        on conflict (%s, event_ts) do update set written_at = excluded.written_at, %s$q$,
                     v.offline_table, keycols, featcols, keycols, keycols, featcols, keycols, keycols,
                     (select string_agg(format('%I = excluded.%I', x->>'name', x->>'name'), ', ')
                        from jsonb_array_elements(v.features) x))
        using p, (p at time zone 'UTC' + step) at time zone 'UTC';
      get diagnostics c = row_count;
      n_off := n_off + c;
      done := done + 1;
      if chunks > 1 and (done % greatest(chunks / 10, 1) = 0 or done = chunks) then
        raise notice 'features: %@% materialized % rows (% of % partitions), % rows/s, ~% s left', v.name, v.version,
          n_off, done, chunks,
          round(n_off / greatest(extract(epoch from clock_timestamp() - t0), 1e-6)),
          round(extract(epoch from clock_timestamp() - t0) * (chunks - done) / done, 1);
      end if;
      p := (p at time zone 'UTC' + step) at time zone 'UTC';
    end loop;
    n_dup := n_read - n_bad - n_off;
  end if;
  if target in ('online', 'online_and_offline') and lo is not null then
    -- latest per entity; never overwrite a newer online value (late and out-of-order events)
    execute format($q$insert into features.online_store as o (view_id, entity_key, values, event_ts, written_at)
                      select distinct on (k) $1, k, vals, event_ts, clock_timestamp()
                        from (select %s as k, to_jsonb(s) - '_failures' - '_ord' - 'event_ts' - %L::text[] as vals, s.event_ts, s._ord
                                from pg_temp._fv_stage s where cardinality(s._failures) = 0) s
                       order by k, event_ts desc, _ord desc
                      on conflict (view_id, entity_key) do update
                        set values = excluded.values, event_ts = excluded.event_ts, written_at = excluded.written_at
                      where o.event_ts <= excluded.event_ts$q$, keysql, v.join_keys)
      using v.id;
    get diagnostics n_on = row_count;
  end if;
  update features.materialization_runs
     set status = 'succeeded', rows_read = n_read, rows_written = n_off, rows_quarantined = n_bad,
         online_updated = n_on, min_event_ts = lo, max_event_ts = hi, finished_at = clock_timestamp(),
         seconds = extract(epoch from clock_timestamp() - started_at)
   where id = run_id;
  if with_stats and n_read > n_bad then
    perform features._stats(v, run_id);
  end if;
  return jsonb_build_object('run_id', run_id, 'view', v.name || '@' || v.version, 'rows_read', n_read,
    'rows_written', n_off, 'rows_quarantined', n_bad, 'online_updated', n_on,
    'duplicates_replaced', greatest(n_dup, 0), 'min_event_ts', lo, 'max_event_ts', hi,
    'seconds', round(extract(epoch from clock_timestamp() - t0)::numeric, 3));
end $$;

-- the staging table of this session: created once per view layout and reused (rows vanish at commit), so a
-- stream of pushes to one view does no DDL
create or replace function features._new_stage(v features.feature_views) returns void
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
begin
  if to_regclass('pg_temp._fv_stage') is not null then
    if current_setting('indb.fv_stage_view', true) = v.id::text then
      execute 'delete from pg_temp._fv_stage';
      return;
    end if;
    drop table pg_temp._fv_stage;
  end if;
  execute format('create temp table _fv_stage on commit delete rows as select %s, event_ts, %s from %s limit 0',
                 (select string_agg(format('%I', k), ', ') from unnest(v.join_keys) k),
                 (select string_agg(format('%I', x->>'name'), ', ') from jsonb_array_elements(v.features) x),
                 v.offline_table);
  alter table pg_temp._fv_stage add column _failures text[] not null default '{}', add column _ord bigint;
  create index _fv_stage_ts on pg_temp._fv_stage (event_ts);
  perform set_config('indb.fv_stage_view', v.id::text, false);
end $$;

-- failures array expression: built-in key/time checks + the view's expectations
create or replace function features._failures_sql(v features.feature_views) returns text
language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select 'array_remove(array[' ||
         (select string_agg(format('case when %I is null then %L end', k, k || ': missing key'), ', ') from unnest(v.join_keys) k)
         || ', case when event_ts is null then ''event_ts: missing timestamp'' end'
         || coalesce((select ', ' || string_agg(format('case when not coalesce((%s), false) then %L end', c->>'sql',
                                                        (c->>'feature') || ': ' || (c->>'rule')), ', ')
                        from jsonb_array_elements(v.checks) c), '')
         || ']::text[], null)'
$$;

create or replace function features._materialize(v features.feature_views, kind text, start_ts timestamptz,
                                                 end_ts timestamptz, with_stats boolean)
returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  run_id bigint;
  inner_sel text;
begin
  if start_ts is null or end_ts is null or start_ts >= end_ts then
    raise exception 'materialize needs start_ts < end_ts, got [%, %)', start_ts, end_ts using errcode = '22023';
  end if;
  insert into features.materialization_runs (view_id, kind, start_ts, end_ts) values (v.id, kind, start_ts, end_ts)
  returning id into run_id;
  perform features._new_stage(v);
  inner_sel := format('select %s, (s.%I)::timestamptz as event_ts, %s from (%s) s where (s.%I)::timestamptz >= $1 and (s.%I)::timestamptz < $2',
                      (select string_agg(format('s.%I', k), ', ') from unnest(v.join_keys) k),
                      v.timestamp_column,
                      (select string_agg(format('(%s)::%s as %I', x->>'expr', x->>'type', x->>'name'), ', ')
                         from jsonb_array_elements(v.features) x),
                      v.source_sql, v.timestamp_column, v.timestamp_column);
  execute format('insert into pg_temp._fv_stage select *, %s, row_number() over () from (%s) s',
                 features._failures_sql(v), inner_sel)
    using start_ts, end_ts;
  return features._write_stage(v, run_id, 'online_and_offline', with_stats);
end $$;

create or replace function features.materialize(view text, start_ts timestamptz, end_ts timestamptz,
                                                statistics boolean default true)
returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
begin
  return features._materialize(features._view(view), 'materialize', start_ts, end_ts, statistics);
end $$;
comment on function features.materialize(text, timestamptz, timestamptz, boolean) is
  'compute a view over [start_ts, end_ts) of event time into the offline store and update the online store';

create or replace function features.materialize_incremental(view text, statistics boolean default true)
returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v features.feature_views := features._view(view);
  since timestamptz;
begin
  -- serialize incremental runs of one view so two schedulers cannot process the same window twice
  perform pg_advisory_xact_lock(hashtext('indb.features.materialize'), v.id::int);
  select max(r.end_ts) into since from features.materialization_runs r
   where r.view_id = v.id and r.kind in ('materialize', 'incremental') and r.status = 'succeeded'
     and r.end_ts <> 'infinity';
  return features._materialize(v, 'incremental', coalesce(since, '-infinity'), now(), statistics);
end $$;
comment on function features.materialize_incremental(text, boolean) is
  'materialize event times from the end of the last run up to now()';

create or replace function features.push(view text, rows jsonb, target text default 'online_and_offline')
returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v features.feature_views := features._view(view);
  allowed text[];
  extra text;
  missing text;
  run_id bigint;
  coldefs text;
begin
  if target is null or target not in ('online', 'offline', 'online_and_offline') then
    raise exception 'push target must be online, offline or online_and_offline, got %', coalesce(target, 'NULL')
      using errcode = '22023';
  end if;
  if jsonb_typeof(rows) = 'object' then
    rows := jsonb_build_array(rows);
  end if;
  if rows is null or jsonb_typeof(rows) <> 'array' or jsonb_array_length(rows) = 0 then
    raise exception 'push needs a non-empty JSON array of row objects' using errcode = '22023';
  end if;
  if exists (select 1 from jsonb_array_elements(rows) r where jsonb_typeof(r) <> 'object') then
    raise exception 'every pushed row must be a JSON object' using errcode = '22023';
  end if;
  allowed := v.join_keys || v.timestamp_column || (select array_agg(x->>'name') from jsonb_array_elements(v.features) x);
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
  insert into features.materialization_runs (view_id, kind) values (v.id, 'push') returning id into run_id;
  perform features._new_stage(v);
  coldefs := (select string_agg(format('%I %s', c, t), ', ') from (
                select k as c, case when kt = 'int' then 'bigint' else 'text' end as t
                  from unnest(v.join_keys, v.key_types) u(k, kt)
                union all select v.timestamp_column, 'timestamptz'
                union all select x->>'name', x->>'type' from jsonb_array_elements(v.features) x) d);
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
  return features._write_stage(v, run_id, target, false) || jsonb_build_object('target', target);
end $$;
comment on function features.push(text, jsonb, text) is
  'streaming write of computed feature rows; late events never overwrite a newer online value';

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
                      coalesce(current_setting('cron.database_name', true), 'not set')),
      hint = 'schedule from that database, or call features.materialize_incremental from an external scheduler';
  end if;
  execute 'select cron.schedule($1, $2, $3)' into job
    using 'indb_features_' || v.name, cron, format('select features.materialize_incremental(%L)', v.name);
  return job;
end $$;
comment on function features.schedule(text, text) is 'run materialize_incremental(view) from pg_cron on a cron schedule';

------------------------------------------------------------------------------------------------------------
-- reads: online and point in time
