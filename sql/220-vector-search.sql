-- Vector search over a collection: exact, ANN and filtered (iterative index scan) strategies, as named steps:
-- ml.search starts in ml._search_static (a filter-free ANN search: the collection's static query), anything else
-- goes to ml._search_plan (checks, filter, strategy, SQL, index settings); ml._search runs the plan and
-- ml.search_explain explains it.

create or replace function ml._search_options() returns text[]
language sql immutable parallel safe
as $$ select array['ef_search', 'probes', 'exact', 'exact_threshold', 'max_scan_tuples', 'rerank_candidates', 'k1', 'b',
                    'allow_partial', 'over_fetch', 'tenant_scope', 'bm25_stats'] $$;
comment on function ml._search_options() is
  'internal: the options of ml.search, ml.keyword_search and ml.hybrid_search (one set: hybrid passes them to both)';

create or replace function ml._check_search_options(options jsonb, fn text) returns jsonb
language plpgsql immutable parallel safe
as $$
begin
  options := coalesce(options, '{}');
  if options ? 'explain' then
    raise exception '% does not take the explain option', fn using errcode = '22023',
      hint = 'explain a search with ml.search_explain(collection, query, k, filter, options): strategy, reason, settings and plan as columns';
  end if;
  if options <> '{}' and (options - ml._search_options()) <> '{}' then
    perform ml._check_options(options, ml._search_options(), fn);
  end if;
  if options ? 'k1' or options ? 'b' then
    -- BM25's parameters, JSON numbers only ("NaN" would make every score NaN), checked before any work
    perform ml._opt_float(options, 'k1', 1.2, 0, 1000), ml._opt_float(options, 'b', 0.75, 0, 1);
  end if;
  -- sharded collections (sql/240): allow_partial, over_fetch; tenant_scope only narrows what a search reads
  -- (shared rows and that tenant's), bm25_stats replaces the collection's own BM25 statistics by global ones
  if options ? 'allow_partial' then
    perform ml._opt_bool(options, 'allow_partial', false);
  end if;
  if options ? 'over_fetch' then
    perform ml._opt_float(options, 'over_fetch', 2, 1, 100);
  end if;
  if options ? 'tenant_scope' and jsonb_typeof(options -> 'tenant_scope') not in ('string', 'null') then
    raise exception 'option tenant_scope must be a tenant name or null, got %', options -> 'tenant_scope'
      using errcode = '22023', hint = 'null: shared rows only; a name: shared rows and that tenant''s';
  end if;
  if options ? 'bm25_stats' and (jsonb_typeof(options -> 'bm25_stats') <> 'object'
                                 or jsonb_typeof(options -> 'bm25_stats' -> 'nd') <> 'number'
                                 or jsonb_typeof(options -> 'bm25_stats' -> 'tl') <> 'number'
                                 or jsonb_typeof(options -> 'bm25_stats' -> 'df') <> 'object') then
    raise exception 'option bm25_stats must be {"nd": N, "tl": total length, "df": {"term": df, ...}}' using errcode = '22023',
      hint = 'the coordinator of a sharded collection passes the statistics summed over its shards';
  end if;
  return options;
end $$;

-- the filter SQL narrowed by the option tenant_scope (null: shared rows only; a name: shared rows and that
-- tenant's): the coordinator of a sharded collection passes its caller's tenant to the shards, whose link role
-- reads every row. ANDed to the filter: it never widens what row-level security lets the caller read.
create or replace function ml._tenant_scope_sql(fsql text, options jsonb) returns text
language sql immutable parallel safe
as $$
  select case when options ? 'tenant_scope'
              then format('(%s) and (t.tenant is null%s)', fsql,
                          case when jsonb_typeof(options -> 'tenant_scope') = 'string'
                               then format(' or t.tenant = %L', options ->> 'tenant_scope') else '' end)
              else fsql end
$$;

-- step 1: which strategy answers the query, and why. A filter over an ANN index: few matching rows (at most
-- exact_threshold), an exact scan of them (recall 1); more, the iterative index scan, which falls back to an exact
-- scan when it finds fewer than k rows (ml._search). Which one is known by counting the filter's rows up to the
-- threshold (a statement of its own, most of a broad filter's search: ~6 of ~12 ms at 100,000 documents). An
-- equality filter (`estimable`: keys equal to values, which the planner estimates from the column statistics;
-- ranges, $ne, $or... it can only guess at) is not counted: the planner's estimate decides, and
--   * more than 4 x exact_threshold rows: the iterative index scan at once;
--   * at most exact_threshold: 'exact_bounded', one statement that reads at most exact_threshold + 1 of the
--     filter's rows, counts them and ranks them; when there are more than the threshold after all, the index scan
--     answers (ml._search);
--   * in between: counted, as any other filter.
-- A wrong estimate therefore costs time, never rows.
create or replace function ml._search_strategy(c ml.collections, fsql text, fparams jsonb, query vector, k int,
                                               options jsonb, estimable boolean,
                                               out strategy text, out reason text, out matches bigint,
                                               out threshold int)
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  has_index boolean := c.index_type <> 'none' and (c.index_type = 'hnsw' and c.partition_by is distinct from 'time'
                                                   or exists (select 1 from ml._collection_ann_indexes(c)));
  est jsonb;
  rows_est float8;
begin
  threshold := 5000;
  if options ? 'exact_threshold' then
    threshold := ml._opt_int(options, 'exact_threshold', 5000, 0, 100000000);
  end if;
  if options ? 'exact' and ml._opt_bool(options, 'exact', false) then
    strategy := 'exact'; reason := 'options.exact = true';
  elsif not has_index then
    strategy := 'exact'; reason := case when c.index_type = 'none' then 'the collection has no ANN index (index => none)'
                                        else 'the ANN index is not built yet (ivfflat: ml.reindex_collection builds it)' end;
  elsif fsql <> 'true' then
    if estimable then
      -- the planner's estimate of the filter's rows (a plan, not a scan; row security included)
      execute format('explain (format json) select 1 from %s t where %s and t.embedding is not null',
                     ml._collection_table(c), fsql)
        into est using query, k, fparams;
      rows_est := (est -> 0 -> 'Plan' ->> 'Plan Rows')::float8;
      if rows_est > 4.0 * threshold then
        strategy := 'ann_iterative';
        reason := format('the planner estimates %s rows for the filter (more than 4 x exact_threshold %s): index '
                         'scan with %s.iterative_scan, exact fallback if it returns fewer than k rows',
                         round(rows_est)::bigint, threshold, c.index_type);
        return;
      elsif rows_est <= threshold then
        strategy := 'exact_bounded';
        reason := format('the planner estimates %s rows for the filter (<= exact_threshold %s): an exact scan of at '
                         'most %s of them, the index scan if there are more', round(rows_est)::bigint, threshold,
                         threshold::bigint + 1);
        return;
      end if;
      -- in between: counted
    end if;
    execute format('select count(*) from (select 1 from %s t where %s and t.embedding is not null limit %s) s',
                   ml._collection_table(c), fsql, threshold + 1)
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
end $$;

-- step 2: the index settings a strategy needs (ef_search raised to k, iterative scans, probes)
create or replace function ml._search_settings(c ml.collections, strategy text, k int, cand int, options jsonb)
returns jsonb
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  gucs jsonb := '{}';
  ef int;
  cur int;
  want int := least(case when c.binary_rerank then cand else k end, 1000);
begin
  if strategy = 'exact' then
    return gucs;
  end if;
  if c.index_type = 'hnsw' then
    cur := coalesce(current_setting('hnsw.ef_search', true)::int, 40);
    if options ? 'ef_search' then
      ef := ml._opt_int(options, 'ef_search', null, 1, 1000);
    elsif strategy = 'ann_iterative' then
      ef := greatest(cur, 100);  -- filtered index scans lose recall at low ef_search: at least 100 unless asked
    end if;
    -- HNSW returns at most ef_search rows; only a change is set (and put back after the query)
    if greatest(coalesce(ef, cur), want) <> cur then
      gucs := jsonb_build_object('hnsw.ef_search', greatest(coalesce(ef, cur), want));
    end if;
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
  return gucs;
end $$;

-- The SQL of the plain index scan (already in distance order: HNSW/IVFFlat never return null embeddings): q the
-- query vector ($1, or the parameter's name in ml._search_static), fsql the filter, lim the limit ('$2', or a
-- number written in: k for the prepared statement of a filter-free search, 100 for ml._search_static)
create or replace function ml._search_ann_sql(c ml.collections, fsql text, lim text, q text default '$1') returns text
language sql stable parallel safe
as $$
  -- one expression, no FROM, STABLE like format(): the planner inlines it into the caller's (cached)
  -- expression; otherwise the function is run through the SQL-function executor at every call (~30-60 us)
  select format('select t.id, (%s%s)::float8, t.content, t.metadata from %s t where %s order by %s limit %s',
                case c.metric when 'cosine' then '1 - ' else '-' end,
                format('(t.embedding %s %s::%s)', ml._collection_op(c), q, ml._collection_vtype(c)),
                ml._collection_table(c), fsql,
                format('(t.embedding %s %s::%s)', ml._collection_op(c), q, ml._collection_vtype(c)), lim)
$$;

-- ml.search with a query vector starts in ml._search_static. Its common call, a filter-free ANN search, runs a
-- static query that the session plans once and that takes the query vector as a value: one branch per collection
-- (plpgsql keeps each statement's plan). A branch answers when the call is one it takes (no filter, no option but
-- ef_search, 1 <= k <= 100, a vector of the collection's dimensions, non-zero for cosine) and the catalog row the
-- caller sees (row security on ml.collections) is the one the branch was made from: id, name, table, metric,
-- storage, dimensions, index. Anything else, errors included, goes to ml._search: the full path, which for a
-- collection without a branch runs the session's prepared statement.
-- The query is `select * from (<the ANN query> limit 100) s limit k`: its generic plan is costed for k of 100 rows,
-- as a hand-written `limit 10` is. (`limit k` alone is costed at 10% of the table: PostgreSQL keeps planning it
-- per call, and at 1,000,000 documents its generic plan passed jit_above_cost: ~6 ms of compiling a ~2 ms search.)
-- One plpgsql layer, no signature hashed per call, no SET but search_path: 160-210k instructions a search more
-- than the hand-written query (without and with ef_search), against ~470k with ml._search in front (callgrind of
-- a backend, 20,000 documents; the time: benchmarks/search_overhead.py). Row security applies as in any query:
-- the function runs as its caller (SECURITY INVOKER); its body names collection tables only (quoted), and it is
-- made by indb_owner only.
create or replace function ml._search_static_ddl(branches text) returns text
language sql immutable parallel safe
as $$
  select format($f$create or replace function ml._search_static(collection text, query @VS@.vector, k int, filter jsonb,
    options jsonb)
returns table(id text, score float8, content text, metadata jsonb)
language plpgsql volatile parallel unsafe
set search_path from current
as %L$f$,
    E'declare\n  cur int;\n  ef int;\nbegin\n'
    || E'  if k between 1 and 100 and (filter is null or filter = ''{}'') and query is not null\n'
    || E'     and (options is null or options = ''{}'' or options - ''ef_search'' = ''{}'') then\n'
    || E'    case collection\n    when '''' then  -- no collection (CASE needs a WHEN)\n      null;\n'
    || E'    -- branches begin\n' || branches || E'    -- branches end\n'
    || E'    else\n      null;\n    end case;\n  end if;\n'
    || E'  return query select * from ml._search(ml._collection(collection), query, k, filter, options);\nend')
$$;
comment on function ml._search_static_ddl(text) is
  'internal: the CREATE statement of ml._search_static with these branches (ml._search_static_set)';

-- the collections ml._search_static holds a branch for: an HNSW index on a table that is not time-partitioned, no
-- binary rerank, not sharded (what the branch's query is). One expression, so that the branch's catalog check
-- inlines it (ml._search_static_set decides with it, the branch checks it again on the row the caller sees)
create or replace function ml._search_static_takes(c ml.collections) returns boolean
language sql immutable parallel safe
as $$
  select c.index_type = 'hnsw' and c.partition_by is distinct from 'time' and not c.binary_rerank
         and c.shards is null and c.storage in ('vector', 'halfvec')
$$;
comment on function ml._search_static_takes(ml.collections) is
  'internal: whether ml._search_static holds a branch for a collection like c';

-- add (present) or remove the branch of collection c in ml._search_static (made if missing; c null: only that);
-- called by ml._create_collection, ml.drop_collection and `indb install`, as indb_owner (nobody else may run it,
-- or replace the function)
create or replace function ml._search_static_set(c ml.collections, present boolean) returns boolean
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  src text;
  branches text;
  before text;
  -- at most this many branches (64; indb.search_static_max, 0-256, when an indb_admin sets it: a writer who could
  -- lower it would evict other tenants' branches): the function is compiled again in every session after each
  -- change, ~0.16 ms a branch (2,000 branches: 330 ms), and CASE tries the branches in turn. Beyond it, the
  -- oldest branches make room; their collections are searched through the prepared path.
  want text := current_setting('indb.search_static_max', true);
  cap int := case when want ~ '^[0-9]{1,3}$' and ml.is_admin() then least(want::int, 256) else 64 end;
begin
  -- one change at a time: two transactions replacing one function would fail ("tuple concurrently updated"), or
  -- the later would drop the earlier's branch
  perform pg_advisory_xact_lock(hashtext('indb.search_static'));
  select p.prosrc into src from pg_catalog.pg_proc p
   where p.oid = to_regprocedure('ml._search_static(text, @VS@.vector, int, jsonb, jsonb)');
  branches := coalesce(substring(src from E'\n    -- branches begin\n(.*)    -- branches end\n'), '');
  -- the collection's branch, delimited by its marker lines (a name is [a-z_][a-z0-9_]*: no marker in the SQL)
  branches := regexp_replace(branches, format(E'    -- collection %s begin\n.*?    -- collection %s end\n', c.name, c.name), '');
  if present and ml._search_static_takes(c) and cap > 0 then
    -- room for it: the oldest branches (the first ones) go
    while (select count(*) from regexp_matches(branches, E'    -- collection [a-z0-9_]+ begin\n', 'g')) >= cap loop
      before := branches;
      branches := regexp_replace(branches, E'^    -- collection ([a-z0-9_]+) begin\n.*?    -- collection \\1 end\n', '');
      exit when branches = before;
    end loop;
    -- ef_search as ml._search_settings sets it for an ANN search: raised to k, put back after the query
    branches := branches || format(
      E'    -- collection %s begin\n'
      || E'    when %L then\n'
      || E'      if @VS@.vector_dims(query) = %s%s\n'
      || E'         and exists (select from ml.collections x where x.id = %s and x.name = %L and x.table_schema = %L\n'
      || E'                     and x.table_name = %L and x.metric = %L and x.storage = %L and x.dimensions = %s\n'
      || E'                     and ml._search_static_takes(x)) then\n'
      || E'        cur := coalesce(current_setting(''hnsw.ef_search'', true)::int, 40);\n'
      || E'        if options ? ''ef_search'' then\n'
      || E'          ef := ml._opt_int(options, ''ef_search'', null, 1, 1000);\n'
      || E'        end if;\n'
      || E'        if greatest(coalesce(ef, cur), k) <> cur then\n'
      || E'          perform set_config(''hnsw.ef_search'', greatest(coalesce(ef, cur), k)::text, true);\n'
      || E'        end if;\n'
      || E'        return query select * from (%s) s limit k;\n'
      || E'        if greatest(coalesce(ef, cur), k) <> cur then\n'
      || E'          perform set_config(''hnsw.ef_search'', cur::text, true);\n'
      || E'        end if;\n'
      || E'        return;\n'
      || E'      end if;\n'
      || E'    -- collection %s end\n',
      c.name, c.name, c.dimensions, case when c.metric = 'cosine' then ' and @VS@.vector_norm(query) > 0' else '' end,
      c.id, c.name, c.table_schema, c.table_name, c.metric, c.storage, c.dimensions,
      ml._search_ann_sql(c, 'true', '100', 'query'), c.name);
  end if;
  execute ml._search_static_ddl(branches);
  comment on function ml._search_static(text, @VS@.vector, int, jsonb, jsonb) is
    'internal: ml.search with a query vector; a filter-free ANN search runs its collection''s static query (made by ml._search_static_set)';
  return present;
end $$;
comment on function ml._search_static_set(ml.collections, boolean) is
  'internal (indb_owner): add or remove a collection''s branch in ml._search_static';

-- made with every collection's branch (c null: none changes; re-applying this file keeps the branches of
-- collections the installing role cannot see, which are remade when that role can)
select ml._search_static_set(null, false);
do $$
declare c ml.collections;
begin
  for c in select * from ml.collections x order by x.id loop  -- the newest last: they keep their branches
    perform ml._search_static_set(c, true);
  end loop;
end $$;

-- The plan of a vector search: every argument checked, the filter translated (values travel in one jsonb
-- parameter, $3), the strategy, the SQL ($1 query, $2 k, $3 filter values; exact fallback for iterative scans)
-- and the index settings. Used by ml._search and ml.search_explain.
create or replace function ml._search_plan(c ml.collections, query vector, k int, filter jsonb, options jsonb)
returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  tbl text := ml._collection_table(c);
  q text := format('$1::%s', ml._collection_vtype(c));
  dist text := format('(t.embedding %s %s)', ml._collection_op(c), format('$1::%s', ml._collection_vtype(c)));
  score_expr text := case c.metric when 'cosine' then '1 - s.d' else '-s.d' end;
  fsql text := 'true';
  fparams jsonb := '[]';
  f jsonb;
  s record;
  cand int := greatest(4 * k, 100);
  exact_sql text;
  sql text;
  bounded_sql text;
begin
  options := ml._check_search_options(options, 'ml.search');
  if k is null or k < 1 or k > 10000 then
    perform ml._check_k(k);
  end if;
  if query is null then
    raise exception 'query vector is null' using errcode = '22004', hint = 'pass a vector or a text query';
  end if;
  if @VS@.vector_dims(query) <> c.dimensions then
    raise exception 'query vector has % dimensions; collection % stores %', @VS@.vector_dims(query), c.name, c.dimensions
      using errcode = '22023', hint = 'embed the query with the collection''s model (' || coalesce(c.model, 'none') || ')';
  end if;
  if c.metric = 'cosine' and @VS@.vector_norm(query) = 0 then
    raise exception 'query vector is zero: its cosine similarity to anything is undefined' using errcode = '22023',
      hint = 'pass a non-zero vector';
  end if;
  if filter is not null and filter <> '{}'::jsonb then
    f := ml._filter_sql(filter, 3);
    fsql := f ->> 'sql';
    fparams := f -> 'params';
  end if;
  fsql := ml._tenant_scope_sql(fsql, options);
  if options ? 'rerank_candidates' then
    cand := ml._opt_int(options, 'rerank_candidates', cand, 1, 100000);
  end if;
  -- an equality filter: every key equal to a value (an array: containment), no operator
  s := ml._search_strategy(c, fsql, fparams, query, k, options,
                           jsonb_typeof(filter) = 'object'
                           and not exists (select 1 from jsonb_each(filter) e
                                            where e.key like '$%' or jsonb_typeof(e.value) = 'object'));
  if s.strategy <> 'ann' then  -- the exact query (ann_iterative: its fallback); ties broken by id, as on a shard
    exact_sql := format('select s.id, (%s)::float8, s.content, s.metadata from (select t.id, %s + 0 as d, t.content, '
                        't.metadata from %s t where %s and t.embedding is not null order by 2, 1 limit $2) s order by s.d, s.id',
                        score_expr, dist, tbl, fsql);
  end if;
  if s.strategy = 'exact_bounded' then
    -- the filter's rows, at most threshold + 1 (materialized: read once), counted, and the top k of them
    bounded_sql := format('with m as materialized (select t.id, %s + 0 as d, t.content, t.metadata from %s t where %s '
                          'and t.embedding is not null limit %s) '
                          'select (select count(*) from m), array_agg(x.id), array_agg(x.score), array_agg(x.content), '
                          'array_agg(x.metadata) from (select s.id, (%s)::float8, s.content, s.metadata '
                          'from (select * from m order by m.d, m.id limit $2) s order by s.d, s.id) x(id, score, content, metadata)',
                          dist, tbl, fsql, s.threshold::bigint + 1, score_expr);
  end if;
  if s.strategy = 'exact' then
    sql := exact_sql;
  elsif c.binary_rerank then
    sql := format('select s.id, (%s)::float8, s.content, s.metadata from (select * from (select t.id, %s as d, '
                  't.content, t.metadata from %s t where %s and t.embedding is not null order by @VS@.binary_quantize(t.embedding)::bit(%s) '
                  'operator(@VS@.<~>) @VS@.binary_quantize(%s)::bit(%s) limit %s) r order by r.d limit $2) s order by s.d, s.id',
                  score_expr, dist, tbl, fsql, c.dimensions, q, c.dimensions, greatest(cand, k));
  else
    sql := ml._search_ann_sql(c, fsql, case when s.strategy = 'ann' and k <= 100 then k::text else '$2' end);
  end if;
  return jsonb_build_object('strategy', s.strategy, 'reason', s.reason, 'filter_matches', s.matches,
                            'threshold', s.threshold, 'sql', sql, 'exact_sql', exact_sql, 'bounded_sql', bounded_sql,
                            'params', fparams, 'filter_sql', fsql,
                            'prepared', s.strategy = 'ann' and not c.binary_rerank and k <= 100,
                            -- exact_bounded: the index scan's settings, for when there are more rows than expected
                            'settings', ml._search_settings(c, case s.strategy when 'exact_bounded' then 'ann_iterative'
                                                                                else s.strategy end, k, cand, options));
end $$;

-- set the plan's index settings for the rest of the transaction; returns the values to put back
create or replace function ml._search_set(settings jsonb) returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  g record;
  saved jsonb := '{}';
begin
  for g in select key, value from jsonb_each_text(settings) loop
    saved := saved || jsonb_build_object(g.key, coalesce(current_setting(g.key, true), ''));
    perform set_config(g.key, g.value, true);
  end loop;
  return saved;
end $$;

-- The session's prepared statement for an ANN search SQL (ml._search_plan's, filter-free, k written in): its name
-- is derived from the SQL, and a statement of that name is (re)prepared unless it holds exactly this SQL (a
-- statement a session prepared itself under that name is replaced, never run). A prepared statement is
-- planned once (a generic plan: the query vector does not change the plan) and re-planned by PostgreSQL when
-- the table, its indexes, the role or the search_path change; row security is applied when it runs.
create or replace function ml._search_prepared(sql text, vtype text) returns text
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  stmt_name text := 'indb_search_' || md5(vtype || ' ' || sql);
  stmt text := format('prepare %I(%s) as select array_agg(x.id), array_agg(x.score), array_agg(x.content), '
                      'array_agg(x.metadata) from (%s) x(id, score, content, metadata)', stmt_name, vtype, sql);
  have text;
begin
  select ps.statement into have from pg_catalog.pg_prepared_statements ps where ps.name = stmt_name;
  if have is distinct from stmt then
    if have is not null then
      execute format('deallocate %I', stmt_name);
    end if;
    execute stmt;
  end if;
  return stmt_name;
end $$;
comment on function ml._search_prepared(text, text) is
  'internal: the name of this session''s prepared statement for an ANN search SQL, prepared if needed';

create or replace function ml._search(
    c ml.collections, query vector, k int, filter jsonb, options jsonb)
returns table(id text, score float8, content text, metadata jsonb)
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  p jsonb;
  saved jsonb := '{}';
  r_ids text[]; r_scores float8[]; r_contents text[]; r_metas jsonb[];
  n bigint;
begin
  if c.shards is not null then
    -- fan-out: each shard's own top k' (sql/240), merged here
    return query select * from ml._shard_search(c.name, query, k, filter, options);
    return;
  end if;
  p := ml._search_plan(c, query, k, filter, options);
  if p ->> 'strategy' = 'exact_bounded' then
    execute p ->> 'bounded_sql' into n, r_ids, r_scores, r_contents, r_metas using query, k, p -> 'params';
    if n <= (p ->> 'threshold')::int then
      return query select * from unnest(r_ids, r_scores, r_contents, r_metas);
      return;
    end if;
    -- more rows than the planner expected: the index scan answers
    p := p || '{"strategy": "ann_iterative"}';
  end if;
  if p -> 'settings' <> '{}' then
    saved := ml._search_set(p -> 'settings');
  end if;
  -- into arrays, then the rows (RETURN QUERY EXECUTE would run the plan through a cursor, which costs more
  -- than the query itself); a filter-free ANN search with k <= 100 runs a prepared statement, planned once per
  -- session instead of at every call (benchmarks/search_overhead.py)
  if (p ->> 'prepared')::boolean then
    execute format('execute %I(%L)', ml._search_prepared(p ->> 'sql', ml._collection_vtype(c)), query::text)
      into r_ids, r_scores, r_contents, r_metas;
  else
    execute format('select array_agg(x.id), array_agg(x.score), array_agg(x.content), array_agg(x.metadata) '
                   'from (%s) x(id, score, content, metadata)', p ->> 'sql')
      into r_ids, r_scores, r_contents, r_metas using query, k, p -> 'params';
  end if;
  if p ->> 'strategy' = 'ann_iterative' and coalesce(cardinality(r_ids), 0) < k then
    -- the iterative scan stopped (max_scan_tuples) before finding k matches: answer exactly
    raise debug 'indb: iterative index scan returned % of % rows; exact scan', coalesce(cardinality(r_ids), 0), k;
    execute format('select array_agg(x.id), array_agg(x.score), array_agg(x.content), array_agg(x.metadata) '
                   'from (%s) x(id, score, content, metadata)', p ->> 'exact_sql')
      into r_ids, r_scores, r_contents, r_metas using query, k, p -> 'params';
  end if;
  if saved <> '{}' then
    perform ml._search_set(saved);
  end if;
  return query select * from unnest(r_ids, r_scores, r_contents, r_metas);
end $$;

create or replace function ml.search(
    collection text, query vector, k int default 10, filter jsonb default null, options jsonb default '{}')
returns table(id text, score float8, content text, metadata jsonb)
language sql stable parallel unsafe
as $$ select * from ml._search_static(collection, query, k, filter, options) $$;
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
  return query select * from ml._search_static(c.name, ml.embed(c.model, query), k, filter, options);
end $$;
comment on function ml.search(text, text, int, jsonb, jsonb) is
  'vector search with a text query embedded by the collection''s model; same results shape as the vector overload';

-- How ml.search would answer (and answers, EXPLAIN ANALYZE): the strategy and why, the index settings, the
-- filter's SQL and the plan, with the query vector shown as $1 rather than as its literal
create or replace function ml.search_explain(
    collection text, query vector, k int default 10, filter jsonb default null, options jsonb default '{}')
returns table(strategy text, reason text, filter_matches bigint, settings jsonb, filter_sql text, plan text)
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections := ml._collection(collection);
  p jsonb;
  saved jsonb := '{}';
  g record;
  sql text;
  -- the vector extension's schema as EXPLAIN prints it, escaped for a regular expression: indb writes pgvector's
  -- names and operators with their schema (@VS@ in sql/), and the plan is shown as a user writes them
  vs text := regexp_replace((select extnamespace::regnamespace::text from pg_extension where extname = 'vector'),
                            '([.$^*+?()\[\]{}|\\])', '\\\1', 'g');
begin
  perform ml._refuse_sharded(c, 'ml.search_explain');
  p := ml._search_plan(c, query, k, filter, options);
  strategy := p ->> 'strategy'; reason := p ->> 'reason'; filter_matches := (p ->> 'filter_matches')::bigint;
  sql := p ->> 'sql';
  if strategy = 'exact_bounded' then
    -- as ml._search: the bounded exact scan first, the index scan when the filter has more rows than that
    execute 'select n from (' || (p ->> 'bounded_sql') || ') x(n)' into filter_matches using query, k, p -> 'params';
    if filter_matches <= (p ->> 'threshold')::int then
      strategy := 'exact'; sql := p ->> 'bounded_sql';
      reason := reason || format('; it matches %s', filter_matches);
    else
      strategy := 'ann_iterative';
      reason := reason || format('; it matches more than %s: index scan with %s.iterative_scan, exact fallback if it '
                                 'returns fewer than k rows', p ->> 'threshold', c.index_type);
    end if;
  end if;
  if strategy <> 'exact' and p -> 'settings' <> '{}' then
    saved := ml._search_set(p -> 'settings');
  end if;
  plan := '';
  for g in execute 'explain (analyze, costs off, timing off, summary off) ' || sql
             using query, k, p -> 'params' loop
    plan := plan || g."QUERY PLAN" || E'\n';
  end loop;
  plan := regexp_replace(plan, 'OPERATOR\(' || vs || '\.([^)]+)\)', '\1', 'g');
  plan := regexp_replace(plan, '\m' || vs || '\.', '', 'g');
  plan := regexp_replace(plan, '''\[[^]'']*\]''::(vector|halfvec)(\(\d+\))?', '$1', 'g');
  if saved <> '{}' then
    perform ml._search_set(saved);
  end if;
  settings := case when strategy = 'exact' then '{}' else p -> 'settings' end; filter_sql := p ->> 'filter_sql';
  return next;
end $$;
comment on function ml.search_explain(text, vector, int, jsonb, jsonb) is
  'how ml.search answers: strategy (exact, ann, ann_iterative) and why, filter matches, index settings, filter SQL and the EXPLAIN ANALYZE plan';

create or replace function ml.search_explain(
    collection text, query text, k int default 10, filter jsonb default null, options jsonb default '{}')
returns table(strategy text, reason text, filter_matches bigint, settings jsonb, filter_sql text, plan text)
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
      hint = 'pass the query as a vector';
  end if;
  return query select * from ml.search_explain(collection, ml.embed(c.model, query), k, filter, options);
end $$;
comment on function ml.search_explain(text, text, int, jsonb, jsonb) is
  'ml.search_explain with a text query embedded by the collection''s model';
