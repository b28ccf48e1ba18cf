-- Collections, public API: create (as a list of named steps), drop, add documents, reindex, health, tiering
-- of time partitions. Internals: sql/200-collections-int.sql.

-- step 1 of ml.create_collection: every argument checked before anything is made; returns the dimensions
create or replace function ml._collection_check_args(name text, model text, index text, metric text,
                                                     partition_by text, options jsonb) returns int
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  cfg text := coalesce(options ->> 'text_search_config', 'english');
  dims int;
begin
  perform ml._check_options(options, array['m', 'ef_construction', 'lists', 'halfvec', 'binary_rerank',
                                           'text_search_config', 'dimensions', 'rls'], 'ml.create_collection');
  if name is null or name !~ '^[a-z_][a-z0-9_]{0,47}$' then
    raise exception 'invalid collection name %', coalesce(quote_literal(ml._clip(name)), 'null')
      using errcode = '22023', hint = 'use 1-48 lowercase letters, digits and underscores, starting with a letter or underscore';
  end if;
  if exists (select 1 from ml.collections x where x.name = _collection_check_args.name) then
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
  if ml._opt_bool(options, 'halfvec', false) and dims > 4000 and index <> 'none' then
    raise exception 'halfvec indexes hold at most 4000 dimensions, got %', dims using errcode = '22023';
  end if;
  if not ml._opt_bool(options, 'halfvec', false) and dims > 2000 and index <> 'none'
     and not ml._opt_bool(options, 'binary_rerank', false) then
    raise exception 'vector indexes hold at most 2000 dimensions, got %', dims using errcode = '22023',
      hint = 'use options => ''{"halfvec": true}'' (up to 4000) or ''{"binary_rerank": true}''';
  end if;
  if ml._opt_bool(options, 'binary_rerank', false) and index = 'none' then
    raise exception 'binary_rerank needs an index (hnsw or ivfflat)' using errcode = '22023';
  end if;
  if not ml._opt_bool(options, 'rls', true) then
    raise exception 'tenant isolation cannot be turned off' using errcode = '22023',
      hint = 'every collection has row-level security by tenant; rows without a tenant are shared by all';
  end if;
  return dims;
end $$;

-- step 2: the table (and its default partition); cosine collections refuse zero vectors (their score is NaN)
create or replace function ml._collection_make_table(c ml.collections) returns regclass
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  tbl text := ml._collection_table(c);
  vs text := (select extnamespace::regnamespace::text from pg_extension where extname = 'vector');
begin
  execute format($f$
    create table %s (
      id         text not null check (id <> ''),
      content    text,
      metadata   jsonb not null default '{}' check (jsonb_typeof(metadata) = 'object'),
      tenant     text default ml.current_tenant()%s,
      created_at timestamptz not null default now(),
      embedding  %s,
      tsv        tsvector generated always as (to_tsvector(%L::regconfig, coalesce(content, ''))) stored,
      doc_len    int generated always as (ml._tsv_len(to_tsvector(%L::regconfig, coalesce(content, '')))) stored,
      primary key (%s)%s
    )%s$f$, tbl, case when c.partition_by = 'tenant' then ' not null' else '' end, ml._collection_vtype(c),
    c.ts_config, c.ts_config,
    case c.partition_by when 'tenant' then 'tenant, id' when 'time' then 'id, created_at' else 'id' end,
    case when c.metric = 'cosine'
         then format(', constraint %I check (embedding is null or %s.%s(embedding) > 0)', c.table_name || '_nonzero',
                     vs, case c.storage when 'halfvec' then 'l2_norm' else 'vector_norm' end) else '' end,
    case c.partition_by when 'tenant' then ' partition by list (tenant)'
                        when 'time' then ' partition by range (created_at)' else '' end);
  execute format('comment on table %s is %L', tbl, 'indb collection ' || c.name || ' (ml.create_collection)');
  if c.partition_by is not null then
    execute format('create table %I.%I partition of %s default', c.table_schema, c.table_name || '_default', tbl);
  end if;
  return tbl::regclass;
end $$;

