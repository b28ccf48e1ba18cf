-- Feature store, reads: online serving, point-in-time joins (historical), training sets. All SECURITY INVOKER:
-- row-level security shows the caller its tenant's views and stores and the shared ones.

-- the general online path: on-demand features, and every error with its precise message
create or replace function features._get_online_slow(features text[], entity_keys jsonb, request jsonb,
                                                     full_names boolean)
returns jsonb
language plpgsql stable parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  r record;
  v features.feature_views;
  vals jsonb;
  ets timestamptz;
  expired boolean;
  res jsonb := entity_keys;
  status jsonb := '{}';
  event_ts jsonb := '{}';
  inputs jsonb := '{}';
  input_status jsonb := '{}';
  od record;
  val jsonb;
  i int;
begin
  for r in select s.view_id, array_agg(s.feature order by s.ord) as feats, array_agg(s.out_name order by s.ord) as outs,
                  array_agg(s.hidden order by s.ord) as hid
             from features._resolve(_get_online_slow.features, full_names) s where s.view_id is not null group by s.view_id
  loop
    select * into v from features.feature_views where id = r.view_id;
    select o.values, o.event_ts into vals, ets from features.online_store o
     where o.view_id = r.view_id
       and o.entity_key = features._entity_key(entity_keys, v.join_keys, v.key_types, v.name || '@' || v.version);
    expired := features._expired(ets, v.ttl);
    for i in 1 .. cardinality(r.feats) loop
      val := features._served(vals, expired, r.feats[i]);
      inputs := inputs || jsonb_build_object(r.feats[i], val);
      input_status := input_status || jsonb_build_object(r.feats[i], features._status(vals is not null, expired, vals -> r.feats[i]));
      if not r.hid[i] then
        res := res || jsonb_build_object(r.outs[i], val);
        status := status || jsonb_build_object(r.outs[i], features._status(vals is not null, expired, vals -> r.feats[i]));
      end if;
    end loop;
    if vals is not null then
      event_ts := event_ts || jsonb_build_object(v.name || '@' || v.version, ets);
    end if;
  end loop;
  for od in select s.out_name, s.odfv_id from features._resolve(_get_online_slow.features, full_names) s
             where s.view_id is null order by s.ord loop
    val := features._odfv_online(od.odfv_id, request, inputs);
    res := res || jsonb_build_object(od.out_name, val);
    status := status || jsonb_build_object(od.out_name, features._odfv_status(od.odfv_id, input_status, val));
  end loop;
  -- (_event_ts from its own object: an entity key spelled _event_ts is replaced, as _status is)
  return res || jsonb_build_object('_status', status)
         || case when event_ts <> '{}' then jsonb_build_object('_event_ts', event_ts) else '{}' end;
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
  has_odfv boolean;
