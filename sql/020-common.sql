-- Helpers shared by every area: option and argument validation.

-- a value a caller supplied, as an error message shows it: whole up to 100 characters, else its first 100 and its
-- length, so that a 1 MB name makes a short message and log line (the callers keep their own quoting; messages
-- that show a longer prefix pass n). No SET clause: it stays inlinable; every name in it is pg_catalog
create or replace function ml._clip(v text, n int default 100) returns text
language sql immutable parallel safe
as $$
  select case when pg_catalog.length(v) operator(pg_catalog.<=) n then v
              else pg_catalog.left(v, n) operator(pg_catalog.||) '... (' operator(pg_catalog.||)
                   pg_catalog.length(v)::text operator(pg_catalog.||) ' characters)' end
$$;
comment on function ml._clip(text, int) is
  'internal: a caller''s value for an error message, cut to its first n characters (and its length) when longer';

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

-- An identifier a user chooses (a collection, vectorizer, view or tenant name) checked before it reaches DDL:
-- PostgreSQL truncates names longer than 63 bytes silently, so two long names could become one table.
create or replace function ml._check_identifier(what text, name text, max_bytes int default 63,
                                                pattern text default '^[a-z_][a-z0-9_]*$') returns void
language plpgsql immutable parallel safe
as $$
begin
  if name is null or name = '' then
    raise exception '% name is empty', what using errcode = '22023', hint = format('give the %s a name', what);
  end if;
  if octet_length(name) > max_bytes then
    raise exception '% name % is % bytes long; at most % bytes', what, quote_literal(ml._clip(name, 80)),
      octet_length(name), max_bytes using errcode = '42622',
      hint = 'PostgreSQL truncates longer names, so two of them could share a table: choose a shorter name';
  end if;
  if name !~ pattern then
    raise exception 'invalid % name %', what, quote_literal(name) using errcode = '22023',
      hint = 'use lowercase letters, digits and underscores, starting with a letter or underscore';
  end if;
end $$;

-- The rule that closes "a definer runs code attached by the caller": a SECURITY DEFINER function of indb
-- runs DML only on relations indb_owner owns (no other role could have attached a trigger, a rule or a
-- policy to them). Called with the relation a catalog value names, at the point of use.
create or replace function ml._assert_indb_owned(rel regclass) returns regclass
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
  if rel is null or not exists (select 1 from pg_class c where c.oid = rel and c.relowner = 'indb_owner'::regrole) then
    raise exception 'relation % is not owned by indb_owner; indb will not write to it', coalesce(rel::text, 'NULL')
      using errcode = '42501',
            hint = 'indb writes only to tables it created; re-create the object with indb''s functions';
  end if;
  return rel;
end $$;

-- cron.database_name, for messages about pg_cron. pg_cron lets only superusers (and pg_read_all_settings) read
-- it: current_setting() raises 42501 for everyone else, even with missing_ok, while pg_settings leaves the row
-- out. NULL when it is not set or not readable by the caller.
create or replace function ml._cron_database() returns text
language sql stable parallel safe
as $$
  select nullif(s.setting, '') from pg_catalog.pg_settings s
   where s.name operator(pg_catalog.=) 'cron.database_name'
$$;
comment on function ml._cron_database() is
  'internal: cron.database_name when the caller may read it, else NULL (never the 42501 of current_setting)';

-- Error hygiene of the PL/Python wrappers: the message without PL/Python's prefix for errors raised on
-- purpose ("plpy.Error: ") or passed through from SQL ("spiexceptions.UniqueViolation: "). Other Python
-- exceptions are bugs: their class stays in the message ("ZeroDivisionError: division by zero").
create or replace function ml._errmsg(message text) returns text
language sql immutable parallel safe
as $$ select regexp_replace(message, '^((plpy\.[A-Za-z]+|spiexceptions\.[A-Za-z]+): )+', '') $$;
comment on function ml._errmsg(text) is
  'internal: an error message without PL/Python''s exception prefix; see DEVELOPERS.md, "PL/Python functions"';

-- The one name rule: a table or view name, optionally schema-qualified, quoted or not, is resolved to its
-- relation (42P01 when there is none); anything else (a query) is null. ml._relation_sql and predict_batch's
-- block reader (plpython/indb_runtime/training.py) both ask it.
create or replace function ml._relation_name(source text, what text default 'relation') returns regclass
language plpgsql stable parallel safe
as $$
declare
  rel regclass;
begin
  if source !~ '^\s*("[^"]+"|[A-Za-z_][A-Za-z0-9_$]*)(\s*\.\s*("[^"]+"|[A-Za-z_][A-Za-z0-9_$]*))?\s*$' then
    return null;
  end if;
  rel := to_regclass(btrim(source));
  if rel is null then
    raise exception '% "%" is not a table or view', what, btrim(source) using errcode = '42P01',
      hint = 'create the table first, schema-qualify it, or pass a SELECT statement';
  end if;
  return rel;
end $$;
comment on function ml._relation_name(text, text) is
  'internal: the relation a table/view name resolves to (42P01 when none), or null when the text is not a name';

-- "A table name or a SELECT": the one resolver every area uses (ml.train, predict_batch, evaluate, feature
-- view sources, entity queries). A name becomes "select * from <relation>" (resolved with to_regclass and
-- quoted by PostgreSQL); anything else must be ONE read-only query. It is refused before anything runs when
-- it holds several statements (a cursor cannot be opened on them) or writes (its plan has a ModifyTable).
-- Nothing is executed here: the cursor is opened and closed without a fetch, and EXPLAIN does not run.
create or replace function ml._relation_sql(source text, what text default 'relation') returns text
language plpgsql volatile parallel unsafe
as $$
declare
  rel regclass;
  q text;
  cur refcursor;
  plan json;
begin
  if source is null or btrim(source) = '' then
    raise exception '% is empty', what using errcode = '22023',
      hint = 'pass a table or view name, or one SELECT statement';
  end if;
  rel := ml._relation_name(source, what);
  if rel is not null then
    return 'select * from ' || rel::text;
  end if;
  q := regexp_replace(source, ';\s*$', '');
  if q !~* '^\s*\(?\s*(select|with|values|table)\M' then
    raise exception '% must be a table or view name or a SELECT statement', what using errcode = '22023',
      detail = format('got: %s', ml._clip(source, 200)), hint = 'pass a table or view name, or one SELECT statement';
  end if;
  begin
    open cur for execute q;
    close cur;
  exception when invalid_cursor_definition then
    raise exception '% must be one SELECT statement; it holds several', what using errcode = '42601',
      detail = format('got: %s', ml._clip(source, 200)), hint = 'pass a single query (a view, or a WITH ... SELECT)';
  end;
  execute 'explain (format json, costs off) ' || q into plan;
  if plan::text ~ '"Node Type": "ModifyTable"' then
    raise exception '% must be a read-only query; it writes', what using errcode = '42601',
      detail = format('got: %s', ml._clip(source, 200)), hint = 'remove the INSERT, UPDATE or DELETE';
  end if;
  return q;
end $$;
comment on function ml._relation_sql(text, text) is
  'internal: a table/view name or one read-only SELECT, as a query text; refuses several statements and writes before running anything';
