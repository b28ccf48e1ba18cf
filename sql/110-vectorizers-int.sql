-- Vectorizers, internals: the SQL fragments built from a catalog row, the checks made at the point of use, the
-- destination tables (schema embeddings, owned by indb_owner), the SECURITY DEFINER writers of the catalogs
-- (ml.vectorizers, ml.vectorizer_stats, ml.vectorizer_queue, ml.vectorizer_failed: no role writes them
-- directly), the statement trigger on a source table and the status query.
-- Python: plpython/indb_runtime/vectorizer.py. Tables: migrations 0003, 0010.
--
-- Who runs what (SECURITY.md):
-- * the source table is the caller's: it is read only by SECURITY INVOKER code (ml.create_vectorizer,
--   refresh, the queue workers), with the caller's rights; a superuser's worker reads it as the vectorizer's
--   creator. The trigger (SECURITY DEFINER) reads only its transition tables, and only after checking that the
--   table it fires on is the source its catalog row names.
-- * a column of a type a user made can carry code (a cast to text, a domain CHECK): key and content columns
--   must have built-in types (a domain counts as its base type), checked when the vectorizer is made and
--   again wherever they are read.
-- * destinations and the catalogs follow their vectorizer's tenant: rows are visible and writable exactly
--   when the session sees the vectorizer (ml._apply_parent_policies).

create or replace function ml._builtin_type(t regtype) returns regtype
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  b oid := t;
begin
  while b is not null and (select typtype from pg_type where oid = b) = 'd' loop
    b := (select typbasetype from pg_type where oid = b);
  end loop;
  if b is null or b >= 16384 then
    return null;   -- made by a user (or an extension): it may carry code
  end if;
  return b::regtype;
end $$;
comment on function ml._builtin_type(regtype) is
  'internal: the built-in base type of a type (domains resolved), or null when a user or an extension made it';

-- Rows of a table that belong to a parent row (a vectorizer, a collection) are visible and writable exactly
-- when the parent row is: the parent's tenant policy (sql/010-tenancy.sql) decides, and admins see all.
-- Forced, like the tenant policies, so that SECURITY DEFINER functions see what their caller may see.
create or replace function ml._apply_parent_policies(tbl regclass, parent_visible text) returns void
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  p record;
  want text := format('(%s) or (select ml.is_admin())', parent_visible);
begin
  execute format('alter table %s enable row level security', tbl);
  execute format('alter table %s force row level security', tbl);
  for p in select polname, pg_get_expr(polqual, polrelid) as q from pg_policy where polrelid = tbl loop
    if p.polname <> 'indb_parent' then
      execute format('drop policy %I on %s', p.polname, tbl);
    end if;
  end loop;
  if not exists (select 1 from pg_policy where polrelid = tbl and polname = 'indb_parent') then
    execute format('create policy indb_parent on %s for all using (%s) with check (%s)', tbl, want, want);
  end if;
end $$;
comment on function ml._apply_parent_policies(regclass, text) is
  'internal: rows visible and writable exactly when their parent row (vectorizer, collection) is visible';

-- ---------------------------------------------------------------------------------------------- catalog rows

create or replace function ml._vectorizer(vectorizer text) returns ml.vectorizers
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  v ml.vectorizers;
begin
  if vectorizer is null then
    raise exception 'vectorizer name must not be NULL' using errcode = '22004', hint = 'name a vectorizer';
  end if;
  select * into v from ml.vectorizers x where x.name = vectorizer;
  if not found then
    raise exception 'vectorizer "%" does not exist', ml._clip(vectorizer) using errcode = '42704',
      detail = coalesce('vectorizers: ' || (select string_agg(x.name, ', ' order by x.name) from ml.vectorizers x),
                        'there are no vectorizers (that this session may see)'),
      hint = 'create one with ml.create_vectorizer(source, columns)';
  end if;
  return v;
end $$;
comment on function ml._vectorizer(text) is 'internal: the catalog row of a vectorizer this session may see, or 42704';

