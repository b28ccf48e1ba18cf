-- Feature store, monitoring: freshness, drift, training/serving skew.

-- security_invoker: the reader's own rights and row-level security (its tenant's views and the shared ones)
create or replace view features.freshness with (security_invoker = true) as
select v.name, v.version, v.name || '@' || v.version as view, v.ttl,
       o.entities, o.last_event_ts, now() - o.last_event_ts as staleness, o.ttl_breaches,
       r.last_materialization, r.last_status, r.last_rows_written, q.quarantined
  from features.feature_views v
  left join lateral (select count(*) as entities, max(s.event_ts) as last_event_ts,
                            count(*) filter (where features._expired(s.event_ts, v.ttl)) as ttl_breaches
                       from features.online_store s where s.view_id = v.id) o on true
  left join lateral (select m.finished_at as last_materialization, m.status as last_status, m.rows_written as last_rows_written
                       from features.materialization_runs m where m.view_id = v.id
                      order by m.id desc limit 1) r on true
  left join lateral (select count(*) as quarantined from features.quarantine x where x.view_id = v.id) q on true;
comment on view features.freshness is 'per view version: last event time, staleness, last materialization, ttl breaches';

-- ---------------------------------------------------------------------------------------------------------
-- drift: PSI and KS between two windows of one numeric feature

-- a view's recent runs, for error hints
create or replace function features._recent_runs(v features.feature_views) returns text
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select coalesce('recent runs of ' || v.name || '@' || v.version || ': '
                  || string_agg(format('run:%s (%s, %s, %s rows, event times %s to %s)', r.id, r.kind, r.status,
                                       r.rows_written, coalesce(r.min_event_ts::text, '-'), coalesce(r.max_event_ts::text, '-')),
                                '; ' order by r.id desc),
                  'no runs of ' || v.name || '@' || v.version || ' yet')
    from (select * from features.materialization_runs m where m.view_id = v.id order by m.id desc limit 5) r
$$;

-- the values of one window: 'online' (the online store), 'latest' (the most recent succeeded materialization
-- that wrote rows; if there is none, the most recent such push), 'previous' (the succeeded materialization
-- that wrote rows before 'latest'), 'run:<id>' (the event times a run wrote), or a tstzrange of event times.
-- Returns the values and a description of the window for messages.
create or replace function features._drift_window(v features.feature_views, feature text, spec text,
                                                  out vals float8[], out label text)
language plpgsql stable parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  m text[];
  r features.materialization_runs;
  rng tstzrange;
begin
  if spec is null or btrim(spec) = '' then
    raise exception 'drift window is empty' using errcode = '22023',
      hint = 'use ''online'', ''latest'', ''previous'', ''run:<id>'' or a tstzrange such as ''[2024-01-01,2024-02-01)''';
  end if;
  if btrim(spec) = 'online' then
    select array_agg((s.values ->> feature)::float8) into vals from features.online_store s where s.view_id = v.id;
    label := format('online (%s entities)', coalesce(cardinality(vals), 0));
    return;
  end if;
  m := regexp_match(spec, '^\s*(?:run:)?\s*([0-9]{1,18}|latest|previous)\s*$');
  if m is not null then
    if m[1] in ('latest', 'previous') then
      select * into r from features.materialization_runs x
       where x.view_id = v.id and x.status = 'succeeded' and x.rows_written > 0
       order by (x.kind = 'push'), x.id desc limit 1 offset case m[1] when 'latest' then 0 else 1 end;
      if r.id is null or (m[1] = 'previous' and r.kind = 'push') then
        raise exception 'feature view %@% has no % succeeded materialization that wrote rows', v.name, v.version,
          case m[1] when 'latest' then 'one' else 'second' end using errcode = '42704',
          detail = features._recent_runs(v),
          hint = case m[1] when 'latest' then 'materialize it first (features.materialize)'
                 else 'materialize it twice (e.g. two halves of its event times, or materialize_incremental later), '
                      'or compare run:<id> windows or tstzranges' end;
      end if;
    else
      select * into r from features.materialization_runs x where x.id = m[1]::bigint;
      if r.id is null or r.view_id <> v.id then
        raise exception 'run % is not a run of feature view %@%', m[1], v.name, v.version using errcode = '42704',
          detail = features._recent_runs(v), hint = 'pass run:<id> of one of its runs, ''latest'' or a tstzrange';
      end if;
      if r.status <> 'succeeded' or r.min_event_ts is null then
        raise exception 'run % of feature view %@% wrote no rows (status %)', r.id, v.name, v.version, r.status
          using errcode = '22023', detail = features._recent_runs(v), hint = 'pick a succeeded run that wrote rows';
      end if;
    end if;
    rng := tstzrange(r.min_event_ts, r.max_event_ts, '[]');
    label := format('run:%s (%s, event times %s to %s)', r.id, r.kind, r.min_event_ts, r.max_event_ts);
  else
    begin
      rng := spec::tstzrange;
    exception when others then
      raise exception 'invalid drift window %', quote_literal(spec) using errcode = '22023',
        hint = 'use ''online'', ''latest'', ''previous'', ''run:<id>'' or a tstzrange such as ''[2024-01-01,2024-02-01)''';
    end;
    label := 'event times ' || rng::text;
  end if;
  execute format('select array_agg(%I::float8) from %s where event_ts <@ $1', feature, features._offline_rel(v.id))
    into vals using rng;
