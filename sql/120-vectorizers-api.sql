-- Vectorizers, public API: create, refresh, queue workers, alter, drop, model migration, search, schedule.
-- Python: plpython/indb_runtime/vectorizer.py; internals and catalog writers: sql/110-vectorizers-int.sql.
-- Every function here is SECURITY INVOKER: the source table is read with the caller's rights (a superuser's
-- worker reads it as the vectorizer's creator), catalogs are written through the definers of 110.

create or replace function ml._create_vectorizer_py(source regclass, columns text[], model text default 'all-MiniLM-L6-v2',
                                                    mode text default 'sync', chunk_size int default null,
                                                    chunk_overlap int default 0, name text default null,
                                                    batch_size int default null, destination text default null,
                                                    backfill boolean default true, chunk_by text default 'tokens',
                                                    max_attempts int default null) returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import vectorizer, errors
return json.dumps(errors.call(plpy, vectorizer.create, plpy, source, columns, model, mode, chunk_size, chunk_overlap,
                              name, batch_size, destination, backfill, chunk_by, max_attempts))
$$;
select ml._wrap_python('ml._create_vectorizer',
                       'ml._create_vectorizer_py(regclass, text[], text, text, int, int, text, int, text, boolean, text, int)');
comment on function ml._create_vectorizer(regclass, text[], text, text, int, int, text, int, text, boolean, text, int) is
  'internal: ml.create_vectorizer''s result as one jsonb object';

-- The columns that ml.create_vectorizer, ml.alter_vectorizer and ml.migrate_vectorizer share with
-- ml.refresh_vectorizer: what the (re-)embedding they ran did; NULL when they ran none.
create or replace function ml.create_vectorizer(source regclass, columns text[], model text default 'all-MiniLM-L6-v2',
                                                mode text default 'sync', chunk_size int default null,
                                                chunk_overlap int default 0, name text default null,
                                                batch_size int default null, destination text default null,
                                                backfill boolean default true, chunk_by text default 'tokens',
                                                max_attempts int default null)
returns table(name text, id int, source regclass, destination regclass, model text, mode text, dimensions int,
              long_text text, embedded_rows bigint, embedded_chunks bigint, queued bigint, seconds float8)
language sql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
  select r.name, r.id, r.source, r.destination, r.model, r.mode, r.dimensions, r.long_text, r.embedded_rows,
         r.embedded_chunks, r.queued, r.seconds
    from jsonb_to_record(ml._create_vectorizer($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12))
         as r(name text, id int, source regclass, destination regclass, model text, mode text, dimensions int,
              long_text text, embedded_rows bigint, embedded_chunks bigint, queued bigint, seconds float8)
$$;
comment on function ml.create_vectorizer(regclass, text[], text, text, int, int, text, int, text, boolean, text, int) is
  'keep embeddings of source''s rows (columns joined by newlines) in embeddings.<name> (or destination => a new name there) with an HNSW index; sync: embedded in the writing statement, async: queued for ml.process_queue. One row: the vectorizer and what its backfill did (NULL without backfill)';

create or replace function ml._refresh_vectorizer_py(name text, max_rows int default null) returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import vectorizer, errors
return json.dumps(errors.call(plpy, vectorizer.refresh, plpy, name, max_rows))
$$;
select ml._wrap_python('ml._refresh_vectorizer', 'ml._refresh_vectorizer_py(text, int)');
comment on function ml._refresh_vectorizer(text, int) is 'internal: ml.refresh_vectorizer''s result as one jsonb object';

create or replace function ml.refresh_vectorizer(name text, max_rows int default null)
returns table(vectorizer text, mode text, embedded_rows bigint, embedded_chunks bigint, queued bigint, deleted bigint,
              remaining bigint, seconds float8)
language sql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
  select r.vectorizer, r.mode, r.embedded_rows, r.embedded_chunks, r.queued, r.deleted, r.remaining, r.seconds
    from jsonb_to_record(ml._refresh_vectorizer($1, $2))
         as r(vectorizer text, mode text, embedded_rows bigint, embedded_chunks bigint, queued bigint, deleted bigint,
              remaining bigint, seconds float8)
$$;
comment on function ml.refresh_vectorizer(text, int) is
  're-embed (sync) or queue (async) only the rows whose content hash or model differs, at most max_rows per target; removes orphaned embeddings. One row: rows embedded (chunks), queued, orphans deleted, rows still stale (max_rows), seconds';

