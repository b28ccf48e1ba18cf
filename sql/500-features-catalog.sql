-- indb feature store: entities, versioned feature views, offline store (range-partitioned by event time, one
-- table per view version), online store (latest value per entity), point-in-time joins, materialization with
-- statistics and expectations, push, on-demand features, drift, freshness, skew.
-- Stateless: re-applied (create or replace) by `indb install`. Tables: migrations 0007, 0008 and 0011.
--
-- Files: 500 catalog (references, views, entity keys, the trust rules, definitions), 510 writes (stores,
-- materialize, push), 520 reads (online, point in time, training sets), 530 monitoring (freshness, drift,
-- skew), 540 on-demand features.
--
-- Feature references: 'view:feature', 'view@2:feature', 'view:*' (all features of a view), or the name of an
-- on-demand feature. Output columns are named after the feature; two requested features with the same name
-- must be qualified (full_names => true names them view__feature).
--
-- Trust (SECURITY.md):
-- * Catalogs (entities, feature_views, materialization_runs, statistics, quarantine, on_demand_features) are
--   written only by the SECURITY DEFINER functions here (create_entity, _register_view, _start_run,
--   _finish_run, _quarantine, _ensure_partitions, create_on_demand_feature). The stores (fv_<id>_offline,
--   online_store) are data: writers write them with their own rights.
-- * A view's source and feature expressions are its author's code. They run only in SECURITY INVOKER
--   functions (materialize, check_skew), and only for a role that may run the author's code: the author
--   itself, or anyone when the author is an indb_admin (features._assert_may_run).
-- * Catalog values reach dynamic SQL quoted (%I, %L) or cast (::regclass, ::regtype, ::regprocedure) where
--   they are used; the offline table of a view is derived from its id (features._offline_rel).
--
-- Tenancy: a feature view belongs to the tenant its creator acted for, or is shared (made by a session that
-- acts for no tenant). Every row of its stores, runs, statistics and quarantine carries the view's tenant:
-- * a tenant's view, its definition and its data are seen and written by that tenant (and admins) only;
-- * a shared view is read by everyone (definition and values); its stores are written, and new versions
--   added, only by sessions that act for no tenant (and admins);
-- * names are unique across tenants: a name another tenant holds is refused as taken (42710).

-- ---------------------------------------------------------------------------------------------------------
-- small shared pieces (plain SQL without SET options, so the planner inlines them into the serving queries)

-- a feature view reference: 'view' or 'view@2' -> {name, version or null}
create or replace function features._parse_view_ref(ref text) returns text[]
language sql immutable parallel safe
as $$ select regexp_match(ref, '^\s*([A-Za-z_][A-Za-z0-9_]*)(?:@([0-9]{1,9}))?\s*$') $$;
comment on function features._parse_view_ref(text) is 'internal: ''view'' or ''view@2'' -> {name, version}';

-- a feature reference: 'view:feature', 'view@2:feature', 'view:*' -> {view name, version or null, feature or *}

-- The reference without blanks ('view:feature', 'view@2:feature', 'view:*') is recognised by one match without
-- groups and split with split_part, ~1.7 us: regexp_match with its groups costs ~10-20 us per reference, and the
-- previous fast path, which checked each part with btrim over the allowed characters (btrim compares each
-- character with each of the 63), ~5 us. Anything else (blanks, malformed) goes to regexp_match, which defines
-- the syntax; the fast path accepts only strings it matches, with the same three groups
-- (tests/sql/test_features_store.py compares them).
create or replace function features._parse_feature_ref(ref text) returns text[]
language sql immutable parallel safe
as $$
  select case
    when ref ~ '^[A-Za-z_][A-Za-z0-9_]*(@[0-9]{1,9})?:([A-Za-z_][A-Za-z0-9_]*|\*)$'
      then array[split_part(split_part(ref, ':', 1), '@', 1), nullif(split_part(split_part(ref, ':', 1), '@', 2), ''),
                 split_part(ref, ':', 2)]
    else regexp_match(ref, '^\s*([A-Za-z_][A-Za-z0-9_]*)(?:@([0-9]{1,9}))?\s*:\s*([A-Za-z_][A-Za-z0-9_]*|\*)\s*$')
  end
$$;
comment on function features._parse_feature_ref(text) is
  'internal: ''view:feature'', ''view@2:feature'', ''view:*'' -> {view, version, feature}';

-- an array of references, each parsed once, with its position (1-based): the one place the resolver, get_online
-- and get_online_batch split their references. Plain SQL without SET (inlined into the caller's query, which
-- plans and caches it as before); `offset 0` keeps the parse in its own step: pulled up, it ran again at each
-- m[i] (3 regex matches a reference, not 1)
create or replace function features._parse_feature_refs(refs text[])
returns table (o bigint, vname text, vver text, feat text)
language sql immutable parallel safe
as $$
  select u.o, x.m[1], x.m[2], x.m[3]
    from pg_catalog.unnest(refs) with ordinality u(ref, o)
   cross join lateral (select features._parse_feature_ref(u.ref) as m offset 0) x
$$;
comment on function features._parse_feature_refs(text[]) is
  'internal: each reference of the array with its position: (o, view, version or null, feature or *)';

-- an online value is past its view's ttl
create or replace function features._expired(event_ts timestamptz, ttl interval) returns boolean
language sql stable parallel safe
as $$ select event_ts is not null and ttl is not null and event_ts < now() - ttl $$;

