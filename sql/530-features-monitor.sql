-- Feature store, monitoring: freshness, drift, training/serving skew.

create or replace view features.freshness as
select v.name, v.version, v.name || '@' || v.version as view, v.ttl,
       o.entities, o.last_event_ts, now() - o.last_event_ts as staleness, o.ttl_breaches,
       r.last_materialization, r.last_status, r.last_rows_written, q.quarantined
  from features.feature_views v
  left join lateral (select count(*) as entities, max(s.event_ts) as last_event_ts,
                            count(*) filter (where v.ttl is not null and s.event_ts < now() - v.ttl) as ttl_breaches
                       from features.online_store s where s.view_id = v.id) o on true
  left join lateral (select m.finished_at as last_materialization, m.status as last_status, m.rows_written as last_rows_written
                       from features.materialization_runs m where m.view_id = v.id
                      order by m.id desc limit 1) r on true
  left join lateral (select count(*) as quarantined from features.quarantine x where x.view_id = v.id) q on true;
comment on view features.freshness is 'per view version: last event time, staleness, last materialization, ttl breaches';

create or replace function features._drift_values(v features.feature_views, feature text, spec text) returns float8[]
language plpgsql stable parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  lo timestamptz;
  hi timestamptz;
  rng tstzrange;
  out float8[];
  m text[];
begin
  if spec = 'online' then
    select array_agg((s.values ->> feature)::float8) into out from features.online_store s where s.view_id = v.id;
    return out;
  end if;
  m := regexp_match(spec, '^\s*(?:run:)?\s*([0-9]+|latest)\s*$');
  if m is not null then
    select r.min_event_ts, r.max_event_ts into lo, hi from features.materialization_runs r
     where r.view_id = v.id and r.status = 'succeeded' and (m[1] = 'latest' or r.id = m[1]::bigint)
     order by r.id desc limit 1;
    if lo is null then
      raise exception 'no succeeded materialization run % for %@%', m[1], v.name, v.version using errcode = '42704';
    end if;
    rng := tstzrange(lo, hi, '[]');
  else
    begin
      rng := spec::tstzrange;
    exception when others then
      raise exception 'invalid drift window %', coalesce(quote_literal(spec), 'NULL') using errcode = '22023',
        hint = 'use ''online'', ''latest'', ''run:<id>'' or a tstzrange such as ''[2024-01-01,2024-02-01)''';
    end;
  end if;
  execute format('select array_agg(%I::float8) from %s where event_ts <@ $1', feature, v.offline_table) into out using rng;
  return out;
end $$;

create or replace function features._drift_stats(baseline float8[], current float8[], psi_threshold float8,
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

create or replace function features.drift(view text, feature text, baseline text, current text,
                                          psi_threshold float8 default 0.2, ks_threshold float8 default 0.1)
returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v features.feature_views := features._view(view);
  f jsonb;
begin
  select x into f from jsonb_array_elements(v.features) x where x->>'name' = feature;
  if f is null then
    raise exception 'feature view %@% has no feature "%"', v.name, v.version, feature using errcode = '42704';
  end if;
  if (f->>'type') not in ('smallint', 'integer', 'bigint', 'real', 'double precision') and (f->>'type') not like 'numeric%' then
    raise exception 'drift is computed for numeric features; "%" is %', feature, f->>'type' using errcode = '42804';
  end if;
  return jsonb_build_object('view', v.name || '@' || v.version, 'feature', feature, 'baseline', baseline, 'current', current)
      || features._drift_stats(features._drift_values(v, feature, baseline), features._drift_values(v, feature, current),
                               psi_threshold, ks_threshold);
end $$;
comment on function features.drift(text, text, text, text, float8, float8) is
  'PSI and KS between two windows (online, latest, run:<id>, or a tstzrange) of one numeric feature, with a drift flag';

create or replace function features.check_skew(view text, sample int default 100, strict boolean default false,
                                               threshold float8 default 0.0)
returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v features.feature_views := features._view(view);
  keysql text := features._key_sql(v.join_keys, v.key_types, 's');
  featobj text;
  res jsonb;
  rate float8;
begin
  if sample is null or sample < 1 then
    raise exception 'sample must be a positive number of entities' using errcode = '22023';
  end if;
  featobj := 'jsonb_build_object(' || (select string_agg(format('%L, to_jsonb(s.%I)', x->>'name', x->>'name'), ', ')
                                        from jsonb_array_elements(v.features) x) || ')';
  -- for sampled online entities: the offline store's row at the same event time, and the value recomputed
  -- from the source definition at that event time
  execute format($q$
    with smp as (select entity_key, values, event_ts from features.online_store where view_id = $1 order by random() limit $2),
    off as (select %s as k, s.event_ts, %s as vals from %s s
              join smp on smp.event_ts = s.event_ts and smp.entity_key = %s),
    src as (select z.k, bool_or(z.vals = smp.values) as any_match, (array_agg(z.vals))[1] as vals from (
              select %s as k, s.event_ts, %s as vals
                from (select %s, (s.%I)::timestamptz as event_ts, %s from (%s) s) s) z
             join smp on smp.entity_key = z.k and smp.event_ts = z.event_ts group by z.k),
    -- several source rows for one entity and event time: the online value must equal one of them
    cmp as (select smp.entity_key, smp.event_ts, smp.values as online, off.vals as offline, src.vals as recomputed,
                   (off.vals is distinct from smp.values) as off_mismatch,
                   not coalesce(src.any_match, false) as src_mismatch
              from smp left join off on off.k = smp.entity_key left join src on src.k = smp.entity_key)
    select jsonb_build_object(
      'sampled', count(*),
      'offline_mismatches', count(*) filter (where off_mismatch),
      'source_mismatches', count(*) filter (where src_mismatch),
      'mismatches', count(*) filter (where off_mismatch or src_mismatch),
      'mismatch_rate', coalesce(round((count(*) filter (where off_mismatch or src_mismatch))::numeric / nullif(count(*), 0), 6), 0),
      'examples', coalesce((jsonb_agg(jsonb_build_object('entity_key', entity_key, 'event_ts', event_ts, 'online', online,
                                                           'offline', offline, 'recomputed', recomputed))
                            filter (where off_mismatch or src_mismatch)), '[]'))
      from cmp $q$,
    keysql, featobj, v.offline_table, keysql,
    keysql, featobj,
    (select string_agg(format('s.%I', k), ', ') from unnest(v.join_keys) k), v.timestamp_column,
    (select string_agg(format('(%s)::%s as %I', x->>'expr', x->>'type', x->>'name'), ', ') from jsonb_array_elements(v.features) x),
    v.source_sql)
  into res using v.id, sample;
  rate := (res->>'mismatch_rate')::float8;
  res := jsonb_build_object('view', v.name || '@' || v.version, 'threshold', threshold) || res;
  if strict and rate > threshold then
    raise exception 'online/offline skew in %@%: % of % sampled entities differ (rate % > threshold %)',
      v.name, v.version, res->>'mismatches', res->>'sampled', rate, threshold using errcode = 'IXF01',
      detail = left((res->'examples')::text, 1000),
      hint = 'rematerialize the view (features.materialize) or look for pushes that bypass the definition';
  end if;
  return res;
end $$;
comment on function features.check_skew(text, int, boolean, float8) is
  'compare online values of sampled entities with the offline store and the source recomputed; strict raises';
