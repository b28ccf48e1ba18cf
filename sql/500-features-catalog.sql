-- indb feature store (issue 7): entities, versioned feature views, offline store (range-partitioned by event
-- time, one table per view version), online store (latest value per entity), point-in-time joins,
-- materialization with statistics and expectations, push, on-demand features, drift, freshness, skew.
-- Stateless: re-applied (create or replace) by `indb install`. Tables live in migrations/versions/0007_features.py.
--
-- Feature references: 'view:feature', 'view@2:feature', 'view:*' (all features of a view), or the name of an
-- on-demand feature. Output columns are named after the feature; two requested features with the same name
-- must be qualified (full_names => true names them view__feature).

create or replace function features._describe(query text, what text default 'query')
returns table (ord int, name text, type text)
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import features, errors
cols = errors.call(plpy, features.describe, plpy, query, what)
return [(i + 1, c['name'], c['type']) for i, c in enumerate(cols)]
$$;
comment on function features._describe(text, text) is 'internal: column names and types of a SELECT, without running it';


create or replace function features._key_kind(t text) returns text
language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select case when t in ('smallint', 'integer', 'bigint') then 'int'
              when t in ('text', 'uuid', 'name') or t like 'character varying%' or t like 'character(%' then 'text'
         end
$$;

create or replace function features._view(ref text) returns features.feature_views
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  m text[];
  v features.feature_views;
  known text;
begin
  m := regexp_match(coalesce(ref, ''), '^\s*([A-Za-z_][A-Za-z0-9_]*)(?:@([0-9]+))?\s*$');
  if m is null then
    raise exception 'invalid feature view reference %', coalesce(quote_literal(ref), 'NULL') using errcode = '22023',
      hint = 'use name (latest version) or name@version';
  end if;
  if m[2] is null then
    select * into v from features.feature_views where name = m[1] order by version desc limit 1;
  else
    select * into v from features.feature_views where name = m[1] and version = m[2]::int;
  end if;
  if v.id is null then
    select string_agg(name || '@' || version, ', ' order by name, version) into known
      from features.feature_views where name = m[1];
    raise exception 'feature view "%" does not exist', ref using errcode = '42704',
      detail = coalesce('versions of ' || m[1] || ': ' || known, 'no view of that name'),
      hint = 'create it with features.create_feature_view, or list them: select name, version from features.feature_views';
  end if;
  return v;
end $$;

-- resolve feature references into (view version, feature, type, output name); on-demand features bring their
-- stored inputs along as hidden rows. Fast path: one SQL statement for plain view:feature references (the
-- get_online hot path); anything else (on-demand features, errors) goes through _resolve_slow.
create or replace function features._resolve_fast(refs text[], full_names boolean)
returns table (ord int, view_id bigint, view_ref text, feature text, ftype text, out_name text, hidden boolean,
               odfv_id bigint, ref_ord int)
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select (row_number() over (order by u.o, f.o))::int, v.id, v.name || '@' || v.version, f.x->>'name', f.x->>'type',
         case when full_names then v.name || '__' || (f.x->>'name') else f.x->>'name' end, false, null::bigint, u.o::int
    from unnest(refs) with ordinality u(ref, o)
    cross join lateral regexp_match(u.ref, '^\s*([A-Za-z_][A-Za-z0-9_]*)(?:@([0-9]+))?\s*:\s*([A-Za-z_][A-Za-z0-9_]*|\*)\s*$') m
    cross join lateral (select * from features.feature_views fv
                         where fv.name = m[1] and (m[2] is null or fv.version = m[2]::int)
                         order by fv.version desc limit 1) v
    cross join lateral jsonb_array_elements(v.features) with ordinality f(x, o)
   where m[3] = '*' or f.x->>'name' = m[3]
$$;

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
    from features._resolve_fast(refs, full_names) x;
  if coalesce(resolved, 0) < cardinality(refs) then
    acc := features._resolve_slow(refs, full_names);
  end if;
  -- hidden inputs that are also requested are fetched once; visible duplicates are an error
  select x->>'out_name' into dup from jsonb_array_elements(acc) x where not (x->>'hidden')::boolean
   group by x->>'out_name' having count(*) > 1 limit 1;
  if dup is not null then
    raise exception 'feature name "%" is requested from more than one view (or twice)', dup using errcode = '42710',
      detail = (select string_agg(coalesce((x->>'view_ref') || ':', '') || (x->>'feature'), ', ')
                  from jsonb_array_elements(acc) x where x->>'out_name' = dup and not (x->>'hidden')::boolean),
      hint = 'request it once, or qualify the output names with full_names => true (view__feature)';
  end if;
  return query select x.ord, x.view_id, x.view_ref, x.feature, x.ftype, x.out_name, x.hidden, x.odfv_id
                 from jsonb_to_recordset(acc) x(ord int, view_id bigint, view_ref text, feature text, ftype text,
                                                out_name text, hidden boolean, odfv_id bigint)
                order by x.ord;
