-- Vector search over a collection: exact, ANN and filtered (iterative index scan) strategies.

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