begin
  select bool_or(s.view_id is null) into has_odfv from features._resolve(_get_online_batch_slow.features, full_names) s;
  if has_odfv then
    -- on-demand features need per-entity request data: evaluate entity by entity with the same code
    if request is not null and jsonb_typeof(request) = 'array'
       and jsonb_array_length(request) <> jsonb_array_length(entity_keys) then
      raise exception 'request holds % objects for % entities', jsonb_array_length(request),
        jsonb_array_length(entity_keys) using errcode = '22023',
        hint = 'pass one request object per entity, in the same order, or one object for all';
    end if;
    -- (without get_online's _event_ts, as every batch answer; an entity key of that name stays)
    return query select (features.get_online(_get_online_batch_slow.features, e.k,
                                             case when jsonb_typeof(request) = 'array' then request -> (e.o::int - 1)
                                                  else request end, full_names) - '_event_ts')
                        || case when e.k ? '_event_ts' then jsonb_build_object('_event_ts', e.k -> '_event_ts')
                                else '{}' end
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
      expired := features._expired(row.event_ts, v.ttl);
      for j in 1 .. cardinality(r.feats) loop
        res[row.o] := res[row.o] || jsonb_build_object(r.outs[j], features._served(row.values, expired, r.feats[j]));
        st[row.o] := st[row.o] || jsonb_build_object(r.outs[j], features._status(row.values is not null, expired, row.values -> r.feats[j]));
      end loop;
    end loop;
  end loop;
  for i in 1 .. coalesce(n, 0) loop
    return next res[i] || jsonb_build_object('_status', st[i]);
  end loop;
end $$;

-- The serving path, in two steps (plpgsql caches the plans of both per session):
-- * the common request, distinct plain names of one view (no '*', no full_names): one statement finds the
--   view by the references' prefix and checks the names against its features, one reads the online store by
--   primary key, and the answer is built from the stored object (the requested part with one jsonb operation,
--   the _status objects with one call each) when the row holds every requested feature, none of them null, and
--   nothing else, or is missing, or is past the ttl. ~0.67M instructions a call for 20 features (0.76M under
--   row security), against ~1.8M for the statement below, which parses each reference with a regular expression;
-- * anything else, and a row that holds a null or lacks a feature: one static statement resolves the
--   references, computes the entity key once per view, reads the online store by primary key and builds the
--   answer feature by feature. The small functions it calls (_parse_feature_ref, _online_key, _expired, _served,
--   _status) are plain SQL, inlined by the planner. Anything unusual (on-demand features, unknown names,
--   duplicate output names) goes on to the general implementation, which raises the precise error or evaluates
--   on-demand features.
-- Both give the same answers (tests/sql/test_features_store.py compares them with the general implementation).
create or replace function features.get_online(features text[], entity_keys jsonb, request jsonb default null,
                                               full_names boolean default false)
returns jsonb
language plpgsql stable parallel unsafe
set search_path = pg_catalog, pg_temp
-- one plan per session from the first call (the plan PostgreSQL settles on after five calls planned for their
-- arguments, ~0.8 ms of planning each): calls 2-5 of a new connection took 1.8-2.5 ms instead of ~1 ms
set plan_cache_mode = force_generic_plan
as $$
declare
  res jsonb;
  n_refs int;
  n_rows int;
  n_names int;
  sv record;
  pre text;
  skey text;
  vals jsonb;
  ts timestamptz;
  mine jsonb;
begin
  -- the common request: every reference is '<view>:<feature>' with one view prefix ('name' or 'name@version'),
  -- each feature once. No regular expression: the view is looked up by the prefix spelled exactly as its name
  -- or name@version, and the features must be names of its features (identifiers: a reference with blanks,
  -- '*', another ':' or a name the view lacks is none, and goes to the statement below)
  pre := split_part(features[1], ':', 1);
  select fv.id, fv.name || '@' || fv.version as ref, fv.ttl, fv.join_keys, fv.key_types, q.feats, q.ok,
         array(select y->>'name' from jsonb_array_elements(fv.features) y) as names
    into sv
    from (select array_agg(substr(u.r, length(pre) + 2) order by u.o) as feats,
                 count(*) = count(distinct u.r) and bool_and(starts_with(u.r, pre || ':')) as ok
            from unnest(get_online.features) with ordinality u(r, o)) q
   cross join lateral (select * from features.feature_views fv
                        where fv.name = split_part(pre, '@', 1) and (fv.name = pre or fv.name || '@' || fv.version = pre)
                        order by fv.version desc limit 1) fv;
  if found and sv.ok and sv.names @> sv.feats and not full_names then
    -- the key first, then a read that compares columns with values (row security lets it reach the primary key)
    skey := features._online_key(entity_keys, sv.join_keys, sv.key_types, sv.ref);
    select o.values, o.event_ts into vals, ts from features.online_store o where o.view_id = sv.id and o.entity_key = skey;
    if vals is null then
      return entity_keys || jsonb_object(sv.feats, array_fill(null::text, array[cardinality(sv.feats)]))
             || jsonb_build_object('_status', jsonb_object(sv.feats, array_fill('not_found'::text, array[cardinality(sv.feats)])));
    elsif features._expired(ts, sv.ttl) then
      return entity_keys || jsonb_object(sv.feats, array_fill(null::text, array[cardinality(sv.feats)]))
             || jsonb_build_object('_status', jsonb_object(sv.feats, array_fill('outside_ttl'::text, array[cardinality(sv.feats)])),
                                   '_event_ts', jsonb_build_object(sv.ref, ts));
    end if;
    -- the requested part: the whole object when every feature is requested
    mine := case when cardinality(sv.feats) = cardinality(sv.names) then vals
                 else vals - array(select x from unnest(sv.names) x where not x = any (sv.feats)) end;
    -- every requested feature there and not null (nulls stripped first), and nothing else
    if jsonb_strip_nulls(mine) ?& sv.feats and mine - sv.feats = '{}' then
      return entity_keys || mine
             || jsonb_build_object('_status', jsonb_object(sv.feats, array_fill('present'::text, array[cardinality(sv.feats)])),
                                   '_event_ts', jsonb_build_object(sv.ref, ts));
    end if;
  end if;
  with p as (select * from features._parse_feature_refs(get_online.features)),
  vv as materialized (
    -- one catalog lookup per distinct view reference, not per feature, with its feature names as an array
    select d.vname, d.vver, v.*
      from (select distinct p.vname, p.vver from p) d
     cross join lateral (select fv.id, fv.name, fv.version, fv.ttl, fv.join_keys, fv.key_types,
                                array(select y->>'name' from jsonb_array_elements(fv.features) y) as names
                           from features.feature_views fv
                          where fv.name = d.vname and (d.vver is null or fv.version = d.vver::int)
                          order by fv.version desc limit 1) v),
  r as (
    select p.o, v.id, v.name, v.version, v.ttl, v.join_keys, v.key_types,
           f.feat, case when full_names then v.name || '__' || f.feat else f.feat end as out_name, f.o2
      from p join vv v on v.vname = p.vname and v.vver is not distinct from p.vver
     cross join lateral (select p.feat as feat, 0::bigint as o2 where p.feat <> '*' and p.feat = any (v.names)
                         union all
                         select n, o2 from unnest(v.names) with ordinality y(n, o2) where p.feat = '*') f),
  -- the key is computed first (its own step), so that the read compares two columns: under row security (every
  -- caller but a superuser) only leakproof conditions reach the index, and a function of the view's columns
  -- is not one; the read then scanned the whole online store
  d as materialized (
    select x.id, x.name, x.version, x.ttl,
           features._online_key(entity_keys, x.join_keys, x.key_types, x.name || '@' || x.version) as key
      from (select distinct r.id, r.name, r.version, r.ttl, r.join_keys, r.key_types from r) x),
  vs as (
    select d.id, d.name, d.version, d.ttl, st.values, st.event_ts, features._expired(st.event_ts, d.ttl) as expired
      from d left join lateral (select o.values, o.event_ts from features.online_store o
                                 where o.view_id = d.id and o.entity_key = d.key offset 0) st on true)
  select entity_keys
         || jsonb_object_agg(r.out_name, features._served(vs.values, vs.expired, r.feat))
         || jsonb_build_object('_status', jsonb_object_agg(r.out_name, features._status(vs.values is not null, vs.expired, vs.values -> r.feat)))
         -- (no _event_ts when no view has a row, as in the general implementation: the aggregate over no rows
         -- gave "_event_ts": null)
         || coalesce((select jsonb_build_object('_event_ts', jsonb_object_agg(x.name || '@' || x.version, x.event_ts))
                        from vs x where x.event_ts is not null having count(*) > 0), '{}'),
         count(distinct r.o), count(*), count(distinct r.out_name)
    into res, n_refs, n_rows, n_names
    from r join vs on vs.id = r.id;
  if n_refs = cardinality(features) and n_rows = n_names then
    return res;
  end if;
  return features._get_online_slow(features, entity_keys, request, coalesce(full_names, false));
end $$;
comment on function features.get_online(text[], jsonb, jsonb, boolean) is
  'latest feature values for one entity: {keys..., feature: value, _status: {feature: present | null_value | '
  'not_found | outside_ttl}, _event_ts: {view: time}}; past-ttl values come back null with _status outside_ttl';

-- the general batch: one jsonb per (entity, feature); for full_names and requests over several views
create or replace function features._get_online_batch_general(ids bigint[], feats text[], outs text[],
                                                              entity_keys jsonb)
returns setof jsonb
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  with vs as (
    select fv.id, fv.name, fv.version, fv.ttl, fv.join_keys, fv.key_types
      from features.feature_views fv where fv.id = any (ids)),
  ek as materialized (
    select e.o as eo, e.k as ekeys, vs.id, vs.ttl,
           features._online_key(e.k, vs.join_keys, vs.key_types, vs.name || '@' || vs.version) as key
      from jsonb_array_elements(entity_keys) with ordinality e(k, o) cross join vs),
  s as (
    select ek.eo, ek.ekeys, ek.id, st.values, features._expired(st.event_ts, ek.ttl) as expired
      from ek left join lateral (select o.values, o.event_ts from features.online_store o
                                  where o.view_id = ek.id and o.entity_key = ek.key offset 0) st on true)
  select s.ekeys
         || jsonb_object_agg(r.out_name, features._served(s.values, s.expired, r.feat))
         || jsonb_build_object('_status', jsonb_object_agg(r.out_name, features._status(s.values is not null, s.expired, s.values -> r.feat)))
    from s join unnest(ids, feats, outs) r(id, feat, out_name) on r.id = s.id
   group by s.eo, s.ekeys
   order by s.eo
$$;

-- The batch serving path. Per view, once: the requested features, the view's other features, and the answers
-- that do not depend on the entity (all null + not_found, all null + outside_ttl, all present). Per
-- (entity, view): one primary-key read; when the row holds every requested feature, none of them null and
-- nothing else, the answer is the stored object minus the other features (one jsonb operation) with the
-- all-present status; only other rows are built feature by feature. The same answers as the general path, which
-- serves full_names and requests over several views.
create or replace function features.get_online_batch(features text[], entity_keys jsonb, request jsonb default null,
                                                     full_names boolean default false)
returns setof jsonb
language plpgsql stable parallel unsafe
set search_path = pg_catalog, pg_temp
-- the first five calls of a session are planned for their own arguments, and the planner's estimate for a batch
-- (entities x views x features: 40,000 rows for 100 x 20) passed jit_above_cost: each of them compiled its plan,
-- 30-40 ms, for a query that then ran in ~1 ms. One plan per session from the first call, as in get_online
set jit = off
set plan_cache_mode = force_generic_plan
as $$
declare
  ids bigint[];
  feats text[];
  outs text[];
  n_refs int;
  n_names int;
begin
  if entity_keys is null or jsonb_typeof(entity_keys) <> 'array' then
    raise exception 'entity_keys must be a JSON array of key objects' using errcode = '22023',
      hint = 'e.g. ''[{"user_id": 1}, {"user_id": 2}]''';
  end if;
  -- resolution as static SQL (plan cached per session), same rules as features._resolve_fast: each reference
  -- parsed once, each distinct view looked up once with its feature names as an array (a membership test per
  -- reference instead of a jsonb containment over the view's feature list)
  with p as (select * from features._parse_feature_refs(get_online_batch.features)),
  vv as materialized (
    select d.vname, d.vver, v.id, v.name, v.names
      from (select distinct p.vname, p.vver from p) d
     cross join lateral (select fv.id, fv.name, array(select y->>'name' from jsonb_array_elements(fv.features) y) as names
                           from features.feature_views fv
                          where fv.name = d.vname and (d.vver is null or fv.version = d.vver::int)
                          order by fv.version desc limit 1) v)
  select array_agg(vv.id order by p.o, f.o2), array_agg(f.feat order by p.o, f.o2),
         array_agg(case when full_names then vv.name || '__' || f.feat else f.feat end order by p.o, f.o2),
         count(distinct p.o), count(distinct case when full_names then vv.name || '__' || f.feat else f.feat end)
    into ids, feats, outs, n_refs, n_names
    from p join vv on vv.vname = p.vname and vv.vver is not distinct from p.vver
   cross join lateral (select p.feat as feat, 0::bigint as o2 where p.feat <> '*' and p.feat = any (vv.names)
                       union all
                       select n, o2 from unnest(vv.names) with ordinality y(n, o2) where p.feat = '*') f;
  if n_refs is distinct from cardinality(features) or n_names <> cardinality(outs) then
    return query select * from features._get_online_batch_slow(features, entity_keys, request, coalesce(full_names, false));
    return;
  end if;
  if not full_names and ids = array_fill(ids[1], array[cardinality(ids)]) then
    -- one view (the common case): one row per entity, no merge. The answers that do not depend on the entity
    -- (not found, past the ttl, the all-present _status) are built once per call, _status included
    return query
    with vs as materialized (
      select fv.id, fv.ttl, fv.join_keys, fv.key_types, fv.name || '@' || fv.version as ref, r.req,
             array(select x->>'name' from jsonb_array_elements(fv.features) x where not (x->>'name' = any (r.req))) as other,
             (select jsonb_object_agg(f, 'null'::jsonb) || jsonb_build_object('_status', jsonb_object_agg(f, 'not_found'))
                from unnest(r.req) f) as ans_not_found,
             (select jsonb_object_agg(f, 'null'::jsonb) || jsonb_build_object('_status', jsonb_object_agg(f, 'outside_ttl'))
                from unnest(r.req) f) as ans_ttl,
             (select jsonb_build_object('_status', jsonb_object_agg(f, 'present')) from unnest(r.req) f) as st_present
        from (select u.id, array_agg(u.feat) as req from unnest(ids, feats) u(id, feat) group by u.id) r
        join features.feature_views fv on fv.id = r.id),
    -- keys first, in their own step: the read below compares columns, which row security lets reach the
    -- primary key (see get_online)
    ek as materialized (
      select e.o, e.k, features._online_key(e.k, vs.join_keys, vs.key_types, vs.ref) as key
        from jsonb_array_elements(entity_keys) with ordinality e(k, o) cross join vs),
    -- (the requested part of the row, `mine`, computed in the read's own step: as a column of s it was computed
    -- again at each of its three uses below)
    s as (
      select ek.o, ek.k, vs.req, vs.ans_not_found, vs.ans_ttl, vs.st_present, st.values,
             features._expired(st.event_ts, vs.ttl) as expired, st.mine
        from ek cross join vs
        left join lateral (select o.values, o.event_ts, o.values - vs.other as mine from features.online_store o
                            where o.view_id = vs.id and o.entity_key = ek.key offset 0) st on true)
    select case when s.values is null then s.k || s.ans_not_found
                when s.expired then s.k || s.ans_ttl
                -- every requested feature there and not null (nulls stripped first), and nothing else
                when jsonb_strip_nulls(s.mine) ?& s.req and s.mine - s.req = '{}' then
                  -- the same object as s.k || s.mine || s.st_present (a feature's value wins over an entity key of
                  -- its name, _status over both), built with one concatenation of the entity's 21 keys instead of
                  -- two: ~1.5 us an entity less
                  case when s.k ?| s.req then s.k || s.mine || s.st_present else s.mine || (s.k || s.st_present) end
                else s.k || (select jsonb_object_agg(f, features._served(s.values, false, f)) from unnest(s.req) f)
                         || jsonb_build_object('_status', (select jsonb_object_agg(f, features._status(true, false, s.values -> f))
                                                             from unnest(s.req) f)) end
      from s order by s.o;
    return;
  end if;
  return query select * from features._get_online_batch_general(ids, feats, outs, entity_keys);
end $$;
comment on function features.get_online_batch(text[], jsonb, jsonb, boolean) is
  'get_online for an array of entity key objects; one jsonb per entity, in input order';

-- ---------------------------------------------------------------------------------------------------------
-- point in time: for each entity row the latest value with event time <= its timestamp (and within ttl).
-- historical_query builds the SQL in named steps; get_historical and create_training_set run it.

-- the entity query's columns {name: type} in order, and its event timestamp column
create or replace function features._entity_columns(eq text, timestamp_column text,
                                                    out ecols jsonb, out enames text[], out ts text)
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  tstype text;
begin
  select jsonb_object_agg(d.name, d.type), array_agg(d.name order by d.ord) into ecols, enames
    from features._describe(eq, 'entity query') d;
  if exists (select 1 from unnest(enames) x where x like '\_indb\_%') then
    raise exception 'entity query columns may not start with _indb_' using errcode = '42710',
      hint = 'rename the column in the entity query';
  end if;
  ts := timestamp_column;
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
end $$;

-- the entity query has every join key of the view, with a matching kind
create or replace function features._check_entity_keys(v features.feature_views, ecols jsonb) returns void
language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare i int;
begin
  for i in 1 .. cardinality(v.join_keys) loop
    if ecols ->> v.join_keys[i] is null then
      raise exception 'the entity query lacks join key "%" of feature view %@%', v.join_keys[i], v.name, v.version
        using errcode = '42703', detail = 'its columns: ' || (select string_agg(x, ', ') from jsonb_object_keys(ecols) x),
        hint = 'select the key under that name in the entity query';
    end if;
    if features._key_kind(ecols ->> v.join_keys[i]) is distinct from v.key_types[i] then
      raise exception 'join key "%" has type % in the entity query but % keys in feature view %@%',
        v.join_keys[i], ecols ->> v.join_keys[i], case when v.key_types[i] = 'int' then 'integer' else 'text' end,
        v.name, v.version using errcode = '42804', hint = 'cast the key in the entity query';
    end if;
  end loop;
end $$;

-- strategy per view (indb.features_pit_method = auto | asof | lateral | lvcf | merge):
-- - asof (C, sql/c/indb_pit.c): the entity rows read once into memory; each view's offline rows read by one
--   sequential scan, sorted in memory by (key, event_ts), and binary-searched per entity row; rows go out in the
--   entity query's order, without a join back. Memory: the entity rows, the result and the largest view;
-- - lateral: one index probe per entity row (streams; best when entity rows are few compared with feature rows);
-- - lvcf ("last value carried forward", one sort): the entity rows, sorted by (keys, time), merged with the
--   offline store read in its primary-key order (no sort), one running max(event_ts) per key, then one keyed
--   read of that offline row; spills to disk within work_mem instead of holding a view in memory;
-- - merge: the earlier sort-merge (two window passes), kept for comparison.
-- auto: lateral when feature rows >= 6 x entity rows (or the store was never analyzed); otherwise asof when the
-- view's offline rows fit in indb.features_pit_asof_mb (default 1024; estimated at 64 bytes a row and 16 a
-- feature), else lvcf. asof itself stops with advice (54000) past twice that, should the statistics be wrong.
create or replace function features._pit_method(v features.feature_views, est_entities float8, nfeat int)
returns text
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  method text := coalesce(nullif(current_setting('indb.features_pit_method', true), ''), 'auto');
  mb text := nullif(current_setting('indb.features_pit_asof_mb', true), '');
  est_f float8;
begin
  if method not in ('auto', 'asof', 'lateral', 'lvcf', 'merge') then
    raise exception 'indb.features_pit_method must be auto, asof, lateral, lvcf or merge, got %', method
      using errcode = '22023', hint = 'RESET indb.features_pit_method';
  end if;
  if method <> 'auto' then
    return method;
  end if;
  if mb is not null and mb !~ '^[0-9]{1,9}$' then
    raise exception 'indb.features_pit_asof_mb must be a number of megabytes, got %', mb
      using errcode = '22023', hint = 'SET indb.features_pit_asof_mb = 1024, or RESET it';
  end if;
  select sum(c.reltuples) filter (where c.reltuples >= 0) into est_f
    from pg_inherits i join pg_class c on c.oid = i.inhrelid where i.inhparent = features._offline_rel(v.id);
  if est_f is null or est_f >= 6 * est_entities then
    return 'lateral';  -- a store never analyzed: the strategy that streams, whatever its size
  end if;
  return case when est_f * (64 + 16 * nfeat) <= coalesce(mb::float8, 1024) * 1048576 then 'asof' else 'lvcf' end;
end $$;

-- the asof strategy (header above): entity_sql returns the entity query's n_pass columns, the entity row's
-- time as timestamptz, then the views' join key columns, each cast to bigint or text, each once; view i has
-- view_keys[i] keys, whose places among those key columns (1-based) come next in key_pos; view_sql[i] returns
-- view i's offline rows as (keys cast the same way, event_ts, written_at, features). SECURITY INVOKER,
-- read-only: both queries run as the caller, under row-level security like any query of the caller's
create or replace function features._pit_asof(entity_sql text, n_pass int, view_sql text[], view_keys int[],
                                              key_pos int[], view_ttl interval[], cutoff boolean)
returns setof record
language c stable parallel unsafe
as '$libdir/indb_pit', 'indb_pit_asof';
comment on function features._pit_asof(text, int, text[], int[], int[], interval[], boolean) is
  'internal: the point-in-time join''s asof strategy (sql/c/indb_pit.c); features.historical_query writes its calls';

-- LATERAL join: the latest offline row per entity row, by index probe. cutoff: only rows written (written_at,
-- the store's created timestamp) at or before the entity row's time, so a late write about an earlier event
-- does not leak into a row that could not have seen it
create or replace function features._pit_lateral(v features.feature_views, feats text[], ts text, ttl interval,
                                                 alias text, cutoff boolean)
returns text
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select format('left join lateral (select %s from %s o where %s and o.event_ts <= e.%I::timestamptz%s%s order by o.event_ts desc limit 1) %I on true',
    (select string_agg(format('o.%I', f), ', ') from unnest(feats) f), features._offline_rel(v.id),
    (select string_agg(format('o.%I = e.%I', k, k), ' and ') from unnest(v.join_keys) k),
    ts, case when ttl is not null then format(' and o.event_ts >= e.%I::timestamptz - %L::interval', ts, ttl) else '' end,
    case when cutoff then format(' and o.written_at <= e.%I::timestamptz', ts) else '' end,
    alias)
$$;

-- sort-merge with the created-timestamp cutoff: an offline row becomes visible at greatest(event_ts, written_at);
-- one stream per entity key ordered by that visibility time carries forward the latest event time seen so far
-- (a running max, since a late write about an old event may arrive after a newer event); each entity row then
-- reads that one offline row by its unique (keys, event_ts) index
create or replace function features._pit_merge_cutoff(v features.feature_views, feats text[], ts text, ttl interval,
                                                      alias text)
returns text
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select format($m$%I as (
    select b._indb_rid, %s from (
      select _indb_rid, %s, _indb_t, _indb_k,
             max(_indb_fts) over (partition by %s order by _indb_v, _indb_k rows unbounded preceding) as _indb_best
        from (select e._indb_rid, %s, e.%I::timestamptz as _indb_t, e.%I::timestamptz as _indb_v, 1 as _indb_k,
                     null::timestamptz as _indb_fts
                from e where e.%I is not null
              union all
              select null, %s, null, greatest(o.event_ts, o.written_at), 0, o.event_ts from %s o) u) b
    left join %s o on %s and o.event_ts = b._indb_best%s
     where b._indb_k = 1)$m$,
    alias,
    (select string_agg(format('o.%I', f), ', ') from unnest(feats) f),
    keylist, keylist,
    (select string_agg(format('e.%I', k), ', ') from unnest(v.join_keys) k), ts, ts, ts,
    (select string_agg(format('o.%I', k), ', ') from unnest(v.join_keys) k), features._offline_rel(v.id),
    features._offline_rel(v.id),
    (select string_agg(format('o.%I = b.%I', k, k), ' and ') from unnest(v.join_keys) k),
    case when ttl is not null then format(' and o.event_ts >= b._indb_t - %L::interval', ttl) else '' end)
    from (select string_agg(format('%I', k), ', ') as keylist from unnest(v.join_keys) k) kl
$$;

-- sort-merge: entity rows and offline rows of one view in one ordered stream per entity key; each entity row
-- takes the last offline row before it (first_value over the group that count() of offline rows opens)
create or replace function features._pit_merge(v features.feature_views, feats text[], ts text, ttl interval,
                                               alias text, cutoff boolean)
returns text
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select case when cutoff then features._pit_merge_cutoff(v, feats, ts, ttl, alias) else format($m$%I as (
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
       from unnest(feats) f),
    (select string_agg(format('first_value(%I) over w as %I', f, f), ', ') from unnest(feats) f),
    keylist,
    (select string_agg(format('e.%I', k), ', ') from unnest(v.join_keys) k), ts,
    (select string_agg(format('null::%s as %I', (x->>'type')::regtype, x->>'name'), ', ' order by fo)
       from unnest(feats) with ordinality uf(f, fo)
       join lateral (select y from jsonb_array_elements(v.features) y where y->>'name' = uf.f) z(x) on true),
    ts,
    (select string_agg(format('o.%I', k), ', ') from unnest(v.join_keys) k),
    (select string_agg(format('o.%I', f), ', ') from unnest(feats) f), features._offline_rel(v.id),
    keylist) end
    from (select string_agg(format('%I', k), ', ') as keylist from unnest(v.join_keys) k) kl
$$;

-- last value carried forward: entity rows and the offline rows of one view in one stream per entity key ordered
-- by time; the offline side comes in its primary key's (keys, event_ts) order, so only the entity rows are
-- sorted (a Merge Append). The default RANGE frame takes peers along, so an offline row at exactly the entity
-- row's time counts (event_ts <= time). max(event_ts) is then the latest event at or before each entity row;
-- its values are read back by the unique (keys, event_ts) key, inside the ttl. cutoff: _pit_merge_cutoff
create or replace function features._pit_lvcf(v features.feature_views, feats text[], ts text, ttl interval,
                                              alias text, cutoff boolean)
returns text
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select case when cutoff then features._pit_merge_cutoff(v, feats, ts, ttl, alias) else format($m$%I as (
    select b._indb_rid, %s from (
      select _indb_rid, %s, _indb_t, _indb_k, max(_indb_fts) over (partition by %s order by _indb_t) as _indb_best
        from (select e._indb_rid, %s, e.%I::timestamptz as _indb_t, 1 as _indb_k, null::timestamptz as _indb_fts
                from e where e.%I is not null
              union all
              select null, %s, o.event_ts, 0, o.event_ts from %s o) u) b
    left join %s o on %s and o.event_ts = b._indb_best%s
     where b._indb_k = 1)$m$,
    alias,
    (select string_agg(format('o.%I', f), ', ') from unnest(feats) f),
    keylist, keylist,
    (select string_agg(format('e.%I', k), ', ') from unnest(v.join_keys) k), ts, ts,
    (select string_agg(format('o.%I', k), ', ') from unnest(v.join_keys) k), features._offline_rel(v.id),
    features._offline_rel(v.id),
    (select string_agg(format('o.%I = b.%I', k, k), ' and ') from unnest(v.join_keys) k),
    case when ttl is not null then format(' and o.event_ts >= b._indb_t - %L::interval', ttl) else '' end) end
    from (select string_agg(format('%I', k), ', ') as keylist from unnest(v.join_keys) k) kl
$$;

create or replace function features.historical_query(entity_query text, features text[],
                                                     ttl_override interval default null,
                                                     full_names boolean default false,
                                                     timestamp_column text default null,
                                                     created_cutoff boolean default false)
returns text
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, @VS@, pg_temp  -- the caller's SQL: USER_SQL_PATH (sql/000-runtime.sql)
as $$
declare
  eq text := ml._relation_sql(entity_query, 'entity query');
  e record;
  r record;
  v features.feature_views;
  i int;
  n int := 0;
  alias text;
  sel text[] := '{}';
  joins text[] := '{}';
  ctes text[] := '{}';
  fmap jsonb := '{}';
  od record;
  est_e float8;
  pj json;
  uniq text[];
  cutoff boolean := coalesce(created_cutoff, false);
  method text;
  -- the asof strategy's views: their offline queries, key counts, ttls; the entity side's key expressions and
  -- the column definitions of their features
  a_sql text[] := '{}';
  a_keys int[] := '{}';
  a_kpos int[] := '{}';
  a_ttl interval[] := '{}';
  a_ekeys text[] := '{}';
  kr record;
  a_cols text[] := '{}';
  src text;
  srccols text;
  elist text;
  col text;
  j int;
begin
  if ttl_override is not null and ttl_override <= interval '0' then
    raise exception 'ttl_override must be positive, got %', ttl_override using errcode = '22023',
      hint = 'pass an interval such as ''30 days'', or null to use each view''s own ttl';
  end if;
  select * into e from features._entity_columns(eq, timestamp_column);
  for r in select s.view_id, array_agg(s.feature order by s.ord) as feats, array_agg(s.out_name order by s.ord) as outs,
                  array_agg(s.hidden order by s.ord) as hid
             from features._resolve(historical_query.features, coalesce(full_names, false)) s where s.view_id is not null
            group by s.view_id order by min(s.ord)
  loop
    select * into v from features.feature_views where id = r.view_id;
    n := n + 1;
    alias := 'f' || n;
    perform features._check_entity_keys(v, e.ecols);
    if est_e is null and coalesce(nullif(current_setting('indb.features_pit_method', true), ''), 'auto') = 'auto' then
      execute 'explain (format json) select * from (' || eq || ') q' into pj;
      est_e := (pj -> 0 -> 'Plan' ->> 'Plan Rows')::float8;
    end if;
    -- each feature fetched once (an on-demand feature's input may also be requested itself)
    uniq := array(select f from unnest(r.feats) with ordinality u(f, o) group by f order by min(o));
    method := features._pit_method(v, est_e, cardinality(uniq));
    if method = 'asof' then
      a_sql := a_sql || format('select %s, o.event_ts, o.written_at, %s from %s o',
        (select string_agg(format('o.%I::%s', k, case when t = 'int' then 'int8' else 'text' end), ', ' order by o)
           from unnest(v.join_keys, v.key_types) with ordinality u(k, t, o)),
        (select string_agg(format('o.%I', f), ', ') from unnest(uniq) f), features._offline_rel(v.id));
      a_keys := a_keys || cardinality(v.join_keys);
      a_ttl := a_ttl || coalesce(ttl_override, v.ttl);
      -- the entity side's key columns, each once (views keyed on the same column share it): a_kpos has the
      -- place of each of this view's keys among them
      for kr in select format('q.%I::%s', k, case when t = 'int' then 'int8' else 'text' end) as expr
                  from unnest(v.join_keys, v.key_types) with ordinality u(k, t, o) order by o loop
        if not kr.expr = any (a_ekeys) then
          a_ekeys := a_ekeys || kr.expr;
        end if;
        a_kpos := a_kpos || array_position(a_ekeys, kr.expr);
      end loop;
      for j in 1 .. cardinality(uniq) loop
        a_cols := a_cols || format('%I %s', '_indb_' || alias || '_' || j,
          (select (x->>'type')::regtype from jsonb_array_elements(v.features) x where x->>'name' = uniq[j]));
      end loop;
    elsif method in ('lvcf', 'merge') then
      ctes := ctes || case when method = 'lvcf'
                           then features._pit_lvcf(v, uniq, e.ts, coalesce(ttl_override, v.ttl), alias, cutoff)
                           else features._pit_merge(v, uniq, e.ts, coalesce(ttl_override, v.ttl), alias, cutoff) end;
      joins := joins || format('left join %I on %I._indb_rid = e._indb_rid', alias, alias);
    else
      joins := joins || features._pit_lateral(v, uniq, e.ts, coalesce(ttl_override, v.ttl), alias, cutoff);
    end if;
    for i in 1 .. cardinality(r.feats) loop
      -- an asof view's features are columns of e (the C function's result), named by their place in uniq
      col := case when method = 'asof' then format('e.%I', '_indb_' || alias || '_' || array_position(uniq, r.feats[i]))
                  else format('%I.%I', alias, r.feats[i]) end;
      fmap := fmap || jsonb_build_object(r.feats[i], col);
      if not r.hid[i] then
        if e.ecols ? r.outs[i] then
          raise exception 'feature "%" has the same name as a column of the entity query', r.outs[i] using errcode = '42710',
            hint = 'rename the column in the entity query, or use full_names => true';
        end if;
        sel := sel || format('%s as %I', col, r.outs[i]);
      end if;
    end loop;
  end loop;
  for od in select s.out_name, s.odfv_id from features._resolve(historical_query.features, coalesce(full_names, false)) s
             where s.view_id is null order by s.ord loop
    sel := sel || (features._odfv_select(od.odfv_id, e.ecols, fmap) || format(' as %I', od.out_name));
  end loop;
  -- with asof views, the entity rows come from the asof function over the entity query (the entity columns,
  -- then the asof views' features, in the entity query's order): src, and srccols its column definitions
  if cardinality(a_sql) > 0 then
    src := format('features._pit_asof(%L, %s, %L::text[], %L::int[], %L::int[], %L::interval[], %L)',
             format('select %s, q.%I::timestamptz, %s from (%s) q',
                    (select string_agg(format('q.%I', u.cn), ', ' order by u.co) from unnest(e.enames) with ordinality u(cn, co)),
                    e.ts, array_to_string(a_ekeys, ', '), eq),
             cardinality(e.enames), a_sql, a_keys, a_kpos, a_ttl, cutoff);
    srccols := format('(%s, %s)', (select string_agg(format('%I %s', u.cn, e.ecols ->> u.cn), ', ' order by u.co)
                                     from unnest(e.enames) with ordinality u(cn, co)), array_to_string(a_cols, ', '));
  end if;
  -- the entity columns of the answer (without the row number or the asof function's feature columns)
  elist := (select string_agg(format('e.%I', u.cn), ', ' order by u.co) from unnest(e.enames) with ordinality u(cn, co));
  if cardinality(ctes) = 0 then
    if src is null then
      return format('select e.*%s from (%s) e %s',
                    coalesce(', ' || array_to_string(sel, ', '), ''), eq, array_to_string(joins, ' '));
    end if;
    return format('select %s%s from %s as e%s %s',
                  elist, coalesce(', ' || array_to_string(sel, ', '), ''), src, srccols, array_to_string(joins, ' '));
  end if;
  return format('with e as materialized (select row_number() over () as _indb_rid, q.* from %s), %s select %s%s from e %s order by e._indb_rid',
                coalesce(src || ' as q' || srccols, '(' || eq || ') q'), array_to_string(ctes, ', '),
                elist, coalesce(', ' || array_to_string(sel, ', '), ''), array_to_string(joins, ' '));
end $$;
comment on function features.historical_query(text, text[], interval, boolean, text, boolean) is
  'the SQL of the point-in-time join get_historical runs, typed columns (entity columns, then one per feature): '
  'run it (psql \gexec), or use it in CREATE TABLE AS, COPY, EXPLAIN. created_cutoff: only values written '
  '(written_at) at or before the entity row''s time';

-- jit = off for the functions that plan the join (get_historical, get_historical_cursor, _create_training_set):
-- the plans over partitioned offline stores have hundreds of expressions, and compiling them costs more CPU than
-- it saves (lvcf at x10 with 3 views: 6.1 s of backend CPU with JIT, 3.3 s without; benchmarks/features_pit.py)
create or replace function features.get_historical(entity_query text, features text[],
                                                   ttl_override interval default null,
                                                   full_names boolean default false,
                                                   timestamp_column text default null,
                                                   created_cutoff boolean default false)
returns setof jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, @VS@, pg_temp  -- the caller's SQL: USER_SQL_PATH (sql/000-runtime.sql)
set jit = off
as $$
begin
  return query execute format('select to_jsonb(h) from (%s) h',
    features.historical_query(entity_query, features, ttl_override, full_names, timestamp_column, created_cutoff));
end $$;
comment on function features.get_historical(text, text[], interval, boolean, text, boolean) is
  'point-in-time join: per entity row (one jsonb each) the latest feature values at or before its timestamp, within '
  'ttl (created_cutoff: and written at or before it). For typed columns: features.get_historical_cursor(...) '
  'then FETCH, or features.create_training_set';

-- typed columns: a set-returning function cannot have a column list chosen by its arguments, so the typed
-- result is a cursor (a portal of this transaction) over the point-in-time join: entity columns, then one
-- typed column per feature; FETCH it in the same transaction
create or replace function features.get_historical_cursor(entity_query text, features text[],
                                                          ttl_override interval default null,
                                                          full_names boolean default false,
                                                          timestamp_column text default null,
                                                          created_cutoff boolean default false,
                                                          cursor_name text default 'historical')
returns refcursor
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, @VS@, pg_temp  -- the caller's SQL: USER_SQL_PATH (sql/000-runtime.sql)
set jit = off
as $$
declare
  c refcursor := cursor_name;
begin
  if cursor_name is null or cursor_name = '' or octet_length(cursor_name) > 63 then
    raise exception 'invalid cursor name %', coalesce(quote_literal(cursor_name), 'NULL') using errcode = '22023',
      hint = 'pass cursor_name => ''historical'' (at most 63 bytes), then FETCH ALL FROM historical';
  end if;
  if exists (select 1 from pg_cursors where name = cursor_name) then
    raise exception 'cursor "%" is already open in this transaction', cursor_name using errcode = '42P03',
      hint = 'CLOSE it first, or pass another cursor_name';
  end if;
  open c no scroll for execute
    features.historical_query(entity_query, features, ttl_override, full_names, timestamp_column, created_cutoff);
  return c;
end $$;
comment on function features.get_historical_cursor(text, text[], interval, boolean, text, boolean, text) is
  'point-in-time join with typed columns (entity columns, then one per feature), as an open cursor: '
  'BEGIN; SELECT features.get_historical_cursor(...); FETCH ALL FROM historical; COMMIT. Same arguments as '
  'get_historical, plus cursor_name';

-- ---------------------------------------------------------------------------------------------------------
-- training sets: a point-in-time join kept as a table of the caller's, registered through the registry's API

create or replace function features._training_set_relation(name text) returns text
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare parts text[];
begin
  if name is null or btrim(name) = '' then
    raise exception 'training set name is empty' using errcode = '22023',
      hint = 'use a table name such as user_training or myschema.user_training';
  end if;
  begin
    parts := parse_ident(name);
  exception when others then
    parts := null;
  end;
  if parts is null or cardinality(parts) not in (1, 2) or exists (select 1 from unnest(parts) x where octet_length(x) > 63) then
    raise exception 'invalid training set name %', quote_literal(name) using errcode = '22023',
      hint = 'use a table name such as user_training or myschema.user_training (at most 63 bytes each)';
  end if;
  if cardinality(parts) = 1 then
    parts := array['public'] || parts;
  end if;
  if parts[1] like 'pg\_%' then
    raise exception 'a training set is a kept table, not one of schema %', parts[1] using errcode = '22023',
      hint = 'name a table of one of your schemas, e.g. public.user_training';
  end if;
  if to_regclass(format('%I.%I', parts[1], parts[2])) is not null then
    raise exception 'relation %.% already exists', quote_ident(parts[1]), quote_ident(parts[2]) using errcode = '42P07',
      hint = 'training sets are immutable snapshots: choose a new name or drop the old table';
  end if;
  return format('%I.%I', parts[1], parts[2]);
end $$;

-- a WARNING when feature columns of a new training set are mostly NULL: the views hold no values at (or within
-- the ttl before) most entity rows' times, which usually means the event times were not all materialized
create or replace function features._warn_sparse_training_set(rel text, n bigint, feature_refs text[]) returns void
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  cols text[] := array(select s.out_name from features._resolve(feature_refs, false) s where not s.hidden
                        order by s.ord);
  nulls jsonb;
  sparse text;
  ranges text;
begin
  if n = 0 or cardinality(cols) = 0 then
    return;
  end if;
  execute format('select jsonb_build_object(%s) from %s',
                 (select string_agg(format('%L, count(*) - count(%I)', c, c), ', ') from unnest(cols) c), rel)
    into nulls;
  select string_agg(format('%s (%s%%)', c, round(100.0 * (nulls ->> c)::bigint / n)), ', ' order by o) into sparse
    from unnest(cols) with ordinality u(c, o) where (nulls ->> c)::bigint > n / 2;
  if sparse is null then
    return;
  end if;
  select string_agg(x.ref || ': ' || coalesce(x.lo::text || ' to ' || x.hi::text, 'nothing materialized'), '; ')
    into ranges
    from (select s.view_ref as ref, min(r.min_event_ts) as lo, max(r.max_event_ts) as hi
            from (select distinct view_id, view_ref from features._resolve(feature_refs, false) where view_id is not null) s
            left join features.materialization_runs r on r.view_id = s.view_id and r.status = 'succeeded'
           group by s.view_ref order by s.view_ref) x;
  raise warning 'training set %: feature columns NULL in more than half of its % rows: %', rel, n, sparse
    using detail = 'event times the views hold (succeeded runs): ' || coalesce(ranges, 'none'),
          hint = 'materialize the event times the entity rows cover (features.materialize(view, start_ts, end_ts)), '
                 'or check the views'' ttl (ttl_override)';
end $$;

create or replace function features._create_training_set(name text, entity_query text, features text[], label text,
                                                         ttl_override interval, timestamp_column text,
                                                         created_cutoff boolean)
returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, @VS@, pg_temp  -- the caller's SQL: USER_SQL_PATH (sql/000-runtime.sql)
set jit = off
as $$
declare
  rel text := features._training_set_relation(name);
  q text;
  n bigint;
  ds bigint;
  cols jsonb;
  views jsonb;
  fv record;
begin
  q := features.historical_query(entity_query, features, ttl_override, false, timestamp_column, created_cutoff);
  execute format('create table %s as %s', rel, q);
  get diagnostics n = row_count;
  select jsonb_agg(jsonb_build_object('name', attname, 'type', format_type(atttypid, atttypmod)) order by attnum) into cols
    from pg_attribute where attrelid = rel::regclass and attnum > 0 and not attisdropped;
  if label is not null and not exists (select 1 from jsonb_array_elements(cols) c where c->>'name' = label) then
    raise exception 'label column "%" is not in the training set', label using errcode = '42703',
      hint = 'the label comes from the entity query, e.g. select user_id, ts as event_timestamp, rating from ratings';
  end if;
  select jsonb_agg(distinct s.view_ref) into views from features._resolve(_create_training_set.features, false) s
   where s.view_id is not null;
  ds := registry.register_dataset(
          name => name, digest => md5(q || clock_timestamp()::text), kind => 'training_set', source => entity_query,
          row_count => n,
          schema => jsonb_build_object('columns', cols, 'label', label, 'features', to_jsonb(_create_training_set.features),
                                       'feature_views', views, 'query', q,
                                       'feature_columns', (select jsonb_agg(s.out_name order by s.ord)
                                                             from features._resolve(_create_training_set.features, false) s
                                                            where not s.hidden)),
          materialized => rel::regclass);
  for fv in select distinct s.view_id from features._resolve(_create_training_set.features, false) s
             where s.view_id is not null loop
    perform registry.add_lineage('feature_view_version', fv.view_id::text, 'training_set', ds::text, 'features_of');
  end loop;
  perform features._warn_sparse_training_set(rel, n, _create_training_set.features);
  return jsonb_build_object('dataset_id', ds, 'relation', rel::regclass::text, 'rows', n, 'label', label,
                            'feature_views', views);
end $$;

create or replace function features.create_training_set(name text, entity_query text, features text[],
                                                        label text default null,
                                                        ttl_override interval default null,
                                                        timestamp_column text default null,
                                                        created_cutoff boolean default false)
returns table (dataset_id bigint, relation text, rows bigint, label_column text, feature_views text[])
language sql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
  select (r->>'dataset_id')::bigint, r->>'relation', (r->>'rows')::bigint, r->>'label',
         array(select jsonb_array_elements_text(r->'feature_views'))
    from features._create_training_set(name, entity_query, features, label, ttl_override, timestamp_column,
                                       created_cutoff) r
$$;
comment on function features.create_training_set(text, text, text[], text, interval, text, boolean) is
  'materialize a point-in-time join as a table, registered (registry.register_dataset) as a training_set with '
  'lineage; one row: dataset id, table, rows, label column, feature views. Warns when feature columns are mostly NULL';

create or replace function features.training_set(name text)
returns table (dataset_id bigint, relation text, rows bigint, label_column text, feature_columns text[],
               columns jsonb, created_at timestamptz)
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  known text;
begin
  return query
  select d.id, d.materialized::text, d.row_count, d.schema->>'label',
         array(select jsonb_array_elements_text(coalesce(d.schema->'feature_columns', '[]'))), d.schema->'columns',
         d.created_at
    from registry.datasets d where d.kind = 'training_set' and d.name = training_set.name
   order by d.id desc limit 1;
  if not found then
    select string_agg(x.name, ', ') into known
      from (select distinct d.name from registry.datasets d where d.kind = 'training_set' order by 1 limit 20) x;
    raise exception 'training set "%" does not exist', coalesce(ml._clip(name), 'NULL') using errcode = '42704',
      detail = coalesce('training sets: ' || known, 'there are no training sets yet'),
      hint = 'create it with features.create_training_set(name, entity_query, features, label)';
  end if;
end $$;
comment on function features.training_set(text) is
  'the latest training set of that name: dataset id, table, rows, label column, feature columns, columns '
  '[{name, type}], created_at; 42704 when there is none';