end $$;

create or replace function features._resolve_slow(refs text[], full_names boolean) returns jsonb
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  i int;
  r text;
  m text[];
  v features.feature_views;
  f jsonb;
  od features.on_demand_features;
  inp text;
  n int := 0;
  acc jsonb := '[]';
begin
  for i in 1 .. cardinality(refs) loop
    r := refs[i];
    m := regexp_match(coalesce(r, ''), '^\s*([A-Za-z_][A-Za-z0-9_]*(?:@[0-9]+)?)\s*:\s*([A-Za-z_][A-Za-z0-9_]*|\*)\s*$');
    if m is null then
      select * into od from features.on_demand_features x where x.name = btrim(coalesce(r, ''));
      if od.id is null then
        raise exception 'invalid or unknown feature reference %', coalesce(quote_literal(r), 'NULL') using errcode = '42704',
          hint = 'use view:feature, view@version:feature, view:*, or the name of an on-demand feature';
      end if;
      n := n + 1;
      acc := acc || jsonb_build_array(jsonb_build_object('ord', n, 'feature', od.name, 'ftype', od.type,
                                                         'out_name', od.name, 'hidden', false, 'odfv_id', od.id));
      foreach inp in array od.inputs loop
        m := regexp_match(inp, '^([A-Za-z_][A-Za-z0-9_]*(?:@[0-9]+)?):([A-Za-z_][A-Za-z0-9_]*)$');
        v := features._view(m[1]);
        select x into f from jsonb_array_elements(v.features) x where x->>'name' = m[2];
        n := n + 1;
        acc := acc || jsonb_build_array(jsonb_build_object('ord', n, 'view_id', v.id, 'view_ref', v.name || '@' || v.version,
                 'feature', m[2], 'ftype', f->>'type', 'out_name', m[2], 'hidden', true, 'odfv_id', od.id));
      end loop;
      continue;
    end if;
    v := features._view(m[1]);
    if m[2] = '*' then
      for f in select x from jsonb_array_elements(v.features) x loop
        n := n + 1;
        acc := acc || jsonb_build_array(jsonb_build_object('ord', n, 'view_id', v.id, 'view_ref', v.name || '@' || v.version,
                 'feature', f->>'name', 'ftype', f->>'type', 'hidden', false,
                 'out_name', case when full_names then v.name || '__' || (f->>'name') else f->>'name' end));
      end loop;
    else
      select x into f from jsonb_array_elements(v.features) x where x->>'name' = m[2];
      if f is null then
        raise exception 'feature view %@% has no feature "%"', v.name, v.version, m[2] using errcode = '42704',
          detail = 'its features: ' || (select string_agg(x->>'name', ', ') from jsonb_array_elements(v.features) x),
          hint = 'check the spelling, or name another version with view@version:feature';
      end if;
      n := n + 1;
      acc := acc || jsonb_build_array(jsonb_build_object('ord', n, 'view_id', v.id, 'view_ref', v.name || '@' || v.version,
               'feature', m[2], 'ftype', f->>'type', 'hidden', false,
               'out_name', case when full_names then v.name || '__' || m[2] else m[2] end));
    end if;
  end loop;
  return acc;
