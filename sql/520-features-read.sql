-- Feature store, reads: online serving, point-in-time joins (historical), training sets.

create or replace function features._get_online_slow(features text[], entity_keys jsonb, request jsonb,
                                                     full_names boolean)
returns jsonb
language plpgsql stable parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  r record;
  v features.feature_views;
  key text;
  vals jsonb;
  ets timestamptz;
  expired boolean;
  res jsonb := entity_keys;
  status jsonb := '{}';
  inputs jsonb := '{}';
  od record;
  val jsonb;
  i int;
begin
  for r in select s.view_id, array_agg(s.feature order by s.ord) as feats, array_agg(s.out_name order by s.ord) as outs,
                  array_agg(s.hidden order by s.ord) as hid
             from features._resolve(_get_online_slow.features, full_names) s where s.view_id is not null group by s.view_id
  loop
    select * into v from features.feature_views where id = r.view_id;
    key := features._entity_key(entity_keys, v.join_keys, v.key_types, v.name || '@' || v.version);
    select o.values, o.event_ts into vals, ets from features.online_store o where o.view_id = r.view_id and o.entity_key = key;
    expired := vals is not null and v.ttl is not null and ets < now() - v.ttl;
    for i in 1 .. cardinality(r.feats) loop
      val := case when vals is null or expired then 'null'::jsonb else coalesce(vals -> r.feats[i], 'null') end;
      inputs := inputs || jsonb_build_object(r.feats[i], val);
      if not r.hid[i] then
        res := res || jsonb_build_object(r.outs[i], val);
        status := status || jsonb_build_object(r.outs[i],
                    case when vals is null then 'not_found' when expired then 'outside_ttl' else 'present' end);
      end if;
    end loop;
    if vals is not null then
      res := res || jsonb_build_object('_event_ts', coalesce(res -> '_event_ts', '{}') || jsonb_build_object(v.name || '@' || v.version, ets));
    end if;
  end loop;
  for od in select s.out_name, o.function_name, o.request_fields from features._resolve(_get_online_slow.features, full_names) s
              join features.on_demand_features o on o.id = s.odfv_id where s.view_id is null loop
    if exists (select 1 from jsonb_object_keys(od.request_fields) k where not coalesce(request, '{}') ? k) then
      raise exception 'on-demand feature "%" needs request fields %', od.out_name,
        (select string_agg(k, ', ') from jsonb_object_keys(od.request_fields) k) using errcode = '22023',
        hint = 'pass them in request => ''{"field": value}''';
    end if;
    execute format('select to_jsonb(%s($1, $2))', od.function_name) into val using coalesce(request, '{}'), inputs;
    res := res || jsonb_build_object(od.out_name, val);
    status := status || jsonb_build_object(od.out_name, 'present');
  end loop;
  return res || jsonb_build_object('_status', status);
end $$;

create or replace function features._get_online_batch_slow(features text[], entity_keys jsonb, request jsonb,
                                                           full_names boolean)
returns setof jsonb
language plpgsql stable parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  r record;
  v features.feature_views;
  keys text[];
  res jsonb[];
  st jsonb[];
  n int;
  i int;
  j int;
  row record;
  expired boolean;
  val jsonb;
  has_odfv boolean;
begin
  if entity_keys is null or jsonb_typeof(entity_keys) <> 'array' then
    raise exception 'entity_keys must be a JSON array of key objects' using errcode = '22023';
  end if;
  select bool_or(s.view_id is null) into has_odfv from features._resolve(_get_online_batch_slow.features, full_names) s;
  if has_odfv then
    -- on-demand features need per-entity request data: evaluate entity by entity with the same code
    return query select features.get_online(_get_online_batch_slow.features, e.k, coalesce(request -> (e.o::int - 1), request), full_names)
                   from jsonb_array_elements(entity_keys) with ordinality e(k, o) order by e.o;
    return;
  end if;
  n := jsonb_array_length(entity_keys);
  select array_agg(e.k order by e.o), array_agg('{}'::jsonb order by e.o) into res, st
    from jsonb_array_elements(entity_keys) with ordinality e(k, o);
  for r in select s.view_id, array_agg(s.feature order by s.ord) as feats, array_agg(s.out_name order by s.ord) as outs
             from features._resolve(_get_online_batch_slow.features, full_names) s group by s.view_id
  loop
    select * into v from features.feature_views where id = r.view_id;
    select array_agg(features._entity_key(e.k, v.join_keys, v.key_types, v.name || '@' || v.version) order by e.o) into keys
      from jsonb_array_elements(entity_keys) with ordinality e(k, o);
    for row in select u.o, o.values, o.event_ts from unnest(keys) with ordinality u(k, o)
                 left join features.online_store o on o.view_id = r.view_id and o.entity_key = u.k loop
      expired := row.values is not null and v.ttl is not null and row.event_ts < now() - v.ttl;
      for j in 1 .. cardinality(r.feats) loop
        val := case when row.values is null or expired then 'null'::jsonb else coalesce(row.values -> r.feats[j], 'null') end;
        res[row.o] := res[row.o] || jsonb_build_object(r.outs[j], val);
        st[row.o] := st[row.o] || jsonb_build_object(r.outs[j],
                       case when row.values is null then 'not_found' when expired then 'outside_ttl' else 'present' end);
      end loop;
    end loop;
  end loop;
  for i in 1 .. coalesce(n, 0) loop
    return next res[i] || jsonb_build_object('_status', st[i]);
  end loop;