-- the catalog row of a vectorizer the caller may change (its tenant's, or shared ones when it acts for no
-- tenant; admins: any), or 42501 before anything is touched
create or replace function ml._vectorizer_for_write(vectorizer text) returns ml.vectorizers
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  v ml.vectorizers := ml._vectorizer(vectorizer);
begin
  if v.tenant is distinct from ml.current_tenant() and not ml.is_admin() then
    raise exception 'vectorizer "%" belongs to %, not to this session''s tenant', v.name,
      coalesce('tenant ' || quote_literal(v.tenant), 'no tenant (it is shared)') using errcode = '42501',
      hint = 'only its tenant (or an indb_admin) may change or drop it';
  end if;
  return v;
end $$;

create or replace function ml._vectorizer_by_id(vid int) returns ml.vectorizers
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  v ml.vectorizers;
begin
  select * into v from ml.vectorizers where id = vid;
  if not found then
    raise exception 'no vectorizer with id % is visible to this session', coalesce(vid::text, 'NULL')
      using errcode = '42501',
      detail = 'it was dropped, or it belongs to a tenant this session does not act for',
      hint = 'write its source table as its tenant (SET indb.tenant), or as an indb_admin';
  end if;
  return v;
end $$;

-- ---------------------------------------------------------------------------------------------- SQL fragments

-- What SQL a vectorizer needs, built from its catalog row at the point of use: key columns quoted, key types
-- cast through regtype to their built-in base type (a tampered catalog cannot put SQL there), the embedded
-- content (columns joined by newlines, empty parts skipped) and its hash, over alias s.
create or replace function ml._vectorizer_sql(v ml.vectorizers, out qkeys text[], out ktypes text[],
                                              out content text, out hash text)
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  t text;
  b regtype;
begin
  select array_agg(quote_ident(k) order by o) into qkeys from unnest(v.key_columns) with ordinality u(k, o);
  ktypes := '{}';
  foreach t in array v.key_types loop
    begin
      b := ml._builtin_type(t::regtype);
    exception when others then
      b := null;
    end;
    if b is null then
      raise exception 'vectorizer "%" has a key type that is not a built-in type: %', v.name, quote_literal(t)
        using errcode = '42804', hint = 're-create the vectorizer on a table whose primary key has built-in types';
    end if;
    ktypes := ktypes || format_type(b, null);
  end loop;
  select format('coalesce(concat_ws(E''\n'', %s), '''')',
                string_agg(format('nullif(btrim(s.%I::text), '''')', c), ', ' order by o))
    into content from unnest(v.columns) with ordinality u(c, o);
  hash := format('ml._content_hash(%L, %s)', ml._chunking_tag(v.chunk_size, v.chunk_overlap, v.chunk_by), content);
end $$;
comment on function ml._vectorizer_sql(ml.vectorizers) is
  'internal: quoted key columns, their built-in types, and the content and hash expressions over alias s';

-- The source as the catalog names it must still be a table whose key and content columns have built-in
-- types (its owner may have changed it since): checked wherever it is read.
create or replace function ml._vectorizer_check_source(v ml.vectorizers, rel regclass default null) returns void
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  kind "char";
  bad text;
begin
  if rel is not null and rel <> v.source then
    raise exception 'the trigger of vectorizer "%" fires on %, but its source is %', v.name, rel, v.source
      using errcode = '42501', hint = 'vectorizer triggers are made by ml.create_vectorizer; drop this one';
  end if;
  select relkind into kind from pg_class where oid = v.source;
  if kind is null then
    raise exception 'the source table of vectorizer "%" no longer exists', v.name using errcode = '42P01',
      hint = 'drop the vectorizer with ml.drop_vectorizer(name)';
  end if;
  if kind not in ('r', 'p') then
    raise exception 'the source % of vectorizer "%" is not a table', v.source, v.name using errcode = '42809';
  end if;
  select string_agg(format('%I (%s)', c, coalesce(format_type(a.atttypid, a.atttypmod), 'missing')), ', ')
    into bad
    from unnest(v.columns || v.key_columns) c
    left join pg_attribute a on a.attrelid = v.source and a.attname = c and a.attnum > 0 and not a.attisdropped
   where a.attname is null or ml._builtin_type(a.atttypid) is null;
  if bad is not null then
    raise exception 'vectorizer "%": source column(s) % are missing or not of a built-in type', v.name, bad
      using errcode = '42804',
      detail = 'a type a user made can carry code (a cast to text, a domain check) that indb would run',
      hint = 'use built-in types (text, varchar, integer, uuid, ...) for the key and embedded columns';
  end if;
