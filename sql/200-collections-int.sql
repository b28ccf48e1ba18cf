-- Vector collections, internals: the catalog row of a collection, SQL fragments, the statement trigger (BM25
-- statistics and embed-on-write through the one core, ml._embed_changed), partitions.
-- A collection is a table collections.<name> (id, content, metadata, tenant, created_at, embedding, tsv, doc_len)
-- owned by indb_owner, with an ANN index (HNSW / IVFFlat / none), a GIN index on tsv and on metadata, optional
-- LIST partitions per tenant or RANGE partitions per month, and statement-level triggers that embed new or
-- changed content in one model call per statement and keep the BM25 statistics current.
-- Search functions are plpgsql (latency matters); the filter translator is Python (unit-tested).
-- Every SECURITY DEFINER function here touches only indb_owner's tables (ml._assert_indb_owned at the point of use).

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

-- a numeric option (a JSON number: "NaN" or "Infinity" strings are refused) between lo and hi
create or replace function ml._opt_float(options jsonb, key text, dflt float8, lo float8, hi float8) returns float8
language plpgsql immutable parallel safe
as $$
declare
  v jsonb := options -> key;
  n float8;
begin
  if v is null or jsonb_typeof(v) = 'null' then return dflt; end if;
  if jsonb_typeof(v) <> 'number' then
    raise exception 'option % must be a number, got %', key, v::text using errcode = '22023',
      hint = format('a JSON number between %s and %s', lo, hi);
  end if;
  n := (v #>> '{}')::float8;
  if n < lo or n > hi then
    raise exception 'option % must be between % and %, got %', key, lo, hi, n using errcode = '22023';
  end if;
  return n;
end $$;

create or replace function ml.__filter_sql_py(filter jsonb, param int) returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import filters, errors
return errors.call(plpy, filters.translate_json, json.loads(filter) if filter is not None else None, param)
$$;
select ml._wrap_python('ml._filter_sql', 'ml.__filter_sql_py(jsonb, int)');
comment on function ml._filter_sql(jsonb, int) is 'internal: translate a jsonb filter into {"sql", "params"} referencing one jsonb parameter $param';

create or replace function ml.__model_dimensions_py(model text) returns int
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import embedding, errors
spec = errors.call(plpy, embedding.resolve, plpy, model)
if spec.dimensions:
    return spec.dimensions
vec = errors.call(plpy, embedding.embed_texts, plpy, spec, ['dimension probe'])
return len(vec[0])
$$;
select ml._wrap_python('ml._model_dimensions', 'ml.__model_dimensions_py(text)');
comment on function ml._model_dimensions(text) is 'internal: output dimensions of an embedding model';

-- ---------------------------------------------------------------------------------------------- catalog rows

create or replace function ml._collection(collection text) returns ml.collections
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections;
begin
  select * into c from ml.collections where name = collection;
  if not found then
    raise exception 'collection "%" does not exist', ml._clip(collection)
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
language sql stable parallel safe  -- stable as format() is, so that callers inline it
as $$ select format('%I.%I', c.table_schema, c.table_name) $$;

-- distance operator, score expression and ANN operator class for a collection
create or replace function ml._collection_op(c ml.collections) returns text
language sql immutable parallel safe
as $$ select case c.metric when 'cosine' then 'operator(@VS@.<=>)' when 'l2' then 'operator(@VS@.<->)'
                   else 'operator(@VS@.<#>)' end $$;

-- the ANN operator class of the collection's stored vectors for its metric (`"public".vector_cosine_ops`)
create or replace function ml._collection_opclass(c ml.collections) returns text
language sql immutable parallel safe
as $$ select '@VS@.' || c.storage || '_' || case c.metric when 'cosine' then 'cosine' when 'l2' then 'l2' else 'ip' end
             || '_ops' $$;

create or replace function ml._collection_vtype(c ml.collections) returns text
language sql stable parallel safe  -- stable as format() is, so that callers inline it
as $$ select format('@VS@.%s(%s)', c.storage, c.dimensions) $$;

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
    expr := format('(@VS@.binary_quantize(embedding)::bit(%s))', c.dimensions);
    opclass := '@VS@.bit_hamming_ops';
  else
    opclass := ml._collection_opclass(c);
  end if;
  if am = 'hnsw' then
    withs := format('m = %s, ef_construction = %s', ml._opt_int(c.options, 'm', 16, 2, 100),
                    ml._opt_int(c.options, 'ef_construction', 64, 4, 1000));
  else
    withs := format('lists = %s', coalesce(lists, ml._opt_int(c.options, 'lists', 100, 1, 32768)));
  end if;
  return format('create index %I on %s using %s (%s %s) with (%s)', index_name, target, am, expr, opclass, withs);
end $$;

-- ---------------------------------------------------------------------------------------------- the trigger

-- The catalog row of the collection a trigger fires for: visible to the writing session (a tenant's collection
-- takes rows only from its tenant and admins), and the trigger must fire on that collection's own table.
create or replace function ml._collection_for_trigger(cid text, rel regclass) returns ml.collections
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections;
begin
  select * into c from ml.collections where id = cid::bigint;
  if not found then
    raise exception 'table % belongs to a collection this session may not write', rel using errcode = '42501',
      detail = 'the collection belongs to a tenant this session does not act for',
      hint = 'write it as its tenant (SET indb.tenant), or as an indb_admin';
  end if;
  if rel is distinct from to_regclass(ml._collection_table(c)) then
    raise exception 'the trigger of collection "%" fires on %', c.name, rel using errcode = '42501',
      hint = 'collection triggers are made by ml.create_collection';
  end if;
  perform ml._assert_indb_owned(rel);
  return c;
end $$;

-- BM25 statistics: add a statement's delta (documents, tokens, document frequency per lexeme); dn null: reset.
-- Invoker: called by the trigger (as indb_owner); roles have no DML on the statistics.
create or replace function ml._collection_bm25_apply(c ml.collections, dn bigint, dl bigint, terms text[], deltas bigint[])
returns void
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
begin
  if dn is null then
    update ml.collection_stats set n_docs = 0, total_len = 0, updated_at = now() where collection_id = c.id;
    delete from ml.collection_terms where collection_id = c.id;
    return;
  end if;
  if terms is not null then
    -- in term order: concurrent writers of one collection lock the same rows in the same order
    insert into ml.collection_terms as ct (collection_id, term, df)
    select c.id, u.t, u.d from unnest(terms, deltas) u(t, d) where u.d <> 0 order by u.t
    on conflict (collection_id, term) do update set df = ct.df + excluded.df;
    delete from ml.collection_terms where collection_id = c.id and term = any(terms) and df <= 0;
  end if;
  if dn <> 0 or dl <> 0 then
    update ml.collection_stats set n_docs = n_docs + dn, total_len = total_len + dl, updated_at = now()
     where collection_id = c.id;
  end if;
end $$;

-- Embed the given rows through the one embed-changed-rows core (rows whose hash equals their old hash are
-- skipped) and store the vectors. Invoker: called by the trigger (as indb_owner). A statement of more than
-- 256 rows is embedded 256 rows per model call and reports its progress in ml.progress.
create or replace function ml._collection_embed(c ml.collections, rel regclass, ids text[], tenants text[],
                                                times timestamptz[], texts text[], hashes text[], olds text[])
returns void
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  n int := cardinality(ids);
  chunk constant int := 256;
  lo int := 1;
  sql text;
begin
  if c.model is null then
    raise exception 'collection "%" has no model: % document(s) came without an embedding (first id %)',
      c.name, n, quote_literal(ids[1])
      using errcode = '22023', hint = 'give every document an "embedding" of ' || c.dimensions || ' numbers';
  end if;
  -- LIMIT $8 (the texts given, which the function never exceeds) is there for the planner: a set-returning
  -- function is estimated at 1,000 rows, so a single-row write hash-joined a scan of the whole collection (3,000
  -- documents: 2 ms; it grows with the collection) instead of finding its row by the primary key
  sql := format('update %s t set embedding = e.embedding::%s '
                'from (select * from ml._embed_changed($1, $2, $3, $4) limit $8) e '
                'where t.id = ($5)[e.ord] and t.tenant is not distinct from ($6)[e.ord] and t.created_at = ($7)[e.ord]',
                ml._assert_indb_owned(rel), ml._collection_vtype(c));
  if n <= chunk then
    execute sql using c.model, texts, hashes, olds, ids, tenants, times, n;
    return;
  end if;
  begin
    while lo <= n loop
      perform ml._report_progress('collection write', c.name, 'embedding', lo - 1, n, 'rows');
      execute sql using c.model, texts[lo:lo + chunk - 1], hashes[lo:lo + chunk - 1], olds[lo:lo + chunk - 1],
                        ids[lo:lo + chunk - 1], tenants[lo:lo + chunk - 1], times[lo:lo + chunk - 1],
                        least(chunk, n - lo + 1);
      lo := lo + chunk;
    end loop;
    perform ml._report_progress(null, null, null);
  exception when others then
    perform ml._report_progress(null, null, null);
    raise;
  end;
end $$;

-- Statement trigger of collection tables (argument: the collection id). SECURITY DEFINER: it writes the BM25
-- statistics (which no role writes directly) and the embeddings. It reads only its transition tables, of a
-- table indb_owner owns, after ml._collection_for_trigger checked which table it fires on.
create or replace function ml._collection_trigger() returns trigger
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections := ml._collection_for_trigger(TG_ARGV[0], TG_RELID);
  whole constant text := ml._chunking_tag(null, 0, null);
  dn bigint := 0;
  dl bigint := 0;
  terms text[];
  deltas bigint[];
  ids text[];
  tenants text[];
  times timestamptz[];
  texts text[];
  hashes text[];
  olds text[];
  pair_ids text[];
  pair_tenants text[];
  pair_times timestamptz[];
  pair_tsvs tsvector[];
  pair_dls int[];
  pair_sides int[];
begin
  if TG_OP = 'TRUNCATE' then
    perform ml._collection_bm25_apply(c, null, null, null, null);
    delete from ml.bm25_postings where collection_id = c.id;
    delete from ml.bm25_delta where collection_id = c.id;
    delete from ml.bm25_deleted where collection_id = c.id;
    delete from ml.bm25_docs where collection_id = c.id;
    return null;
  end if;
  -- BM25 statistics: the delta of this statement
  if TG_OP = 'INSERT' then
    select count(*), coalesce(sum(doc_len), 0) into dn, dl from new_rows;
    select array_agg(d.lexeme order by d.lexeme), array_agg(d.n order by d.lexeme) into terms, deltas
      from (select u.lexeme, count(*) n from new_rows r, unnest(r.tsv) u group by u.lexeme) d;
  elsif TG_OP = 'DELETE' then
    select -count(*), -coalesce(sum(doc_len), 0) into dn, dl from old_rows;
    select array_agg(d.lexeme order by d.lexeme), array_agg(-d.n order by d.lexeme) into terms, deltas
      from (select u.lexeme, count(*) n from old_rows r, unnest(r.tsv) u group by u.lexeme) d;
  else
    select (select count(*) from new_rows) - (select count(*) from old_rows),
           (select coalesce(sum(doc_len), 0) from new_rows) - (select coalesce(sum(doc_len), 0) from old_rows)
      into dn, dl;
    select array_agg(d.lexeme order by d.lexeme), array_agg(d.n order by d.lexeme) into terms, deltas
      from (select x.lexeme, sum(x.n)::bigint n from (
              select u.lexeme, 1 n from new_rows r, unnest(r.tsv) u
              union all
              select u.lexeme, -1 from old_rows r, unnest(r.tsv) u) x
            group by x.lexeme having sum(x.n) <> 0) d;
  end if;
  perform ml._collection_bm25_apply(c, dn, dl, terms, deltas);
  -- the BM25 index (sql/230): a tombstone (with its lexemes) for each row that left or whose text changed,
  -- delta postings for each row that came or whose text changed; ml._bm25_merge folds them in later
  if TG_OP = 'DELETE' then
    with gone as (
      delete from ml.bm25_docs d using old_rows o
       where d.collection_id = c.id and d.id = o.id and d.tenant is not distinct from o.tenant
         and d.created_at = o.created_at
      returning d.doc, o.tsv)
    insert into ml.bm25_deleted (collection_id, doc, terms)
    select c.id, g.doc, tsvector_to_array(g.tsv) from gone g;
  elsif TG_OP = 'UPDATE' then
    -- Old and new rows are paired by grouping them on (key, text), never by joining the two transition tables:
    -- the planner may not know their sizes (a plan is kept for the session, made at its first call, and an
    -- INSERT ... ON CONFLICT fires this with both empty), and a nested loop over both is quadratic (8,000 rows:
    -- 35 s). side -1: the row left or its text changed; 1: it came or its text changed; 0: unchanged.
    select array_agg(p.id), array_agg(p.tenant), array_agg(p.created_at), array_agg(p.tsv), array_agg(p.dl),
           array_agg(p.side)
      into pair_ids, pair_tenants, pair_times, pair_tsvs, pair_dls, pair_sides
      from (select x.id, x.tenant, x.created_at, x.tsv, max(x.doc_len) as dl, sum(x.side)::int as side
              from (select o.id, o.tenant, o.created_at, o.tsv, o.doc_len, -1 as side from old_rows o
                    union all
                    select n.id, n.tenant, n.created_at, n.tsv, n.doc_len, 1 from new_rows n) x
             group by x.id, x.tenant, x.created_at, x.tsv) p
     where p.side <> 0;
    with gone as (
      delete from ml.bm25_docs d
       using unnest(pair_ids, pair_tenants, pair_times, pair_tsvs, pair_sides) g(id, tenant, created_at, tsv, side)
       where g.side = -1 and d.collection_id = c.id and d.id = g.id and d.tenant is not distinct from g.tenant
         and d.created_at = g.created_at
      returning d.doc, g.tsv)
    insert into ml.bm25_deleted (collection_id, doc, terms)
    select c.id, g.doc, tsvector_to_array(g.tsv) from gone g;
    insert into ml.bm25_docs (collection_id, id, tenant, created_at, dl)
    select c.id, g.id, g.tenant, g.created_at, g.dl
      from unnest(pair_ids, pair_tenants, pair_times, pair_dls, pair_sides) g(id, tenant, created_at, dl, side)
     where g.side = 1;
    insert into ml.bm25_delta (collection_id, term, doc, tf, dl)
    select c.id, u.lexeme, d.doc, coalesce(array_length(u.positions, 1), 1), d.dl
      from unnest(pair_ids, pair_tenants, pair_times, pair_tsvs, pair_sides) g(id, tenant, created_at, tsv, side)
      join ml.bm25_docs d on d.collection_id = c.id and d.id = g.id and d.tenant is not distinct from g.tenant
                          and d.created_at = g.created_at,
           unnest(g.tsv) u
     where g.side = 1;
  else
    -- the new rows' document numbers by bm25_docs' key index, not by joining what the insert returned with
    -- new_rows (two row sources of unknown size: a nested loop over both would be quadratic)
    insert into ml.bm25_docs (collection_id, id, tenant, created_at, dl)
    select c.id, n.id, n.tenant, n.created_at, n.doc_len from new_rows n;
    insert into ml.bm25_delta (collection_id, term, doc, tf, dl)
    select c.id, u.lexeme, d.doc, coalesce(array_length(u.positions, 1), 1), d.dl
      from new_rows n
      join ml.bm25_docs d on d.collection_id = c.id and d.id = n.id and d.tenant is not distinct from n.tenant
                          and d.created_at = n.created_at,
           unnest(n.tsv) u;
  end if;
  if TG_OP = 'DELETE' then
    return null;
  end if;
  -- embeddings: rows without one, and updated rows whose embedding did not change (the core re-embeds those
  -- whose content did); a collection without a model keeps the vector its writer gave
  if TG_OP = 'INSERT' then
    select array_agg(n.id), array_agg(n.tenant), array_agg(n.created_at), array_agg(n.content)
      into ids, tenants, times, texts
      from new_rows n where n.embedding is null and n.content is not null;
  else
    -- each new row beside its old one, paired by grouping (as above, no join of the transition tables)
    select array_agg(p.id), array_agg(p.tenant), array_agg(p.created_at), array_agg(p.content),
           array_agg(ml._content_hash(whole, p.content)),
           array_agg(case when p.has_embedding then ml._content_hash(whole, p.old_content) end)
      into ids, tenants, times, texts, hashes, olds
      from (select x.id, x.tenant, x.created_at,
                   max(x.content) filter (where x.side = 1) as content,
                   max(x.content) filter (where x.side = -1) as old_content,
                   bool_or(x.side = 1) as is_new, bool_or(x.side = -1) as had_old,
                   bool_or(x.side = 1 and x.has_embedding) as has_embedding,
                   max(x.embedding) filter (where x.side = 1) as embedding,
                   max(x.embedding) filter (where x.side = -1) as old_embedding
              from (select o.id, o.tenant, o.created_at, o.content, o.embedding is not null as has_embedding,
                           case when c.model is not null then o.embedding::text end as embedding, -1 as side
                      from old_rows o
                    union all
                    select n.id, n.tenant, n.created_at, n.content, n.embedding is not null,
                           case when c.model is not null then n.embedding::text end, 1
                      from new_rows n) x
             group by x.id, x.tenant, x.created_at) p
     where p.is_new and p.content is not null
       and (not p.has_embedding
            or (c.model is not null and p.had_old and p.old_embedding = p.embedding));
  end if;
  if ids is not null then
    perform ml._collection_embed(c, TG_RELID, ids, tenants, times, texts, hashes, olds);
  end if;
  return null;
end $$;
comment on function ml._collection_trigger() is
  'internal: statement trigger of collection tables: embeds new/changed content (one model call per statement), keeps BM25 statistics';

-- ---------------------------------------------------------------------------------------------- partitions

create or replace function ml.ensure_collection_partitions(collection text, tenants text[], times timestamptz[])
returns int
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
-- SECURITY DEFINER: a partition is made by the table's owner, indb_owner; writers call this through
-- ml.add_documents. A caller makes partitions only for the tenant it acts for (admins: any); the rows it then
-- writes are checked again by the table's tenant policy.
declare
  c ml.collections := ml._collection(collection);
  tbl text := ml._assert_indb_owned(to_regclass(ml._collection_table(c)))::text;
  dflt text;
  bad text;
  v text;
  m date;
  lo timestamptz;
  hi timestamptz;
  pname text;
  made int := 0;
  cols constant text := 'id, content, metadata, tenant, created_at, embedding';
begin
  if c.partition_by is null then
    return 0;
  end if;
  dflt := ml._assert_indb_owned(to_regclass(format('%I.%I', c.table_schema, c.table_name || '_default')))::text;
  if c.partition_by = 'tenant' and not ml.is_admin() then
    select x into bad from unnest(tenants) x where x is distinct from ml.current_tenant() limit 1;
    if found then
      raise exception 'tenant % is not this session''s tenant (%)', quote_literal(bad),
        coalesce('it acts for ' || quote_literal(ml.current_tenant()), 'it acts for no tenant')
        using errcode = '42501', hint = 'write documents of the tenant the session acts for (SET indb.tenant)';
    end if;
  end if;
  if c.partition_by = 'time' then
    -- a time of +-infinity has no month (its partition's name was null: "null values cannot be formatted as an
    -- SQL identifier")
    select x into bad from unnest(times) x where not isfinite(x) limit 1;
    if found then
      raise exception 'created_at % of a document of collection % is not a finite time', bad, quote_literal(c.name)
        using errcode = '22008', hint = 'give each document a real time, or leave created_at out (the time of the write)';
    end if;
  end if;
  for v, lo, hi in
    select x, null::timestamptz, null::timestamptz from unnest(tenants) x
     where c.partition_by = 'tenant' and x is not null group by x
    union all
    select null, (d::timestamp at time zone 'UTC'), ((d + interval '1 month')::timestamp at time zone 'UTC')
      from (select distinct date_trunc('month', x at time zone 'UTC')::date d from unnest(times) x
             where c.partition_by = 'time' and x is not null) s
  loop
    pname := c.table_name || case when v is not null then '_t_' || left(md5(v), 12)
                                  else '_m_' || to_char(lo at time zone 'UTC', 'YYYYMM') end;
    continue when to_regclass(format('%I.%I', c.table_schema, pname)) is not null;
    perform pg_advisory_xact_lock(hashtext('indb.collection'), c.id::int);  -- ml._collection_write_lock (sql/210)
    continue when to_regclass(format('%I.%I', c.table_schema, pname)) is not null;
    -- rows a plain INSERT put into the default partition move to the new partition; they leave and come back
    -- through the parent, so its triggers keep the BM25 statistics
    execute format('create temp table indb_move on commit drop as select %s from %s where %s', cols, dflt,
                   case when v is not null then 'tenant = $1' else 'created_at >= $2 and created_at < $3' end)
      using v, lo, hi;
    execute format('delete from %s where %s', tbl,
                   case when v is not null then 'tenant = $1' else 'created_at >= $2 and created_at < $3' end)
      using v, lo, hi;
    if v is not null then
      execute format('create table %I.%I partition of %s for values in (%L)', c.table_schema, pname, tbl, v);
      execute format('comment on table %I.%I is %L', c.table_schema, pname, 'tenant ' || v);
    else
      execute format('create table %I.%I partition of %s for values from (%L) to (%L)', c.table_schema, pname, tbl, lo, hi);
      if c.index_type = 'hnsw' then
        execute ml._collection_ann_ddl(c, format('%I.%I', c.table_schema, pname), pname || '_ann');
      end if;
    end if;
    execute format('insert into %s (%s) select %s from pg_temp.indb_move', tbl, cols, cols);
    drop table pg_temp.indb_move;
    made := made + 1;
  end loop;
  return made;
end $$;
comment on function ml.ensure_collection_partitions(text, text[], timestamptz[]) is
  'make the tenant (LIST) or month (RANGE) partitions that documents of these tenants or times need';

-- BM25 statistics follow their collection's tenant policy (re-applied by every install)
select ml._apply_parent_policies(t, 'exists (select 1 from ml.collections c where c.id = collection_id)')
  from unnest(array['ml.collection_stats', 'ml.collection_terms', 'ml.bm25_postings', 'ml.bm25_delta',
                    'ml.bm25_deleted']::regclass[]) t;