create or replace function ml._process_queue_py(vectorizer text default null, batch_size int default null) returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import vectorizer as vz, errors
return json.dumps(errors.call(plpy, vz.process_queue, plpy, vectorizer, batch_size))
$$;
select ml._wrap_python('ml._process_queue', 'ml._process_queue_py(text, int)');
comment on function ml._process_queue(text, int) is 'internal: ml.process_queue''s rows as one jsonb array';

create or replace function ml.process_queue(vectorizer text default null, batch_size int default null)
returns table(vectorizer text, processed bigint, embedded bigint, unchanged bigint, deleted bigint,
              skipped_locked bigint, failed bigint, retrying bigint, pending bigint, error text)
language sql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
  select r.vectorizer, r.processed, r.embedded, r.unchanged, r.deleted, r.skipped_locked, r.failed, r.retrying,
         r.pending, r.error
    from jsonb_to_recordset(ml._process_queue($1, $2))
         as r(vectorizer text, processed bigint, embedded bigint, unchanged bigint, deleted bigint,
              skipped_locked bigint, failed bigint, retrying bigint, pending bigint, error text)
$$;
comment on function ml.process_queue(text, int) is
  'embed one batch of queued rows of an async vectorizer (NULL: of each one this session may change that has due items; one row per vectorizer); safe to run in parallel (FOR UPDATE SKIP LOCKED); failures are retried with back-off, then kept in ml.vectorizer_failed. A superuser session processes each vectorizer as its creator';

create or replace procedure ml.vectorizer_worker(vectorizer text default null, batch_size int default null,
                                                 max_seconds int default 50, tenant text default null)
language plpgsql
as $$
declare
  t0 timestamptz := pg_catalog.clock_timestamp();
  n bigint;
begin
  if tenant is not null then
    perform pg_catalog.set_config('indb.tenant', tenant, false);
  end if;
  loop
    select coalesce(sum(r.processed + r.deleted), 0) into n from ml.process_queue(vectorizer, batch_size) r;
    commit;
    exit when n = 0 or pg_catalog.clock_timestamp() - t0 > pg_catalog.make_interval(secs => max_seconds);
  end loop;
end $$;
comment on procedure ml.vectorizer_worker(text, int, int, text) is
  'drain the queue batch by batch, committing after each, for up to max_seconds, acting for tenant (what pg_cron runs)';

create or replace function ml.retry_vectorizer(name text)
returns table(vectorizer text, requeued_failed int, queued_now_due int)
language sql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
  select r.vectorizer, r.requeued_failed, r.queued_now_due
    from jsonb_to_record(ml._vectorizer_retry($1)) as r(vectorizer text, requeued_failed int, queued_now_due int)
$$;
comment on function ml.retry_vectorizer(text) is
  'move failed items back to the queue and make every queued item due now; one row: items moved back, items due now';

create or replace function ml._alter_vectorizer_py(name text, mode text default null, batch_size int default null,
                                                   chunk_size int default null, chunk_overlap int default null,
                                                   chunk_by text default null, max_attempts int default null,
                                                   refresh boolean default true) returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import vectorizer, errors
return json.dumps(errors.call(plpy, vectorizer.alter, plpy, name, mode, batch_size, chunk_size, chunk_overlap,
                              chunk_by, max_attempts, refresh))
$$;
select ml._wrap_python('ml._alter_vectorizer', 'ml._alter_vectorizer_py(text, text, int, int, int, text, int, boolean)');
comment on function ml._alter_vectorizer(text, text, int, int, int, text, int, boolean) is
  'internal: ml.alter_vectorizer''s result as one jsonb object';

create or replace function ml.alter_vectorizer(name text, mode text default null, batch_size int default null,
                                               chunk_size int default null, chunk_overlap int default null,
                                               chunk_by text default null, max_attempts int default null,
                                               refresh boolean default true)
returns table(vectorizer text, mode text, batch_size int, chunk_size int, chunk_overlap int, chunk_by text,
              max_attempts int, long_text text, refreshed boolean, embedded_rows bigint, embedded_chunks bigint,
              queued bigint, deleted bigint, seconds float8)
