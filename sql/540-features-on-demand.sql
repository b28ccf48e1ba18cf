-- Feature store, on-demand features: one SQL expression over request fields and stored features, compiled
-- into one SQL function (features._odfv_<id>) that get_online and get_historical both call. Like every
-- internal SECURITY INVOKER helper of indb, it may be executed by every indb role (sql/999-grants.sql).
--
-- An on-demand feature is code that every reader of it runs, so registering one is an indb_admin's act
-- (SECURITY.md): features.create_on_demand_feature checks the expression with the admin's own rights, and
-- features._register_on_demand (SECURITY DEFINER) writes the catalog row and compiles the function, owned by
-- indb_owner. The function is SECURITY INVOKER and STABLE: it runs with the rights of whoever serves the
-- feature and cannot write. Where it is called, the catalog row's signature is cast to regprocedure and
-- checked to be features._odfv_<id>(jsonb, jsonb) owned by indb_owner, so a changed catalog row cannot make a
-- caller run another function.

-- the bindings of the compiled function: stored inputs from _f, request fields from _req, typed
create or replace function features._odfv_binds(inputs text[], request_fields jsonb) returns text
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  inp text;
  f jsonb;
  k text;
  names text[] := '{}';
  binds text[] := '{}';
begin
  if request_fields is null or jsonb_typeof(request_fields) <> 'object' then
    raise exception 'request_fields must be a JSON object {"field": "type"}' using errcode = '22023',
      hint = 'e.g. ''{"amount": "float8"}''; ''{}'' when the feature needs none';
  end if;
  if cardinality(inputs) > 100 then
    raise exception 'an on-demand feature takes at most 100 inputs' using errcode = '54011',
      hint = 'split it into several on-demand features';
  end if;
  foreach inp in array coalesce(inputs, '{}') loop
    f := features._feature(inp);
    if f->>'name' = any (names) then
      raise exception 'input name "%" is used twice', f->>'name' using errcode = '42710',
        hint = 'inputs and request fields are bound by name: each name once';
    end if;
    names := names || (f->>'name');
    binds := binds || format('(_f->>%L)::%s as %I', f->>'name', (f->>'type')::regtype, f->>'name');
  end loop;
  for k in select jsonb_object_keys(request_fields) order by 1 loop
    perform ml._check_identifier('request field', k, 63, '^[A-Za-z_][A-Za-z0-9_]*$');
    if k = any (names) then
      raise exception 'input name "%" is used twice', k using errcode = '42710',
        hint = 'inputs and request fields are bound by name: each name once';
    end if;
    if jsonb_typeof(request_fields -> k) <> 'string' then
      raise exception 'request field "%" needs a type name', k using errcode = '22023',
        hint = 'e.g. request_fields => ''{"amount": "float8"}''';
    end if;
    names := names || k;
    binds := binds || format('(_req->>%L)::%s as %I', k,
                             features._check_type(format('request field "%s"', k), request_fields ->> k), k);
  end loop;
  return case when cardinality(binds) = 0 then '1 as _none' else array_to_string(binds, ', ') end;
end $$;

-- the body of the compiled function
create or replace function features._odfv_body(expression text, type text, binds text) returns text
language sql immutable parallel safe
as $$ select format('select (%s)::%s from (select %s) _in', expression, type, binds) $$;

-- an admin's registration, checked with the admin's own rights (the expression is planned, never run here)
create or replace function features.create_on_demand_feature(name text, expression text, type text, inputs text[],
                                                             request_fields jsonb default '{}',
                                                             description text default null)
returns text
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  t text;
  q text;
begin
  if not ml.is_admin() then
    raise exception 'only indb_admin may create on-demand features' using errcode = '42501',
      detail = 'an on-demand feature is code that everyone who serves it runs',
      hint = 'ask an administrator (a member of indb_admin) to register it';
  end if;
  perform ml._check_identifier('on-demand feature', name, 63, '^[A-Za-z_][A-Za-z0-9_]*$');
  t := features._check_type(format('on-demand feature "%s"', name), type);
  if expression is null or btrim(expression) = '' then
    raise exception 'the expression of on-demand feature "%" is empty', name using errcode = '22023',
      hint = 'one SQL expression over the request fields and the inputs, by name';
  end if;
  -- one read-only query (several statements and writes are refused before anything runs), typed by planning it
  q := format('select %s from (select null::jsonb as _req, null::jsonb as _f) _p',
              format('(%s)', features._odfv_body(expression, t, features._odfv_binds(inputs, coalesce(request_fields, '{}')))));
  begin
    q := ml._relation_sql(q, format('expression of on-demand feature %s', name));
    perform features._describe(q, format('on-demand feature %s', name));
  exception when others then
    raise exception 'on-demand feature "%": invalid expression: %', name, ml._errmsg(sqlerrm) using errcode = sqlstate,
      hint = 'one SQL expression over the request fields and the input features, by their names';
  end;
  return features._register_on_demand(name, expression, t, coalesce(inputs, '{}'), coalesce(request_fields, '{}'),
                                      description);