end $$;

-- The serving path: one static statement (plpgsql caches its plan per session) resolves the references,
-- computes the entity key once per view and reads the online store by primary key. Anything unusual
-- (on-demand features, unknown names, duplicate output names) goes to the general implementation, which
-- raises the precise error or evaluates on-demand features.
create or replace function features.get_online(features text[], entity_keys jsonb, request jsonb default null,
                                               full_names boolean default false)
returns jsonb
language plpgsql stable parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  res jsonb;
  n_refs int;
  n_rows int;
  n_names int;
begin
  with p as (
    select u.o, m[1] as vname, m[2] as vver, m[3] as feat
      from unnest(get_online.features) with ordinality u(ref, o)
     cross join lateral regexp_match(u.ref, '^\s*([A-Za-z_][A-Za-z0-9_]*)(?:@([0-9]+))?\s*:\s*([A-Za-z_][A-Za-z0-9_]*|\*)\s*$') m),
  vv as materialized (
    -- one catalog lookup per distinct view reference, not per feature
    select d.vname, d.vver, v.*
      from (select distinct p.vname, p.vver from p) d
     cross join lateral (select fv.id, fv.name, fv.version, fv.ttl, fv.join_keys, fv.key_types, fv.features
                           from features.feature_views fv
                          where fv.name = d.vname and (d.vver is null or fv.version = d.vver::int)
                          order by fv.version desc limit 1) v),
  r as (
    select p.o, v.id, v.name, v.version, v.ttl, v.join_keys, v.key_types,
           f.feat, case when full_names then v.name || '__' || f.feat else f.feat end as out_name, f.o2
      from p join vv v on v.vname = p.vname and v.vver is not distinct from p.vver
     cross join lateral (select p.feat as feat, 0::bigint as o2
                          where p.feat <> '*' and v.features @> jsonb_build_array(jsonb_build_object('name', p.feat))
                         union all
                         select x->>'name', o2 from jsonb_array_elements(v.features) with ordinality y(x, o2)
                          where p.feat = '*') f),
  vs as (
    select d.id, d.name, d.version, d.ttl, st.values, st.event_ts,
           (st.values is not null and d.ttl is not null and st.event_ts < now() - d.ttl) as expired
      from (select distinct r.id, r.name, r.version, r.ttl, r.join_keys, r.key_types from r) d
      left join features.online_store st
        on st.view_id = d.id
       and st.entity_key = case when cardinality(d.join_keys) = 1 and d.key_types[1] = 'int'
                                     and jsonb_typeof(entity_keys -> d.join_keys[1]) = 'number'
                                     and (entity_keys -> d.join_keys[1])::text ~ '^-?[0-9]+$'
                                then '[' || (entity_keys -> d.join_keys[1])::text || ']'
                                else features._entity_key(entity_keys, d.join_keys, d.key_types, d.name || '@' || d.version) end)
  select entity_keys
         || jsonb_object_agg(r.out_name, case when vs.values is null or vs.expired then 'null'::jsonb
                                              else coalesce(vs.values -> r.feat, 'null') end)
         || jsonb_build_object('_status', jsonb_object_agg(r.out_name, case when vs.values is null then 'not_found'
                                                                             when vs.expired then 'outside_ttl'
                                                                             else 'present' end))
         || coalesce((select jsonb_build_object('_event_ts', jsonb_object_agg(x.name || '@' || x.version, x.event_ts))
                        from vs x where x.event_ts is not null), '{}'),
         count(distinct r.o), count(*), count(distinct r.out_name)
    into res, n_refs, n_rows, n_names
    from r join vs on vs.id = r.id;
  if n_refs = cardinality(features) and n_rows = n_names then
    return res;
  end if;
  return features._get_online_slow(features, entity_keys, request, full_names);