-- step 3: text, metadata, time and ANN indexes
create or replace function ml._collection_make_indexes(c ml.collections) returns void
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  tbl text := ml._collection_table(c);
begin
  execute format('create index %I on %s using gin (tsv)', c.table_name || '_tsv', tbl);
  -- the leakproof operator class (migration 0024): metadata filters keep this index under row security
  execute format('create index %I on %s using gin (metadata ml.jsonb_tenant_path_ops)', c.table_name || '_metadata', tbl);
  if c.partition_by = 'time' then
    execute format('create index %I on %s (created_at)', c.table_name || '_created_at', tbl);
  end if;
  if c.index_type = 'hnsw' and c.partition_by = 'time' then
    -- per-partition indexes (not on the parent), so that old partitions can be tiered (ml.tier_partition)
    execute ml._collection_ann_ddl(c, format('%I.%I', c.table_schema, c.table_name || '_default'), c.table_name || '_default_ann');
  elsif c.index_type = 'hnsw' then
    execute ml._collection_ann_ddl(c, tbl, c.table_name || '_ann');
  end if;
end $$;

-- step 4: statement-level triggers with transition tables (one model call per statement, BM25 statistics)
create or replace function ml._collection_make_triggers(c ml.collections) returns void
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  tbl text := ml._collection_table(c);
  ev text;
begin
  foreach ev in array array['insert', 'update', 'delete', 'truncate'] loop
    execute format('create trigger %I after %s on %s %s for each statement execute function ml._collection_trigger(%s)',
                   'collection_' || ev, ev, tbl,
                   case ev when 'insert' then 'referencing new table as new_rows'
                           when 'update' then 'referencing old table as old_rows new table as new_rows'
                           when 'delete' then 'referencing old table as old_rows' else '' end, c.id);
  end loop;
end $$;

create or replace function ml._create_collection(
    name text, model text, index text, metric text, partition_by text, options jsonb, shards text[] default null)
returns jsonb
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
-- SECURITY DEFINER: the table and everything on it belong to indb_owner, so no caller can attach code to
-- what indb's functions later write (SECURITY.md, "Ownership"). The catalog row gets the caller's tenant.
declare
  c ml.collections;
  dims int;
  tbl regclass;
begin
  options := coalesce(options, '{}');
  dims := ml._collection_check_args(name, model, index, metric, partition_by, options);
  if shards is not null then
    perform ml._shard_check_args(shards, partition_by);
  end if;
  insert into ml.collections (name, table_name, model, dimensions, index_type, metric, storage, binary_rerank,
                              partition_by, ts_config, rls, options, shards)
  values (name, name, model, dims, index, metric,
          case when ml._opt_bool(options, 'halfvec', false) then 'halfvec' else 'vector' end,
          ml._opt_bool(options, 'binary_rerank', false), partition_by,
          coalesce(options ->> 'text_search_config', 'english'), true, options, shards)
  on conflict do nothing
  returning * into c;
  if c.id is null then   -- another tenant's collection: row-level security hid it from the checks above
    raise exception 'collection name "%" is taken by another tenant', name using errcode = '42710',
      hint = 'collection names are unique across tenants (each is a table collections.<name>); pick another name';
  end if;
  insert into ml.collection_stats (collection_id, bm25_indexed) values (c.id, true);
  if c.shards is not null then
    -- a plain indb collection on each shard, and here the parent with one foreign partition per shard
    tbl := ml._shard_make_collection(c, options);
  else
    tbl := ml._collection_make_table(c);
    perform ml._collection_make_indexes(c);
    perform ml._collection_make_triggers(c);
    perform ml._search_static_set(c, true);   -- its filter-free ANN search, planned once per session (sql/220)
  end if;
  -- readers and apps search, writers write (a data table); the one tenant policy
  perform ml._apply_table_grants(tbl);
  perform ml._apply_tenant_policies(tbl);
  return jsonb_build_object('collection', c.name, 'table_name', tbl::text, 'model', c.model, 'dimensions', dims,
                            'index', c.index_type, 'metric', c.metric, 'storage', c.storage,
                            'binary_rerank', c.binary_rerank, 'partition_by', c.partition_by,
                            'text_search_config', c.ts_config, 'tenant', c.tenant, 'shards', to_jsonb(c.shards));
end $$;
comment on function ml._create_collection(text, text, text, text, text, jsonb, text[]) is
  'internal (definer): ml.create_collection''s work; its result as one jsonb object';

create or replace function ml.create_collection(
    name text,
    model text default 'all-MiniLM-L6-v2',
    index text default 'hnsw',
    metric text default 'cosine',
    partition_by text default null,
    options jsonb default '{}',
    shards text[] default null)
returns table(collection text, table_name regclass, model text, dimensions int, index text, metric text, storage text,
              binary_rerank boolean, partition_by text, text_search_config text, tenant text, shards text[])
