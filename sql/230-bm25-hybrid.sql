-- BM25 keyword search (statistics kept by the collection trigger) and hybrid (RRF / weighted) fusion.

-- step 1 of a keyword search: the query's distinct lexemes that occur in the collection, rarest first, with
-- Lucene's BM25 idf = ln(1 + (N - df + 0.5) / (df + 0.5)), and the collection's document count and length
create or replace function ml._bm25_terms(c ml.collections, query text, out terms text[], out idfs float8[],
                                          out dfs bigint[], out nd bigint, out tl bigint)
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
  select s.n_docs, s.total_len into nd, tl from ml.collection_stats s where s.collection_id = c.id;
  select array_agg(t.term order by t.df, t.term), array_agg(ln(1 + (nd - t.df + 0.5) / (t.df + 0.5)) order by t.df, t.term),
         array_agg(t.df order by t.df, t.term)
    into terms, idfs, dfs
    from ml.collection_terms t
   where t.collection_id = c.id
     and t.term in (select u.lexeme from unnest(to_tsvector(c.ts_config::regconfig, query)) u);
end $$;

-- step 1 with statistics given (a sharded collection's coordinator sums N, total length and df over its
-- shards): the same terms, order and idf expression as ml._bm25_terms, so scores equal a single node's
create or replace function ml._bm25_terms_given(c ml.collections, query text, stats jsonb, out terms text[],
                                                out idfs float8[], out dfs bigint[], out nd bigint, out tl bigint)
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
  nd := (stats ->> 'nd')::bigint;
  tl := (stats ->> 'tl')::bigint;
  select array_agg(t.term order by t.df, t.term), array_agg(ln(1 + (nd - t.df + 0.5) / (t.df + 0.5)) order by t.df, t.term),
         array_agg(t.df order by t.df, t.term)
    into terms, idfs, dfs
    from (select x.key::text as term, (x.value #>> '{}')::bigint as df from jsonb_each(stats -> 'df') x) t
   where t.df > 0
     and t.term in (select u.lexeme from unnest(to_tsvector(c.ts_config::regconfig, query)) u);
end $$;

-- a shard's local BM25 statistics for a query: N, total length, df of the query's lexemes (called by the
-- coordinator of a sharded collection through its link role)
create or replace function ml._bm25_stats(collection text, query text) returns jsonb
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections := ml._collection(collection);
  r jsonb;
begin
  select jsonb_build_object('nd', s.n_docs, 'tl', s.total_len,
                            'df', coalesce((select jsonb_object_agg(t.term, t.df) from ml.collection_terms t
                                             where t.collection_id = c.id and t.df > 0
                                               and t.term in (select u.lexeme from unnest(to_tsvector(c.ts_config::regconfig, query)) u)),
                                           '{}'))
    into r from ml.collection_stats s where s.collection_id = c.id;
  return r;
end $$;

-- The BM25 index (migration 0017, plpython/indb_runtime/bm25.py): top documents by numpy over the query's
-- postings (merged segment + delta, less tombstones); never reads a document. One row: the document numbers and
-- scores of the n best and of every document tied with the n-th, best first (two arrays since migration 0027,
-- which dropped ml._bm25_topk and its row per document). STRICT: a NULL argument (none comes from ml._keyword_search,
-- but a writer may call it directly) is no documents, not a Python TypeError reported as a bug (38000).
create or replace function ml.__bm25_top_py(cid bigint, terms text[], idfs float8[], avgdl float8, k1 float8,
                                            b float8, n int)
returns table(docs bigint[], scores float8[])
language plpython3u stable strict parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import bm25, errors
return errors.call(plpy, bm25.top, plpy, cid, terms, idfs, avgdl, k1, b, n)
$$;
select ml._wrap_python('ml._bm25_top', 'ml.__bm25_top_py(bigint, text[], float8[], float8, float8, float8, int)');
comment on function ml._bm25_top(bigint, text[], float8[], float8, float8, float8, int) is
  'internal: the BM25 index''s top documents (document numbers, scores) for the query''s lexemes';

-- Fold a collection's delta and tombstones into its merged postings. SECURITY DEFINER: it writes the index
-- tables, which no role writes; it changes no result of any search (merged or not, scores are the same), so any
-- caller may run it; pg_cron (below) or `indb worker` runs ml._bm25_merge_pending every minute.
create or replace function ml.__bm25_merge_py(cid bigint) returns jsonb
language plpython3u volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import bm25, errors
return json.dumps(errors.call(plpy, bm25.merge, plpy, cid))
$$;
select ml._wrap_python('ml._bm25_merge', 'ml.__bm25_merge_py(bigint)');
comment on function ml._bm25_merge(bigint) is
  'internal: fold a collection''s BM25 delta and tombstones into its merged postings';

-- every collection with a delta or tombstones (min_rows: only those with at least that many delta postings
-- or any tombstone); returns the number of collections merged
-- Per collection it reads at most min_rows delta postings (an index scan that stops there), not the whole delta:
-- grouping every delta row, as this did, read millions of rows a minute while a large load was pending, and its
-- estimate passed jit_above_cost, so each run also compiled its plan (~230 ms in the test suite).
create or replace function ml._bm25_merge_pending(min_rows int default 1) returns int
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
set jit = off
as $$
declare
  cid bigint;
  n int := 0;
begin
  for cid in
    select c.id from ml.collections c
     where exists (select 1 from ml.bm25_deleted t where t.collection_id = c.id)
        or (select count(*) from (select 1 from ml.bm25_delta d where d.collection_id = c.id
                                   limit greatest(min_rows, 1)) z) >= greatest(min_rows, 1)
     order by c.id
  loop
    perform ml._bm25_merge(cid);
    n := n + 1;
  end loop;
  return n;
end $$;
comment on function ml._bm25_merge_pending(int) is
  'internal: merge the BM25 delta of every collection that has one (pg_cron / indb worker, every minute)';

-- (Re)build a collection's BM25 index from its rows (install, for collections made before the index; a
-- rebuild drops what was there). Postings: big-endian int4 (int4send) concatenated in document order.
create or replace function ml._bm25_build(cid bigint) returns void
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
-- SECURITY DEFINER: it writes the index tables. It takes only a collection id and reads the catalog row (as
-- the caller's tenant sees it) and the collection's own table: a rebuild from the rows changes no result.
declare
  c ml.collections;
  tbl text;
begin
  select * into c from ml.collections where id = cid;
  if not found then
    raise exception 'no collection with id %', cid using errcode = '42704';
  end if;
  tbl := ml._assert_indb_owned(to_regclass(ml._collection_table(c)))::text;
  perform pg_advisory_xact_lock(hashtext('indb.bm25_merge'), c.id::int);
  delete from ml.bm25_postings where collection_id = c.id;
  delete from ml.bm25_delta where collection_id = c.id;
  delete from ml.bm25_deleted where collection_id = c.id;
  delete from ml.bm25_docs where collection_id = c.id;
  execute format('insert into ml.bm25_docs (collection_id, id, tenant, created_at, dl) '
                 'select $1, t.id, t.tenant, t.created_at, t.doc_len from %s t order by t.id', tbl) using c.id;
  execute format(
    'insert into ml.bm25_postings (collection_id, term, n, docs, tfs, dls) '
    'select $1, u.lexeme, count(*), string_agg(int4send(d.doc::int), ''''::bytea order by d.doc), '
    '       string_agg(int4send(coalesce(array_length(u.positions, 1), 1)), ''''::bytea order by d.doc), '
    '       string_agg(int4send(d.dl), ''''::bytea order by d.doc) '
    'from %s t join ml.bm25_docs d on d.collection_id = $1 and d.id = t.id and d.tenant is not distinct from t.tenant '
    '      and d.created_at = t.created_at, unnest(t.tsv) u group by u.lexeme', tbl) using c.id;
  update ml.collection_stats set bm25_indexed = true, bm25_merged_at = now() where collection_id = c.id;
end $$;
comment on function ml._bm25_build(bigint) is 'internal: build a collection''s BM25 index from its rows';

create or replace function ml._keyword_search(c ml.collections, query text, k int, filter jsonb, options jsonb)
returns table(id text, score float8, content text, metadata jsonb)
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  t record;
  k1 float8;
  b float8;
  f jsonb;
  fsql text := 'true';
  fparams jsonb := '[]';
  n int;
  got int;
  cand int;
  ds bigint[];
  ss float8[];
  sql text;
  exact_sql text;
  r_ids text[]; r_scores float8[]; r_contents text[]; r_metas jsonb[];
begin
  options := ml._check_search_options(options, 'ml.keyword_search');
  -- JSON numbers only: "NaN" would give NaN scores
  k1 := ml._opt_float(options, 'k1', 1.2, 0, 1000);
  b := ml._opt_float(options, 'b', 0.75, 0, 1);
  if k is null or k < 1 or k > 10000 then
    perform ml._check_k(k);
  end if;
  if query is null or btrim(query) = '' then
    raise exception 'empty query' using errcode = '22023', hint = 'pass the words to search for';
  end if;
  if c.shards is not null then
    -- global BM25 statistics summed over the shards, each shard's top k scored with them, merged (sql/240)
    return query select * from ml._shard_keyword_search(c.name, query, k, filter, options);
    return;
  end if;
  if filter is not null and filter <> '{}'::jsonb then
    f := ml._filter_sql(filter, 6);
    fsql := f ->> 'sql';
    fparams := f -> 'params';
  end if;
  fsql := ml._tenant_scope_sql(fsql, options);
  if options ? 'bm25_stats' then
    t := ml._bm25_terms_given(c, query, options -> 'bm25_stats');
  else
    t := ml._bm25_terms(c, query);
  end if;
  if t.terms is null or t.nd = 0 then
    return;
  end if;
  -- the index's best documents, then their rows (the caller's rights: row-level security by tenant, and the
  -- filter); when filter or tenancy leave fewer than k, the next candidates (4 times as many each round).
  -- A round takes its n candidates in their final order (score, then id: a bounded sort of the index's answer,
  -- which holds every document tied with the n-th), then reads their rows one candidate at a time: a query whose
  -- best score thousands of documents share reads n rows, not thousands. The first n in this order are the first
  -- n of the result's order, so the next round (4n) continues exactly where one that passed fewer than k stopped.
  sql := format(
    'select array_agg(x.id), array_agg(x.score), array_agg(x.content), array_agg(x.metadata) from ('
    'select t.id, c.score, t.content, t.metadata from ('
    'select s.score, d.id, d.created_at, d.tenant from unnest($1::bigint[], $2::float8[]) s(doc, score) '
    'join ml.bm25_docs d on d.collection_id = $3 and d.doc = s.doc order by s.score desc, d.id limit $7) c '
    -- the filter inside the lateral subquery: its column names (id, tenant, created_at) are the collection's
    'cross join lateral (select * from %s t where t.id = c.id and %s and %s and t.created_at = c.created_at) t '
    'order by c.score desc, c.id limit $4) x', ml._collection_table(c), fsql,
    case when c.partition_by = 'tenant' then 't.tenant = c.tenant' else 't.tenant is not distinct from c.tenant' end);
  n := greatest(k, 10);
  loop
    select z.docs, z.scores into ds, ss from ml._bm25_top(c.id, t.terms, t.idfs, t.tl::float8 / t.nd, k1, b, n) z;
    cand := coalesce(cardinality(ds), 0);
    execute sql into r_ids, r_scores, r_contents, r_metas using ds, ss, c.id, k, null::int, fparams, n;
    got := coalesce(cardinality(r_ids), 0);
    exit when got >= k or cand < n;
    -- the round read least(cand, n) candidates (the index's answer may hold more: the documents tied with the n-th)
    if least(cand, n) >= 160 and (got::float8 / least(cand, n)) ^ 2 * t.nd < k then
      -- A filter that passes few of the best documents: the next rounds would grow until they had read every
      -- document of the query's terms. From 160 candidates on, when the share the filter passed says fewer than k
      -- rows would pass in the next rounds' reach (share^2 * documents < k), the rows the filter passes are scored
      -- instead: the same BM25 over their tsvectors (tf, length and the collection's statistics as the index keeps
      -- them; terms summed in the same order, so the scores are the same numbers), best first, ties by id.
      exact_sql := format(
        'select array_agg(x.id), array_agg(x.score), array_agg(x.content), array_agg(x.metadata) from ('
        'select t.id, s.score, t.content, t.metadata from %s t cross join lateral ('
        '  select sum(q.v) as score from (select w.idf * u.tf * ($7 + 1) / (u.tf + $7 * (1 - $8 + $8 * t.doc_len / $9)) as v'
        '    from unnest($1::text[], $2::float8[]) with ordinality w(term, idf, o)'
        '    join (select l.lexeme, coalesce(array_length(l.positions, 1), 1)::float8 as tf from unnest(t.tsv) l) u'
        '      on u.lexeme = w.term order by w.o) q) s '
        'where s.score > 0 and %s order by s.score desc, t.id limit $4) x', ml._collection_table(c), fsql);
      execute exact_sql into r_ids, r_scores, r_contents, r_metas
        using t.terms, t.idfs, c.id, k, null::int, fparams, k1, b, t.tl::float8 / t.nd;
      exit;
    end if;
    n := n * 4;
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
  qv @VS@.vector;
begin
  perform ml._check_k(k);
  perform ml._check_k(candidates, 'candidates');
  if query is null or btrim(query) = '' then
    raise exception 'empty query' using errcode = '22023', hint = 'pass the text to search for';
  end if;
  options := ml._check_search_options(options, 'ml.hybrid_search');
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
    from ml._search_static(c.name, qv, greatest(candidates, k), filter, options) s  -- (sql/220: the static query when it applies)
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

-- collections made before the BM25 index: build theirs (once; later writes keep it current)
select ml._bm25_build(c.id) from ml.collections c join ml.collection_stats s on s.collection_id = c.id
 where not s.bm25_indexed;

-- merging the BM25 delta every minute where pg_cron lives; elsewhere `indb worker` merges
do $$
begin
  if exists (select 1 from pg_extension where extname = 'pg_cron') then
    perform cron.schedule('indb_bm25_merge', '* * * * *', 'select ml._bm25_merge_pending()');
  end if;
end $$;

-- How ml.hybrid_search answers: one row per step (embed: the query embedded once; vector: ml.search_explain's
-- strategy, reason and plan for the candidates; keyword: the BM25 index's postings for the query's lexemes and
-- the plan that reads them; fusion: the whole call), each with its time
create or replace function ml.explain_hybrid_search(
    collection text, query text, k int default 10, filter jsonb default null, candidates int default 100,
    options jsonb default '{}')
returns table(step text, strategy text, reason text, ms float8, detail jsonb, plan text)
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections := ml._collection(collection);
  qv @VS@.vector;
  t0 timestamptz;
  t record;
  e record;
  g record;
  n_merged bigint;
  n_delta bigint;
  n_dead bigint;
  p text := '';
begin
  perform ml._check_k(k);
  perform ml._check_k(candidates, 'candidates');
  if query is null or btrim(query) = '' then
    raise exception 'empty query' using errcode = '22023', hint = 'pass the text to search for';
  end if;
  options := ml._check_search_options(options, 'ml.explain_hybrid_search');
  if c.model is null then
    raise exception 'collection "%" has no model to embed a text query', c.name using errcode = '22023',
      hint = 'explain the legs apart: ml.search_explain with a vector, and ml.keyword_search';
  end if;
  t0 := clock_timestamp();
  qv := ml.embed(c.model, query);
  step := 'embed'; strategy := 'once'; reason := 'the query is embedded once and handed to the vector leg';
  ms := extract(epoch from clock_timestamp() - t0) * 1000; detail := jsonb_build_object('model', c.model);
  plan := null;
  return next;
  t0 := clock_timestamp();
  select * into e from ml.search_explain(collection, qv, greatest(candidates, k), filter, options);
  step := 'vector'; strategy := e.strategy; reason := e.reason;
  ms := extract(epoch from clock_timestamp() - t0) * 1000;
  detail := jsonb_build_object('candidates', greatest(candidates, k), 'filter_matches', e.filter_matches,
                               'settings', e.settings);
  plan := e.plan;
  return next;
  t := ml._bm25_terms(c, query);
  select coalesce(sum(b.n), 0) into n_merged from ml.bm25_postings b where b.collection_id = c.id and b.term = any(t.terms);
  select count(*) into n_delta from ml.bm25_delta d where d.collection_id = c.id and d.term = any(t.terms);
  select count(*) into n_dead from ml.bm25_deleted d where d.collection_id = c.id;
  for g in execute 'explain (analyze, costs off, timing off, summary off) '
                   'select term, docs, tfs, dls from ml.bm25_postings where collection_id = $1 and term = any($2) '
                   'union all select term, null, null, null from ml.bm25_delta where collection_id = $1 and term = any($2)'
             using c.id, t.terms loop
    p := p || g."QUERY PLAN" || E'\n';
  end loop;
  t0 := clock_timestamp();
  perform count(*) from ml._keyword_search(c, query, greatest(candidates, k), filter, options);
  step := 'keyword'; strategy := 'bm25_index';
  reason := format('postings of %s lexeme(s): %s merged, %s in the delta, %s tombstone(s); the collection''s rows are read only for the candidates',
                   coalesce(cardinality(t.terms), 0), n_merged, n_delta, n_dead);
  ms := extract(epoch from clock_timestamp() - t0) * 1000;
  detail := jsonb_build_object('terms', to_jsonb(t.terms), 'df', to_jsonb(t.dfs), 'idf', to_jsonb(t.idfs),
                               'documents', t.nd, 'merged_postings', n_merged, 'delta_postings', n_delta,
                               'tombstones', n_dead);
  plan := p;
  return next;
  t0 := clock_timestamp();
  perform count(*) from ml.hybrid_search(collection, query, k, filter, candidates => candidates, options => options);
  step := 'fusion'; strategy := 'rrf'; reason := 'the whole ml.hybrid_search call (embedding included)';
  ms := extract(epoch from clock_timestamp() - t0) * 1000; detail := jsonb_build_object('k', k); plan := null;
  return next;
end $$;
comment on function ml.explain_hybrid_search(text, text, int, jsonb, int, jsonb) is
  'how ml.hybrid_search answers: the query embedded once, the vector leg''s strategy and plan, the keyword leg''s postings (merged, delta, tombstones) and plan, and the times';