-- the _status of a served feature: the entity has no online row (not_found), its row is past the ttl
-- (outside_ttl), its value is null (null_value), or a value is served (present)
create or replace function features._status(found boolean, expired boolean, val jsonb) returns text
language sql immutable parallel safe
as $$
  select case when not found then 'not_found' when expired then 'outside_ttl'
              when val is null or jsonb_typeof(val) = 'null' then 'null_value' else 'present' end
$$;

-- the value served for a feature: null when the row is missing or past the ttl
create or replace function features._served(vals jsonb, expired boolean, feature text) returns jsonb
language sql immutable parallel safe
as $$ select case when vals is null or expired then 'null'::jsonb else coalesce(vals -> feature, 'null') end $$;

-- entity key columns are integers or text: 'int', 'text', or null for a type that cannot be a key
create or replace function features._key_kind(t text) returns text
language sql immutable parallel safe
as $$
  select case when t in ('smallint', 'integer', 'bigint') then 'int'
              when t in ('text', 'uuid', 'name') or t like 'character varying%' or t like 'character(%' then 'text'
         end
$$;
comment on function features._key_kind(text) is 'internal: the kind of entity key a column type gives (int, text) or null';

-- A type a definition may use for a feature, a key or a request field: a built-in type (pg_catalog) or one of
-- an extension's (pgvector's vector), or an array of one. Not a domain or type of some schema: their CHECK
-- constraints and functions would run as whoever writes or reads the store.
create or replace function features._check_type(what text, type_name text) returns text
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  t regtype;
  base oid;
begin
  if type_name is null or btrim(type_name) = '' then
    raise exception '% has no type', what using errcode = '22023', hint = 'name a type such as float8, int or text';
  end if;
  begin
    -- a name without a schema: pg_catalog's, else the vector extension's schema's (`vector(384)`, as a caller
    -- whose search_path holds public writes it; this function searches pg_catalog only, sql/000-runtime.sql)
    t := coalesce(to_regtype(type_name), case when type_name !~ '\.' then to_regtype('@VS@.' || btrim(type_name)) end);
  exception when others then
    t := null;
  end;
  if t is null then
    raise exception '% has unknown type %', what, quote_literal(type_name) using errcode = '42704',
      hint = 'use a PostgreSQL type name such as float8, int, text, boolean';
  end if;
  base := coalesce(nullif((select typelem from pg_type where oid = t and typcategory = 'A'), 0), t);
  if not exists (select 1 from pg_type y where y.oid = base and y.typtype in ('b', 'e', 'r', 'm')
                   and (y.typnamespace = 'pg_catalog'::regnamespace
                        or exists (select 1 from pg_depend d where d.classid = 'pg_type'::regclass and d.objid = y.oid
                                      and d.deptype = 'e'))) then
    raise exception '% has type %, which is not a built-in or extension type', what, format_type(t, null)
      using errcode = '42804',
      hint = 'cast it to its base type (domains and types of other schemas could run their owner''s code)';
  end if;
  return format_type(t, null);
end $$;

-- the offline store of a view version, derived from its id (never from a catalog text)
create or replace function features._offline_rel(view_id bigint) returns regclass
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare rel regclass := to_regclass(format('features.%I', 'fv_' || view_id || '_offline'));
begin
  if rel is null then
    raise exception 'the offline store of feature view id % is missing', coalesce(view_id::text, 'NULL')
      using errcode = '42P01', hint = 'create the view again with features.create_feature_view';
  end if;
  return rel;
end $$;

-- ---------------------------------------------------------------------------------------------------------
-- PL/Python: the columns of a SELECT without running it
create or replace function features._describe_py(query text, what text default 'query')
returns table (ord int, name text, type text)
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, @VS@, pg_temp  -- the caller's SQL: USER_SQL_PATH (sql/000-runtime.sql)
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import features, errors
cols = errors.call(plpy, features.describe, plpy, query, what)
return [(i + 1, c['name'], c['type']) for i, c in enumerate(cols)]
$$;
select ml._wrap_python('features._describe', 'features._describe_py(text, text)');
comment on function features._describe(text, text) is 'internal: column names and types of a SELECT, without running it';

-- ---------------------------------------------------------------------------------------------------------
-- who may do what with a view

-- a view version by reference ('name' = latest version, 'name@2'); row-level security shows the caller's
-- tenant's views and shared ones
create or replace function features._view(ref text) returns features.feature_views
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  m text[] := features._parse_view_ref(ref);
  v features.feature_views;
  known text;
begin
  if m is null then
    raise exception 'invalid feature view reference %', coalesce(quote_literal(ml._clip(ref)), 'NULL') using errcode = '22023',
      hint = 'use name (latest version) or name@version';
  end if;
  select * into v from features.feature_views x
   where x.name = m[1] and (m[2] is null or x.version = m[2]::int) order by x.version desc limit 1;
  if v.id is null then
    select string_agg(x.name || '@' || x.version, ', ' order by x.version) into known
      from features.feature_views x where x.name = m[1];
    raise exception 'feature view "%" does not exist', ml._clip(btrim(ref)) using errcode = '42704',
      detail = coalesce('versions of ' || m[1] || ': ' || known, 'no view of that name'),
      hint = 'create it with features.create_feature_view, or list them: select name, version from features.feature_views';
  end if;
  return v;
end $$;