language sql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
  select r.collection, r.table_name, r.model, r.dimensions, r.index, r.metric, r.storage, r.binary_rerank,
         r.partition_by, r.text_search_config, r.tenant, r.shards
    from jsonb_to_record(ml._create_collection($1, $2, $3, $4, $5, $6, $7))
         as r(collection text, table_name regclass, model text, dimensions int, index text, metric text, storage text,
              binary_rerank boolean, partition_by text, text_search_config text, tenant text, shards text[])
$$;
comment on function ml.create_collection(text, text, text, text, text, jsonb, text[]) is
  'create a vector collection: table collections.<name> with embedding, tsvector, metadata, ANN and GIN indexes; it belongs to the caller''s tenant; shards => array[servers of ml.add_shard]: hash-partitioned by id over them (a plain collection on each); one row: what was made';

create or replace function ml.drop_collection(name text, if_exists boolean default false) returns boolean
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections;
begin
  if if_exists and not exists (select 1 from ml.collections x where x.name = drop_collection.name) then
    return false;
  end if;
  c := ml._collection_for_write(name);
  if c.shards is not null then
    perform ml._shard_drop_collection(c);  -- the shards' collections first: an unreachable shard stops the drop
  end if;
  if to_regclass(ml._collection_table(c)) is not null then
    execute format('drop table %s cascade', ml._assert_indb_owned(to_regclass(ml._collection_table(c))));
  end if;
  perform ml._search_static_set(c, false);
  delete from ml.collections where id = c.id;
  return true;
end $$;
comment on function ml.drop_collection(text, boolean) is 'drop a collection: its table, partitions, indexes and statistics';

-- ---------------------------------------------------------------------------------------------- add_documents

-- every document checked before anything is written
create or replace function ml._documents_check(c ml.collections, docs jsonb) returns void
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  bad jsonb;
  bad_id text;
  n int;