language sql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
  select r.vectorizer, r.mode, r.batch_size, r.chunk_size, r.chunk_overlap, r.chunk_by, r.max_attempts, r.long_text,
         r.refreshed, r.embedded_rows, r.embedded_chunks, r.queued, r.deleted, r.seconds
    from jsonb_to_record(ml._alter_vectorizer($1, $2, $3, $4, $5, $6, $7, $8))
         as r(vectorizer text, mode text, batch_size int, chunk_size int, chunk_overlap int, chunk_by text,
              max_attempts int, long_text text, refreshed boolean, embedded_rows bigint, embedded_chunks bigint,
              queued bigint, deleted bigint, seconds float8)
$$;
comment on function ml.alter_vectorizer(text, text, int, int, int, text, int, boolean) is
  'change mode, batch size, chunking (chunk_size => 0 turns it off) or retry limit in place; rows whose chunking changed are re-embedded (sync) or queued (async). One row: the settings now, and what the refresh did (refreshed false: none was needed)';

create or replace function ml._drop_vectorizer_py(name text, drop_embeddings boolean default false) returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import vectorizer, errors
return json.dumps(errors.call(plpy, vectorizer.drop, plpy, name, drop_embeddings))
$$;
select ml._wrap_python('ml._drop_vectorizer', 'ml._drop_vectorizer_py(text, boolean)');
comment on function ml._drop_vectorizer(text, boolean) is 'internal: ml.drop_vectorizer''s result as one jsonb object';

create or replace function ml.drop_vectorizer(name text, drop_embeddings boolean default false)
returns table(vectorizer text, dropped_tables text[], kept_tables text[])
language sql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
  select r.vectorizer, r.dropped_tables, r.kept_tables
    from jsonb_to_record(ml._drop_vectorizer($1, $2)) as r(vectorizer text, dropped_tables text[], kept_tables text[])
$$;
comment on function ml.drop_vectorizer(text, boolean) is
  'remove the triggers, queue and catalog row; drop the destination table(s) too when drop_embeddings (a kept one stays in schema embeddings, readable by admins)';

create or replace function ml._migrate_vectorizer_py(name text, new_model text, backfill boolean default true) returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import vectorizer, errors
return json.dumps(errors.call(plpy, vectorizer.migrate, plpy, name, new_model, backfill))
$$;
select ml._wrap_python('ml._migrate_vectorizer', 'ml._migrate_vectorizer_py(text, text, boolean)');
comment on function ml._migrate_vectorizer(text, text, boolean) is 'internal: ml.migrate_vectorizer''s result as one jsonb object';

create or replace function ml.migrate_vectorizer(name text, new_model text, backfill boolean default true)
returns table(vectorizer text, serving_model text, staging_model text, staging_destination regclass,
              embedded_rows bigint, embedded_chunks bigint, queued bigint, seconds float8)
language sql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
  select r.vectorizer, r.serving_model, r.staging_model, r.staging_destination, r.embedded_rows, r.embedded_chunks,
         r.queued, r.seconds
    from jsonb_to_record(ml._migrate_vectorizer($1, $2, $3))
         as r(vectorizer text, serving_model text, staging_model text, staging_destination regclass,
              embedded_rows bigint, embedded_chunks bigint, queued bigint, seconds float8)
$$;
comment on function ml.migrate_vectorizer(text, text, boolean) is
  'start a model migration: a staging destination (and HNSW index) kept current by the same triggers while the serving one answers queries; one row: the models, the staging table and what its backfill did';

create or replace function ml._compare_vectorizer_models_py(name text, sample_queries text[], k int default 10)
returns table(query text, overlap float8, serving_top jsonb, staging_top jsonb)
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import vectorizer, errors
return errors.call(plpy, vectorizer.compare, plpy, name, sample_queries, k)
$$;
select ml._wrap_python('ml.compare_vectorizer_models', 'ml._compare_vectorizer_models_py(text, text[], int)');
comment on function ml.compare_vectorizer_models(text, text[], int) is
  'top-k overlap (0..1) between the serving and the staged model for each sample query';

create or replace function ml._promote_vectorizer_py(name text, force boolean default false) returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import vectorizer, errors
return json.dumps(errors.call(plpy, vectorizer.promote, plpy, name, force))
$$;
select ml._wrap_python('ml._promote_vectorizer', 'ml._promote_vectorizer_py(text, boolean)');
comment on function ml._promote_vectorizer(text, boolean) is 'internal: ml.promote_vectorizer''s result as one jsonb object';