end $$;
comment on function features.get_online(text[], jsonb, jsonb, boolean) is
  'latest feature values for one entity; past-ttl values come back null with _status outside_ttl';

create or replace function features.get_online_batch(features text[], entity_keys jsonb, request jsonb default null,
                                                     full_names boolean default false)
returns setof jsonb
language plpgsql stable parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  ids bigint[];
  feats text[];
  outs text[];
  n_refs int;
  n_names int;
begin
  if entity_keys is null or jsonb_typeof(entity_keys) <> 'array' then
    raise exception 'entity_keys must be a JSON array of key objects' using errcode = '22023';
  end if;
  -- resolution as static SQL (plan cached per session), same rules as features._resolve_fast
  select array_agg(v.id order by u.o, f.o2), array_agg(f.feat order by u.o, f.o2),
         array_agg(case when full_names then v.name || '__' || f.feat else f.feat end order by u.o, f.o2),
         count(distinct u.o), count(distinct case when full_names then v.name || '__' || f.feat else f.feat end)
    into ids, feats, outs, n_refs, n_names
    from unnest(get_online_batch.features) with ordinality u(ref, o)
   cross join lateral regexp_match(u.ref, '^\s*([A-Za-z_][A-Za-z0-9_]*)(?:@([0-9]+))?\s*:\s*([A-Za-z_][A-Za-z0-9_]*|\*)\s*$') m
   cross join lateral (select fv.id, fv.name, fv.features from features.feature_views fv
                        where fv.name = m[1] and (m[2] is null or fv.version = m[2]::int)
                        order by fv.version desc limit 1) v
   cross join lateral (select m[3] as feat, 0::bigint as o2
                        where m[3] <> '*' and v.features @> jsonb_build_array(jsonb_build_object('name', m[3]))
                       union all
                       select x->>'name', o2 from jsonb_array_elements(v.features) with ordinality y(x, o2)
                        where m[3] = '*') f;
  if n_refs is distinct from cardinality(features) or n_names <> cardinality(outs) then
    return query select * from features._get_online_batch_slow(features, entity_keys, request, full_names);
    return;
  end if;
  return query
  with vs as (
    select fv.id, fv.name, fv.version, fv.ttl, fv.join_keys, fv.key_types
      from features.feature_views fv where fv.id = any (ids)),
  ek as materialized (
    select e.o as eo, e.k as ekeys, vs.id, vs.ttl,
           case when cardinality(vs.join_keys) = 1 and vs.key_types[1] = 'int'
                     and jsonb_typeof(e.k -> vs.join_keys[1]) = 'number' and (e.k -> vs.join_keys[1])::text ~ '^-?[0-9]+$'
                then '[' || (e.k -> vs.join_keys[1])::text || ']'
                else features._entity_key(e.k, vs.join_keys, vs.key_types, vs.name || '@' || vs.version) end as key
      from jsonb_array_elements(entity_keys) with ordinality e(k, o) cross join vs),
  s as (
    select ek.eo, ek.ekeys, ek.id, st.values,
           (st.values is not null and ek.ttl is not null and st.event_ts < now() - ek.ttl) as expired
      from ek left join lateral (select o.values, o.event_ts from features.online_store o
                                  where o.view_id = ek.id and o.entity_key = ek.key offset 0) st on true)
  select s.ekeys
         || jsonb_object_agg(r.out_name, case when s.values is null or s.expired then 'null'::jsonb
                                              else coalesce(s.values -> r.feat, 'null') end)
         || jsonb_build_object('_status', jsonb_object_agg(r.out_name, case when s.values is null then 'not_found'
                                                                             when s.expired then 'outside_ttl'
                                                                             else 'present' end))
    from s join unnest(ids, feats, outs) r(id, feat, out_name) on r.id = s.id
   group by s.eo, s.ekeys
   order by s.eo;
end $$;
comment on function features.get_online_batch(text[], jsonb, jsonb, boolean) is
  'get_online for an array of entity key objects; one jsonb per entity, in input order';

-- the point-in-time join as SQL: for each entity row the latest value with event time <= its timestamp
-- (and within ttl); LATERAL + the (keys, event_ts) index of each offline table, streamed by Postgres
create or replace function features.historical_query(entity_query text, features text[],
                                                     ttl_override interval default null,
                                                     full_names boolean default false,
                                                     timestamp_column text default null)