end $$;

-- ---------------------------------------------------------------------------------------------- destinations

-- invoker: called by the SECURITY DEFINER functions below (a writer calling it directly has no CREATE in
-- schema embeddings)
create or replace function ml._vectorizer_make_destination(v ml.vectorizers, target text, dims int) returns regclass
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  f record := ml._vectorizer_sql(v);
  rel regclass;
  vs text := (select extnamespace::regnamespace::text from pg_extension where extname = 'vector');
begin
  perform ml._check_identifier('destination', target, 63, '^[A-Za-z_][A-Za-z0-9_$]*$');
  if to_regclass(format('embeddings.%I', target)) is not null then
    raise exception 'table embeddings.% already exists', quote_ident(target) using errcode = '42P07',
      hint = 'indb makes a new destination for each vectorizer: pass destination => another name, or drop that table';
  end if;
  execute format('create table embeddings.%I (%s, seq int not null, chunk text not null, embedding %s.vector(%s) not null, '
                 'content_hash text not null, model text not null, embedded_at timestamptz not null default now(), '
                 'primary key (%s, seq))', target,
                 (select string_agg(format('%s %s not null', k, t), ', ' order by o)
                    from unnest(f.qkeys, f.ktypes) with ordinality u(k, t, o)),
                 vs, dims, array_to_string(f.qkeys, ', '));
  rel := format('embeddings.%I', target)::regclass;
  execute format('create index on %s using hnsw (embedding %s.vector_cosine_ops)', rel, vs);
  execute format('comment on table %s is %L', rel, format('indb vectorizer destination (ml.vectorizers id %s)', v.id));
  perform ml._apply_table_grants(rel);
  perform ml._apply_parent_policies(rel, format('exists (select 1 from ml.vectorizers v where v.id = %s)', v.id));
  return rel;
end $$;

-- ---------------------------------------------------------------------------------------------- catalog writers

-- the one writer of new ml.vectorizers rows: validates as if a writer called it directly, derives the key
-- from the source's primary key (catalog only: it reads no row of the caller's table), makes the destination
create or replace function ml._vectorizer_create(name text, source regclass, columns text[], model text, mode text,
                                                 batch_size int, chunk_size int, chunk_overlap int, chunk_by text,
                                                 max_attempts int, destination text) returns ml.vectorizers
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v ml.vectorizers;
  who name := ml.caller();
  dims int;
  clash text;