-- Stored SQL (a view's source and feature expressions) is its author's code: it runs only for the author, or
-- for anyone when the author is an indb_admin (whose registrations everyone trusts).
create or replace function features._may_run(v features.feature_views) returns boolean
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select ml.caller()::text = v.created_by
      or exists (select 1 from pg_roles r where r.rolname = v.created_by
                   and pg_has_role(r.oid, 'indb_admin', 'member'))
$$;

create or replace function features._assert_may_run(v features.feature_views, action text) returns void
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
  if not features._may_run(v) then
    raise exception '% of feature view %@% runs its source SQL, written by role "%"; role "%" may not run it',
      action, v.name, v.version, v.created_by, ml.caller() using errcode = '42501',
      detail = 'a view''s source and feature expressions run only for their author, or for anyone when the author is an indb_admin',
      hint = format('ask %s (or an admin) to %s it, or define your own view over the same source', v.created_by, action);
  end if;
end $$;

-- the stores, runs and statistics of a view carry its tenant: the caller must be allowed to write that tenant
create or replace function features._assert_may_write(v features.feature_views) returns void
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
  if not (v.tenant is not distinct from ml.current_tenant() or ml.is_admin()) then
    raise exception 'feature view %@% is shared: its stores are written only by sessions that act for no tenant',
      v.name, v.version using errcode = '42501',
      detail = format('this session acts for tenant %s', ml.current_tenant()),
      hint = 'read it as it is, or create a view of your tenant (features.create_feature_view under another name)';
  end if;
end $$;

-- one advisory lock per view version: materializations of a view queue here before they touch anything,
-- and partitions are created under it
create or replace function features._lock_view(view_id bigint) returns void
language sql volatile parallel unsafe
as $$ select pg_advisory_xact_lock(hashtext('indb.features.view'), (view_id % 2147483647)::int) $$;

-- ---------------------------------------------------------------------------------------------------------
-- feature references -> (view version, feature, type, output name); on-demand features bring their stored
-- inputs along as hidden rows. Fast path: one SQL statement for plain view:feature references; anything else
-- (on-demand features, errors) goes through _resolve_slow.
create or replace function features._resolve_fast(refs text[], full_names boolean)
returns table (ord int, view_id bigint, view_ref text, feature text, ftype text, out_name text, hidden boolean,
               odfv_id bigint, ref_ord int)
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select (row_number() over (order by u.o, f.o))::int, v.id, v.name || '@' || v.version, f.x->>'name', f.x->>'type',
         case when full_names then v.name || '__' || (f.x->>'name') else f.x->>'name' end, false, null::bigint, u.o::int
    from features._parse_feature_refs(refs) u
    cross join lateral (select * from features.feature_views fv
                         where fv.name = u.vname and (u.vver is null or fv.version = u.vver::int)
                         order by fv.version desc limit 1) v
    cross join lateral jsonb_array_elements(v.features) with ordinality f(x, o)
   where u.feat = '*' or f.x->>'name' = u.feat
$$;

-- one view:feature reference (not *) -> the feature's definition with its view ({view_id, view_ref, name, type,
-- ...}), or a precise error
create or replace function features._feature(ref text) returns jsonb
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  m text[] := features._parse_feature_ref(ref);
  v features.feature_views;
  f jsonb;
begin
  if m is null or m[3] = '*' then
    raise exception 'invalid feature reference %', coalesce(quote_literal(ml._clip(ref)), 'NULL') using errcode = '22023',
      hint = 'use view:feature or view@version:feature';
  end if;
  v := features._view(m[1] || coalesce('@' || m[2], ''));
  select x into f from jsonb_array_elements(v.features) x where x->>'name' = m[3];
  if f is null then
    raise exception 'feature view %@% has no feature "%"', v.name, v.version, ml._clip(m[3]) using errcode = '42704',
      detail = 'its features: ' || (select string_agg(x->>'name', ', ') from jsonb_array_elements(v.features) x),
      hint = 'check the spelling, or name another version with view@version:feature';
  end if;
  return f || jsonb_build_object('view_id', v.id, 'view_ref', v.name || '@' || v.version);
end $$;

create or replace function features._resolve_slow(refs text[], full_names boolean) returns jsonb
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  r text;
  m text[];
  v features.feature_views;
  f jsonb;
  od features.on_demand_features;
  inp text;
  n int := 0;
  acc jsonb := '[]';
begin
  foreach r in array refs loop
    m := features._parse_feature_ref(r);
    if m is null then
      select * into od from features.on_demand_features x where x.name = btrim(coalesce(r, ''));
      if od.id is null then
        raise exception 'invalid or unknown feature reference %', coalesce(quote_literal(ml._clip(r)), 'NULL') using errcode = '42704',
          hint = 'use view:feature, view@version:feature, view:*, or the name of an on-demand feature';
      end if;
      n := n + 1;
      acc := acc || jsonb_build_array(jsonb_build_object('ord', n, 'feature', od.name, 'ftype', od.type,
                                                         'out_name', od.name, 'hidden', false, 'odfv_id', od.id));
      foreach inp in array od.inputs loop
        f := features._feature(inp);
        n := n + 1;
        acc := acc || jsonb_build_array(jsonb_build_object('ord', n, 'view_id', f->'view_id', 'view_ref', f->'view_ref',
                 'feature', f->>'name', 'ftype', f->>'type', 'out_name', f->>'name', 'hidden', true, 'odfv_id', od.id));
      end loop;
      continue;
    end if;
    if m[3] = '*' then
      v := features._view(m[1] || coalesce('@' || m[2], ''));
      for f in select x from jsonb_array_elements(v.features) x loop
        n := n + 1;
        acc := acc || jsonb_build_array(jsonb_build_object('ord', n, 'view_id', v.id, 'view_ref', v.name || '@' || v.version,
                 'feature', f->>'name', 'ftype', f->>'type', 'hidden', false,
                 'out_name', case when full_names then v.name || '__' || (f->>'name') else f->>'name' end));
      end loop;
    else
      f := features._feature(r);
      n := n + 1;
      acc := acc || jsonb_build_array(jsonb_build_object('ord', n, 'view_id', f->'view_id', 'view_ref', f->'view_ref',
               'feature', f->>'name', 'ftype', f->>'type', 'hidden', false,
               'out_name', case when full_names then m[1] || '__' || (f->>'name') else f->>'name' end));
    end if;
  end loop;
  return acc;