create or replace function ml.promote_vectorizer(name text, force boolean default false)
returns table(vectorizer text, serving_model text, serving_destination regclass, previous_model text,
              previous_destination regclass, stale_rows_promoted bigint)
language sql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
  select r.vectorizer, r.serving_model, r.serving_destination, r.previous_model, r.previous_destination,
         r.stale_rows_promoted
    from jsonb_to_record(ml._promote_vectorizer($1, $2))
         as r(vectorizer text, serving_model text, serving_destination regclass, previous_model text,
              previous_destination regclass, stale_rows_promoted bigint)
$$;
comment on function ml.promote_vectorizer(text, boolean) is
  'swap the staged destination in (atomic rename in one transaction); the previous one stays maintained and can be restored until dropped; one row: serving and previous model and table';

create or replace function ml.restore_vectorizer(name text)
returns table(vectorizer text, serving_model text, serving_destination regclass, previous_model text,
              previous_destination regclass, stale_rows_promoted bigint)
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
begin
  if (ml._vectorizer(restore_vectorizer.name)).staging_role is distinct from 'previous' then
    raise exception 'vectorizer "%" has no previous model to restore', restore_vectorizer.name
      using errcode = '22023', hint = 'restore works after ml.promote_vectorizer and before ml.drop_vectorizer_staging';
  end if;
  return query select * from ml.promote_vectorizer(restore_vectorizer.name, true);
end $$;
comment on function ml.restore_vectorizer(text) is
  'swap the previous model''s destination back in after a promotion; the same row as ml.promote_vectorizer';

create or replace function ml.drop_vectorizer_staging(name text)
returns table(vectorizer text, dropped_table text, dropped_model text)
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v ml.vectorizers;
begin
  dropped_table := (ml._vectorizer(drop_vectorizer_staging.name)).staging_destination::text;  -- its name, before it goes
  v := ml._vectorizer_drop_staging(drop_vectorizer_staging.name);
  vectorizer := v.name;
  dropped_model := v.staging_model;
  return next;
end $$;
comment on function ml.drop_vectorizer_staging(text) is
  'drop the staged (abort a migration) or previous (finish it) destination; one row: the table and model dropped';

-- Same shape as ml.search: id (the key as text; a JSON array of the key's values when it has several
-- columns) and score (cosine similarity, higher is better), then the chunk that matched and its position.
create or replace function ml.vectorizer_search(vectorizer text, query text, k int default 10)
returns table(id text, score float8, chunk text, seq int)
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v ml.vectorizers := ml._vectorizer(vectorizer);
  f record;
  idexpr text;
  vs text := (select extnamespace::regnamespace::text from pg_extension where extname = 'vector');
  dest regclass;
  dest_name text;
  mdl text;
begin
  if query is null or btrim(query) = '' then
    raise exception 'empty query' using errcode = '22023', hint = 'pass the text to search for';
  end if;
  perform ml._check_k(k);
  -- a promotion renames tables (and a dropped staging table goes): lock the table that has the serving name
  -- now, then read which model it holds
  dest_name := v.destination::regclass::text;  -- once: the name, not the table, is what is locked
  execute format('lock table %s in access share mode', dest_name);
  dest := to_regclass(dest_name);
  select case when x.destination = dest then x.model when x.staging_destination = dest then x.staging_model end
    into mdl from ml.vectorizers x where x.id = v.id;
  if mdl is null then
    raise exception 'vectorizer "%" changed while searching', vectorizer using errcode = '40001', hint = 'retry';
  end if;
  f := ml._vectorizer_sql(v);
  idexpr := case when cardinality(f.qkeys) = 1 then format('d.%s::text', f.qkeys[1])
                 else format('jsonb_build_array(%s)::text',
                             (select string_agg(format('d.%s::text', q), ', ') from unnest(f.qkeys) q)) end;
  return query execute format(
    'select %s, (1 - (d.embedding operator(%s.<=>) $1))::float8, d.chunk, d.seq from %s d '
    'order by d.embedding operator(%s.<=>) $1 limit $2', idexpr, vs, dest, vs)
    using ml.embed(mdl, query), k;
end $$;
comment on function ml.vectorizer_search(text, text, int) is
  'k nearest chunks to query (id: the source row''s key as text, score: cosine similarity, higher is better), embedded with the vectorizer''s serving model (keeps working across promotions)';