begin
  perform ml._check_identifier('vectorizer', name, 63, '^[A-Za-z_][A-Za-z0-9_$]*$');
  if source is null or (select relkind from pg_class where oid = source) not in ('r', 'p') then
    raise exception '% is not a table', coalesce(source::text, 'NULL') using errcode = '42809',
      hint = 'vectorizers work on ordinary or partitioned tables';
  end if;
  if not has_table_privilege(who, source, 'SELECT') or not has_table_privilege(who, source, 'TRIGGER') then
    raise exception 'role "%" may not read % or attach triggers to it', who, source using errcode = '42501',
      hint = 'a vectorizer is made by a role that may SELECT its source and has TRIGGER on it (its owner)';
  end if;
  if exists (select 1 from ml.vectorizers x where x.name = _vectorizer_create.name) then
    raise exception 'vectorizer "%" already exists', name using errcode = '42710',
      hint = 'pass name => another name, or ml.drop_vectorizer first';
  end if;
  select dimensions into dims from ml.embedding_models m where m.name = model;
  if dims is null then
    raise exception 'embedding model "%" is not registered', model using errcode = '42704';
  end if;
  v.name := name; v.source := source; v.columns := columns; v.model := model; v.mode := mode;
  v.chunk_size := chunk_size; v.chunk_overlap := coalesce(chunk_overlap, 0); v.chunk_by := coalesce(chunk_by, 'tokens');
  select array_agg(a.attname::text order by k.pos), array_agg(format_type(ml._builtin_type(a.atttypid), null) order by k.pos)
    into v.key_columns, v.key_types
    from pg_index i cross join lateral unnest(i.indkey) with ordinality as k(attnum, pos)
    join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
   where i.indrelid = source and i.indisprimary;
  if v.key_columns is null then
    raise exception 'table % has no primary key', source using errcode = '42P10',
      detail = 'a vectorizer ties every embedding to its source row by primary key',
      hint = format('alter table %s add primary key (...)', source);
  end if;
  select string_agg(c, ', ') into clash from unnest(v.key_columns) c
   where c in ('seq', 'chunk', 'embedding', 'content_hash', 'model', 'embedded_at');
  if clash is not null then
    raise exception 'primary key column(s) % clash with destination columns seq, chunk, embedding, content_hash, model, embedded_at', clash
      using errcode = '22023';
  end if;
  if columns is null or cardinality(columns) = 0 then
    raise exception 'columns must name at least one column of %', source using errcode = '22023';
  end if;
  perform ml._vectorizer_check_source(v);
  insert into ml.vectorizers as x (name, source, key_columns, key_types, columns, model, destination, mode, batch_size,
                                   chunk_size, chunk_overlap, chunk_by, max_attempts)
  values (v.name, v.source, v.key_columns, v.key_types, v.columns, v.model, 'pg_class'::regclass, v.mode,
          coalesce(_vectorizer_create.batch_size, 64), v.chunk_size, v.chunk_overlap, v.chunk_by,
          coalesce(_vectorizer_create.max_attempts, 5))
  on conflict do nothing
  returning * into v;
  if v.id is null then   -- another tenant's vectorizer: row-level security hid it from the check above
    raise exception 'vectorizer name "%" is taken by another tenant', name using errcode = '42710',
      hint = 'vectorizer names are unique across tenants; pass name => another name';
  end if;
  update ml.vectorizers x
     set destination = ml._vectorizer_make_destination(v, coalesce(_vectorizer_create.destination, v.name), dims)
   where x.id = v.id returning * into v;
  insert into ml.vectorizer_stats (vectorizer_id) values (v.id);
  return v;
end $$;
comment on function ml._vectorizer_create(text, regclass, text[], text, text, int, int, int, text, int, text) is
  'internal: catalog row and destination (embeddings.<name>, owned by indb_owner) of a new vectorizer';

create or replace function ml._vectorizer_update(name text, mode text, batch_size int, chunk_size int,
                                                 chunk_overlap int, chunk_by text, max_attempts int) returns ml.vectorizers
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v ml.vectorizers := ml._vectorizer_for_write(name);
begin
  update ml.vectorizers x
     set mode = coalesce(_vectorizer_update.mode, x.mode), batch_size = coalesce(_vectorizer_update.batch_size, x.batch_size),
         chunk_size = _vectorizer_update.chunk_size, chunk_overlap = coalesce(_vectorizer_update.chunk_overlap, 0),
         chunk_by = coalesce(_vectorizer_update.chunk_by, x.chunk_by),
         max_attempts = coalesce(_vectorizer_update.max_attempts, x.max_attempts)
   where x.id = v.id
  returning * into v;
  return v;
end $$;

-- drop: the catalog row (queue, failures and statistics go with it) and, when asked, the destinations; the
-- triggers on the source were dropped by ml.drop_vectorizer with the caller's rights
create or replace function ml._vectorizer_delete(name text, drop_embeddings boolean) returns text[]
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v ml.vectorizers := ml._vectorizer_for_write(name);
  dropped text[] := '{}';
  rel regclass;
begin
  delete from ml.vectorizers where id = v.id;
  if drop_embeddings then
    foreach rel in array array_remove(array[v.destination, v.staging_destination], null) loop
      perform ml._assert_indb_owned(rel);
      dropped := dropped || rel::text;
      execute format('drop table %s', rel);
    end loop;
  end if;
  return dropped;
end $$;

-- model migration: a staging destination beside the serving one
create or replace function ml._vectorizer_stage(name text, new_model text) returns ml.vectorizers
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v ml.vectorizers := ml._vectorizer_for_write(name);
  dims int;
