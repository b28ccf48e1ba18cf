-- Vector collections and hybrid search (issue 4).
-- A collection is a table collections.<name> (id, content, metadata, tenant, created_at, embedding, tsv, doc_len)
-- with an ANN index (HNSW / IVFFlat / none), a GIN index on tsv and on metadata, optional LIST partitions per
-- tenant (row-level security) or RANGE partitions per month, and statement-level triggers that embed new or
-- changed content in one model call per statement and keep the BM25 statistics current.
-- Search functions are plpgsql (latency matters); the filter translator is Python (unit-tested).

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

-- the catalog row of a collection the caller may change (its tenant's, or shared ones when it has no tenant;
-- admins: any), or 42501 before anything is touched
create or replace function ml._collection_for_write(collection text) returns ml.collections
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections := ml._collection(collection);
begin
  if c.tenant is distinct from ml.current_tenant() and not ml.is_admin() then
    raise exception 'collection "%" belongs to %, not to this session''s tenant', c.name,
      coalesce('tenant ' || quote_literal(c.tenant), 'no tenant (it is shared)') using errcode = '42501',
      hint = 'only its tenant (or an indb_admin) may change or drop it';
  end if;
  return c;
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

-- the schema of collection tables: searching needs USAGE, creating a collection needs CREATE (the cluster
-- roles come from sql/005-roles.sql; on a cluster that has them already this applies on first install)
do $$
begin
  if exists (select 1 from pg_roles where rolname = 'indb_app') then
    grant usage on schema collections to indb_app, indb_reader, indb_writer, indb_admin;
    grant create on schema collections to indb_writer, indb_admin;
  end if;
end $$;

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
  -- a caller makes partitions only for the tenant it acts for (admins: any); the rows it then writes are
  -- checked again by the table's tenant policy
  if c.partition_by = 'tenant' and not ml.is_admin() then
    select x into bad from unnest(tenants) x where x is distinct from ml.current_tenant() limit 1;
    if found then
      raise exception 'tenant % is not this session''s tenant (%)', quote_literal(bad),
        coalesce('it acts for ' || quote_literal(ml.current_tenant()), 'it acts for no tenant')
        using errcode = '42501', hint = 'write documents of the tenant the session acts for (SET indb.tenant)';
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
