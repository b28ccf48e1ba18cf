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

create or replace function ml._keyword_search(c ml.collections, query text, k int, filter jsonb, options jsonb)
returns table(id text, score float8, content text, metadata jsonb)
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  t record;
  tsq tsquery;
  k1 float8;
  b float8;
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
  if filter is not null and filter <> '{}'::jsonb then
    f := ml._filter_sql(filter, 6);
    fsql := f ->> 'sql';
    fparams := f -> 'params';
  end if;
  t := ml._bm25_terms(c, query);
  if t.terms is null or t.nd = 0 then
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
    'where t.tsv @@ $3 and %s order by sc.score desc, t.id limit $8) x', ml._collection_table(c), fsql);
  -- MaxScore: a document holding none of the j rarest terms scores at most sum(idf_i * (k1 + 1)) over the
  -- other terms; once that bound is below the k-th best score among documents holding one of the j rarest
  -- terms, those documents' top k is the exact top k, and the common terms' documents are never scanned.
  m := cardinality(t.terms);
  j := 1;
  cum := t.dfs[1];
  while j < m and cum < k loop
    j := j + 1;
    cum := cum + t.dfs[j];
  end loop;
  loop
    select string_agg('''' || replace(replace(x, '\', '\\'), '''', '''''') || '''', ' | ')::tsquery into tsq
    from unnest(t.terms[1:j]) x;
    execute sql into r_ids, r_scores, r_contents, r_metas using t.terms, t.idfs, tsq, k1, b, fparams, (t.tl::float8 / t.nd), k;
    exit when j >= m;
    theta := case when coalesce(cardinality(r_ids), 0) >= k then r_scores[k] else 0 end;
    -- smallest jn >= j whose remaining terms' bound is below theta
    jn := j;
    rest := (select coalesce(sum(v), 0) from unnest(t.idfs[j + 1:m]) v) * (k1 + 1);
    while jn < m and rest >= theta loop
      jn := jn + 1;
      rest := rest - t.idfs[jn] * (k1 + 1);
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