end $$;

create or replace function features._drift_stats_py(baseline float8[], current float8[], psi_threshold float8,
                                                    ks_threshold float8)
returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import drift, errors
return json.dumps(errors.call(plpy, drift.drift, baseline, current, psi_threshold, ks_threshold))
$$;
select ml._wrap_python('features._drift_stats', 'features._drift_stats_py(float8[], float8[], float8, float8)');

create or replace function features._drift(view text, feature text, baseline text, current text,
                                           psi_threshold float8, ks_threshold float8)
returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v features.feature_views := features._view(view);
  f jsonb := (select x from jsonb_array_elements(v.features) x where x->>'name' = feature);
  b record;
  c record;
begin
  if f is null then
    raise exception 'feature view %@% has no feature "%"', v.name, v.version, coalesce(feature, 'NULL')
      using errcode = '42704',
      detail = 'its features: ' || (select string_agg(x->>'name', ', ') from jsonb_array_elements(v.features) x),
      hint = 'check the spelling';
  end if;
  if (f->>'type') not in ('smallint', 'integer', 'bigint', 'real', 'double precision') and (f->>'type') not like 'numeric%' then
    raise exception 'drift is computed for numeric features; "%" is %', feature, f->>'type' using errcode = '42804',
      hint = 'pick a numeric feature of the view';
  end if;
  if psi_threshold is null or psi_threshold <= 0 or ks_threshold is null or ks_threshold <= 0 or ks_threshold > 1 then
    raise exception 'drift thresholds must be positive (ks at most 1), got psi % and ks %',
      coalesce(psi_threshold::text, 'NULL'), coalesce(ks_threshold::text, 'NULL') using errcode = '22023',
      hint = 'the usual ones: psi_threshold 0.2, ks_threshold 0.1';
  end if;
  select * into b from features._drift_window(v, feature, baseline);
  select * into c from features._drift_window(v, feature, current);
  if (select count(x) from unnest(b.vals) x) < 2 or (select count(x) from unnest(c.vals) x) < 2 then
    raise exception 'drift needs at least 2 values of %@%:% in each window', v.name, v.version, feature
      using errcode = '22000',
      detail = format('baseline %s holds %s non-null values; current %s holds %s', b.label,
                      (select count(x) from unnest(b.vals) x), c.label, (select count(x) from unnest(c.vals) x)),
      hint = 'compare windows that hold materialized values: ' || features._recent_runs(v);
  end if;
  return jsonb_build_object('view', v.name || '@' || v.version, 'feature', feature, 'baseline', baseline,
                            'current', current, 'baseline_window', b.label, 'current_window', c.label)
      || features._drift_stats(b.vals, c.vals, psi_threshold, ks_threshold);