-- pg_cron runs a job as the role that scheduled it: never a superuser or a BYPASSRLS role, which would read
-- every source table and every tenant's rows (SECURITY.md, "Workers")
create or replace function ml.schedule_vectorizer(name text, schedule text default '* * * * *',
                                                  batch_size int default null, max_seconds int default 50) returns bigint
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v ml.vectorizers;
  cron_db text := ml._cron_database();  -- NULL when not set, or not readable by this role
  db text := coalesce(quote_ident(ml._cron_database()), 'the database named by cron.database_name');
begin
  if not exists (select 1 from pg_extension where extname = 'pg_cron') then
    v := ml._vectorizer_for_write(name);  -- an unknown vectorizer is the first thing to say
    raise exception 'pg_cron is not installed in database "%"', current_database()
      using errcode = '55000',
      detail = format('pg_cron (in shared_preload_libraries) runs jobs only from the one database named by '
                      'cron.database_name (%s), and this is database %s. Roles are cluster-wide (tenant roles made '
                      'by ml.create_tenant too): the role a job runs as is the same in every database',
                      coalesce(quote_literal(cron_db), 'not readable by this role; "postgres" unless set'),
                      quote_ident(current_database())),
      hint = format('from %s, as the role that owns the source table, run: SELECT cron.schedule_in_database('
                    '%L, %L, %L, %L); or run `indb worker` (or CALL ml.vectorizer_worker(name)) from a scheduler of '
                    'your own', db, 'indb_vectorizer_' || v.name, schedule,
                    format('call ml.vectorizer_worker(%L, %s, %s, %L)', v.name, coalesce(batch_size::text, 'null'),
                           coalesce(max_seconds, 50), v.tenant),
                    current_database());
  end if;
  if exists (select 1 from pg_roles where rolname = current_user and (rolsuper or rolbypassrls)) then
    raise exception 'role "%" is a superuser or bypasses row-level security: pg_cron would run the worker as it', current_user
      using errcode = '42501',
      detail = 'a pg_cron job runs as the role that scheduled it; a worker reads the vectorizer''s source table with its rights',
      hint = 'SET ROLE to the role that owns the source table (a member of indb_writer), then schedule';
  end if;
  v := ml._vectorizer_for_write(name);
  return cron.schedule('indb_vectorizer_' || v.name, schedule,
                       format('call ml.vectorizer_worker(%L, %s, %s, %L)', v.name, coalesce(batch_size::text, 'null'),
                              coalesce(max_seconds, 50), v.tenant));
end $$;
comment on function ml.schedule_vectorizer(text, text, int, int) is
  'run ml.vectorizer_worker for this vectorizer from pg_cron, as the calling role (not a superuser), in the vectorizer''s tenant (only in the database where pg_cron is installed)';

create or replace function ml.unschedule_vectorizer(name text) returns boolean
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
begin
  if not exists (select 1 from pg_extension where extname = 'pg_cron') then
    raise exception 'pg_cron is not installed in database "%"', current_database() using errcode = '55000',
      detail = format('pg_cron keeps its jobs in the database named by cron.database_name (%s)',
                      coalesce(quote_literal(ml._cron_database()), 'not readable by this role; "postgres" unless set')),
      hint = format('unschedule from that database: SELECT cron.unschedule(%L)', 'indb_vectorizer_' || name);
  end if;
  if not exists (select 1 from cron.job where jobname = 'indb_vectorizer_' || name) then
    return false;
  end if;
  perform cron.unschedule('indb_vectorizer_' || name);
  return true;
end $$;

create or replace view ml.vectorizer_status as select * from ml._vectorizer_status();
comment on view ml.vectorizer_status is
  'one row per vectorizer: source rows (when this session may read the source), embedded rows, pending and failed queue items, oldest pending age, last run and error, long-text policy';

-- destinations follow their vectorizer's tenant (re-applied by every install; a migrated destination gets it here)
select ml._apply_parent_policies(d, format('exists (select 1 from ml.vectorizers v where v.id = %s)', v.id))
  from ml.vectorizers v, unnest(array_remove(array[v.destination, v.staging_destination], null)) d
 where (select relnamespace::regnamespace::text from pg_class where oid = d) = 'embeddings';
