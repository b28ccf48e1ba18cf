-- Vector collections and hybrid search (issue 4).
-- A collection is a table collections.<name> (id, content, metadata, tenant, created_at, embedding, tsv, doc_len)
-- with an ANN index (HNSW / IVFFlat / none), a GIN index on tsv and on metadata, optional LIST partitions per
-- tenant (row-level security) or RANGE partitions per month, and statement-level triggers that embed new or
-- changed content in one model call per statement and keep the BM25 statistics current.
-- Search functions are plpgsql (latency matters); the filter translator is Python (unit-tested).

-- ---------------------------------------------------------------------------------------------- helpers

create or replace function ml._tsv_len(tsvector) returns int
language sql immutable parallel safe strict
as $$ select coalesce(sum(coalesce(array_length(u.positions, 1), 1)), 0)::int from unnest($1) u $$;
comment on function ml._tsv_len(tsvector) is 'internal: number of tokens a tsvector was made from (BM25 document length)';

create or replace function ml._jsonb_timestamptz(v jsonb) returns timestamptz
language plpgsql stable parallel safe
as $$
begin
  if v is null or jsonb_typeof(v) <> 'string' or (v #>> '{}') !~ '^\d{4}-\d{2}-\d{2}' then
    return null;
  end if;
  return (v #>> '{}')::timestamptz;
exception when others then
  return null;
end $$;
comment on function ml._jsonb_timestamptz(jsonb) is 'internal: a jsonb string as timestamptz, null when it is not an ISO-8601 timestamp';

create or replace function ml._filter_sql(filter jsonb, param int) returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import filters, errors
return errors.call(plpy, filters.translate_json, json.loads(filter) if filter is not None else None, param)
$$;
comment on function ml._filter_sql(jsonb, int) is 'internal: translate a jsonb filter into {"sql", "params"} referencing one jsonb parameter $param';

create or replace function ml._model_dimensions(model text) returns int
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import embedding, errors
spec = errors.call(plpy, embedding.resolve, plpy, model)
if spec.dimensions:
    return spec.dimensions
vec = errors.call(plpy, embedding.encode, spec, ['dimension probe'])
return len(vec[0])
$$;
comment on function ml._model_dimensions(text) is 'internal: output dimensions of an embedding model';

create or replace function ml._collection(collection text) returns ml.collections
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections;
begin
  select * into c from ml.collections where name = collection;
  if not found then
    raise exception 'collection "%" does not exist', collection
      using errcode = '42704',
            detail = coalesce('existing collections: ' || (select string_agg(name, ', ' order by name) from ml.collections), 'there are no collections yet'),
            hint = 'create it with ml.create_collection(name, ...)';
  end if;
  return c;
end $$;
comment on function ml._collection(text) is 'internal: the catalog row of a collection, or error 42704';

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

create or replace function ml._collection_table(c ml.collections) returns text
language sql immutable parallel safe
as $$ select format('%I.%I', c.table_schema, c.table_name) $$;

-- distance operator, score expression and ANN operator class for a collection
create or replace function ml._collection_op(c ml.collections) returns text
language sql immutable parallel safe
as $$ select case c.metric when 'cosine' then '<=>' when 'l2' then '<->' else '<#>' end $$;

create or replace function ml._collection_vtype(c ml.collections) returns text
language sql immutable parallel safe
as $$ select format('%s(%s)', c.storage, c.dimensions) $$;

create or replace function ml._collection_ann_indexes(c ml.collections) returns table(index_name text, table_name text, am text, bytes bigint)
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  with rels as (
    select r.oid from pg_class r join pg_namespace n on n.oid = r.relnamespace
    where n.nspname = c.table_schema and r.relname = c.table_name
    union all
    select i.inhrelid from pg_inherits i join pg_class r on r.oid = i.inhparent join pg_namespace n on n.oid = r.relnamespace
    where n.nspname = c.table_schema and r.relname = c.table_name
  )
  select ic.relname::text, tc.relname::text, am.amname::text, pg_relation_size(ic.oid)
  from pg_index x join rels on rels.oid = x.indrelid
  join pg_class ic on ic.oid = x.indexrelid join pg_am am on am.oid = ic.relam
  join pg_class tc on tc.oid = x.indrelid
  where am.amname in ('hnsw', 'ivfflat')
$$;

create or replace function ml._collection_ann_ddl(c ml.collections, target text, index_name text, lists int default null) returns text
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  opclass text;
  expr text := 'embedding';
  withs text;
  am text := c.index_type;
begin
  if c.binary_rerank then
    expr := format('(binary_quantize(embedding)::bit(%s))', c.dimensions);
    opclass := 'bit_hamming_ops';
  else
    opclass := c.storage || '_' || case c.metric when 'cosine' then 'cosine' when 'l2' then 'l2' else 'ip' end || '_ops';
  end if;
  if am = 'hnsw' then
    withs := format('m = %s, ef_construction = %s', ml._opt_int(c.options, 'm', 16, 2, 100),
                    ml._opt_int(c.options, 'ef_construction', 64, 4, 1000));
  else
    withs := format('lists = %s', coalesce(lists, ml._opt_int(c.options, 'lists', 100, 1, 32768)));
  end if;
  return format('create index %I on %s using %s (%s %s) with (%s)', index_name, target, am, expr, opclass, withs);
end $$;

-- ---------------------------------------------------------------------------------------------- grants

-- the schema of collection tables: searching needs USAGE, creating a collection needs CREATE (the cluster
-- roles come from sql/900-security.sql; on a cluster that has them already this applies on first install)
do $$
begin
  if exists (select 1 from pg_roles where rolname = 'indb_app') then
    grant usage on schema collections to indb_app, indb_reader, indb_writer, indb_admin;
    grant create on schema collections to indb_writer, indb_admin;
  end if;
end $$;

-- ---------------------------------------------------------------------------------------------- create

create or replace function ml.create_collection(
    name text,
    model text default 'all-MiniLM-L6-v2',
    index text default 'hnsw',
    metric text default 'cosine',
    partition_by text default null,
    options jsonb default '{}')
returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections;
  dims int;
  cfg text := coalesce(options ->> 'text_search_config', 'english');
  storage text := case when ml._opt_bool(options, 'halfvec', false) then 'halfvec' else 'vector' end;
  use_rls boolean;
  tbl text;
  pk text;
  part text := '';
  tenant_col text := 'tenant text default current_setting(''indb.tenant'', true)';
begin
  options := coalesce(options, '{}');
  perform ml._check_options(options, array['m', 'ef_construction', 'lists', 'halfvec', 'binary_rerank',
                                           'text_search_config', 'dimensions', 'rls'], 'ml.create_collection');
  if name is null or name !~ '^[a-z_][a-z0-9_]{0,47}$' then
    raise exception 'invalid collection name %', coalesce(quote_literal(name), 'null')
      using errcode = '22023', hint = 'use 1-48 lowercase letters, digits and underscores, starting with a letter or underscore';
  end if;
  if exists (select 1 from ml.collections x where x.name = create_collection.name) then
    raise exception 'collection "%" already exists', name using errcode = '42710',
      hint = 'pick another name, or drop it first with ml.drop_collection(name)';
  end if;
  if index is null or index not in ('hnsw', 'ivfflat', 'none') then
    raise exception 'unknown index type %', coalesce(quote_literal(index), 'null') using errcode = '22023',
      hint = 'use ''hnsw'', ''ivfflat'' or ''none'' (exact search)';
  end if;
  if metric is null or metric not in ('cosine', 'l2', 'inner_product') then
    raise exception 'unknown metric %', coalesce(quote_literal(metric), 'null') using errcode = '22023',
      hint = 'use ''cosine'', ''l2'' or ''inner_product''';
  end if;
  if partition_by is not null and partition_by not in ('tenant', 'time') then
    raise exception 'unknown partition_by %', quote_literal(partition_by) using errcode = '22023',
      hint = 'use null, ''tenant'' (LIST partitions per tenant) or ''time'' (RANGE partitions per month on created_at)';
  end if;
  if not exists (select 1 from pg_ts_config where cfgname = cfg) then
    raise exception 'unknown text search configuration %', quote_literal(cfg) using errcode = '22023',
      hint = 'one of: ' || (select string_agg(cfgname, ', ' order by cfgname) from pg_ts_config);
  end if;
  if options ? 'dimensions' then
    dims := ml._opt_int(options, 'dimensions', null, 1, 16000);
  elsif model is null then
    raise exception 'a collection without a model needs options => ''{"dimensions": N}''' using errcode = '22023',
      hint = 'give the model name, or the dimensions of the embeddings you will bring';
  else
    dims := ml._model_dimensions(model);
  end if;
  if storage = 'halfvec' and dims > 4000 and index <> 'none' then
    raise exception 'halfvec indexes hold at most 4000 dimensions, got %', dims using errcode = '22023';
  end if;
  if storage = 'vector' and dims > 2000 and index <> 'none' and not ml._opt_bool(options, 'binary_rerank', false) then
    raise exception 'vector indexes hold at most 2000 dimensions, got %', dims using errcode = '22023',
      hint = 'use options => ''{"halfvec": true}'' (up to 4000) or ''{"binary_rerank": true}''';
  end if;
  if ml._opt_bool(options, 'binary_rerank', false) and index = 'none' then
    raise exception 'binary_rerank needs an index (hnsw or ivfflat)' using errcode = '22023';
  end if;
  use_rls := ml._opt_bool(options, 'rls', coalesce(partition_by = 'tenant', false));

  insert into ml.collections (name, table_name, model, dimensions, index_type, metric, storage, binary_rerank,
                              partition_by, ts_config, rls, options)
  values (name, name, model, dims, index, metric, storage, ml._opt_bool(options, 'binary_rerank', false),
          partition_by, cfg, use_rls, options)
  returning * into c;
  insert into ml.collection_stats (collection_id) values (c.id);
  tbl := ml._collection_table(c);

  if partition_by = 'tenant' then
    pk := 'tenant, id';
    tenant_col := tenant_col || ' not null';
    part := ' partition by list (tenant)';
  elsif partition_by = 'time' then
    pk := 'id, created_at';
    part := ' partition by range (created_at)';
  else
    pk := 'id';
  end if;
  execute format($f$
    create table %s (
      id         text not null check (id <> ''),
      content    text,
      metadata   jsonb not null default '{}' check (jsonb_typeof(metadata) = 'object'),
      %s,
      created_at timestamptz not null default now(),
      embedding  %s,
      tsv        tsvector generated always as (to_tsvector(%L::regconfig, coalesce(content, ''))) stored,
      doc_len    int generated always as (ml._tsv_len(to_tsvector(%L::regconfig, coalesce(content, '')))) stored,
      primary key (%s)
    )%s$f$, tbl, tenant_col, ml._collection_vtype(c), cfg, cfg, pk, part);
  execute format('comment on table %s is %L', tbl, 'indb collection ' || name || ' (ml.create_collection)');
  if partition_by is not null then
    execute format('create table %I.%I partition of %s default', c.table_schema, c.table_name || '_default', tbl);
  end if;
  execute format('create index %I on %s using gin (tsv)', c.table_name || '_tsv', tbl);
  execute format('create index %I on %s using gin (metadata)', c.table_name || '_metadata', tbl);
  if partition_by = 'time' then
    execute format('create index %I on %s (created_at)', c.table_name || '_created_at', tbl);
  end if;
  if index = 'hnsw' then
    if partition_by = 'time' then
      -- per-partition indexes (not on the parent), so that old partitions can be tiered (ml.tier_partition)
      execute ml._collection_ann_ddl(c, format('%I.%I', c.table_schema, c.table_name || '_default'), c.table_name || '_default_ann');
    else
      execute ml._collection_ann_ddl(c, tbl, c.table_name || '_ann');
    end if;
  end if;
  -- statement-level triggers with transition tables: one model call per statement, BM25 statistics
  execute format('create trigger collection_insert after insert on %s referencing new table as new_rows '
                 'for each statement execute function ml._collection_trigger(%s)', tbl, c.id);
  execute format('create trigger collection_update after update on %s referencing old table as old_rows new table as new_rows '
                 'for each statement execute function ml._collection_trigger(%s)', tbl, c.id);
  execute format('create trigger collection_delete after delete on %s referencing old table as old_rows '
                 'for each statement execute function ml._collection_trigger(%s)', tbl, c.id);
  execute format('create trigger collection_truncate after truncate on %s '
                 'for each statement execute function ml._collection_trigger(%s)', tbl, c.id);
  -- the security area's cluster roles (sql/900-security.sql), when they exist: readers and apps search,
  -- writers write; functions are SECURITY INVOKER, so row-level security applies to the caller
  if exists (select 1 from pg_roles where rolname = 'indb_app') then
    execute format('grant select on %s to indb_app, indb_reader', tbl);
    execute format('grant select, insert, update, delete, truncate on %s to indb_writer, indb_admin', tbl);
  end if;
  if use_rls then
    execute format('alter table %s enable row level security', tbl);
    -- forced: the table's owner (say, the service that created it) is isolated by tenant too
    execute format('alter table %s force row level security', tbl);
    execute format('create policy tenant_isolation on %s using (tenant = current_setting(''indb.tenant'', true)) '
                   'with check (tenant = current_setting(''indb.tenant'', true))', tbl);
  end if;
  return jsonb_build_object('collection', c.name, 'table', tbl, 'model', c.model, 'dimensions', dims,
                            'index', index, 'metric', metric, 'storage', storage, 'binary_rerank', c.binary_rerank,
                            'partition_by', partition_by, 'text_search_config', cfg, 'row_level_security', use_rls);
end $$;
comment on function ml.create_collection(text, text, text, text, text, jsonb) is
  'create a vector collection: table collections.<name> with embedding, tsvector, metadata, ANN and GIN indexes';

create or replace function ml.drop_collection(name text, if_exists boolean default false) returns boolean
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections;
begin
  select * into c from ml.collections x where x.name = drop_collection.name;
  if not found then
    if if_exists then return false; end if;
    perform ml._collection(name);
  end if;
  execute format('drop table if exists %s cascade', ml._collection_table(c));
  delete from ml.collections where id = c.id;
  return true;
end $$;
comment on function ml.drop_collection(text, boolean) is 'drop a collection: its table, partitions, indexes and statistics';

-- ---------------------------------------------------------------------------------------------- triggers

create or replace function ml._collection_trigger() returns trigger
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  cid bigint := TG_ARGV[0]::bigint;
  c ml.collections;
  tbl text := format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME);
  dn bigint := 0;
  dl bigint := 0;
  ids text[];
  tenants text[];
  times timestamptz[];
  texts text[];
  vecs vector[];
  t0 timestamptz;
begin
  if current_setting('indb.collection_internal', true) = 'on' then
    return null;  -- our own UPDATE of the embedding column: nothing else changed
  end if;
  if TG_OP = 'TRUNCATE' then
    update ml.collection_stats set n_docs = 0, total_len = 0, updated_at = now() where collection_id = cid;
    delete from ml.collection_terms where collection_id = cid;
    return null;
  end if;

  -- BM25 statistics: documents, tokens and document frequency per lexeme (delta of this statement)
  if TG_OP = 'INSERT' then
    select count(*), coalesce(sum(doc_len), 0) into dn, dl from new_rows;
    insert into ml.collection_terms as ct (collection_id, term, df)
    select cid, u.lexeme, count(*) from new_rows r, unnest(r.tsv) u group by u.lexeme order by u.lexeme
    on conflict (collection_id, term) do update set df = ct.df + excluded.df;
  elsif TG_OP = 'DELETE' then
    select -count(*), -coalesce(sum(doc_len), 0) into dn, dl from old_rows;
    update ml.collection_terms ct set df = ct.df - d.n
    from (select u.lexeme, count(*) n from old_rows r, unnest(r.tsv) u group by u.lexeme) d
    where ct.collection_id = cid and ct.term = d.lexeme;
    delete from ml.collection_terms where collection_id = cid and df <= 0;
  else
    select (select count(*) from new_rows) - (select count(*) from old_rows),
           (select coalesce(sum(doc_len), 0) from new_rows) - (select coalesce(sum(doc_len), 0) from old_rows)
      into dn, dl;
    insert into ml.collection_terms as ct (collection_id, term, df)
    select cid, d.lexeme, sum(d.n) from (
      select u.lexeme, 1 n from new_rows r, unnest(r.tsv) u
      union all
      select u.lexeme, -1 from old_rows r, unnest(r.tsv) u) d
    group by d.lexeme having sum(d.n) <> 0 order by d.lexeme
    on conflict (collection_id, term) do update set df = ct.df + excluded.df;
    delete from ml.collection_terms where collection_id = cid and df <= 0;
  end if;
  if dn <> 0 or dl <> 0 then
    update ml.collection_stats set n_docs = n_docs + dn, total_len = total_len + dl, updated_at = now()
    where collection_id = cid;
  end if;
  if TG_OP = 'DELETE' then
    return null;
  end if;

  -- embeddings: rows without one, and updated rows whose content changed while the embedding did not
  -- (a collection without a model keeps the vector its writer gave)
  select * into c from ml.collections where id = cid;
  if TG_OP = 'INSERT' then
    select array_agg(n.id), array_agg(n.tenant), array_agg(n.created_at), array_agg(n.content)
      into ids, tenants, times, texts
    from new_rows n where n.embedding is null and n.content is not null;
  else
    select array_agg(n.id), array_agg(n.tenant), array_agg(n.created_at), array_agg(n.content)
      into ids, tenants, times, texts
    from new_rows n left join old_rows o on o.id = n.id and o.tenant is not distinct from n.tenant
                                          and o.created_at = n.created_at
    where n.content is not null
      and (n.embedding is null
           or (c.model is not null and o.id is not null and o.content is distinct from n.content
               and o.embedding::text = n.embedding::text));
  end if;
  if ids is null then
    return null;
  end if;
  if c.model is null then
    raise exception 'collection "%" has no model: % document(s) came without an embedding (first id %)',
      c.name, cardinality(ids), quote_literal(ids[1])
      using errcode = '22023', hint = 'give every document an "embedding" of ' || c.dimensions || ' numbers';
  end if;
  t0 := clock_timestamp();
  vecs := ml.embed(c.model, texts);
  perform set_config('indb.collection_internal', 'on', true);
  execute format('update %s t set embedding = v.e::%s from unnest($1::text[], $2::text[], $3::timestamptz[], $4::vector[]) '
                 'as v(id, tenant, created_at, e) where t.id = v.id and t.tenant is not distinct from v.tenant '
                 'and t.created_at = v.created_at', tbl, ml._collection_vtype(c))
    using ids, tenants, times, vecs;
  perform set_config('indb.collection_internal', 'off', true);
  if cardinality(ids) >= 100 then
    raise notice 'indb: embedded % documents of collection % in % s', cardinality(ids), c.name,
      round(extract(epoch from clock_timestamp() - t0)::numeric, 1);
  end if;
  return null;
end $$;
comment on function ml._collection_trigger() is
  'internal: statement trigger of collection tables: embeds new/changed content (one model call per statement), keeps BM25 statistics';

-- ---------------------------------------------------------------------------------------------- partitions

drop function if exists ml._collection_ensure_partitions(ml.collections, text[], timestamptz[]);
create or replace function ml.ensure_collection_partitions(collection text, tenants text[], times timestamptz[])
returns int
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
-- SECURITY DEFINER: creating a partition needs the parent's owner; writers call this through ml.add_documents.
-- A caller may only make partitions for its own tenant (indb.tenant) unless it owns the table or bypasses RLS.
declare
  c ml.collections := ml._collection(collection);
  tbl text := ml._collection_table(c);
  bad text;
  dflt text := format('%I.%I', c.table_schema, c.table_name || '_default');
  v text;
  m date;
  pname text;
  made int := 0;
  cols constant text := 'id, content, metadata, tenant, created_at, embedding';
begin
  if c.partition_by = 'tenant' and c.rls
     and not exists (select 1 from pg_roles r where r.rolname = session_user and (r.rolsuper or r.rolbypassrls))
     and not pg_has_role(session_user, (select relowner from pg_class where oid = tbl::regclass), 'member') then
    select x into bad from unnest(tenants) x where x is distinct from current_setting('indb.tenant', true) limit 1;
    if found then
      raise exception 'tenant % is not this session''s tenant (indb.tenant = %)', quote_literal(bad),
        coalesce(quote_literal(current_setting('indb.tenant', true)), 'not set')
        using errcode = '42501', hint = 'SET indb.tenant to the tenant you write for';
    end if;
  end if;
  if c.partition_by = 'tenant' then
    for v in select distinct x from unnest(tenants) x where x is not null loop
      pname := c.table_name || '_t_' || left(md5(v), 12);
      continue when to_regclass(format('%I.%I', c.table_schema, pname)) is not null;
      perform pg_advisory_xact_lock(c.id);
      continue when to_regclass(format('%I.%I', c.table_schema, pname)) is not null;
      -- rows a plain INSERT put into the default partition move to the new partition
      execute format('create temp table indb_move on commit drop as select %s from %s where tenant = $1', cols, dflt) using v;
      execute format('delete from %s where tenant = $1', tbl) using v;  -- through the parent: its triggers keep BM25 stats
      execute format('create table %I.%I partition of %s for values in (%L)', c.table_schema, pname, tbl, v);
      execute format('comment on table %I.%I is %L', c.table_schema, pname, 'tenant ' || v);
      execute format('insert into %s (%s) select %s from indb_move', tbl, cols, cols);
      drop table indb_move;
      made := made + 1;
    end loop;
  elsif c.partition_by = 'time' then
    for m in select distinct date_trunc('month', x at time zone 'UTC')::date from unnest(times) x where x is not null loop
      pname := c.table_name || '_m_' || to_char(m, 'YYYYMM');
      continue when to_regclass(format('%I.%I', c.table_schema, pname)) is not null;
      perform pg_advisory_xact_lock(c.id);
      continue when to_regclass(format('%I.%I', c.table_schema, pname)) is not null;
      execute format('create temp table indb_move on commit drop as select %s from %s where created_at >= $1 and created_at < $2',
                     cols, dflt) using (m::timestamp at time zone 'UTC'), ((m + interval '1 month')::timestamp at time zone 'UTC');
      execute format('delete from %s where created_at >= $1 and created_at < $2', tbl)
        using (m::timestamp at time zone 'UTC'), ((m + interval '1 month')::timestamp at time zone 'UTC');
      execute format('create table %I.%I partition of %s for values from (%L) to (%L)', c.table_schema, pname, tbl,
                     (m::timestamp at time zone 'UTC'), ((m + interval '1 month')::timestamp at time zone 'UTC'));
      if c.index_type = 'hnsw' then
        execute ml._collection_ann_ddl(c, format('%I.%I', c.table_schema, pname), pname || '_ann');
      end if;
      execute format('insert into %s (%s) select %s from indb_move', tbl, cols, cols);
      drop table indb_move;
      made := made + 1;
    end loop;
  end if;
  return made;
end $$;

-- ---------------------------------------------------------------------------------------------- add

create or replace function ml.add_documents(collection text, docs jsonb) returns bigint
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections := ml._collection(collection);
  tbl text := ml._collection_table(c);
  n int;
  chunk constant int := 256;
  start int := 0;
  written bigint := 0;
  bad jsonb;
  bad_id text;
  ids text[]; contents text[]; metas jsonb[]; tenants text[]; times timestamptz[]; embs text[];
  need int[];
  vecs vector[];
  old_ids text[]; old_tenants text[]; old_times timestamptz[];
  t0 timestamptz := clock_timestamp();
  rate float8;
begin
  if docs is null or jsonb_typeof(docs) <> 'array' then
    raise exception 'docs must be a JSON array of objects, got %', coalesce(jsonb_typeof(docs), 'null')
      using errcode = '22023', hint = 'e.g. ''[{"id": "a", "content": "...", "metadata": {"k": 1}}]''';
  end if;
  n := jsonb_array_length(docs);
  if n = 0 then return 0; end if;
  -- validate everything before writing anything
  select d, i into bad, start from jsonb_array_elements(docs) with ordinality x(d, i)
  where jsonb_typeof(d) <> 'object' or not (d ? 'id') or jsonb_typeof(d -> 'id') not in ('string', 'number')
     or (d ->> 'id') = ''
  limit 1;
  if bad is not null then
    raise exception 'document % of docs has no usable "id": %', start, left(bad::text, 200)
      using errcode = '22023', hint = 'every document is an object with a non-empty string "id"';
  end if;
  select d, i into bad, start from jsonb_array_elements(docs) with ordinality x(d, i)
  where exists (select 1 from jsonb_object_keys(d) k where k not in ('id', 'content', 'metadata', 'tenant', 'created_at', 'embedding'))
     or (d ? 'content' and jsonb_typeof(d -> 'content') not in ('string', 'null'))
     or (d ? 'metadata' and jsonb_typeof(d -> 'metadata') not in ('object', 'null'))
     or (d ? 'tenant' and jsonb_typeof(d -> 'tenant') not in ('string', 'null'))
     or (d ? 'created_at' and jsonb_typeof(d -> 'created_at') not in ('string', 'null'))
     or (d ? 'embedding' and jsonb_typeof(d -> 'embedding') not in ('array', 'null'))
  limit 1;
  if bad is not null then
    raise exception 'document % (id %) has an unknown key or a value of the wrong type', start, bad -> 'id'
      using errcode = '22023', detail = left(bad::text, 300),
            hint = 'keys: id (string), content (string), metadata (object), tenant (string), created_at (ISO timestamp string), embedding (array of numbers)';
  end if;
  select d ->> 'id' into bad_id from jsonb_array_elements(docs) d
  group by d ->> 'id', case when c.partition_by = 'tenant' then coalesce(d ->> 'tenant', current_setting('indb.tenant', true)) end
  having count(*) > 1 limit 1;
  if bad_id is not null then
    raise exception 'document id % appears more than once in docs', bad_id using errcode = '22023',
      hint = 'each call writes a document once; merge the duplicates';
  end if;
  select d ->> 'id', jsonb_array_length(d -> 'embedding') into bad_id, start from jsonb_array_elements(docs) d
  where jsonb_typeof(d -> 'embedding') = 'array' and jsonb_array_length(d -> 'embedding') <> c.dimensions limit 1;
  if bad_id is not null then
    raise exception 'document % has an embedding of % dimensions; collection % stores %', bad_id, start, c.name, c.dimensions
      using errcode = '22023';
  end if;
  if c.partition_by = 'tenant' and exists (select 1 from jsonb_array_elements(docs) d
                                           where coalesce(d ->> 'tenant', current_setting('indb.tenant', true)) is null) then
    raise exception 'collection % is partitioned by tenant: every document needs a "tenant"', c.name
      using errcode = '22023', hint = 'set "tenant" in each document, or SET indb.tenant = ''...'' for the session';
  end if;

  start := 0;
  while start < n loop
    select array_agg(d ->> 'id' order by i), array_agg(d ->> 'content' order by i),
           array_agg(coalesce(nullif(d -> 'metadata', 'null'::jsonb), '{}'::jsonb) order by i),
           array_agg(coalesce(d ->> 'tenant', current_setting('indb.tenant', true)) order by i),
           array_agg((d ->> 'created_at')::timestamptz order by i),
           array_agg(nullif(d -> 'embedding', 'null'::jsonb)::text order by i)
      into ids, contents, metas, tenants, times, embs
    from jsonb_array_elements(docs) with ordinality x(d, i)
    where i > start and i <= start + chunk;
    -- one model call for the chunk's documents that bring no embedding
    select array_agg(i order by i) into need from generate_subscripts(ids, 1) i
    where embs[i] is null and contents[i] is not null;
    if need is not null then
      if c.model is null then
        raise exception 'collection "%" has no model: document % came without an embedding', c.name, quote_literal(ids[need[1]])
          using errcode = '22023', hint = 'give every document an "embedding" of ' || c.dimensions || ' numbers';
      end if;
      vecs := ml.embed(c.model, (select array_agg(contents[i] order by o) from unnest(need) with ordinality u(i, o)));
      for j in 1 .. cardinality(need) loop
        embs[need[j]] := vecs[j]::text;
      end loop;
    end if;
    if c.partition_by is not null then
      perform ml.ensure_collection_partitions(c.name, tenants, times);
    end if;
    -- upsert by id (by tenant and id when partitioned by tenant): replace the old version
    execute format('with d as (delete from %s t using unnest($1::text[], $2::text[]) v(id, tenant) '
                   'where t.id = v.id and ($3 or t.tenant is not distinct from v.tenant) returning t.id, t.tenant, t.created_at) '
                   'select array_agg(id), array_agg(tenant), array_agg(created_at) from d', tbl)
      into old_ids, old_tenants, old_times using ids, tenants, c.partition_by is distinct from 'tenant';
    if old_ids is not null and c.partition_by = 'time' then
      -- keep the old created_at when the update gives none (so the row stays in its month)
      select array_agg(coalesce(times[i], (select o.t from unnest(old_ids, old_times) o(id, t) where o.id = ids[i] limit 1)) order by i)
        into times from generate_subscripts(ids, 1) i;
    end if;
    execute format('insert into %s (id, content, metadata, tenant, created_at, embedding) '
                   'select v.id, v.content, v.metadata, v.tenant, coalesce(v.created_at, o.t, now()), v.e::%s '
                   'from unnest($1::text[], $2::text[], $3::jsonb[], $4::text[], $5::timestamptz[], $6::text[]) '
                   '  as v(id, content, metadata, tenant, created_at, e) '
                   'left join unnest($7::text[], $8::text[], $9::timestamptz[]) o(id, tenant, t) '
                   '  on o.id = v.id and o.tenant is not distinct from v.tenant', tbl, ml._collection_vtype(c))
      using ids, contents, metas, tenants, times, embs, old_ids, old_tenants, old_times;
    get diagnostics n = row_count;
    written := written + n;
    start := start + chunk;
    n := jsonb_array_length(docs);
    if n > chunk then
      rate := written / greatest(extract(epoch from clock_timestamp() - t0), 1e-6);
      raise notice 'indb: add_documents %: % / % rows, % rows/s, ~% s left', c.name, written, n,
        round(rate::numeric, 1), round(((n - written) / greatest(rate, 1e-6))::numeric);
    end if;
  end loop;
  if c.index_type = 'ivfflat' and not exists (select 1 from ml._collection_ann_indexes(c)) then
    perform ml.reindex_collection(c.name, false);
  end if;
  return written;
end $$;
comment on function ml.add_documents(text, jsonb) is
  'upsert documents [{id, content, metadata, tenant, created_at, embedding}] into a collection; returns rows written';

-- ---------------------------------------------------------------------------------------------- search

create or replace function ml._search(
    c ml.collections, query vector, k int, filter jsonb, options jsonb)
returns table(id text, score float8, content text, metadata jsonb)
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  tbl text := ml._collection_table(c);
  op text := ml._collection_op(c);
  q text := format('$1::%s', ml._collection_vtype(c));
  dist text;
  score_expr text;
  fsql text := 'true';
  fparams jsonb := '[]';
  f jsonb;
  strategy text;
  reason text;
  matches bigint;
  threshold int;
  ef int;
  cand int;
  inner_sql text;
  sql text;
  has_index boolean;
  saved jsonb := '{}';
  gucs jsonb := '{}';
  old_ef text;
  g record;
  r_ids text[]; r_scores float8[]; r_contents text[]; r_metas jsonb[];
  plan text;
begin
  options := coalesce(options, '{}');
  if options <> '{}' and (options - array['ef_search', 'probes', 'exact', 'explain', 'exact_threshold', 'max_scan_tuples',
                                          'rerank_candidates', 'k1', 'b']) <> '{}' then
    perform ml._check_options(options, array['ef_search', 'probes', 'exact', 'explain', 'exact_threshold',
                                             'max_scan_tuples', 'rerank_candidates', 'k1', 'b'], 'ml.search');
  end if;
  if k is null or k < 1 or k > 10000 then
    perform ml._check_k(k);
  end if;
  if query is null then
    raise exception 'query vector is null' using errcode = '22004', hint = 'pass a vector or a text query';
  end if;
  if vector_dims(query) <> c.dimensions then
    raise exception 'query vector has % dimensions; collection % stores %', vector_dims(query), c.name, c.dimensions
      using errcode = '22023', hint = 'embed the query with the collection''s model (' || coalesce(c.model, 'none') || ')';
  end if;
  if filter is not null and filter <> '{}'::jsonb then
    f := ml._filter_sql(filter, 3);
    fsql := f ->> 'sql';
    fparams := f -> 'params';
  end if;
  dist := format('(t.embedding %s %s)', op, q);
  score_expr := case c.metric when 'cosine' then '1 - s.d' else '-s.d' end;
  threshold := 5000;
  cand := greatest(4 * k, 100);
  if options <> '{}' then
    if options ? 'exact_threshold' then threshold := ml._opt_int(options, 'exact_threshold', 5000, 0, 100000000); end if;
    if options ? 'ef_search' then ef := ml._opt_int(options, 'ef_search', null, 1, 1000); end if;
    if options ? 'rerank_candidates' then cand := ml._opt_int(options, 'rerank_candidates', cand, 1, 100000); end if;
  end if;

  has_index := c.index_type <> 'none' and (c.index_type = 'hnsw' and c.partition_by is distinct from 'time'
                                             or exists (select 1 from ml._collection_ann_indexes(c)));
  if options <> '{}' and ml._opt_bool(options, 'exact', false) then
    strategy := 'exact'; reason := 'options.exact = true';
  elsif not has_index then
    strategy := 'exact'; reason := case when c.index_type = 'none' then 'the collection has no ANN index (index => none)'
                                        else 'the ANN index is not built yet (ivfflat: ml.reindex_collection builds it)' end;
  elsif fsql <> 'true' then
    execute format('select count(*) from (select 1 from %s t where %s and t.embedding is not null limit %s) s', tbl, fsql, threshold + 1)
      into matches using query, k, fparams;
    if matches <= threshold then
      strategy := 'exact';
      reason := format('the filter matches %s rows (<= exact_threshold %s): an exact scan of them is cheap and has recall 1', matches, threshold);
    else
      strategy := 'ann_iterative';
      reason := format('the filter matches more than %s rows: index scan with %s.iterative_scan, exact fallback if it returns fewer than k rows',
                       threshold, c.index_type);
    end if;
  else
    strategy := 'ann'; reason := 'no filter: approximate index scan';
  end if;

  if strategy = 'exact' then
    inner_sql := format('select t.id, %s + 0 as d, t.content, t.metadata from %s t where %s and t.embedding is not null '
                        'order by 2 limit $2', dist, tbl, fsql);
  elsif c.binary_rerank then
    inner_sql := format('select * from (select t.id, %s as d, t.content, t.metadata from %s t where %s and t.embedding is not null '
                        'order by binary_quantize(t.embedding)::bit(%s) <~> binary_quantize(%s)::bit(%s) limit %s) r order by r.d limit $2',
                        dist, tbl, fsql, c.dimensions, q, c.dimensions, greatest(cand, k));
  end if;
  if inner_sql is not null then
    sql := format('select s.id, (%s)::float8, s.content, s.metadata from (%s) s order by s.d, s.id', score_expr, inner_sql);
  else
    -- the plain index scan: already in distance order (HNSW/IVFFlat never return null embeddings)
    sql := format('select t.id, (%s)::float8, t.content, t.metadata from %s t where %s order by %s limit $2',
                  replace(score_expr, 's.d', dist), tbl, fsql, dist);
  end if;

  if strategy <> 'exact' then
    if c.index_type = 'hnsw' then
      -- ef_search from options, raised to k (HNSW returns at most ef_search rows without iterative scan)
      saved := jsonb_build_object('hnsw.ef_search', current_setting('hnsw.ef_search', true));
      if ef is null and strategy = 'ann_iterative' then
        -- filtered index scans lose recall at low ef_search: at least 100 unless asked otherwise
        ef := greatest((saved ->> 'hnsw.ef_search')::int, 100);
      end if;
      if ef is not null or (saved ->> 'hnsw.ef_search')::int < least(case when c.binary_rerank then cand else k end, 1000) then
        gucs := jsonb_build_object('hnsw.ef_search', greatest(coalesce(ef, (saved ->> 'hnsw.ef_search')::int, 40),
                                                              least(case when c.binary_rerank then cand else k end, 1000)));
      end if;
      saved := '{}';
      if strategy = 'ann_iterative' or k > 1000 or (c.binary_rerank and cand > 1000) then
        gucs := gucs || jsonb_build_object('hnsw.iterative_scan', 'strict_order');
      end if;
      if options ? 'max_scan_tuples' then
        gucs := gucs || jsonb_build_object('hnsw.max_scan_tuples', ml._opt_int(options, 'max_scan_tuples', 20000, 1, 2147483647));
      end if;
    else
      if options ? 'probes' then
        gucs := jsonb_build_object('ivfflat.probes', ml._opt_int(options, 'probes', 1, 1, 32768));
      end if;
      if strategy = 'ann_iterative' then
        gucs := gucs || jsonb_build_object('ivfflat.iterative_scan', 'relaxed_order');
      end if;
    end if;
    if gucs ? 'hnsw.ef_search' and gucs - 'hnsw.ef_search' = '{}' then
      -- the common case, without a loop: only ef_search
      old_ef := current_setting('hnsw.ef_search');
      perform set_config('hnsw.ef_search', gucs ->> 'hnsw.ef_search', true);
    elsif gucs <> '{}' then
      for g in select key, value from jsonb_each_text(gucs) loop
        saved := saved || jsonb_build_object(g.key, current_setting(g.key, true));
        perform set_config(g.key, g.value, true);
      end loop;
    end if;
  end if;

  if options <> '{}' and ml._opt_bool(options, 'explain', false) then
    plan := '';
    for g in execute 'explain (analyze, costs off, timing off, summary off) ' || sql using query, k, fparams loop
      plan := plan || g."QUERY PLAN" || E'\n';
    end loop;
    for g in select key, value from jsonb_each_text(saved) loop
      perform set_config(g.key, coalesce(g.value, ''), true);
    end loop;
    if old_ef is not null then perform set_config('hnsw.ef_search', old_ef, true); end if;
    id := null; score := matches; content := plan;
    metadata := jsonb_build_object('strategy', strategy, 'reason', reason, 'filter_matches', matches,
                                   'settings', gucs, 'filter_sql', fsql);
    return next;
    return;
  end if;

  if strategy = 'ann_iterative' then
    execute format('select array_agg(x.id), array_agg(x.score), array_agg(x.content), array_agg(x.metadata) '
                   'from (%s) x(id, score, content, metadata)', sql)
      into r_ids, r_scores, r_contents, r_metas using query, k, fparams;
    if coalesce(cardinality(r_ids), 0) < k then
      -- the iterative scan stopped (max_scan_tuples) before finding k matches: answer exactly
      raise debug 'indb: iterative index scan returned % of % rows; exact scan', coalesce(cardinality(r_ids), 0), k;
      sql := format('select s.id, (%s)::float8, s.content, s.metadata from (%s) s order by s.d, s.id', score_expr,
                    format('select t.id, %s + 0 as d, t.content, t.metadata from %s t where %s and t.embedding is not null '
                           'order by 2 limit $2', dist, tbl, fsql));
      return query execute sql using query, k, fparams;
    else
      return query select * from unnest(r_ids, r_scores, r_contents, r_metas);
    end if;
  else
    return query execute sql using query, k, fparams;
  end if;
  if old_ef is not null then
    perform set_config('hnsw.ef_search', old_ef, true);
  end if;
  if saved <> '{}' then
    for g in select key, value from jsonb_each_text(saved) loop
      perform set_config(g.key, coalesce(g.value, ''), true);
    end loop;
  end if;
end $$;

create or replace function ml.search(
    collection text, query vector, k int default 10, filter jsonb default null, options jsonb default '{}')
returns table(id text, score float8, content text, metadata jsonb)
language sql stable parallel unsafe
as $$ select * from ml._search(ml._collection(collection), query, k, filter, options) $$;
-- (a SQL wrapper, STABLE and without SET, so that the planner inlines it: one function layer less per query)
comment on function ml.search(text, vector, int, jsonb, jsonb) is
  'vector search with a query vector: top k by the collection''s metric (score: higher is better), optional jsonb filter';

create or replace function ml.search(
    collection text, query text, k int default 10, filter jsonb default null, options jsonb default '{}')
returns table(id text, score float8, content text, metadata jsonb)
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections := ml._collection(collection);
begin
  if query is null or btrim(query) = '' then
    raise exception 'empty query' using errcode = '22023', hint = 'pass the text to search for';
  end if;
  if c.model is null then
    raise exception 'collection "%" has no model to embed a text query', c.name using errcode = '22023',
      hint = 'pass the query as a vector: ml.search(collection, ''[...]''::vector, ...)';
  end if;
  perform ml._check_k(k);
  return query select * from ml._search(c, ml.embed(c.model, query), k, filter, options);
end $$;
comment on function ml.search(text, text, int, jsonb, jsonb) is
  'vector search with a text query embedded by the collection''s model; same results shape as the vector overload';

-- ---------------------------------------------------------------------------------------------- BM25

create or replace function ml._keyword_search(c ml.collections, query text, k int, filter jsonb, options jsonb)
returns table(id text, score float8, content text, metadata jsonb)
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  tbl text := ml._collection_table(c);
  terms text[];
  idfs float8[];
  dfs bigint[];
  tsq tsquery;
  nd bigint;
  tl bigint;
  k1 float8 := 1.2;
  b float8 := 0.75;
  f jsonb;
  fsql text := 'true';
  fparams jsonb := '[]';
  m int;
  j int;
  jn int;
  cum bigint;
  theta float8;
  rest float8;
  sql text;
  r_ids text[]; r_scores float8[]; r_contents text[]; r_metas jsonb[];
begin
  options := coalesce(options, '{}');
  if options <> '{}' then
    perform ml._check_options(options, array['k1', 'b', 'ef_search', 'probes', 'exact', 'exact_threshold',
                                             'max_scan_tuples', 'rerank_candidates', 'explain'], 'ml.keyword_search');
    if options ? 'k1' then k1 := (options ->> 'k1')::float8; end if;
    if options ? 'b' then b := (options ->> 'b')::float8; end if;
  end if;
  if k is null or k < 1 or k > 10000 then
    perform ml._check_k(k);
  end if;
  if query is null or btrim(query) = '' then
    raise exception 'empty query' using errcode = '22023', hint = 'pass the words to search for';
  end if;
  if k1 < 0 or b < 0 or b > 1 then
    raise exception 'BM25 parameters out of range: k1 = %, b = %', k1, b using errcode = '22023',
      hint = 'k1 >= 0 (typically 0.9-2.0), 0 <= b <= 1';
  end if;
  if filter is not null and filter <> '{}'::jsonb then
    f := ml._filter_sql(filter, 6);
    fsql := f ->> 'sql';
    fparams := f -> 'params';
  end if;
  select s.n_docs, s.total_len into nd, tl from ml.collection_stats s where s.collection_id = c.id;
  -- distinct query lexemes that occur in the collection, rarest first, with Lucene's BM25
  -- idf = ln(1 + (N - df + 0.5) / (df + 0.5))
  select array_agg(t.term order by t.df, t.term), array_agg(ln(1 + (nd - t.df + 0.5) / (t.df + 0.5)) order by t.df, t.term),
         array_agg(t.df order by t.df, t.term)
    into terms, idfs, dfs
  from ml.collection_terms t
  where t.collection_id = c.id
    and t.term in (select u.lexeme from unnest(to_tsvector(c.ts_config::regconfig, query)) u);
  if terms is null or nd = 0 then
    return;
  end if;
  sql := format(
    'select array_agg(x.id), array_agg(x.score), array_agg(x.content), array_agg(x.metadata) from ('
    'select t.id, sc.score, t.content, t.metadata from %s t '
    'cross join lateral (select sum($2[array_position($1, u.lexeme)] * z.tf * ($4 + 1) '
    '                              / (z.tf + $4 * (1 - $5 + $5 * t.doc_len / $7))) as score '
    -- only the query's lexemes of the document: marked with weight A by setweight, kept by ts_filter (both C,
    -- no row per lexeme of the document)
    '  from unnest(ts_filter(setweight(t.tsv, ''A'', $1), ''{a}'')) u '
    '  cross join lateral (select coalesce(array_length(u.positions, 1), 1)::float8 as tf) z) sc '
    'where t.tsv @@ $3 and %s order by sc.score desc, t.id limit $8) x', tbl, fsql);
  -- MaxScore: a document holding none of the j rarest terms scores at most sum(idf_i * (k1 + 1)) over the
  -- other terms; once that bound is below the k-th best score among documents holding one of the j rarest
  -- terms, those documents' top k is the exact top k, and the common terms' documents are never scanned.
  m := cardinality(terms);
  j := 1;
  cum := dfs[1];
  while j < m and cum < k loop
    j := j + 1;
    cum := cum + dfs[j];
  end loop;
  loop
    select string_agg('''' || replace(replace(x, '\', '\\'), '''', '''''') || '''', ' | ')::tsquery into tsq
    from unnest(terms[1:j]) x;
    execute sql into r_ids, r_scores, r_contents, r_metas using terms, idfs, tsq, k1, b, fparams, (tl::float8 / nd), k;
    exit when j >= m;
    theta := case when coalesce(cardinality(r_ids), 0) >= k then r_scores[k] else 0 end;
    -- smallest jn >= j whose remaining terms' bound is below theta
    jn := j;
    rest := (select coalesce(sum(v), 0) from unnest(idfs[j + 1:m]) v) * (k1 + 1);
    while jn < m and rest >= theta loop
      jn := jn + 1;
      rest := rest - idfs[jn] * (k1 + 1);
    end loop;
    exit when jn = j;
    j := jn;
  end loop;
  return query select * from unnest(r_ids, r_scores, r_contents, r_metas);
end $$;

create or replace function ml.keyword_search(
    collection text, query text, k int default 10, filter jsonb default null, options jsonb default '{}')
returns table(id text, score float8, content text, metadata jsonb)
language sql stable parallel unsafe
as $$ select * from ml._keyword_search(ml._collection(collection), query, k, filter, options) $$;
comment on function ml.keyword_search(text, text, int, jsonb, jsonb) is
  'BM25 keyword search (k1 = 1.2, b = 0.75 by default; options k1, b) over the collection''s tsvector, with statistics kept current by triggers';

-- ---------------------------------------------------------------------------------------------- hybrid

create or replace function ml.hybrid_search(
    collection text, query text, k int default 10, filter jsonb default null,
    method text default 'rrf', rrf_k int default 60, vector_weight float8 default 1, keyword_weight float8 default 1,
    candidates int default 100, options jsonb default '{}')
returns table(id text, score float8, vector_rank int, keyword_rank int, content text, metadata jsonb)
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
  c ml.collections := ml._collection(collection);
  qv vector;
begin
  perform ml._check_k(k);
  perform ml._check_k(candidates, 'candidates');
  if query is null or btrim(query) = '' then
    raise exception 'empty query' using errcode = '22023', hint = 'pass the text to search for';
  end if;
  if options ? 'explain' then
    raise exception 'ml.hybrid_search does not take the explain option' using errcode = '22023',
      hint = 'explain each side: ml.search(..., options => ''{"explain": true}'')';
  end if;
  if method is null or method not in ('rrf', 'weighted') then
    raise exception 'unknown fusion method %', coalesce(quote_literal(method), 'null') using errcode = '22023',
      hint = 'use ''rrf'' (reciprocal rank fusion) or ''weighted'' (min-max normalized scores)';
  end if;
  if rrf_k is null or rrf_k < 0 then
    raise exception 'rrf_k must be >= 0, got %', rrf_k using errcode = '22023';
  end if;
  if vector_weight is null or keyword_weight is null or vector_weight < 0 or keyword_weight < 0 then
    raise exception 'weights must be >= 0' using errcode = '22023';
  end if;
  if c.model is null then
    raise exception 'collection "%" has no model to embed a text query', c.name using errcode = '22023';
  end if;
  qv := ml.embed(c.model, query);
  return query
  with v as (
    select s.id, s.score, s.content, s.metadata, row_number() over (order by s.score desc, s.id)::int as r
    from ml._search(c, qv, greatest(candidates, k), filter, options) s
  ), kw as (
    select s.id, s.score, s.content, s.metadata, row_number() over (order by s.score desc, s.id)::int as r
    from ml._keyword_search(c, query, greatest(candidates, k), filter, options) s
  ), j as (
    select coalesce(v.id, kw.id) as id, v.r as vr, kw.r as kr, v.score as vs, kw.score as ks,
           coalesce(v.content, kw.content) as content, coalesce(v.metadata, kw.metadata) as metadata
    from v full join kw on kw.id = v.id
  ), n as (
    select j.*, min(vs) over () as vmin, max(vs) over () as vmax, min(ks) over () as kmin, max(ks) over () as kmax from j
  )
  select n.id,
         case when method = 'rrf' then
                coalesce(vector_weight / (rrf_k + n.vr), 0) + coalesce(keyword_weight / (rrf_k + n.kr), 0)
              else
                coalesce(vector_weight * case when n.vmax > n.vmin then (n.vs - n.vmin) / (n.vmax - n.vmin) else 1 end, 0)
              + coalesce(keyword_weight * case when n.kmax > n.kmin then (n.ks - n.kmin) / (n.kmax - n.kmin) else 1 end, 0)
         end::float8 as score,
         n.vr, n.kr, n.content, n.metadata
  from n
  order by 2 desc, least(coalesce(n.vr, 1000000), coalesce(n.kr, 1000000)), n.id
  limit k;
end $$;
comment on function ml.hybrid_search(text, text, int, jsonb, text, int, float8, float8, int, jsonb) is
  'hybrid search: vector and BM25 candidates fused by reciprocal rank fusion (rrf) or min-max normalized weighted scores';

-- ---------------------------------------------------------------------------------------------- health and maintenance

create or replace function ml.reindex_collection(name text, concurrently boolean default true) returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections := ml._collection(name);
  tbl text := ml._collection_table(c);
  rows bigint;
  lists int;
  t0 timestamptz := clock_timestamp();
  r record;
  built text[] := '{}';
begin
  if c.index_type = 'none' then
    raise exception 'collection % has no ANN index (index => none): nothing to rebuild', c.name using errcode = '22023';
  end if;
  execute format('select count(*) from %s where embedding is not null', tbl) into rows;
  if c.index_type = 'ivfflat' then
    -- pgvector's guidance: lists = rows / 1000 up to 1M rows, sqrt(rows) above
    lists := coalesce(ml._opt_int(c.options, 'lists', null, 1, 32768),
                      greatest(1, case when rows <= 1000000 then rows / 1000 else sqrt(rows)::int end));
    if rows = 0 then
      raise notice 'indb: collection % is empty: the ivfflat index is built on the first ml.add_documents', c.name;
      return jsonb_build_object('collection', c.name, 'rows', 0, 'built', '[]'::jsonb);
    end if;
  end if;
  -- a new index is built beside the old one (searches keep using the old one; writes wait), then swapped.
  -- CREATE INDEX CONCURRENTLY cannot run inside a function: for that, run REINDEX INDEX CONCURRENTLY from psql.
  if c.partition_by = 'time' then
    for r in select i.index_name, i.table_name from ml._collection_ann_indexes(c) i loop
      execute format('drop index %I.%I', c.table_schema, r.index_name);
      execute ml._collection_ann_ddl(c, format('%I.%I', c.table_schema, r.table_name), r.index_name, lists);
      built := built || r.index_name;
    end loop;
  else
    execute ml._collection_ann_ddl(c, tbl, c.table_name || '_ann_new', lists);
    execute format('drop index if exists %I.%I', c.table_schema, c.table_name || '_ann');
    execute format('alter index %I.%I rename to %I', c.table_schema, c.table_name || '_ann_new', c.table_name || '_ann');
    built := built || (c.table_name || '_ann');
  end if;
  execute format('analyze %s', tbl);
  return jsonb_build_object('collection', c.name, 'rows', rows, 'index', c.index_type, 'lists', lists,
                            'built', to_jsonb(built), 'seconds', round(extract(epoch from clock_timestamp() - t0)::numeric, 3),
                            'concurrently', reindex_collection.concurrently,
                            'note', case when reindex_collection.concurrently then 'built beside the old index and swapped: searches kept running, writes waited' end);
end $$;
comment on function ml.reindex_collection(text, boolean) is 'rebuild the ANN index of a collection (ivfflat: lists from the current row count)';

create or replace function ml.collection_health(name text, sample int default 20) returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections := ml._collection(name);
  tbl text := ml._collection_table(c);
  nrows bigint;
  missing bigint;
  parts jsonb;
  idx jsonb;
  q record;
  hits int := 0;
  total int := 0;
  approx text[];
  exact text[];
  st ml.collection_stats;
begin
  if sample is null or sample < 0 or sample > 1000 then
    raise exception 'sample must be between 0 and 1000' using errcode = '22023';
  end if;
  execute format('select count(*), count(*) filter (where embedding is null and content is not null) from %s', tbl) into nrows, missing;
  select coalesce(jsonb_agg(jsonb_build_object(
            'partition', p.relname, 'bound', pg_get_expr(p.relpartbound, p.oid),
            'rows_estimate', greatest(p.reltuples, 0)::bigint,
            'dead_tuples', coalesce(s.n_dead_tup, 0), 'bytes', pg_total_relation_size(p.oid)) order by p.relname), '[]')
    into parts
  from pg_inherits i join pg_class p on p.oid = i.inhrelid
  left join pg_stat_user_tables s on s.relid = p.oid
  where i.inhparent = tbl::regclass;
  select coalesce(jsonb_agg(jsonb_build_object('index', ic.relname, 'am', am.amname, 'bytes', pg_relation_size(ic.oid))
                  order by ic.relname), '[]')
    into idx
  from pg_index x join pg_class ic on ic.oid = x.indexrelid join pg_am am on am.oid = ic.relam
  where x.indrelid = tbl::regclass or x.indrelid in (select inhrelid from pg_inherits where inhparent = tbl::regclass);
  select * into st from ml.collection_stats where collection_id = c.id;
  -- sampled recall@10 of the ANN index against an exact scan, with stored vectors as queries
  if c.index_type <> 'none' and sample > 0 then
    for q in execute format('select embedding::vector as e from %s where embedding is not null order by random() limit $1', tbl) using sample loop
      select array_agg(s.id) into approx from ml._search(c, q.e, 10, null, '{}') s;
      select array_agg(s.id) into exact from ml._search(c, q.e, 10, null, '{"exact": true}') s;
      hits := hits + (select count(*) from unnest(approx) a where a = any(exact));
      total := total + coalesce(cardinality(exact), 0);
    end loop;
  end if;
  return jsonb_build_object(
    'collection', c.name, 'table', tbl, 'rows', nrows, 'rows_missing_embedding', missing,
    'index', c.index_type, 'metric', c.metric, 'storage', c.storage, 'binary_rerank', c.binary_rerank,
    'partition_by', c.partition_by, 'partitions', parts, 'indexes', idx,
    'table_bytes', pg_total_relation_size(tbl::regclass),
    'dead_tuples', coalesce((select sum(n_dead_tup) from pg_stat_user_tables where relid = tbl::regclass
                              or relid in (select inhrelid from pg_inherits where inhparent = tbl::regclass)), 0),
    'bm25', jsonb_build_object('documents', st.n_docs, 'avg_length', case when st.n_docs > 0 then round(st.total_len::numeric / st.n_docs, 2) end,
                               'terms', (select count(*) from ml.collection_terms t where t.collection_id = c.id)),
    'sampled_recall_at_10', case when total > 0 then round(hits::numeric / total, 4) end,
    'recall_sample_queries', case when total > 0 then sample end);
end $$;
comment on function ml.collection_health(text, int) is
  'rows, partitions, index sizes, dead tuples, BM25 statistics and sampled recall@10 of the ANN index against an exact scan';

create or replace function ml.tier_partition(collection text, older_than interval default '3 months', index text default 'none')
returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections := ml._collection(collection);
  r record;
  done jsonb := '[]';
  upper_ts timestamptz;
  nrows bigint;
begin
  if c.partition_by is distinct from 'time' then
    raise exception 'collection % is not partitioned by time', c.name using errcode = '22023',
      hint = 'tiering applies to collections made with partition_by => ''time''';
  end if;
  if index is null or index not in ('none', 'ivfflat') then
    raise exception 'unknown tier index %', coalesce(quote_literal(index), 'null') using errcode = '22023',
      hint = '''none'' (exact scan, no index memory) or ''ivfflat'' (small, cheap to build)';
  end if;
  for r in select p.relname::text as part, pg_get_expr(p.relpartbound, p.oid) as bound
           from pg_inherits i join pg_class p on p.oid = i.inhrelid
           where i.inhparent = ml._collection_table(c)::regclass and p.relname <> c.table_name || '_default'
           order by p.relname loop
    upper_ts := substring(r.bound from 'TO \(''([^'']+)''\)')::timestamptz;
    continue when upper_ts is null or upper_ts > now() - older_than;
    execute format('drop index if exists %I.%I', c.table_schema, r.part || '_ann');
    if index = 'ivfflat' then
      execute format('select count(*) from %I.%I', c.table_schema, r.part) into nrows;
      execute format('create index %I on %I.%I using ivfflat (embedding %s) with (lists = %s)', r.part || '_ann',
                     c.table_schema, r.part,
                     c.storage || '_' || case c.metric when 'cosine' then 'cosine' when 'l2' then 'l2' else 'ip' end || '_ops',
                     greatest(1, nrows / 1000));
    end if;
    done := done || jsonb_build_object('partition', r.part, 'index', index);
  end loop;
  return jsonb_build_object('collection', c.name, 'tiered', done);
end $$;
comment on function ml.tier_partition(text, interval, text) is
  'switch monthly partitions older than older_than to a cheaper index (none: exact scan; ivfflat)';
