-- indb feature store (issue 7): entities, versioned feature views, offline store (range-partitioned by event
-- time, one table per view version), online store (latest value per entity), point-in-time joins,
-- materialization with statistics and expectations, push, on-demand features, drift, freshness, skew.
-- Stateless: re-applied (create or replace) by `indb install`. Tables live in migrations/versions/0007_features.py.
--
-- Feature references: 'view:feature', 'view@2:feature', 'view:*' (all features of a view), or the name of an
-- on-demand feature. Output columns are named after the feature; two requested features with the same name
-- must be qualified (full_names => true names them view__feature).

------------------------------------------------------------------------------------------------------------
-- internal helpers
------------------------------------------------------------------------------------------------------------

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

-- a table/view name becomes "select * from <relation>"; anything else must be a query
create or replace function features._as_query(source text, what text) returns text
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  rel regclass;
begin
  if source is null or btrim(source) = '' then
    raise exception '% is empty', what using errcode = '22023',
      hint = 'pass a table or view name or a SELECT statement';
  end if;
  if source ~ '^\s*("[^"]+"|[A-Za-z_][A-Za-z0-9_$]*)(\s*\.\s*("[^"]+"|[A-Za-z_][A-Za-z0-9_$]*))?\s*$' then
    rel := to_regclass(btrim(source));
    if rel is null then
      raise exception '% "%" is not a table or view', what, btrim(source) using errcode = '42P01',
        hint = 'create the table first, schema-qualify it, or pass a SELECT statement';
    end if;
    return 'select * from ' || rel::text;
  end if;
  if source !~* '^\s*\(?\s*(select|with|values|table)\M' then
    raise exception '% must be a table or view name or a SELECT statement', what using errcode = '22023',
      detail = format('got: %s', left(source, 200));
  end if;
  return regexp_replace(source, ';\s*$', '');
end $$;

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

------------------------------------------------------------------------------------------------------------
-- definitions
------------------------------------------------------------------------------------------------------------

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
  src := features._as_query(source, format('source of feature view %s', name));
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

------------------------------------------------------------------------------------------------------------
-- writes: staging, expectations, offline upsert, online upsert, statistics
------------------------------------------------------------------------------------------------------------

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
------------------------------------------------------------------------------------------------------------

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
  eq text := features._as_query(entity_query, 'entity query');
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
------------------------------------------------------------------------------------------------------------

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
------------------------------------------------------------------------------------------------------------

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