end $$;

create or replace function features._resolve(refs text[], full_names boolean default false)
returns table (ord int, view_id bigint, view_ref text, feature text, ftype text, out_name text, hidden boolean,
               odfv_id bigint)
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  acc jsonb;
  resolved int;
  dup text;
begin
  if refs is null or cardinality(refs) = 0 then
    raise exception 'no features requested' using errcode = '22023',
      hint = 'pass an array of feature references such as array[''user_stats:avg_rating'']';
  end if;
  select jsonb_agg(to_jsonb(x) order by x.ord), count(distinct x.ref_ord) into acc, resolved
    from features._resolve_fast(refs, coalesce(full_names, false)) x;
  if coalesce(resolved, 0) < cardinality(refs) then
    acc := features._resolve_slow(refs, coalesce(full_names, false));
  end if;
  -- hidden inputs that are also requested are fetched once; visible duplicates are an error
  select x->>'out_name' into dup from jsonb_array_elements(acc) x where not (x->>'hidden')::boolean
   group by x->>'out_name' having count(*) > 1 limit 1;
  if dup is not null then
    raise exception 'feature name "%" is requested from more than one view (or twice)', ml._clip(dup) using errcode = '42710',
      detail = ml._clip((select string_agg(coalesce((x->>'view_ref') || ':', '') || (x->>'feature'), ', ')
                           from jsonb_array_elements(acc) x where x->>'out_name' = dup and not (x->>'hidden')::boolean), 1000),
      hint = 'request it once, or qualify the output names with full_names => true (view__feature)';
  end if;
  return query select x.ord, x.view_id, x.view_ref, x.feature, x.ftype, x.out_name, x.hidden, x.odfv_id
                 from jsonb_to_recordset(acc) x(ord int, view_id bigint, view_ref text, feature text, ftype text,
                                                out_name text, hidden boolean, odfv_id bigint)
                order by x.ord;
end $$;

-- ---------------------------------------------------------------------------------------------------------
-- entity keys

-- canonical entity key (jsonb array text) from a jsonb object of key values, checking presence and type
create or replace function features._entity_key(keys jsonb, join_keys text[], key_types text[], view_ref text)
returns text
language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  out jsonb := '[]';
  v jsonb;
  i int;