begin
  if docs is null or jsonb_typeof(docs) <> 'array' then
    raise exception 'docs must be a JSON array of objects, got %', coalesce(jsonb_typeof(docs), 'null')
      using errcode = '22023', hint = 'e.g. ''[{"id": "a", "content": "...", "metadata": {"k": 1}}]''';
  end if;
  select d, i into bad, n from jsonb_array_elements(docs) with ordinality x(d, i)
  where jsonb_typeof(d) <> 'object' or not (d ? 'id') or jsonb_typeof(d -> 'id') not in ('string', 'number')
     or (d ->> 'id') = ''
  limit 1;
  if bad is not null then
    raise exception 'document % of docs has no usable "id": %', n, ml._clip(bad::text, 200)
      using errcode = '22023', hint = 'every document is an object with a non-empty string "id"';
  end if;
  select d, i into bad, n from jsonb_array_elements(docs) with ordinality x(d, i)
  where exists (select 1 from jsonb_object_keys(d) k where k not in ('id', 'content', 'metadata', 'tenant', 'created_at', 'embedding'))
     or (d ? 'content' and jsonb_typeof(d -> 'content') not in ('string', 'null'))
     or (d ? 'metadata' and jsonb_typeof(d -> 'metadata') not in ('object', 'null'))
     or (d ? 'tenant' and jsonb_typeof(d -> 'tenant') not in ('string', 'null'))
     or (d ? 'created_at' and jsonb_typeof(d -> 'created_at') not in ('string', 'null'))
     or (d ? 'embedding' and jsonb_typeof(d -> 'embedding') not in ('array', 'null'))
  limit 1;
  if bad is not null then
    raise exception 'document % (id %) has an unknown key or a value of the wrong type', n, bad -> 'id'
      using errcode = '22023', detail = ml._clip(bad::text, 300),
            hint = 'keys: id (string), content (string), metadata (object), tenant (string), created_at (ISO timestamp string), embedding (array of numbers)';
  end if;
  select d ->> 'id' into bad_id from jsonb_array_elements(docs) d
  group by d ->> 'id', case when c.partition_by = 'tenant' then coalesce(d ->> 'tenant', ml.current_tenant()) end
  having count(*) > 1 limit 1;
  if bad_id is not null then
    raise exception 'document id % appears more than once in docs', bad_id using errcode = '22023',
      hint = 'each call writes a document once; merge the duplicates';
  end if;
  select d ->> 'id', jsonb_array_length(d -> 'embedding') into bad_id, n from jsonb_array_elements(docs) d
  where jsonb_typeof(d -> 'embedding') = 'array' and jsonb_array_length(d -> 'embedding') <> c.dimensions limit 1;
  if bad_id is not null then
    raise exception 'document % has an embedding of % dimensions; collection % stores %', bad_id, n, c.name, c.dimensions
      using errcode = '22023';
  end if;
  if c.metric = 'cosine' then
    select d ->> 'id' into bad_id from jsonb_array_elements(docs) d
    where jsonb_typeof(d -> 'embedding') = 'array'
      and not exists (select 1 from jsonb_array_elements(d -> 'embedding') x
                       where jsonb_typeof(x) <> 'number' or (x #>> '{}')::float8 <> 0)
    limit 1;
    if bad_id is not null then
      raise exception 'document % has a zero embedding: its cosine similarity to anything is undefined', bad_id
        using errcode = '22023', hint = 'give a non-zero vector, or leave "embedding" out so that the model embeds the content';
    end if;
  end if;
  if c.partition_by = 'tenant' and exists (select 1 from jsonb_array_elements(docs) d
                                           where coalesce(d ->> 'tenant', ml.current_tenant()) is null) then
    raise exception 'collection % is partitioned by tenant: every document needs a "tenant"', c.name
      using errcode = '22023', hint = 'set "tenant" in each document, or SET indb.tenant = ''...'' for the session';
  end if;
end $$;

-- The documents that bring no embedding get one from the collection's model through the one embed-changed-rows
-- core, one model call per 256 documents. Runs before the collection's write lock is taken, so that concurrent
-- writers embed in parallel.
create or replace function ml._documents_embed(c ml.collections, docs jsonb) returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  n int := jsonb_array_length(docs);
  chunk constant int := 256;
  start int := 0;
  texts text[];
  first_id text;
begin
  select d ->> 'id' into first_id from jsonb_array_elements(docs) d
   where nullif(d -> 'embedding', 'null'::jsonb) is null and nullif(d ->> 'content', '') is not null limit 1;
  if first_id is null then
    if n > chunk then
      perform ml._report_progress('add_documents', c.name, 'embedding', n, n, 'documents');
    end if;
    return docs;
  end if;
  if c.model is null then
    raise exception 'collection "%" has no model: document % came without an embedding', c.name, quote_literal(first_id)
      using errcode = '22023', hint = 'give every document an "embedding" of ' || c.dimensions || ' numbers';
  end if;
  while start < n loop
    if n > chunk then
      perform ml._report_progress('add_documents', c.name, 'embedding', start, n, 'documents');
    end if;
    select array_agg(case when nullif(d -> 'embedding', 'null'::jsonb) is null then d ->> 'content' end order by i)
      into texts from jsonb_array_elements(docs) with ordinality x(d, i) where i > start and i <= start + chunk;
    select jsonb_agg(case when e.ord is null then d else jsonb_set(d, '{embedding}', e.embedding::text::jsonb) end order by i)
      into docs
      from jsonb_array_elements(docs) with ordinality x(d, i)
      left join ml._embed_changed(c.model, texts) e on e.ord = i - start;
    start := start + chunk;
    if n > chunk then
      perform ml._report_progress('add_documents', c.name, 'embedding', least(start, n), n, 'documents');
    end if;
  end loop;
  return docs;
end $$;

-- One batch of documents (validated, embedded), upserted in key order under the collection's write lock.
-- INSERT ... ON CONFLICT is what makes concurrent calls with overlapping ids safe (the conflict is resolved,
-- not raised as 23505), and the order (one lock per collection, then rows by key) is what keeps them free of
-- deadlocks. A document without created_at keeps the one it has, else now(): in a time-partitioned collection
-- it lands in the current month's partition, never in the default one; one that moves to another month is
-- deleted from its old one (rows are keyed by id and created_at there).
create or replace function ml._documents_write(c ml.collections, batch jsonb) returns bigint
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  tbl text := ml._collection_table(c);
  ids text[]; contents text[]; metas jsonb[]; tenants text[]; times timestamptz[]; embs text[];
  n bigint;
begin
  select array_agg(d ->> 'id' order by i), array_agg(d ->> 'content' order by i),
         array_agg(coalesce(nullif(d -> 'metadata', 'null'::jsonb), '{}'::jsonb) order by i),
         array_agg(coalesce(d ->> 'tenant', ml.current_tenant()) order by i),
         array_agg((d ->> 'created_at')::timestamptz order by i),
         array_agg(nullif(d -> 'embedding', 'null'::jsonb)::text order by i)
    into ids, contents, metas, tenants, times, embs
    from jsonb_array_elements(batch) with ordinality x(d, i);
  execute format('select array_agg(coalesce(v.t, (select o.created_at from %s o where o.id = v.id and (%L or '
                 'o.tenant is not distinct from v.tn) order by o.created_at desc limit 1), now()) order by v.o) '
                 'from unnest($1::text[], $2::timestamptz[], $3::text[]) with ordinality v(id, t, tn, o)',
                 tbl, c.partition_by is distinct from 'tenant')
    into times using ids, times, tenants;
  if c.partition_by = 'time' then
    execute format('delete from %s t using unnest($1::text[], $2::timestamptz[]) v(id, created_at) '
                   'where t.id = v.id and t.created_at <> v.created_at', tbl) using ids, times;
  end if;
  if c.partition_by is not null then
    perform ml.ensure_collection_partitions(c.name, tenants, times);
  end if;
  execute format('insert into %s as t (id, content, metadata, tenant, created_at, embedding) '
                 'select v.id, v.content, v.metadata, v.tenant, v.created_at, v.e::%s '
                 'from unnest($1::text[], $2::text[], $3::jsonb[], $4::text[], $5::timestamptz[], $6::text[]) '
                 '  as v(id, content, metadata, tenant, created_at, e) order by %s '
                 'on conflict (%s) do update set content = excluded.content, metadata = excluded.metadata, '
                 'tenant = excluded.tenant, created_at = excluded.created_at, embedding = excluded.embedding',
                 tbl, ml._collection_vtype(c),
                 case c.partition_by when 'tenant' then 'v.tenant, v.id' else 'v.id' end,
                 case c.partition_by when 'tenant' then 'tenant, id' when 'time' then 'id, created_at' else 'id' end)
    using ids, contents, metas, tenants, times, embs;
  get diagnostics n = row_count;
  return n;
end $$;

-- raises the error for the first document whose embedding holds an element that is not a JSON number, or a
-- number out of the range of the collection's storage (vector: float4, halfvec: float2); nothing if none does
create or replace function ml._documents_bad_vector(c ml.collections, batch jsonb) returns void
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  lim numeric := case c.storage when 'halfvec' then 65520 else 3.4028236e38 end;
  bad record;
begin
  select d ->> 'id' as id, x.i, x.v into bad
    from jsonb_array_elements(batch) d
   cross join lateral jsonb_array_elements(case when jsonb_typeof(d -> 'embedding') = 'array' then d -> 'embedding'
                                                else '[]' end) with ordinality x(v, i)
   where jsonb_typeof(x.v) <> 'number' or abs(x.v::numeric) >= lim
   limit 1;
  if found then
    raise exception 'document % has an embedding whose element % is %', bad.id, bad.i,
      case when jsonb_typeof(bad.v) <> 'number' then 'not a number: ' || ml._clip(bad.v::text, 40)
           else format('out of the range of %s (%s)', c.storage, btrim(to_char(bad.v::numeric, '9.999EEEE'))) end
      using errcode = '22023',
      hint = case when jsonb_typeof(bad.v) <> 'number' then 'an embedding is an array of JSON numbers (JSON has no NaN or Infinity)'
                  else format('%s holds numbers of magnitude below %s', c.storage,
                              case c.storage when 'halfvec' then '65,504' else '3.4e38' end) end;
  end if;
end $$;

-- the lock every ml.add_documents (and partition maker) of a collection takes before it writes
create or replace function ml._collection_write_lock(c ml.collections) returns void
language sql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$ select pg_advisory_xact_lock(hashtext('indb.collection'), c.id::int) $$;

-- The documents (checked, embedded) written in batches of 256. A call of more than 256 documents reports its
-- progress in ml.progress (embedding, waiting for the write lock, writing).
create or replace function ml._documents_add(c ml.collections, docs jsonb) returns bigint
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  n int := jsonb_array_length(docs);
  chunk constant int := 256;
  start int := 0;
  written bigint := 0;
begin
  docs := ml._documents_embed(c, docs);
  -- all of the documents in key order (batches too), under the collection's write lock
  if n > chunk then
    perform ml._report_progress('add_documents', c.name, 'waiting for the collection''s write lock', 0, n, 'documents');
  end if;
  perform ml._collection_write_lock(c);
  select jsonb_agg(d order by case when c.partition_by = 'tenant' then coalesce(d ->> 'tenant', ml.current_tenant()) end,
                              d ->> 'id')
    into docs from jsonb_array_elements(docs) d;
  while start < n loop
    if n > chunk then
      perform ml._report_progress('add_documents', c.name, 'writing', start, n, 'documents');
    end if;
    written := written + ml._documents_write(c, (select jsonb_agg(d order by i) from jsonb_array_elements(docs)
                                                   with ordinality x(d, i) where i > start and i <= start + chunk));
    start := start + chunk;
  end loop;
  if c.index_type = 'ivfflat' and not exists (select 1 from ml._collection_ann_indexes(c)) then
    perform ml._reindex_collection(c.name, false);
  end if;
  return written;
end $$;

create or replace function ml.add_documents(collection text, docs jsonb) returns bigint
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections := ml._collection(collection);
  written bigint;
begin
  perform ml._documents_check(c, docs);
  if jsonb_array_length(docs) = 0 then
    return 0;
  elsif c.shards is not null then
    return ml._shard_add_documents(c.name, docs);  -- each shard upserts (and embeds) its own documents
  end if;
  -- pgvector refuses a bad vector ("invalid input syntax", or a 300-digit number "out of range") without saying
  -- which document: the handlers name it and the element, looked for only after an error. A block is a
  -- subtransaction, and more than 64 in one transaction slow every other session's snapshots: one per call, not
  -- per chunk, and none for a small call without vectors of its own (the common one: a loop of single-document
  -- calls in one transaction)
  if jsonb_array_length(docs) <= 256 then
    if not exists (select 1 from jsonb_array_elements(docs) d where jsonb_typeof(d -> 'embedding') = 'array') then
      return ml._documents_add(c, docs);
    end if;
    begin
      return ml._documents_add(c, docs);
    exception when invalid_text_representation or numeric_value_out_of_range then
      perform ml._documents_bad_vector(c, docs);
      raise;
    end;
  end if;
  begin
    written := ml._documents_add(c, docs);
    perform ml._report_progress(null, null, null);
  exception when others then
    perform ml._report_progress(null, null, null);  -- a failed call leaves no progress behind
    if sqlstate in ('22P02', '22003') then
      perform ml._documents_bad_vector(c, docs);
    end if;
    raise;
  end;
  return written;
end $$;
comment on function ml.add_documents(text, jsonb) is
  'upsert documents [{id, content, metadata, tenant, created_at, embedding}] into a collection (safe for concurrent writers); returns rows written';

-- ---------------------------------------------------------------------------------------------- maintenance

-- Rebuild the ANN index (or each partition's), reporting phases and rows in ml.progress. CREATE INDEX
-- CONCURRENTLY cannot run inside a function: the new index is built beside the old one (searches keep using the
-- old one, writes wait) and swapped; for a build without blocking writes, run REINDEX INDEX CONCURRENTLY from psql.
create or replace function ml._reindex_collection(name text, concurrently boolean) returns jsonb
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections := ml._collection_for_write(name);
  tbl text := ml._assert_indb_owned(to_regclass(ml._collection_table(c)))::text;
  rows bigint;
  lists int;
  t0 timestamptz := clock_timestamp();
  r record;
  built text[] := '{}';
  done bigint := 0;
  n int;
  i int := 0;
begin
  perform ml._refuse_sharded(c, 'ml.reindex_collection');
  if c.index_type = 'none' then
    raise exception 'collection % has no ANN index (index => none): nothing to rebuild', c.name using errcode = '22023',
      hint = 'searches of it are exact scans; make a collection with index => ''hnsw'' or ''ivfflat'' for an ANN index';
  end if;
  perform ml._report_progress('reindex_collection', c.name, 'counting rows', 0, null, 'rows');
  execute format('select count(*) from %s where embedding is not null', tbl) into rows;
  if c.index_type = 'ivfflat' then
    -- pgvector's guidance: lists = rows / 1000 up to 1M rows, sqrt(rows) above
    lists := coalesce(ml._opt_int(c.options, 'lists', null, 1, 32768),
                      greatest(1, case when rows <= 1000000 then rows / 1000 else sqrt(rows)::int end));
    if rows = 0 then
      raise notice 'indb: collection % is empty: the ivfflat index is built on the first ml.add_documents', c.name;
      perform ml._report_progress(null, null, null);
      return jsonb_build_object('collection', c.name, 'index', c.index_type, 'rows', 0, 'built', '[]'::jsonb,
                                'seconds', round(extract(epoch from clock_timestamp() - t0)::numeric, 3));
    end if;
  end if;
  if c.partition_by = 'time' then
    select count(*) into n from ml._collection_ann_indexes(c);
    for r in select x.index_name, x.table_name, greatest(k.reltuples, 0)::bigint as est
               from ml._collection_ann_indexes(c) x
               join pg_class k on k.oid = format('%I.%I', c.table_schema, x.table_name)::regclass
              order by x.index_name loop
      i := i + 1;
      perform ml._report_progress('reindex_collection', c.name, format('building index %s (%s of %s)', r.index_name, i, n),
                                  done, rows, 'rows');
      perform ml._assert_indb_owned(format('%I.%I', c.table_schema, r.table_name)::regclass);
      execute format('drop index %I.%I', c.table_schema, r.index_name);
      execute ml._collection_ann_ddl(c, format('%I.%I', c.table_schema, r.table_name), r.index_name, lists);
      built := built || r.index_name;
      done := least(done + r.est, rows);
    end loop;
  else
    perform ml._report_progress('reindex_collection', c.name, format('building index %s', c.table_name || '_ann'),
                                0, rows, 'rows');
    execute ml._collection_ann_ddl(c, tbl, c.table_name || '_ann_new', lists);
    execute format('drop index if exists %I.%I', c.table_schema, c.table_name || '_ann');
    execute format('alter index %I.%I rename to %I', c.table_schema, c.table_name || '_ann_new', c.table_name || '_ann');
    built := built || (c.table_name || '_ann');
  end if;
  perform ml._report_progress('reindex_collection', c.name, 'analyzing', rows, rows, 'rows');
  execute format('analyze %s', tbl);
  perform ml._report_progress(null, null, null);
  return jsonb_build_object('collection', c.name, 'index', c.index_type, 'rows', rows, 'lists', lists,
                            'built', to_jsonb(built), 'seconds', round(extract(epoch from clock_timestamp() - t0)::numeric, 3));
exception when others then
  perform ml._report_progress(null, null, null);  -- a failed call leaves no progress behind
  raise;
end $$;
comment on function ml._reindex_collection(text, boolean) is
  'internal (definer): ml.reindex_collection''s work; its result as one jsonb object';

create or replace function ml.reindex_collection(name text, concurrently boolean default true)
returns table(collection text, index text, rows bigint, lists int, built text[], seconds float8)
language sql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
  select r.collection, r.index, r.rows, r.lists, r.built, r.seconds
    from jsonb_to_record(ml._reindex_collection($1, $2))
         as r(collection text, index text, rows bigint, lists int, built text[], seconds float8)
$$;
comment on function ml.reindex_collection(text, boolean) is
  'rebuild the ANN index of a collection beside the old one, then swap (ivfflat: lists from the current row count); progress in ml.progress; one row: rows indexed, lists, indexes built, seconds';

create or replace function ml._collection_health(name text, sample int) returns jsonb
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
  perform ml._refuse_sharded(c, 'ml.collection_health');
  if sample is null or sample < 0 or sample > 1000 then
    raise exception 'sample must be between 0 and 1000, got %', coalesce(sample::text, 'NULL') using errcode = '22023',
      hint = 'the number of stored vectors used as queries to measure recall@10; 0 skips the measurement';
  end if;
  execute format('select count(*), count(*) filter (where embedding is null and content <> '''') from %s', tbl) into nrows, missing;
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
    for q in execute format('select embedding::@VS@.vector as e from %s where embedding is not null order by random() limit $1', tbl) using sample loop
      select array_agg(s.id) into approx from ml._search(c, q.e, 10, null, '{}') s;
      select array_agg(s.id) into exact from ml._search(c, q.e, 10, null, '{"exact": true}') s;
      hits := hits + (select count(*) from unnest(approx) a where a = any(exact));
      total := total + coalesce(cardinality(exact), 0);
    end loop;
  end if;
  return jsonb_build_object(
    'collection', c.name, 'table_name', tbl, 'rows', nrows, 'rows_missing_embedding', missing,
    'index', c.index_type, 'metric', c.metric, 'storage', c.storage, 'binary_rerank', c.binary_rerank,
    'partition_by', c.partition_by, 'partitions', parts, 'indexes', idx,
    'long_text', ml._long_text_policy(null, 0, null, (select m.max_tokens from ml.embedding_models m where m.name = c.model)),
    'table_bytes', pg_total_relation_size(tbl::regclass),
    'dead_tuples', coalesce((select sum(n_dead_tup) from pg_stat_user_tables where relid = tbl::regclass
                              or relid in (select inhrelid from pg_inherits where inhparent = tbl::regclass)), 0),
    'bm25_documents', st.n_docs,
    'bm25_avg_length', case when st.n_docs > 0 then round(st.total_len::numeric / st.n_docs, 2) end,
    'bm25_terms', (select count(*) from ml.collection_terms t where t.collection_id = c.id),
    'sampled_recall_at_10', case when total > 0 then round(hits::numeric / total, 4) end,
    'recall_sample_queries', case when total > 0 then sample end);
end $$;
comment on function ml._collection_health(text, int) is 'internal: ml.collection_health''s result as one jsonb object';

-- One row of fixed columns; the partitions and the indexes, lists whose length varies, are jsonb arrays of
-- objects (partition, bound, rows_estimate, dead_tuples, bytes) and (index, am, bytes)
create or replace function ml.collection_health(name text, sample int default 20)
returns table(collection text, table_name regclass, rows bigint, rows_missing_embedding bigint, index text,
              metric text, storage text, binary_rerank boolean, partition_by text, long_text text, table_bytes bigint,
              dead_tuples bigint, bm25_documents bigint, bm25_avg_length float8, bm25_terms bigint,
              sampled_recall_at_10 float8, recall_sample_queries int, partitions jsonb, indexes jsonb)
language sql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
  select r.collection, r.table_name, r.rows, r.rows_missing_embedding, r.index, r.metric, r.storage, r.binary_rerank,
         r.partition_by, r.long_text, r.table_bytes, r.dead_tuples, r.bm25_documents, r.bm25_avg_length, r.bm25_terms,
         r.sampled_recall_at_10, r.recall_sample_queries, r.partitions, r.indexes
    from jsonb_to_record(ml._collection_health($1, $2))
         as r(collection text, table_name regclass, rows bigint, rows_missing_embedding bigint, index text,
              metric text, storage text, binary_rerank boolean, partition_by text, long_text text, table_bytes bigint,
              dead_tuples bigint, bm25_documents bigint, bm25_avg_length float8, bm25_terms bigint,
              sampled_recall_at_10 float8, recall_sample_queries int, partitions jsonb, indexes jsonb)
$$;
comment on function ml.collection_health(text, int) is
  'one row: rows, rows without an embedding, table size, dead tuples, BM25 statistics, sampled recall@10 of the ANN index against an exact scan; partitions and indexes as jsonb lists';

create or replace function ml._tier_partition(collection text, older_than interval, index text)
returns jsonb
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections := ml._collection_for_write(collection);
  r record;
  done jsonb := '[]';
  upper_ts timestamptz;
  nrows bigint;
begin
  if c.partition_by is distinct from 'time' then
    raise exception 'collection % is not partitioned by time', c.name using errcode = '22023',
      hint = 'tiering applies to collections made with partition_by => ''time''';
  end if;
  if older_than is null then
    raise exception 'older_than must not be NULL' using errcode = '22004',
      hint = 'pass an interval, e.g. older_than => ''6 months''';
  end if;
  if index is null or index not in ('none', 'ivfflat') then
    raise exception 'unknown tier index %', coalesce(quote_literal(index), 'null') using errcode = '22023',
      hint = '''none'' (exact scan, no index memory) or ''ivfflat'' (small, cheap to build)';
  end if;
  for r in select p.oid::regclass as rel, p.relname::text as part, pg_get_expr(p.relpartbound, p.oid) as bound
           from pg_inherits i join pg_class p on p.oid = i.inhrelid
           where i.inhparent = ml._assert_indb_owned(to_regclass(ml._collection_table(c)))
             and p.relname <> c.table_name || '_default'
           order by p.relname loop
    upper_ts := substring(r.bound from 'TO \(''([^'']+)''\)')::timestamptz;
    continue when upper_ts is null or upper_ts > now() - older_than;
    perform ml._assert_indb_owned(r.rel);
    execute format('drop index if exists %I.%I', c.table_schema, r.part || '_ann');
    if index = 'ivfflat' then
      execute format('select count(*) from %s', r.rel) into nrows;
      execute format('create index %I on %s using ivfflat (embedding %s) with (lists = %s)', r.part || '_ann', r.rel,
                     ml._collection_opclass(c),
                     greatest(1, nrows / 1000));
    end if;
    done := done || jsonb_build_object('collection', c.name, 'partition', r.part, 'index', index);
  end loop;
  return done;
end $$;
comment on function ml._tier_partition(text, interval, text) is
  'internal (definer): ml.tier_partition''s work; one jsonb object per partition tiered';

create or replace function ml.tier_partition(collection text, older_than interval default '3 months', index text default 'none')
returns table(collection text, partition text, index text)
language sql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
  select r.collection, r.partition, r.index
    from jsonb_to_recordset(ml._tier_partition($1, $2, $3)) as r(collection text, partition text, index text)
$$;
comment on function ml.tier_partition(text, interval, text) is
  'switch monthly partitions older than older_than to a cheaper index (none: exact scan; ivfflat); one row per partition switched';
