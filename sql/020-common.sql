-- Helpers shared by every area: option and argument validation.

create or replace function ml._check_k(k int, what text default 'k') returns void
language plpgsql immutable parallel safe
as $$
begin
  if k is null or k < 1 or k > 10000 then
    raise exception '% must be between 1 and 10000, got %', what, coalesce(k::text, 'null')
      using errcode = '22023', hint = 'ask for fewer rows, or narrow the query with a filter';
  end if;
end $$;

create or replace function ml._check_options(options jsonb, allowed text[], fn text) returns void
language plpgsql immutable parallel safe
as $$
declare
  bad text;
begin
  if options is null then return; end if;
  if jsonb_typeof(options) <> 'object' then
    raise exception '%: options must be a JSON object, got %', fn, jsonb_typeof(options) using errcode = '22023';
  end if;
  select string_agg(key, ', ') into bad from jsonb_object_keys(options) key where key <> all(allowed);
  if bad is not null then
    raise exception '%: unknown option(s) %', fn, bad
      using errcode = '22023', hint = 'known options: ' || array_to_string(allowed, ', ');
  end if;
end $$;

create or replace function ml._opt_int(options jsonb, key text, dflt int, lo int, hi int) returns int
language plpgsql immutable parallel safe
as $$
declare
  v jsonb := options -> key;
  n numeric;
begin
  if v is null or jsonb_typeof(v) = 'null' then return dflt; end if;
  if jsonb_typeof(v) <> 'number' then
    raise exception 'option % must be an integer, got %', key, v::text using errcode = '22023';
  end if;
  n := (v #>> '{}')::numeric;
  if n <> trunc(n) or n < lo or n > hi then
    raise exception 'option % must be an integer between % and %, got %', key, lo, hi, n using errcode = '22023';
  end if;
  return n::int;
end $$;

create or replace function ml._opt_bool(options jsonb, key text, dflt boolean) returns boolean
language plpgsql immutable parallel safe
as $$
declare
  v jsonb := options -> key;
begin
  if v is null or jsonb_typeof(v) = 'null' then return dflt; end if;
  if jsonb_typeof(v) <> 'boolean' then
    raise exception 'option % must be true or false, got %', key, v::text using errcode = '22023';
  end if;
  return (v #>> '{}')::boolean;
end $$;