begin
  select dimensions into dims from ml.embedding_models m where m.name = new_model;
  if dims is null then
    raise exception 'embedding model "%" is not registered', new_model using errcode = '42704';
  end if;
  if v.staging_destination is not null then  -- a kept previous destination: dropped to make room
    execute format('drop table %s', ml._assert_indb_owned(v.staging_destination));
  end if;
  update ml.vectorizers x set staging_model = new_model, staging_role = 'candidate',
         staging_destination = ml._vectorizer_make_destination(v, left(v.name, 40) || '_staging_' || v.id, dims)
   where x.id = v.id returning * into v;
  return v;
end $$;

-- promotion: swap the two tables' names (atomic in the transaction) and the catalog columns with them
create or replace function ml._vectorizer_promote(name text) returns ml.vectorizers
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v ml.vectorizers := ml._vectorizer_for_write(name);
  serving text;
  staging text;
begin
  if v.staging_destination is null then
    raise exception 'vectorizer "%" has nothing staged to promote', v.name using errcode = '22023',
      hint = 'start a migration with ml.migrate_vectorizer(name, new_model)';
  end if;
  perform ml._assert_indb_owned(v.destination);
  perform ml._assert_indb_owned(v.staging_destination);
  serving := (select relname from pg_class where oid = v.destination);
  staging := (select relname from pg_class where oid = v.staging_destination);
  execute format('lock table %s, %s in access exclusive mode', v.destination, v.staging_destination);
  execute format('alter table %s rename to %I', v.destination, 'indb_swap_' || v.id);
  execute format('alter table %s rename to %I', v.staging_destination, serving);
  execute format('alter table embeddings.%I rename to %I', 'indb_swap_' || v.id, staging);
  update ml.vectorizers x
     set model = x.staging_model, staging_model = x.model, destination = x.staging_destination,
         staging_destination = x.destination, staging_role = 'previous'
   where x.id = v.id returning * into v;
  return v;
end $$;

create or replace function ml._vectorizer_drop_staging(name text) returns ml.vectorizers
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v ml.vectorizers := ml._vectorizer_for_write(name);
begin
  if v.staging_destination is null then
    raise exception 'vectorizer "%" has no staging or previous destination', v.name using errcode = '22023';
  end if;
  execute format('drop table %s', ml._assert_indb_owned(v.staging_destination));
  update ml.vectorizers set staging_model = null, staging_destination = null, staging_role = null where id = v.id;
  return v;  -- the row as it was: the caller reports what was dropped
end $$;

-- ---------------------------------------------------------------------------------------------- queue and statistics