end $$;
comment on function features.create_on_demand_feature(text, text, text, text[], jsonb, text) is
  'indb_admin: a feature computed at request time from request fields and stored features; same SQL online and offline';

create or replace function features._register_on_demand(name text, expression text, type text, inputs text[],
                                                        request_fields jsonb, description text)
returns text
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  t text;
  tenant text := ml.current_tenant();
  binds text;
  inp text;
  f jsonb;
  newid bigint;
  fn text;
begin
  if not ml.is_admin() then
    raise exception 'only indb_admin may create on-demand features' using errcode = '42501',
      hint = 'ask an administrator (a member of indb_admin) to register it';
  end if;
  perform ml._check_identifier('on-demand feature', name, 63, '^[A-Za-z_][A-Za-z0-9_]*$');
  t := features._check_type(format('on-demand feature "%s"', name), type);
  if expression is null or btrim(expression) = '' then
    raise exception 'the expression of on-demand feature "%" is empty', name using errcode = '22023',
      hint = 'pass one SQL expression over the request fields and the inputs, e.g. ''amount - avg_amount''';
  end if;
  binds := features._odfv_binds(inputs, request_fields);
  -- the inputs must be readable by everyone who may read the feature
  foreach inp in array inputs loop
    f := features._feature(inp);
    if (select v.tenant from features.feature_views v where v.id = (f->>'view_id')::bigint) is distinct from tenant
       and (select v.tenant from features.feature_views v where v.id = (f->>'view_id')::bigint) is not null then
      raise exception 'input % belongs to another tenant than on-demand feature "%"', inp, name using errcode = '42501',
        hint = 'a shared on-demand feature takes shared views only; act for the views'' tenant (SET indb.tenant) to make one of its own';
    end if;
  end loop;
  perform pg_advisory_xact_lock(hashtext('indb.features.on_demand'), hashtext(name));
  if exists (select 1 from features.on_demand_features o where o.name = _register_on_demand.name) then
    raise exception 'on-demand feature "%" already exists', name using errcode = '42710',
      hint = 'on-demand features are immutable: pick another name';
  end if;
  begin
    insert into features.on_demand_features (name, expression, type, inputs, request_fields, function_name,
                                             description, tenant)
    values (name, expression, t, inputs, request_fields, '-', description, tenant)
    returning on_demand_features.id into newid;
  exception when unique_violation then
    raise exception 'on-demand feature name "%" is taken by another tenant', name using errcode = '42710',
      hint = 'on-demand feature names are unique across tenants; pick another name';
  end;
  fn := format('features.%I', '_odfv_' || newid);
  begin
    -- the body is a quoted literal (nothing of the expression reaches this DDL statement itself); it is parsed
    -- and checked here, never run
    execute format('create function %s(_req jsonb, _f jsonb) returns %s language sql stable parallel safe as %L',
                   fn, t, features._odfv_body(expression, t, binds));
  exception when others then
    raise exception 'on-demand feature "%": invalid expression: %', name, sqlerrm using errcode = sqlstate,
      hint = 'the expression may use the request fields and the input features by their names';
  end;
  execute format('comment on function %s(jsonb, jsonb) is %L', fn, format('on-demand feature %s (compiled)', name));
  -- the grants install gives an internal SECURITY INVOKER helper (sql/999-grants.sql): every indb role
  execute format('revoke all on function %s(jsonb, jsonb) from public', fn);
  execute format('grant execute on function %s(jsonb, jsonb) to indb_app', fn);
  update features.on_demand_features set function_name = (fn || '(jsonb, jsonb)')::regprocedure::text
   where on_demand_features.id = newid;
  return name;
end $$;
comment on function features._register_on_demand(text, text, text, text[], jsonb, text) is
  'internal (SECURITY DEFINER, indb_admin only): write an on-demand feature and compile its function';