begin
  if keys is null or jsonb_typeof(keys) <> 'object' then
    raise exception 'entity keys must be a JSON object such as {"%": ...}', join_keys[1] using errcode = '22023',
      detail = format('got: %s', left(coalesce(keys::text, 'NULL'), 200)),
      hint = 'pass one object with every join key: ' || array_to_string(join_keys, ', ');
  end if;
  for i in 1 .. cardinality(join_keys) loop
    v := keys -> join_keys[i];
    if v is null or jsonb_typeof(v) = 'null' then
      raise exception 'entity key "%" is missing for feature view %', join_keys[i], view_ref using errcode = '22023',
        hint = 'pass all join keys: ' || array_to_string(join_keys, ', ');
    end if;
    if key_types[i] = 'int' then
      if jsonb_typeof(v) = 'number' and v::text ~ '^-?[0-9]{1,18}$' then
        out := out || v;
      elsif jsonb_typeof(v) = 'string' and (v #>> '{}') ~ '^\s*-?[0-9]{1,18}\s*$' then
        out := out || to_jsonb((v #>> '{}')::bigint);
      else
        raise exception 'entity key "%" must be an integer for feature view %, got %', join_keys[i], view_ref,
          left(v::text, 100) using errcode = '22023', hint = format('e.g. {"%s": 42}', join_keys[i]);
      end if;
    else
      if jsonb_typeof(v) <> 'string' then
        raise exception 'entity key "%" must be a string for feature view %, got %', join_keys[i], view_ref,
          left(v::text, 100) using errcode = '22023', hint = format('e.g. {"%s": "abc"}', join_keys[i]);
      end if;
      out := out || v;
    end if;
  end loop;
  return out::text;
end $$;

-- the same, with the common case (one integer key given as a JSON number) as plain SQL that the serving
-- queries inline
create or replace function features._online_key(keys jsonb, join_keys text[], key_types text[], view_ref text)
returns text
language sql immutable parallel safe
as $$
  select case when cardinality(join_keys) = 1 and key_types[1] = 'int' and jsonb_typeof(keys -> join_keys[1]) = 'number'
                   -- one match without groups: ~2 us an entity, against ~5 for the same test by btrim and ltrim
                   and (keys -> join_keys[1])::text ~ '^-?[0-9]{1,18}$'
              then '[' || (keys -> join_keys[1])::text || ']'
              else features._entity_key(keys, join_keys, key_types, view_ref) end
$$;

-- SQL expression (over alias) that gives the canonical entity key of a typed row
create or replace function features._key_sql(join_keys text[], key_types text[], alias text) returns text
language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select 'jsonb_build_array(' || string_agg(format('%I.%I::%s', alias, k,
            case when t = 'int' then 'bigint' else 'text' end), ', ' order by o) || ')::text'
    from unnest(join_keys, key_types) with ordinality u(k, t, o)
$$;

-- ---------------------------------------------------------------------------------------------------------
-- entities

create or replace function features.create_entity(name text, join_keys text[], description text default null)
returns bigint
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  e features.entities;
  k text;
begin
  perform ml._check_identifier('entity', name, 63, '^[A-Za-z_][A-Za-z0-9_]*$');
  if join_keys is null or cardinality(join_keys) = 0 or cardinality(join_keys) > 8 then
    raise exception 'entity % needs between 1 and 8 join keys, got %', name, coalesce(cardinality(join_keys), 0)
      using errcode = '22023', hint = 'join keys are the columns that identify one entity, e.g. array[''user_id'']';
  end if;
  foreach k in array join_keys loop
    perform ml._check_identifier('join key', k, 63, '^[A-Za-z_][A-Za-z0-9_]*$');
    if k in ('event_ts', 'written_at', 'tenant') then
      raise exception 'join key "%" is a reserved column name', k using errcode = '22023',
        hint = 'event_ts, written_at and tenant are columns of every offline store: rename the key in a SELECT source';
    end if;
  end loop;
  if (select count(distinct x) from unnest(join_keys) x) <> cardinality(join_keys) then
    raise exception 'join keys of entity % repeat a column', name using errcode = '22023',
      hint = 'name each key column once';
  end if;
  perform pg_advisory_xact_lock(hashtext('indb.features.entity'), hashtext(name));
  select * into e from features.entities x where x.name = create_entity.name;
  if e.id is not null then
    if e.join_keys = create_entity.join_keys then
      return e.id;  -- idempotent
    end if;
    raise exception 'entity "%" already exists with join keys %', name, e.join_keys using errcode = '42710',
      hint = 'entities are immutable: pick another name';
  end if;
  begin
    insert into features.entities (name, join_keys, description) values (name, join_keys, description)
    returning id into e.id;
  exception when unique_violation then
    raise exception 'entity name "%" is taken by another tenant', name using errcode = '42710',
      hint = 'entity names are unique across tenants; pick another name';
  end;
  return e.id;
end $$;
comment on function features.create_entity(text, text[], text) is
  'declare an entity and the columns that identify one (of the session''s tenant, or shared)';

-- ---------------------------------------------------------------------------------------------------------
-- feature views: create_feature_view (SECURITY INVOKER: it reads the source with the caller's rights) checks
-- the definition against the source in named steps, then _register_view (SECURITY DEFINER) versions it,
-- writes the catalog and creates the offline store.

create or replace function features._check_view_args(name text, partition_by text, features jsonb, ttl interval)
returns void
language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
  perform ml._check_identifier('feature view', name, 63, '^[A-Za-z_][A-Za-z0-9_]*$');
  if partition_by is null or partition_by not in ('day', 'week', 'month', 'year') then
    raise exception 'partition_by must be day, week, month or year, got %', coalesce(partition_by, 'NULL')
      using errcode = '22023', hint = 'choose a unit that gives partitions of a few million rows at most';
  end if;
  if features is null or jsonb_typeof(features) <> 'array' or jsonb_array_length(features) = 0 then
    raise exception 'features must be a non-empty JSON array of {"name", "type", "expr"} objects' using errcode = '22023',
      hint = 'e.g. ''[{"name": "avg_rating", "type": "float8", "expr": "avg_rating"}]''';
  end if;
  if jsonb_array_length(features) > 500 then
    raise exception 'a feature view holds at most 500 features, got %', jsonb_array_length(features)
      using errcode = '54011', hint = 'split the features over several views of the same entity';
  end if;
  if ttl is not null and ttl <= interval '0' then
    raise exception 'ttl must be positive, got %', ttl using errcode = '22023', hint = 'pass null for no ttl';
  end if;
end $$;

-- the columns of the source {name: type}, with its timestamp column checked
create or replace function features._source_columns(src text, name text, timestamp_column text) returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  cols jsonb;
  ts_type text;
begin
  select jsonb_object_agg(d.name, d.type) into cols
    from features._describe(src, format('source of feature view %s', name)) d;
  ts_type := cols ->> timestamp_column;
  if ts_type is null then
    raise exception 'source of feature view % has no timestamp column "%"', name, coalesce(timestamp_column, 'NULL')
      using errcode = '42703', detail = 'its columns: ' || (select string_agg(x, ', ') from jsonb_object_keys(cols) x),
      hint = 'name the event-time column of the source (timestamptz, timestamp or date)';
  end if;
  if ts_type not in ('timestamp with time zone', 'timestamp without time zone', 'date') then
    raise exception 'timestamp column "%" of feature view % has type %, not a timestamp', timestamp_column, name, ts_type
      using errcode = '42804', hint = 'cast it in a SELECT source, e.g. to_timestamp(epoch) as ts';
  end if;
  return cols;
end $$;

-- the entity's join keys in the source: [{name, type, kind}]
create or replace function features._key_columns(e features.entities, cols jsonb, name text) returns jsonb
language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  k text;
  out jsonb := '[]';
begin
  foreach k in array e.join_keys loop
    if cols ->> k is null then
      raise exception 'source of feature view % lacks join key "%" of entity %', name, k, e.name using errcode = '42703',
        detail = 'its columns: ' || (select string_agg(x, ', ') from jsonb_object_keys(cols) x),
        hint = 'select the key under that name in a SELECT source';
    end if;
    if features._key_kind(features._check_type(format('join key "%s"', k), cols ->> k)) is null then
      raise exception 'join key "%" has type %, which cannot be an entity key', k, cols ->> k using errcode = '42804',
        hint = 'entity keys are integers or text; cast it in a SELECT source';
    end if;
    out := out || jsonb_build_array(jsonb_build_object('name', k, 'type', cols ->> k, 'kind', features._key_kind(cols ->> k)));
  end loop;
  return out;
end $$;

-- an expectation of a feature as SQL predicates over a staged row: literals quoted, the type cast through
-- regtype. Built from the definition wherever it is used, never read back as SQL from the catalog.
create or replace function features._expectations(f jsonb)
returns table (feature text, rule text, predicate text)
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  ex jsonb := f -> 'expect';
  fname text := f ->> 'name';
  t text := (f ->> 'type')::regtype::text;
  k text;
begin
  if ex is null or jsonb_typeof(ex) = 'null' then
    return;
  end if;
  if jsonb_typeof(ex) <> 'object' then
    raise exception 'expect of feature "%" must be an object', fname using errcode = '22023',
      hint = 'e.g. {"not_null": true, "min": 0, "max": 5, "in": ["a", "b"]}';
  end if;
  for k in select jsonb_object_keys(ex) order by 1 loop
    if k = 'not_null' then
      if jsonb_typeof(ex -> k) <> 'boolean' then
        raise exception 'expect.not_null of feature "%" must be true or false', fname using errcode = '22023',
          hint = 'e.g. "expect": {"not_null": true}';
      end if;
      if (ex ->> k)::boolean then
        feature := fname; rule := 'not_null'; predicate := format('%I is not null', fname);
        return next;
      end if;
    elsif k in ('min', 'max') then
      if jsonb_typeof(ex -> k) not in ('number', 'string') then
        raise exception 'expect.% of feature "%" must be a number or a string', k, fname using errcode = '22023',
          hint = format('e.g. "expect": {"%s": 0}', k);
      end if;
      feature := fname; rule := k || ' ' || (ex ->> k);
      predicate := format('%I is null or %I %s %L::%s', fname, fname, case k when 'min' then '>=' else '<=' end,
                          ex ->> k, t);
      return next;
    elsif k = 'in' then
      if jsonb_typeof(ex -> 'in') <> 'array' then
        raise exception 'expect.in of feature "%" must be an array', fname using errcode = '22023',
          hint = 'e.g. "expect": {"in": ["a", "b"]}';
      end if;
      feature := fname; rule := 'in ' || (ex ->> 'in');
      predicate := format('%I is null or %I = any (%L::%s[])', fname, fname,
                          (select coalesce(array_agg(y), '{}') from jsonb_array_elements_text(ex -> 'in') y), t);
      return next;
    else
      raise exception 'unknown expectation "%" on feature "%"', k, fname using errcode = '22023',
        hint = 'expectations: not_null (true), min, max, in (array)';
    end if;
  end loop;
end $$;

-- one feature definition, normalized: {name, type (canonical), expr, expect, description}
create or replace function features._normalize_feature(f jsonb, cols jsonb, src text, taken text[]) returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  fname text;
  fexpr text;
  ftype text;
begin
  if jsonb_typeof(f) = 'string' then
    f := jsonb_build_object('name', f #>> '{}');
  end if;
  if jsonb_typeof(f) <> 'object' or jsonb_typeof(f -> 'name') is distinct from 'string' then
    raise exception 'invalid feature definition %', ml._clip(f::text, 200) using errcode = '22023',
      hint = 'each feature is {"name": "...", "type": "float8", "expr": "SQL over the source"}; the name is an identifier';
  end if;
  fname := f ->> 'name';
  perform ml._check_identifier('feature', fname, 63, '^[A-Za-z_][A-Za-z0-9_]*$');
  if fname = any (taken) or fname in ('event_ts', 'written_at', 'tenant') then
    raise exception 'feature name "%" is used twice, or clashes with a join key or a reserved column', fname
      using errcode = '42710', hint = 'event_ts, written_at and tenant are reserved; rename the feature';
  end if;
  if exists (select 1 from jsonb_object_keys(f) x where x not in ('name', 'type', 'expr', 'expect', 'description')) then
    raise exception 'feature "%" has unknown fields', fname using errcode = '22023',
      detail = format('got: %s', left(f::text, 300)), hint = 'allowed: name, type, expr, expect, description';
  end if;
  if f ? 'expr' and (jsonb_typeof(f -> 'expr') <> 'string' or btrim(f ->> 'expr') = '') then
    raise exception 'expr of feature "%" must be a non-empty SQL expression', fname using errcode = '22023',
      hint = 'e.g. "expr": "avg_rating", or leave expr out to take the source column of the feature''s name';
  end if;
  fexpr := coalesce(f ->> 'expr', quote_ident(fname));
  if f ->> 'expr' is null and cols ->> fname is null then
    raise exception 'feature "%" has no expr and the source has no column of that name', fname using errcode = '42703',
      hint = 'add "expr": "<SQL over the source columns>"';
  end if;
  ftype := f ->> 'type';
  if ftype is null then
    select d.type into ftype from features._describe(format('select (%s) as x from (%s) s', fexpr, src),
                                                      format('expression of feature %s', fname)) d;
  end if;
  ftype := features._check_type(format('feature "%s"', fname), ftype);
  f := jsonb_strip_nulls(jsonb_build_object('name', fname, 'type', ftype, 'expr', fexpr, 'expect', f -> 'expect',
                                            'description', f ->> 'description'));
  perform count(*) from features._expectations(f);   -- refuse bad expectations now
  return f;
end $$;

-- every expression and expectation planned against the source in one statement, without running it
create or replace function features._check_feature_sql(norm jsonb, src text, name text) returns void
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  sel text := (select string_agg(format('(%s)::%s as %I', x->>'expr', (x->>'type')::regtype, x->>'name'), ', ')
                 from jsonb_array_elements(norm) x);
  preds text;
begin
  perform features._describe(format('select %s from (%s) s', sel, src), format('features of view %s', name));
  select string_agg(format('(%s)', e.predicate), ', ') into preds
    from jsonb_array_elements(norm) x, features._expectations(x) e;
  if preds is not null then
    perform features._describe(format('select %s from (select %s from (%s) s) s', preds, sel, src),
                               format('expectations of view %s', name));
  end if;
end $$;

create or replace function features.create_feature_view(
  name text, entity text, source text, timestamp_column text, features jsonb,
  ttl interval default null, description text default null, owner text default null,
  partition_by text default 'year', breaking boolean default false)
returns text
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, @VS@, pg_temp  -- the caller's SQL: USER_SQL_PATH (sql/000-runtime.sql)
as $$
declare
  e features.entities;
  src text;
  cols jsonb;
  keys jsonb;
  f jsonb;
  norm jsonb := '[]';
begin
  perform features._check_view_args(name, partition_by, features, ttl);
  select * into e from features.entities x where x.name = entity;
  if e.id is null then
    raise exception 'entity "%" does not exist', coalesce(entity, 'NULL') using errcode = '42704',
      hint = 'create it first: select features.create_entity(''user'', array[''user_id''])';
  end if;
  src := ml._relation_sql(source, format('source of feature view %s', name));
  cols := features._source_columns(src, name, timestamp_column);
  keys := features._key_columns(e, cols, name);
  for f in select x from jsonb_array_elements(features) x loop
    norm := norm || jsonb_build_array(features._normalize_feature(f, cols, src,
              e.join_keys || array(select y->>'name' from jsonb_array_elements(norm) y)));
  end loop;
  perform features._check_feature_sql(norm, src, name);
  return features._register_view(name, e.id, source, src, timestamp_column, keys, norm, ttl, partition_by,
                                 description, owner, coalesce(breaking, false));
end $$;
comment on function features.create_feature_view(text, text, text, text, jsonb, interval, text, text, text, boolean) is
  'define (or version) a feature view over a table, view or SELECT; returns name@version';

-- the checks of _register_view on what it is handed (it may be called directly by any writer)
create or replace function features._check_definition(keys jsonb, feats jsonb, e features.entities,
                                                      timestamp_column text, source_sql text) returns void
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  x jsonb;
begin
  if jsonb_typeof(keys) is distinct from 'array'
     or array(select y->>'name' from jsonb_array_elements(keys) y) is distinct from e.join_keys then
    raise exception 'key columns must be the join keys of entity %', e.name using errcode = '22023',
      hint = 'define views with features.create_feature_view, which derives them from the source';
  end if;
  for x in select y from jsonb_array_elements(keys) y loop
    if features._key_kind(features._check_type(format('join key "%s"', x->>'name'), x->>'type'))
       is distinct from x->>'kind' then
      raise exception 'invalid type % for join key "%"', coalesce(quote_literal(x->>'type'), 'NULL'), x->>'name'
        using errcode = '42804', hint = 'entity keys are integers or text';
    end if;
  end loop;
  if jsonb_typeof(feats) is distinct from 'array' or jsonb_array_length(feats) = 0 then
    raise exception 'features must be a non-empty array' using errcode = '22023',
      hint = 'define views with features.create_feature_view';
  end if;
  for x in select y from jsonb_array_elements(feats) y loop
    perform ml._check_identifier('feature', x->>'name', 63, '^[A-Za-z_][A-Za-z0-9_]*$');
    if features._check_type(format('feature "%s"', x->>'name'), x->>'type') <> x->>'type'
       or coalesce(btrim(x->>'expr'), '') = '' then
      raise exception 'feature "%" needs a canonical type and an expression', x->>'name' using errcode = '22023',
        hint = 'define views with features.create_feature_view, which normalizes every feature';
    end if;
    perform count(*) from features._expectations(x);
  end loop;
  if (select count(distinct n) from (select y->>'name' as n from jsonb_array_elements(feats) y
                                       union all select unnest(e.join_keys)) z)
     <> jsonb_array_length(feats) + cardinality(e.join_keys)
     or exists (select 1 from jsonb_array_elements(feats) y where y->>'name' in ('event_ts', 'written_at', 'tenant')) then
    raise exception 'feature names must be distinct from each other, the join keys and reserved columns'
      using errcode = '42710', hint = 'rename the feature (event_ts, written_at and tenant are reserved)';
  end if;
  if timestamp_column is null or timestamp_column = '' or octet_length(timestamp_column) > 63 then
    raise exception 'invalid timestamp column %', coalesce(quote_literal(timestamp_column), 'NULL') using errcode = '22023',
      hint = 'name the event-time column of the source';
  end if;
  if coalesce(btrim(source_sql), '') = '' then
    raise exception 'the source of a feature view is empty' using errcode = '22023',
      hint = 'pass a table, view or SELECT';
  end if;
end $$;

-- a view version, as the catalog row and its offline store; the same definition again returns the existing
-- version, an additive change makes the next one, a breaking change needs breaking => true
create or replace function features._register_view(name text, entity_id bigint, source text, source_sql text,
                                                   timestamp_column text, keys jsonb, features jsonb, ttl interval,
                                                   partition_by text, description text, owner text, breaking boolean)
returns text
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  e features.entities;
  prev features.feature_views;
  t text := ml.current_tenant();
  removed text;
  newid bigint;
begin
  perform features._check_view_args(name, partition_by, features, ttl);
  select * into e from features.entities x where x.id = entity_id;   -- row-level security: the caller's view
  if e.id is null then
    raise exception 'entity id % does not exist', coalesce(entity_id::text, 'NULL') using errcode = '42704',
      hint = 'create the entity first: features.create_entity(name, join_keys)';
  end if;
  perform features._check_definition(keys, features, e, timestamp_column, source_sql);
  perform pg_advisory_xact_lock(hashtext('indb.features.view_name'), hashtext(name));
  select * into prev from features.feature_views x where x.name = _register_view.name order by x.version desc limit 1;
  if prev.id is not null then
    if prev.entity_id = e.id and prev.source_sql = _register_view.source_sql
       and prev.timestamp_column = _register_view.timestamp_column and prev.features = _register_view.features
       and prev.ttl is not distinct from _register_view.ttl and prev.partition_by = _register_view.partition_by then
      return prev.name || '@' || prev.version;  -- same definition: nothing to do
    end if;
    -- additive: every old feature kept with the same type and expression, same entity, source and time column
    select string_agg(o->>'name', ', ') into removed
      from jsonb_array_elements(prev.features) o
     where not exists (select 1 from jsonb_array_elements(_register_view.features) n
                        where n->>'name' = o->>'name' and n->>'type' = o->>'type' and n->>'expr' = o->>'expr');
    if not coalesce(breaking, false) and (removed is not null or prev.entity_id <> e.id
        or prev.source_sql <> _register_view.source_sql or prev.timestamp_column <> _register_view.timestamp_column) then
      raise exception 'breaking change to feature view %', name using errcode = '22023',
        detail = concat_ws('; ',
          case when removed is not null then 'removed or changed features: ' || removed end,
          case when prev.entity_id <> e.id then 'entity changed' end,
          case when prev.source_sql <> _register_view.source_sql then 'source changed' end,
          case when prev.timestamp_column <> _register_view.timestamp_column then 'timestamp column changed' end),
        hint = format('pass breaking => true to create %s@%s (older versions stay readable as %s@%s)',
                      name, prev.version + 1, name, prev.version);
    end if;
    perform features._assert_may_write(prev);   -- versions of a shared view: sessions acting for no tenant
    t := prev.tenant;                            -- every version of a name belongs to the same tenant
  end if;
  if e.tenant is not null and e.tenant is distinct from t then
    raise exception 'entity % belongs to tenant %; a shared feature view needs a shared entity', e.name, e.tenant
      using errcode = '42501', hint = 'act for that tenant (SET indb.tenant), or use a shared entity';
  end if;
  newid := nextval(pg_get_serial_sequence('features.feature_views', 'id'));
  begin
    insert into features.feature_views (id, name, version, entity_id, source, source_sql, timestamp_column, join_keys,
        key_types, features, checks, ttl, partition_by, offline_table, description, owner, tenant)
    overriding system value
    values (newid, name, coalesce(prev.version, 0) + 1, e.id, source, source_sql, timestamp_column, e.join_keys,
        array(select y->>'kind' from jsonb_array_elements(keys) y),
        features,
        coalesce((select jsonb_agg(jsonb_build_object('feature', c.feature, 'rule', c.rule))
                    from jsonb_array_elements(features) x, features._expectations(x) c), '[]'),
        ttl, partition_by, format('features.%I', 'fv_' || newid || '_offline'), description, owner, t);
  exception when unique_violation then
    raise exception 'feature view name "%" is taken by another tenant', name using errcode = '42710',
      hint = 'feature view names are unique across tenants; pick another name';
  end;
  perform features._create_offline_table(newid, keys, features, t);
  return name || '@' || (coalesce(prev.version, 0) + 1);
end $$;
comment on function features._register_view(text, bigint, text, text, text, jsonb, jsonb, interval, text, text, text, boolean) is
  'internal (SECURITY DEFINER): write a checked view version to the catalog and create its offline store';

-- definitions are immutable: a new definition is a new version
create or replace function features._immutable_views() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  raise exception 'feature view definitions are immutable (%@%)', old.name, old.version using errcode = '55000',
    hint = 'call features.create_feature_view again with the new definition: it creates the next version';
end $$;

drop trigger if exists feature_views_immutable on features.feature_views;
create trigger feature_views_immutable before update or delete on features.feature_views
  for each row execute function features._immutable_views();