-- Queue keys (each a JSON array of the key's values as text) for the async worker; a key that is queued
-- already is made due now instead of queued twice. The trigger calls this for the session that writes the
-- source, which sees the vectorizer (ml._vectorizer_by_id).
create or replace function ml._vectorizer_enqueue(vid int, keys jsonb) returns int
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v ml.vectorizers := ml._vectorizer_by_id(vid);
  n int;
begin
  if keys is null or jsonb_typeof(keys) <> 'array' or jsonb_array_length(keys) = 0 then
    return 0;
  end if;
  update ml.vectorizer_queue q set next_attempt_at = least(q.next_attempt_at, now())
   where q.vectorizer_id = v.id and q.key in (select k from jsonb_array_elements(keys) k);
  insert into ml.vectorizer_queue (vectorizer_id, key)
  select distinct v.id, k from jsonb_array_elements(keys) k
   where jsonb_typeof(k) = 'array'
     and not exists (select 1 from ml.vectorizer_queue q where q.vectorizer_id = v.id and q.key = k);
  get diagnostics n = row_count;
  return n;
end $$;

-- take due items (FOR UPDATE SKIP LOCKED: workers run in parallel)
create or replace function ml._vectorizer_take(vid int, max_items int)
returns table(id bigint, key jsonb, attempts int)
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  v ml.vectorizers := ml._vectorizer_by_id(vid);
begin
  return query
    select q.id, q.key, q.attempts from ml.vectorizer_queue q
     where q.vectorizer_id = v.id and q.next_attempt_at <= now()
     order by q.id limit greatest(coalesce(max_items, 1), 1)
     for update skip locked;
end $$;

-- finish items: done ones leave the queue; failed ones wait their delay (vectorizer.backoff_seconds) until
-- max_attempts, then are kept in ml.vectorizer_failed with their error
create or replace function ml._vectorizer_finish(vid int, done bigint[], failed bigint[], errors text[],
                                                 delays float8[]) returns jsonb
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v ml.vectorizers := ml._vectorizer_by_id(vid);
  n_failed int := 0;
  n_retry int := 0;
begin
  delete from ml.vectorizer_queue where vectorizer_id = v.id and id = any(coalesce(done, '{}'));
  with f as (select * from unnest(coalesce(failed, '{}'), coalesce(errors, '{}')) u(id, err)),
       gone as (
         delete from ml.vectorizer_queue q using f
          where q.vectorizer_id = v.id and q.id = f.id and q.attempts + 1 >= v.max_attempts
         returning q.vectorizer_id, q.key, q.attempts + 1 as attempts, f.err, q.enqueued_at)
  insert into ml.vectorizer_failed (vectorizer_id, key, attempts, error, first_enqueued_at)
  select vectorizer_id, key, attempts, err, enqueued_at from gone;
  get diagnostics n_failed = row_count;
  update ml.vectorizer_queue q set attempts = q.attempts + 1, last_error = f.err,
         next_attempt_at = now() + make_interval(secs => least(greatest(coalesce(f.delay, 1), 0), 86400))
    from unnest(coalesce(failed, '{}'), coalesce(errors, '{}'), coalesce(delays, '{}')) f(id, err, delay)
   where q.vectorizer_id = v.id and q.id = f.id;
  get diagnostics n_retry = row_count;
  return jsonb_build_object('failed', n_failed, 'retrying', n_retry);
end $$;

create or replace function ml._vectorizer_clear_queue(vid int) returns int
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v ml.vectorizers := ml._vectorizer_by_id(vid);
  n int;
begin
  delete from ml.vectorizer_queue where vectorizer_id = v.id;
  get diagnostics n = row_count;
  return n;
end $$;

create or replace function ml._vectorizer_retry(name text) returns jsonb
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v ml.vectorizers := ml._vectorizer_for_write(name);
  moved int;
  due int;
begin
  with d as (delete from ml.vectorizer_failed where vectorizer_id = v.id returning key)
  insert into ml.vectorizer_queue (vectorizer_id, key) select distinct v.id, key from d;
  get diagnostics moved = row_count;
  update ml.vectorizer_queue set next_attempt_at = now(), attempts = 0 where vectorizer_id = v.id;
  get diagnostics due = row_count;
  return jsonb_build_object('vectorizer', v.name, 'requeued_failed', moved, 'queued_now_due', due);
end $$;

create or replace function ml._vectorizer_touch(vid int, embedded bigint, error text) returns void
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v ml.vectorizers := ml._vectorizer_by_id(vid);
begin
  insert into ml.vectorizer_stats as s (vectorizer_id, last_run_at, last_error, embedded_total)
  values (v.id, now(), error, coalesce(embedded, 0))
  on conflict (vectorizer_id) do update
     set last_run_at = now(), last_error = excluded.last_error, embedded_total = s.embedded_total + excluded.embedded_total;
end $$;

-- ---------------------------------------------------------------------------------------------- the trigger

-- Statement trigger of a source table (argument: the vectorizer id). SECURITY DEFINER: it writes the
-- destinations and the queue, which no role writes directly. It reads only its transition tables, after
-- checking that it fires on the table the catalog names for that id (a writer may attach it to a table of
-- its own with any id: it then refuses) and that the source columns still have built-in types. The rows go to
-- the embed-changed-rows core (ml._vectorizer_apply), one call per statement.
create or replace function ml._vectorizer_trigger() returns trigger
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v ml.vectorizers;
  f record;
  keys jsonb;
  contents text[];
  hashes text[];
  vanished jsonb;
  rel regclass;
begin
  if TG_LEVEL <> 'STATEMENT' or TG_NARGS <> 1 or TG_ARGV[0] !~ '^[0-9]{1,9}$' then
    raise exception 'ml._vectorizer_trigger() is a statement trigger with one argument, a vectorizer id'
      using errcode = '39P01', hint = 'vectorizer triggers are made by ml.create_vectorizer';
  end if;
  v := ml._vectorizer_by_id(TG_ARGV[0]::int);
  perform ml._vectorizer_check_source(v, TG_RELID);
  if TG_OP = 'TRUNCATE' then
    foreach rel in array array_remove(array[v.destination, v.staging_destination], null) loop
      execute format('delete from %s', ml._assert_indb_owned(rel));
    end loop;
    perform ml._vectorizer_clear_queue(v.id);
    return null;
  end if;
  f := ml._vectorizer_sql(v);
  if TG_OP in ('INSERT', 'UPDATE') then
    execute format('select jsonb_agg(jsonb_build_array(%s)), array_agg(%s), array_agg(%s) from indb_new s',
                   (select string_agg(format('s.%s::text', k), ', ') from unnest(f.qkeys) k), f.content, f.hash)
      into keys, contents, hashes;
  end if;
  if TG_OP = 'UPDATE' then
    execute format('select jsonb_agg(jsonb_build_array(%s)) from indb_old s where not exists '
                   '(select 1 from indb_new n where %s)',
                   (select string_agg(format('s.%s::text', k), ', ') from unnest(f.qkeys) k),
                   (select string_agg(format('n.%s = s.%s', k, k), ' and ') from unnest(f.qkeys) k))
      into vanished;
  elsif TG_OP = 'DELETE' then
    execute format('select jsonb_agg(jsonb_build_array(%s)) from indb_old s',
                   (select string_agg(format('s.%s::text', k), ', ') from unnest(f.qkeys) k))
      into vanished;
  end if;
  perform ml._vectorizer_apply(v.id, coalesce(keys, '[]'), coalesce(contents, '{}'), coalesce(hashes, '{}'),
                               coalesce(vanished, '[]'));
  return null;
end $$;
comment on function ml._vectorizer_trigger() is
  'internal: statement-level trigger of a vectorizer''s source table (argument: vectorizer id); checks that it fires on that source';

-- plan_cache_mode: its statements are prepared once per backend (spi.run) with the rows' keys and hashes as array
-- parameters. Left to choose, the plan cache re-plans them at every trigger call (a plan for a 1-element array
-- looks cheaper than the generic one, estimated at 100 elements): 1.4 of the 7.2 ms of backend CPU a single-row
-- INSERT into a sync vectorizer cost (runtime service mode). Their generic plans (index probes per key) are as
-- fast for 3,000-row statements (benchmarks/runtime_shared.py, CHANGELOG).
create or replace function ml.__vectorizer_apply_py(vid int, keys jsonb, contents text[], hashes text[],
                                                    vanished jsonb) returns jsonb
-- STRICT: a NULL argument (the statement triggers pass none) does nothing, not a Python TypeError reported as a
-- bug (38000) when a writer calls it directly
language plpython3u volatile strict parallel unsafe
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import vectorizer, errors
return json.dumps(errors.call(plpy, vectorizer.on_trigger, plpy, vid, json.loads(keys), contents, hashes,
                              json.loads(vanished)))
$$;
select ml._wrap_python('ml._vectorizer_apply', 'ml.__vectorizer_apply_py(int, jsonb, text[], text[], jsonb)');
comment on function ml._vectorizer_apply(int, jsonb, text[], text[], jsonb) is
  'internal: bring a vectorizer''s destinations up to date for written rows (key, content, hash) and vanished keys';

-- ---------------------------------------------------------------------------------------------- status

create or replace function ml._vectorizer_status()
returns table(name text, source regclass, destination regclass, model text, mode text, source_rows bigint,
              embedded_rows bigint, chunks bigint, pending bigint, failed bigint, oldest_pending_age interval,
              last_run_at timestamptz, last_error text, long_text text, staging_model text, staging_role text,
              staging_rows bigint)
language plpgsql stable parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v record;
begin
  for v in select x.*, m.max_tokens from ml.vectorizers x join ml.embedding_models m on m.name = x.model
            order by x.id loop
    name := v.name; source := v.source; destination := v.destination; model := v.model; mode := v.mode;
    select st.last_run_at, st.last_error into last_run_at, last_error
      from ml.vectorizer_stats st where st.vectorizer_id = v.id;
    staging_model := v.staging_model; staging_role := v.staging_role;
    -- the source is the caller's business: counted only when this session may read it
    source_rows := null;
    if to_regclass(v.source::text) is not null and has_table_privilege(v.source, 'SELECT') then
      execute format('select count(*) from %s', v.source) into source_rows;
    end if;
    execute format('select count(*) filter (where seq = 0 and model = $1), count(*) from %s', v.destination::regclass)
      into embedded_rows, chunks using v.model;
    staging_rows := null;
    if v.staging_destination is not null then
      execute format('select count(*) from %s where seq = 0 and model = $1', v.staging_destination::regclass)
        into staging_rows using v.staging_model;
    end if;
    select count(*), now() - min(q.enqueued_at) into pending, oldest_pending_age
      from ml.vectorizer_queue q where q.vectorizer_id = v.id;
    select count(*) into failed from ml.vectorizer_failed f where f.vectorizer_id = v.id;
    long_text := ml._long_text_policy(v.chunk_size, v.chunk_overlap, v.chunk_by, v.max_tokens);
    return next;
  end loop;
end $$;

-- the children of ml.vectorizers follow its tenant policy (re-applied by every install)
select ml._apply_parent_policies(t, 'exists (select 1 from ml.vectorizers v where v.id = vectorizer_id)')
  from unnest(array['ml.vectorizer_stats', 'ml.vectorizer_queue', 'ml.vectorizer_failed']::regclass[]) t;

-- ------------------------------------------------------------------------------- a dropped source table
-- DROP TABLE of a vectorizer's source (or DROP SCHEMA ... CASCADE, DROP OWNED) takes its triggers with it;
-- this event trigger removes the vectorizer's catalog row (its queue, failures and stats go with it by
-- foreign key), so that no vectorizer is left pointing at a table that no longer exists (its name could not
-- be reused and the worker would keep failing on it). Its destination table(s) are kept, as
-- ml.drop_vectorizer does by default, and named in a NOTICE. Only rows whose source is gone are touched:
-- the policy below lets indb's definer delete such a row whatever tenant the dropping session acts for (no
-- indb role has DELETE on ml.vectorizers, so the policy widens nothing for anyone else).
do $$
begin
  drop policy if exists indb_source_dropped on ml.vectorizers;
  create policy indb_source_dropped on ml.vectorizers for delete
    using (not exists (select 1 from pg_catalog.pg_class c where c.oid operator(pg_catalog.=) source::oid));