returns text
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  eq text := ml._relation_sql(entity_query, 'entity query');
  ecols jsonb;
  ts text := timestamp_column;
  tstype text;
  r record;
  v features.feature_views;
  kk text;
  i int;
  n int := 0;
  alias text;
  sel text[] := '{}';
  joins text[] := '{}';
  ttl interval;
  fmap jsonb := '{}';
  od record;
  clash text;
  enames text[];
  method text := coalesce(nullif(current_setting('indb.features_pit_method', true), ''), 'auto');
  est_e float8;
  est_f float8;
  use_merge boolean;
  ctes text[] := '{}';
  keylist text;
  pj json;
begin
  if method not in ('auto', 'lateral', 'merge') then
    raise exception 'indb.features_pit_method must be auto, lateral or merge, got %', method using errcode = '22023';
  end if;
  if ttl_override is not null and ttl_override <= interval '0' then
    raise exception 'ttl_override must be positive, got %', ttl_override using errcode = '22023';
  end if;
  select jsonb_object_agg(d.name, d.type), array_agg(d.name order by d.ord) into ecols, enames
    from features._describe(eq, 'entity query') d;
  if exists (select 1 from unnest(enames) x where x like '\_indb\_%') then
    raise exception 'entity query columns may not start with _indb_' using errcode = '42710';
  end if;
  if ts is null then
    if ecols ? 'event_timestamp' then
      ts := 'event_timestamp';
    else
      select string_agg(key, ',') into ts from jsonb_each_text(ecols)
       where value in ('timestamp with time zone', 'timestamp without time zone', 'date');
      if ts is null or ts like '%,%' then
        raise exception 'the entity query needs one event timestamp column'
          using errcode = case when ts is null then '42703' else '42702' end,
          detail = case when ts is null then 'it has no timestamp column' else 'several timestamp columns: ' || ts end,
          hint = 'name it event_timestamp, or pass timestamp_column => ''...''';
      end if;
    end if;
  end if;
  tstype := ecols ->> ts;
  if tstype is null or tstype not in ('timestamp with time zone', 'timestamp without time zone', 'date') then
    raise exception 'entity timestamp column "%" is missing or not a timestamp (%)', ts, coalesce(tstype, 'absent')
      using errcode = '42804', hint = 'cast it in the entity query, e.g. to_timestamp(epoch) as event_timestamp';
  end if;
  for r in select s.view_id, array_agg(s.feature order by s.ord) as feats, array_agg(s.out_name order by s.ord) as outs,
                  array_agg(s.hidden order by s.ord) as hid
             from features._resolve(historical_query.features, full_names) s where s.view_id is not null
            group by s.view_id order by min(s.ord)
  loop
    select * into v from features.feature_views where id = r.view_id;
    n := n + 1;
    alias := 'f' || n;
    foreach kk in array v.join_keys loop
      if ecols ->> kk is null then
        raise exception 'the entity query lacks join key "%" of feature view %@%', kk, v.name, v.version
          using errcode = '42703', detail = 'its columns: ' || (select string_agg(x, ', ') from jsonb_object_keys(ecols) x);
      end if;
    end loop;
    for i in 1 .. cardinality(v.join_keys) loop
      if features._key_kind(ecols ->> v.join_keys[i]) is distinct from v.key_types[i] then
        raise exception 'join key "%" has type % in the entity query but % keys in feature view %@%',
          v.join_keys[i], ecols ->> v.join_keys[i], case when v.key_types[i] = 'int' then 'integer' else 'text' end,
          v.name, v.version using errcode = '42804', hint = 'cast the key in the entity query';
      end if;
    end loop;
    ttl := coalesce(ttl_override, v.ttl);
    -- strategy per view: LATERAL index probes (streams; best when entity rows are few compared with feature
    -- rows) or a sort-merge with window functions (best when they are comparable; sorts spill to disk, so
    -- memory stays bounded by work_mem)
    use_merge := method = 'merge';
    if method = 'auto' then
      if est_e is null then
        execute 'explain (format json) select * from (' || eq || ') q' into pj;
        est_e := (pj -> 0 -> 'Plan' ->> 'Plan Rows')::float8;
      end if;
      select sum(c.reltuples) filter (where c.reltuples >= 0) into est_f
        from pg_inherits i join pg_class c on c.oid = i.inhrelid where i.inhparent = v.offline_table::regclass;
      use_merge := est_f is not null and est_f < 6 * est_e;
    end if;
    if not use_merge then
      joins := joins || format('left join lateral (select %s from %s o where %s and o.event_ts <= e.%I::timestamptz%s order by o.event_ts desc limit 1) %I on true',
        (select string_agg(format('o.%I', f), ', ') from unnest(r.feats) f), v.offline_table,
        (select string_agg(format('o.%I = e.%I', k2, k2), ' and ') from unnest(v.join_keys) k2),
        ts, case when ttl is not null then format(' and o.event_ts >= e.%I::timestamptz - %L::interval', ts, ttl) else '' end,
        alias);
    else
      keylist := (select string_agg(format('%I', k2), ', ') from unnest(v.join_keys) k2);
      ctes := ctes || format($m$%I as (
        select _indb_rid, %s from (
          select _indb_rid, _indb_k, _indb_t, first_value(_indb_fts) over w as _indb_fts, %s
            from (select *, count(_indb_fts) over (partition by %s order by _indb_t, _indb_k rows unbounded preceding) as _indb_grp
                    from (select e._indb_rid, %s, e.%I::timestamptz as _indb_t, 1 as _indb_k, null::timestamptz as _indb_fts, %s
                            from e where e.%I is not null
                          union all
                          select null, %s, o.event_ts, 0, o.event_ts, %s from %s o) u) g
          window w as (partition by %s, _indb_grp order by _indb_t, _indb_k)) h
         where _indb_k = 1)$m$,
        alias,
        (select string_agg(case when ttl is null then format('%I', f)
                                else format('case when _indb_fts >= _indb_t - %L::interval then %I end as %I', ttl, f, f) end, ', ')
           from unnest(r.feats) f),
        (select string_agg(format('first_value(%I) over w as %I', f, f), ', ') from unnest(r.feats) f),
        keylist,
        (select string_agg(format('e.%I', k2), ', ') from unnest(v.join_keys) k2), ts,
        (select string_agg(format('null::%s as %I', x->>'type', x->>'name'), ', ' order by fo)
           from unnest(r.feats) with ordinality uf(f, fo)
           join lateral (select y from jsonb_array_elements(v.features) y where y->>'name' = uf.f) z(x) on true),
        ts,
        (select string_agg(format('o.%I', k2), ', ') from unnest(v.join_keys) k2),
        (select string_agg(format('o.%I', f), ', ') from unnest(r.feats) f), v.offline_table,
        keylist);
      joins := joins || format('left join %I on %I._indb_rid = e._indb_rid', alias, alias);
    end if;
    for i in 1 .. cardinality(r.feats) loop
      fmap := fmap || jsonb_build_object(r.feats[i], format('%I.%I', alias, r.feats[i]));
      if not r.hid[i] then
        if ecols ? r.outs[i] then
          raise exception 'feature "%" has the same name as a column of the entity query', r.outs[i] using errcode = '42710',
            hint = 'rename the column in the entity query, or use full_names => true';
        end if;
        sel := sel || format('%I.%I as %I', alias, r.feats[i], r.outs[i]);
      end if;
    end loop;
  end loop;
  for od in select s.out_name, o.function_name, o.request_fields, o.inputs from features._resolve(historical_query.features, full_names) s
              join features.on_demand_features o on o.id = s.odfv_id where s.view_id is null order by s.ord loop
    select string_agg(k, ', ') into clash from jsonb_object_keys(od.request_fields) k where not ecols ? k;
    if clash is not null then
      raise exception 'on-demand feature "%" needs request fields the entity query lacks: %', od.out_name, clash
        using errcode = '42703';
    end if;
    sel := sel || format('%s(%s, %s) as %I', od.function_name,
      coalesce((select 'jsonb_build_object(' || string_agg(format('%L, e.%I', k, k), ', ') || ')'
                  from jsonb_object_keys(od.request_fields) k), '''{}''::jsonb'),
      (select 'jsonb_build_object(' || string_agg(format('%L, %s', split_part(inp, ':', 2), fmap ->> split_part(inp, ':', 2)), ', ') || ')'
         from unnest(od.inputs) inp),
      od.out_name);
  end loop;
  if cardinality(ctes) = 0 then
    return format('select e.*%s from (%s) e %s',
                  coalesce(', ' || array_to_string(sel, ', '), ''), eq, array_to_string(joins, ' '));
  end if;
  return format('with e as materialized (select row_number() over () as _indb_rid, q.* from (%s) q), %s select %s%s from e %s order by e._indb_rid',
                eq, array_to_string(ctes, ', '),
                (select string_agg(format('e.%I', u.cn), ', ' order by u.co) from unnest(enames) with ordinality u(cn, co)),
                coalesce(', ' || array_to_string(sel, ', '), ''), array_to_string(joins, ' '));
end $$;
comment on function features.historical_query(text, text[], interval, boolean, text) is
  'the SQL of the point-in-time join get_historical runs (for CREATE TABLE AS, COPY, EXPLAIN)';

create or replace function features.get_historical(entity_query text, features text[],
                                                   ttl_override interval default null,
                                                   full_names boolean default false,
                                                   timestamp_column text default null)
returns setof jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
begin
  return query execute format('select to_jsonb(h) from (%s) h',
    features.historical_query(entity_query, features, ttl_override, full_names, timestamp_column));
end $$;
comment on function features.get_historical(text, text[], interval, boolean, text) is
  'point-in-time join: per entity row the latest feature values at or before its timestamp, within ttl';

create or replace function features.create_training_set(name text, entity_query text, features text[],
                                                        label text default null,
                                                        ttl_override interval default null,
                                                        timestamp_column text default null)
returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  parts text[];
  rel text;
  q text;
  n bigint;
  ds bigint;
  cols jsonb;
  views jsonb;
begin
  begin
    parts := parse_ident(name);
  exception when others then
    raise exception 'invalid training set name %', coalesce(quote_literal(name), 'NULL') using errcode = '22023',
      hint = 'use a table name such as user_training or myschema.user_training';
  end;
  if cardinality(parts) = 1 then
    parts := array['public'] || parts;
  elsif cardinality(parts) <> 2 then
    raise exception 'invalid training set name %', name using errcode = '22023';
  end if;
  rel := format('%I.%I', parts[1], parts[2]);
  if to_regclass(rel) is not null then
    raise exception 'relation % already exists', rel using errcode = '42P07',
      hint = 'training sets are immutable snapshots: choose a new name or drop the old table';
  end if;
  q := features.historical_query(entity_query, features, ttl_override, false, timestamp_column);
  execute format('create table %s as %s', rel, q);
  get diagnostics n = row_count;
  select jsonb_agg(jsonb_build_object('name', attname, 'type', format_type(atttypid, atttypmod)) order by attnum) into cols
    from pg_attribute where attrelid = rel::regclass and attnum > 0 and not attisdropped;
  if label is not null and not exists (select 1 from jsonb_array_elements(cols) c where c->>'name' = label) then
    raise exception 'label column "%" is not in the training set', label using errcode = '42703',
      hint = 'the label comes from the entity query, e.g. select user_id, ts as event_timestamp, rating from ratings';
  end if;
  select jsonb_agg(distinct s.view_ref) into views from features._resolve(create_training_set.features, false) s
   where s.view_id is not null;
  insert into registry.datasets (name, digest, source, kind, row_count, schema, profile, materialized)
  values (name, md5(q || clock_timestamp()::text), entity_query, 'training_set', n,
          jsonb_build_object('columns', cols, 'label', label, 'features', to_jsonb(create_training_set.features),
                             'feature_views', views, 'query', q,
                             'feature_columns', (select jsonb_agg(s.out_name order by s.ord)
                                                   from features._resolve(create_training_set.features, false) s
                                                  where not s.hidden)),
          null, rel::regclass)
  returning id into ds;
  insert into registry.lineage_edges (src_kind, src_id, dst_kind, dst_id, relation)
  select distinct 'feature_view_version', s.view_id::text, 'training_set', ds::text, 'features_of'
    from features._resolve(create_training_set.features, false) s where s.view_id is not null
  on conflict do nothing;
  return jsonb_build_object('dataset_id', ds, 'relation', rel, 'rows', n, 'label', label, 'feature_views', views);
end $$;
comment on function features.create_training_set(text, text, text[], text, interval, text) is
  'materialize a point-in-time join as a table, registered as a registry.datasets training_set with lineage';

create or replace function features.training_set(name text) returns jsonb
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select jsonb_build_object('dataset_id', d.id, 'relation', d.materialized::text, 'rows', d.row_count,
                            'label', d.schema->>'label', 'columns', d.schema->'columns',
                            'feature_columns', d.schema->'feature_columns', 'created_at', d.created_at)
    from registry.datasets d where d.kind = 'training_set' and d.name = training_set.name
   order by d.id desc limit 1
$$;

------------------------------------------------------------------------------------------------------------
-- on-demand features