end $$;

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
      detail = format('got: %s', left(coalesce(keys::text, 'NULL'), 200));
  end if;
  for i in 1 .. cardinality(join_keys) loop
    v := keys -> join_keys[i];
    if v is null or jsonb_typeof(v) = 'null' then
      raise exception 'entity key "%" is missing for feature view %', join_keys[i], view_ref using errcode = '22023',
        hint = 'pass all join keys: ' || array_to_string(join_keys, ', ');
    end if;
    if key_types[i] = 'int' then
      if jsonb_typeof(v) = 'number' and v::text ~ '^-?[0-9]+$' then
        out := out || v;
      elsif jsonb_typeof(v) = 'string' and (v #>> '{}') ~ '^\s*-?[0-9]{1,18}\s*$' then
        out := out || to_jsonb((v #>> '{}')::bigint);
      else
        raise exception 'entity key "%" must be an integer for feature view %, got %', join_keys[i], view_ref, v
          using errcode = '22023';
      end if;
    else
      if jsonb_typeof(v) <> 'string' then
        raise exception 'entity key "%" must be a string for feature view %, got %', join_keys[i], view_ref, v
          using errcode = '22023';
      end if;
      out := out || v;
    end if;
  end loop;
  return out::text;
end $$;

-- SQL expression (over alias a) that gives the canonical entity key of a typed row
create or replace function features._key_sql(join_keys text[], key_types text[], alias text) returns text
language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select 'jsonb_build_array(' || string_agg(format('%I.%I::%s', alias, k,
            case when t = 'int' then 'bigint' else 'text' end), ', ' order by o) || ')::text'
    from unnest(join_keys, key_types) with ordinality u(k, t, o)
$$;

create or replace function features._partition_start(unit text, ts timestamptz) returns timestamptz
language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$ select date_trunc(unit, ts, 'UTC') $$;

-- create the missing partitions of a view's offline table between two event times
create or replace function features._ensure_partitions(v features.feature_views, lo timestamptz, hi timestamptz)
returns int
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  p timestamptz;
  step interval := ('1 ' || v.partition_by)::interval;
  pname text;
  made int := 0;
begin
  if lo is null or hi is null then
    return 0;
  end if;
  if lo = '-infinity' or hi = 'infinity' then
    raise exception 'event times must be finite' using errcode = '22008';
  end if;
  p := features._partition_start(v.partition_by, lo);
  while p <= hi loop
    pname := format('fv_%s_p%s', v.id, to_char(p at time zone 'UTC', 'YYYYMMDD'));
    if to_regclass('features.' || pname) is null then
      execute format('create table features.%I partition of %s for values from (%L) to (%L)',
                     pname, v.offline_table, p, (p at time zone 'UTC' + step) at time zone 'UTC');
      made := made + 1;
    end if;
    p := (p at time zone 'UTC' + step) at time zone 'UTC';
  end loop;
  return made;
end $$;

create or replace function features.create_entity(name text, join_keys text[], description text default null)
returns bigint
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  e features.entities;
  k text;
begin
  if name is null or name !~ '^[A-Za-z_][A-Za-z0-9_]*$' then
    raise exception 'invalid entity name %', coalesce(quote_literal(name), 'NULL') using errcode = '22023',
      hint = 'use letters, digits and underscores, starting with a letter';
  end if;
  if join_keys is null or cardinality(join_keys) = 0 then
    raise exception 'entity % needs at least one join key', name using errcode = '22023';
  end if;
  foreach k in array join_keys loop
    if k is null or k !~ '^[A-Za-z_][A-Za-z0-9_]*$' or k in ('event_ts', 'written_at') then
      raise exception 'invalid join key %', coalesce(quote_literal(k), 'NULL') using errcode = '22023',
        hint = 'join keys are column names (letters, digits, underscores); event_ts and written_at are reserved';
    end if;
  end loop;
  if (select count(distinct x) from unnest(join_keys) x) <> cardinality(join_keys) then
    raise exception 'join keys of entity % repeat a column', name using errcode = '22023';
  end if;
  select * into e from features.entities x where x.name = create_entity.name;
  if e.id is not null then
    if e.join_keys = create_entity.join_keys then
      return e.id;  -- idempotent
    end if;
    raise exception 'entity "%" already exists with join keys %', name, e.join_keys using errcode = '42710',
      hint = 'entities are immutable: pick another name';
  end if;
  insert into features.entities (name, join_keys, description) values (name, join_keys, description)
  returning id into e.id;
  return e.id;
end $$;
comment on function features.create_entity(text, text[], text) is 'declare an entity and the columns that identify one';

create or replace function features.create_feature_view(
  name text, entity text, source text, timestamp_column text, features jsonb,
  ttl interval default null, description text default null, owner text default null,
  partition_by text default 'year', breaking boolean default false)
returns text
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  e features.entities;
  prev features.feature_views;
  src text;
  cols jsonb;
  ts_type text;
  k text;
  key_kinds text[] := '{}';
  key_decl text[] := '{}';
  f jsonb;
  fname text;
  fexpr text;
  ftype text;
  norm jsonb := '[]';
  checks jsonb := '[]';
  sel text[] := '{}';
  ex jsonb;
  exkey text;
  v features.feature_views;
  removed text;
  newid bigint;
begin
  if name is null or name !~ '^[A-Za-z_][A-Za-z0-9_]*$' then
    raise exception 'invalid feature view name %', coalesce(quote_literal(name), 'NULL') using errcode = '22023',
      hint = 'use letters, digits and underscores; versions are added as name@n';
  end if;
  select * into e from features.entities x where x.name = entity;
  if e.id is null then
    raise exception 'entity "%" does not exist', entity using errcode = '42704',
      hint = 'create it first: select features.create_entity(''user'', array[''user_id''])';
  end if;
  if partition_by is null or partition_by not in ('day', 'week', 'month', 'year') then
    raise exception 'partition_by must be day, week, month or year, got %', coalesce(partition_by, 'NULL')
      using errcode = '22023';
  end if;
  if features is null or jsonb_typeof(features) <> 'array' or jsonb_array_length(features) = 0 then
    raise exception 'features must be a non-empty JSON array of {"name", "type", "expr"} objects' using errcode = '22023',
      hint = 'e.g. ''[{"name": "avg_rating", "type": "float8", "expr": "avg_rating"}]''';
  end if;
  src := ml._relation_sql(source, format('source of feature view %s', name));
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
  foreach k in array e.join_keys loop
    if cols ->> k is null then
      raise exception 'source of feature view % lacks join key "%" of entity %', name, k, entity using errcode = '42703',
        detail = 'its columns: ' || (select string_agg(x, ', ') from jsonb_object_keys(cols) x);
    end if;
    if features._key_kind(cols ->> k) is null then
      raise exception 'join key "%" has type %, which cannot be an entity key', k, cols ->> k using errcode = '42804',
        hint = 'entity keys are integers or text; cast it in a SELECT source';
    end if;
    key_kinds := key_kinds || features._key_kind(cols ->> k);
    key_decl := key_decl || format('%I %s not null', k, cols ->> k);
  end loop;
  for f in select x from jsonb_array_elements(features) x loop
    if jsonb_typeof(f) = 'string' then
      f := jsonb_build_object('name', f #>> '{}');
    end if;
    fname := f ->> 'name';
    if jsonb_typeof(f) <> 'object' or fname is null or fname !~ '^[A-Za-z_][A-Za-z0-9_]*$' then
      raise exception 'invalid feature definition %', f using errcode = '22023',
        hint = 'each feature is {"name": "...", "type": "float8", "expr": "SQL over the source"}; the name is an identifier';
    end if;
    if fname = any (e.join_keys) or fname in ('event_ts', 'written_at') then
      raise exception 'feature name "%" clashes with a join key or a reserved column (event_ts, written_at)', fname
        using errcode = '42710';
    end if;
    if exists (select 1 from jsonb_array_elements(norm) y where y->>'name' = fname) then
      raise exception 'feature "%" is defined twice in feature view %', fname, name using errcode = '42710';
    end if;
    if (select count(*) from jsonb_object_keys(f) x where x not in ('name', 'type', 'expr', 'expect', 'description')) > 0 then
      raise exception 'feature "%" has unknown fields', fname using errcode = '22023',
        detail = format('got: %s', f), hint = 'allowed: name, type, expr, expect, description';
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
    elsif to_regtype(ftype) is null then
      raise exception 'feature "%" has unknown type %', fname, ftype using errcode = '42704';
    else
      ftype := format_type(to_regtype(ftype), null);
    end if;
    sel := sel || format('(%s)::%s as %I', fexpr, ftype, fname);
    norm := norm || jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
      'name', fname, 'type', ftype, 'expr', fexpr, 'expect', f -> 'expect', 'description', f ->> 'description')));
    -- expectations -> SQL predicates over the staged row (literals quoted, cast to the feature type)
    ex := f -> 'expect';
    if ex is not null then
      if jsonb_typeof(ex) <> 'object' then
        raise exception 'expect of feature "%" must be an object', fname using errcode = '22023';
      end if;
      for exkey in select jsonb_object_keys(ex) loop
        if exkey = 'not_null' then
          if ex -> exkey = 'true' then
            checks := checks || jsonb_build_array(jsonb_build_object('feature', fname, 'rule', 'not_null',
                        'sql', format('%I is not null', fname)));
          end if;
        elsif exkey in ('min', 'max') then
          checks := checks || jsonb_build_array(jsonb_build_object('feature', fname, 'rule', exkey || ' ' || (ex ->> exkey),
                      'sql', format('%I is null or %I %s %L::%s', fname, fname,
                                    case exkey when 'min' then '>=' else '<=' end, ex ->> exkey, ftype)));
        elsif exkey = 'in' then
          if jsonb_typeof(ex -> 'in') <> 'array' then
            raise exception 'expect.in of feature "%" must be an array', fname using errcode = '22023';
          end if;
          checks := checks || jsonb_build_array(jsonb_build_object('feature', fname, 'rule', 'in ' || (ex ->> 'in'),
                      'sql', format('%I is null or %I = any (%L::%s[])', fname, fname,
                                    (select coalesce(array_agg(y), '{}') from jsonb_array_elements_text(ex -> 'in') y),
                                    ftype)));
        else
          raise exception 'unknown expectation "%" on feature "%"', exkey, fname using errcode = '22023',
            hint = 'expectations: not_null (true), min, max, in (array)';
        end if;
      end loop;
    end if;
  end loop;
  -- validate every expression (and expectation) against the source in one plan, without running it
  perform features._describe(format('select %s from (%s) s', array_to_string(sel, ', '), src),
                             format('features of view %s', name));
  if jsonb_array_length(checks) > 0 then
    perform features._describe(format('select %s from (select %s from (%s) s) s',
                                      (select string_agg(format('(%s)', c->>'sql'), ', ') from jsonb_array_elements(checks) c),
                                      array_to_string(sel, ', '), src),
                               format('expectations of view %s', name));
  end if;

  select * into prev from features.feature_views x where x.name = create_feature_view.name order by version desc limit 1;
  if prev.id is not null then
    if prev.entity_id = e.id and prev.source_sql = src and prev.timestamp_column = create_feature_view.timestamp_column
       and prev.features = norm and prev.ttl is not distinct from create_feature_view.ttl
       and prev.partition_by = create_feature_view.partition_by then
      return prev.name || '@' || prev.version;  -- same definition: nothing to do
    end if;
    -- additive: every old feature kept with the same type and expression, same entity, source and time column
    select string_agg(o->>'name', ', ') into removed
      from jsonb_array_elements(prev.features) o
     where not exists (select 1 from jsonb_array_elements(norm) n
                        where n->>'name' = o->>'name' and n->>'type' = o->>'type' and n->>'expr' = o->>'expr');
    if not breaking and (removed is not null or prev.entity_id <> e.id or prev.source_sql <> src
                         or prev.timestamp_column <> create_feature_view.timestamp_column) then
      raise exception 'breaking change to feature view %', name using errcode = '22023',
        detail = concat_ws('; ',
          case when removed is not null then 'removed or changed features: ' || removed end,
          case when prev.entity_id <> e.id then 'entity changed' end,
          case when prev.source_sql <> src then 'source changed' end,
          case when prev.timestamp_column <> create_feature_view.timestamp_column then 'timestamp column changed' end),
        hint = format('pass breaking => true to create %s@%s (older versions stay readable as %s@%s)',
                      name, prev.version + 1, name, prev.version);
    end if;
  end if;

  insert into features.feature_views (name, version, entity_id, source, source_sql, timestamp_column, join_keys,
      key_types, features, checks, ttl, partition_by, offline_table, description, owner)
  values (name, coalesce(prev.version, 0) + 1, e.id, source, src, timestamp_column, e.join_keys, key_kinds, norm,
      checks, ttl, partition_by, '-', description, owner)
  returning id into newid;
  -- offline store: typed, range-partitioned by event time; (keys, event_ts) unique: a later write of the same
  -- entity and event time replaces the earlier one
  execute format('create table features.%I (%s, event_ts timestamptz not null, written_at timestamptz not null default now(), %s, primary key (%s, event_ts)) partition by range (event_ts)',
                 'fv_' || newid || '_offline', array_to_string(key_decl, ', '),
                 (select string_agg(format('%I %s', x->>'name', x->>'type'), ', ') from jsonb_array_elements(norm) x),
                 (select string_agg(format('%I', k2), ', ') from unnest(e.join_keys) k2));
  -- the definition is immutable from here on; offline_table is set once by the trigger's only exception
  perform set_config('indb.features_init', newid::text, true);
  update features.feature_views set offline_table = format('features.%I', 'fv_' || newid || '_offline') where id = newid;
  perform set_config('indb.features_init', '', true);
  return name || '@' || (coalesce(prev.version, 0) + 1);
end $$;
comment on function features.create_feature_view(text, text, text, text, jsonb, interval, text, text, text, boolean) is
  'define (or version) a feature view over a table, view or SELECT; returns name@version';

create or replace function features._immutable_views() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  if tg_op = 'UPDATE' and old.offline_table = '-' and current_setting('indb.features_init', true) = old.id::text
     and (to_jsonb(new) - 'offline_table') = (to_jsonb(old) - 'offline_table') then
    return new;
  end if;
  raise exception 'feature view definitions are immutable (%@%)', old.name, old.version using errcode = '55000',
    hint = 'call features.create_feature_view again with the new definition: it creates the next version';
end $$;

drop trigger if exists feature_views_immutable on features.feature_views;
create trigger feature_views_immutable before update or delete on features.feature_views
  for each row execute function features._immutable_views();

create or replace function features.create_on_demand_feature(name text, expression text, type text, inputs text[],
                                                             request_fields jsonb default '{}',
                                                             description text default null)
returns text
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  t regtype := to_regtype(type);
  inp text;
  m text[];
  v features.feature_views;
  f jsonb;
  binds text[] := '{}';
  newid bigint;
  fn text;
  k text;
begin
  if name is null or name !~ '^[A-Za-z_][A-Za-z0-9_]*$' then
    raise exception 'invalid on-demand feature name %', coalesce(quote_literal(name), 'NULL') using errcode = '22023';
  end if;
  if exists (select 1 from features.on_demand_features o where o.name = create_on_demand_feature.name) then
    raise exception 'on-demand feature "%" already exists', name using errcode = '42710';
  end if;
  if t is null then
    raise exception 'unknown type %', coalesce(type, 'NULL') using errcode = '42704';
  end if;
  if request_fields is null or jsonb_typeof(request_fields) <> 'object' then
    raise exception 'request_fields must be a JSON object {"field": "type"}' using errcode = '22023';
  end if;
  foreach inp in array coalesce(inputs, '{}') loop
    m := regexp_match(inp, '^([A-Za-z_][A-Za-z0-9_]*(?:@[0-9]+)?):([A-Za-z_][A-Za-z0-9_]*)$');
    if m is null then
      raise exception 'on-demand inputs are stored features view:feature, got %', inp using errcode = '22023';
    end if;
    v := features._view(m[1]);
    select x into f from jsonb_array_elements(v.features) x where x->>'name' = m[2];
    if f is null then
      raise exception 'feature view %@% has no feature "%"', v.name, v.version, m[2] using errcode = '42704';
    end if;
    if m[2] = any (select jsonb_object_keys(request_fields)) or format('(_f->>%L)', m[2]) = any (binds) then
      raise exception 'input name "%" is used twice', m[2] using errcode = '42710';
    end if;
    binds := binds || format('(_f->>%L)::%s as %I', m[2], f->>'type', m[2]);
  end loop;
  for k in select jsonb_object_keys(request_fields) loop
    if to_regtype(request_fields->>k) is null then
      raise exception 'request field "%" has unknown type %', k, request_fields->>k using errcode = '42704';
    end if;
    binds := binds || format('(_req->>%L)::%s as %I', k, format_type(to_regtype(request_fields->>k), null), k);
  end loop;
  insert into features.on_demand_features (name, expression, type, inputs, request_fields, function_name, description)
  values (name, expression, format_type(t, null), coalesce(inputs, '{}'), request_fields, '-', description)
  returning on_demand_features.id into newid;
  fn := format('features.%I', 'odfv_' || newid);
  begin
    execute format('create function %s(_req jsonb, _f jsonb) returns %s language sql stable parallel safe as %L',
                   fn, format_type(t, null),
                   format('select (%s)::%s from (select %s) _in', expression, format_type(t, null),
                          case when cardinality(binds) = 0 then '1 as _none' else array_to_string(binds, ', ') end));
  exception when others then
    raise exception 'on-demand feature "%": invalid expression: %', name, sqlerrm using errcode = sqlstate,
      hint = 'the expression may use the request fields and the input features by their names';
  end;
  update features.on_demand_features set function_name = fn where on_demand_features.id = newid;
  return name;
end $$;
comment on function features.create_on_demand_feature(text, text, text, text[], jsonb, text) is
  'a feature computed at request time from request fields and stored features; same SQL online and offline';

------------------------------------------------------------------------------------------------------------
-- monitoring: freshness, drift, skew