end $$;

create or replace function ml._vectorizer_on_drop() returns event_trigger
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v record;
begin
  for v in
    delete from ml.vectorizers x
     using (select distinct d.objid from pg_event_trigger_dropped_objects() d
             where d.classid = 'pg_class'::regclass and d.objsubid = 0 and d.object_type = 'table') d
     where x.source::oid = d.objid
       and not exists (select 1 from pg_class c where c.oid = d.objid)
    returning x.name, x.destination, x.staging_destination
  loop
    raise notice 'vectorizer "%" removed: its source table was dropped', v.name
      using detail = format('its embeddings are kept in %s',
                            array_to_string(array_remove(array[v.destination::text, v.staging_destination::text],
                                                         null), ', ')),
            hint = 'an indb_admin may drop them with DROP TABLE';
  end loop;
end $$;
comment on function ml._vectorizer_on_drop() is
  'internal: event trigger (sql_drop): removes the vectorizers whose source table was dropped, keeping their embeddings';

do $$
begin
  if (select rolsuper from pg_roles where rolname = current_user) then
    drop event trigger if exists indb_vectorizer_source_dropped;
    create event trigger indb_vectorizer_source_dropped on sql_drop
      when tag in ('DROP TABLE', 'DROP SCHEMA', 'DROP OWNED') execute function ml._vectorizer_on_drop();
  else
    raise notice 'indb: not a superuser, the event trigger that removes vectorizers of dropped tables is not installed';
  end if;
end $$;