-- the compiled function of an on-demand feature, checked where it is used: the catalog row's signature, cast to
-- regprocedure, must be features._odfv_<id>(jsonb, jsonb), owned by indb_owner and not SECURITY DEFINER.
-- Returns the quoted name to call.
create or replace function features._odfv_function(od features.on_demand_features) returns text
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  fn regprocedure;
begin
  begin
    fn := od.function_name::regprocedure;
  exception when others then
    fn := null;
  end;
  if fn is null or not exists (
       select 1 from pg_proc p
        where p.oid = fn and p.pronamespace = 'features'::regnamespace and p.proname = '_odfv_' || od.id
          and p.proowner = 'indb_owner'::regrole and not p.prosecdef and p.prokind = 'f'
          and p.proargtypes = '3802 3802'::oidvector) then
    raise exception 'on-demand feature "%" does not name its compiled function', od.name using errcode = '42501',
      detail = format('its catalog row names %s; indb calls only %s(jsonb, jsonb), owned by indb_owner',
                      coalesce(quote_literal(od.function_name), 'NULL'), format('features.%I', '_odfv_' || od.id)),
      hint = 'the catalog row was changed outside indb: an admin re-creates the on-demand feature';
  end if;
  return format('features.%I', '_odfv_' || od.id);
end $$;

create or replace function features._odfv(odfv_id bigint) returns features.on_demand_features
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare od features.on_demand_features;
begin
  select * into od from features.on_demand_features o where o.id = odfv_id;
  if od.id is null then
    raise exception 'on-demand feature id % does not exist', coalesce(odfv_id::text, 'NULL') using errcode = '42704',
      hint = 'list them: select id, name from features.on_demand_features';
  end if;
  return od;
end $$;

-- online: the value from the request and the served inputs {feature: value}
create or replace function features._odfv_online(odfv_id bigint, request jsonb, inputs jsonb) returns jsonb
language plpgsql stable parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  od features.on_demand_features := features._odfv(odfv_id);
  missing text;
  val jsonb;
begin
  if request is not null and jsonb_typeof(request) <> 'object' then
    raise exception 'request must be a JSON object of request fields' using errcode = '22023',
      hint = 'pass request => ''{"field": value}''';
  end if;
  select string_agg(k, ', ') into missing from jsonb_object_keys(od.request_fields) k
   where not coalesce(request, '{}') ? k;
  if missing is not null then
    raise exception 'on-demand feature "%" needs request fields %', od.name, missing using errcode = '22023',
      hint = 'pass them in request => ''{"field": value}''';
  end if;
  begin
    execute format('select to_jsonb(%s($1, $2))', features._odfv_function(od)) into val
      using coalesce(request, '{}'), inputs;
  exception when data_exception then
    raise exception 'on-demand feature "%": %', od.name, sqlerrm using errcode = sqlstate,
      hint = 'check the request values against the declared request fields: ' || od.request_fields::text;
  end;
  return val;
end $$;

-- online: the _status of an on-demand feature: not_found when an input entity is missing, else outside_ttl
-- when an input is past its ttl, else null_value when the computed value is null, else present. A feature of
-- request fields only is present or null_value.
create or replace function features._odfv_status(odfv_id bigint, input_status jsonb, val jsonb) returns text
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select coalesce((select s from (select input_status ->> (features._feature(i) ->> 'name') as s
                                    from unnest((features._odfv(odfv_id)).inputs) i) x
                    where s in ('not_found', 'outside_ttl')
                    order by case s when 'not_found' then 0 else 1 end limit 1),
                  case when val is null or jsonb_typeof(val) = 'null' then 'null_value' else 'present' end)
$$;

-- point in time: the call of the compiled function over the entity row (request fields) and the joined inputs
create or replace function features._odfv_select(odfv_id bigint, ecols jsonb, fmap jsonb) returns text
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  od features.on_demand_features := features._odfv(odfv_id);
  missing text;
begin
  select string_agg(k, ', ') into missing from jsonb_object_keys(od.request_fields) k where not ecols ? k;
  if missing is not null then
    raise exception 'on-demand feature "%" needs request fields the entity query lacks: %', od.name, missing
      using errcode = '42703', hint = 'add them as columns of the entity query';
  end if;
  return format('%s(%s, %s)', features._odfv_function(od),
    coalesce((select 'jsonb_build_object(' || string_agg(format('%L, e.%I', k, k), ', ') || ')'
                from jsonb_object_keys(od.request_fields) k), '''{}''::jsonb'),
    coalesce((select 'jsonb_build_object(' || string_agg(format('%L, %s', f ->> 'name', fmap ->> (f ->> 'name')), ', ') || ')'
                from unnest(od.inputs) i, features._feature(i) f), '''{}''::jsonb'));
end $$;