end $$;

create or replace function features.drift(view text, feature text, baseline text, current text,
                                          psi_threshold float8 default 0.2, ks_threshold float8 default 0.1)
returns table (feature_view text, baseline_window text, current_window text, psi float8, ks float8,
               ks_pvalue float8, drifted boolean, baseline_n bigint, baseline_mean float8, baseline_std float8,
               current_n bigint, current_mean float8, current_std float8)
language sql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
  select d->>'view', d->>'baseline_window', d->>'current_window', (d->>'psi')::float8, (d->>'ks')::float8,
         (d->>'ks_pvalue')::float8, (d->>'drift')::boolean, (d#>>'{baseline,n}')::bigint,
         (d#>>'{baseline,mean}')::float8, (d#>>'{baseline,std}')::float8, (d#>>'{current,n}')::bigint,
         (d#>>'{current,mean}')::float8, (d#>>'{current,std}')::float8
    from features._drift(view, feature, baseline, current, psi_threshold, ks_threshold) d
$$;
comment on function features.drift(text, text, text, text, float8, float8) is
  'PSI and KS between two windows (online, latest, previous, run:<id>, or a tstzrange) of one numeric feature: '
  'one row with the windows, psi, ks and its p-value, drifted (psi >= psi_threshold, or ks >= ks_threshold with '
  'p < 0.01), and each window''s count, mean and standard deviation';

-- ---------------------------------------------------------------------------------------------------------
-- skew: sampled online values against the offline store and against the source recomputed

-- two documents of feature values are the same: equal, or numbers equal to 1e-9 relative (a recomputed
-- window aggregate of floats may differ in the last bits when the rows are summed in another order)
create or replace function features._same_values(a jsonb, b jsonb) returns boolean
language sql immutable parallel safe
as $$
  select a = b
      or (jsonb_typeof(a) = 'object' and jsonb_typeof(b) = 'object'
          and (select count(*) from jsonb_object_keys(a)) = (select count(*) from jsonb_object_keys(b))
          and not exists (
            select 1 from jsonb_each(a) x left join jsonb_each(b) y on y.key = x.key
             where y.key is null
                or not (x.value = y.value
                        or (jsonb_typeof(x.value) = 'number' and jsonb_typeof(y.value) = 'number'
                            and abs(x.value::numeric - y.value::numeric)
                                <= 1e-9 * greatest(abs(x.value::numeric), abs(y.value::numeric))))))
$$;

create or replace function features._skew_sql(v features.feature_views) returns text
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select format($q$
    with smp as (select entity_key, values, event_ts from features.online_store where view_id = $1 order by random() limit $2),
    off as (select %1$s as k, s.event_ts, %2$s as vals from %3$s s
              join smp on smp.event_ts = s.event_ts and smp.entity_key = %1$s),
    src as (select z.k, bool_or(features._same_values(z.vals, smp.values)) as any_match, (array_agg(z.vals))[1] as vals from (
              select %1$s as k, s.event_ts, %2$s as vals
                from (select %4$s, (s.%5$I)::timestamptz as event_ts, %6$s from (%7$s) s) s) z
             join smp on smp.entity_key = z.k and smp.event_ts = z.event_ts group by z.k),
    -- several source rows for one entity and event time: the online value must equal one of them; no source
    -- row at all (a pushed row): nothing to recompute, not a mismatch
    cmp as (select smp.entity_key, smp.event_ts, smp.values as online, off.vals as offline, src.vals as recomputed,
                   (off.vals is distinct from smp.values) as off_mismatch,
                   src.k is null as not_in_source,
                   (src.k is not null and not src.any_match) as src_mismatch
              from smp left join off on off.k = smp.entity_key left join src on src.k = smp.entity_key)
    select jsonb_build_object(
      'sampled', count(*),
      'offline_mismatches', count(*) filter (where off_mismatch),
      'source_mismatches', count(*) filter (where src_mismatch),
      'not_in_source', count(*) filter (where not_in_source),
      'mismatches', count(*) filter (where off_mismatch or src_mismatch),
      'mismatch_rate', coalesce(round((count(*) filter (where off_mismatch or src_mismatch))::numeric / nullif(count(*), 0), 6), 0),
      'examples', coalesce(jsonb_path_query_array(
                             jsonb_agg(jsonb_build_object('entity_key', entity_key, 'event_ts', event_ts, 'online', online,
                                                          'offline', offline, 'recomputed', recomputed))
                               filter (where off_mismatch or src_mismatch), '$[0 to 9]'), '[]'))
      from cmp $q$,
    features._key_sql(v.join_keys, v.key_types, 's'),
    'jsonb_build_object(' || (select string_agg(format('%L, to_jsonb(s.%I)', x->>'name', x->>'name'), ', ')
                                from jsonb_array_elements(v.features) x) || ')',
    features._offline_rel(v.id),
    (select string_agg(format('s.%I', k), ', ') from unnest(v.join_keys) k), v.timestamp_column,
    (select string_agg(format('(%s)::%s as %I', x->>'expr', (x->>'type')::regtype, x->>'name'), ', ')
       from jsonb_array_elements(v.features) x),
    v.source_sql)
$$;

create or replace function features._check_skew(view text, sample int, strict boolean, threshold float8)
returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, @VS@, pg_temp  -- the caller's SQL: USER_SQL_PATH (sql/000-runtime.sql)
as $$
declare
  v features.feature_views := features._view(view);
  res jsonb;
  rate float8;
begin
  if sample is null or sample < 1 or sample > 1000000 then
    raise exception 'sample must be between 1 and 1000000 entities, got %', coalesce(sample::text, 'NULL')
      using errcode = '22023', hint = 'e.g. sample => 100';
  end if;
  if threshold is null or threshold < 0 or threshold > 1 then
    raise exception 'threshold must be a mismatch rate between 0 and 1, got %', coalesce(threshold::text, 'NULL')
      using errcode = '22023', hint = 'threshold => 0 fails on any mismatch';
  end if;
  perform features._assert_may_run(v, 'check_skew');   -- it recomputes the view from its source
  execute features._skew_sql(v) into res using v.id, sample;
  rate := (res->>'mismatch_rate')::float8;
  res := jsonb_build_object('view', v.name || '@' || v.version, 'threshold', threshold) || res;
  if coalesce(strict, false) and rate > threshold then
    raise exception 'online/offline skew in %@%: % of % sampled entities differ (rate % > threshold %)',
      v.name, v.version, res->>'mismatches', res->>'sampled', rate, threshold using errcode = 'IXF01',
      detail = left((res->'examples')::text, 1000),
      hint = 'rematerialize the view (features.materialize) or look for pushes that bypass the definition';
  end if;
  return res;
end $$;

create or replace function features.check_skew(view text, sample int default 100, strict boolean default false,
                                               threshold float8 default 0.0)
returns table (feature_view text, sampled bigint, mismatches bigint, mismatch_rate float8, offline_mismatches bigint,
               source_mismatches bigint, not_in_source bigint, examples jsonb)
language sql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
  select r->>'view', (r->>'sampled')::bigint, (r->>'mismatches')::bigint, (r->>'mismatch_rate')::float8,
         (r->>'offline_mismatches')::bigint, (r->>'source_mismatches')::bigint, (r->>'not_in_source')::bigint,
         r->'examples'
    from features._check_skew(view, sample, strict, threshold) r
$$;
comment on function features.check_skew(text, int, boolean, float8) is
  'compare the online values of sampled entities with the offline store and with the source recomputed (numbers '
  'equal to 1e-9 relative; rows not in the source, such as pushed ones, are counted as not_in_source, not as '
  'mismatches): one row of counts and up to 10 mismatching examples; strict raises IXF01 above threshold';
