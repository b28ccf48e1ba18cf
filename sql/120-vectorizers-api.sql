-- Vectorizers, public API: create, refresh, queue workers, alter, drop, model migration, search, schedule.
-- Python: plpython/indb_runtime/vectorizer.py. Tables: migrations/versions/0003_embeddings.py.

create or replace function ml.create_vectorizer(source regclass, columns text[], model text default 'all-MiniLM-L6-v2',
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
comment on function ml.create_vectorizer(regclass, text[], text, text, int, int, text, int, text, boolean, text, int) is
  'keep embeddings of source''s rows (columns joined by newlines) in a destination table with an HNSW index; sync: embedded in the writing statement, async: queued for ml.process_queue';

create or replace function ml.refresh_vectorizer(name text, max_rows int default null) returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import vectorizer, errors
return json.dumps(errors.call(plpy, vectorizer.refresh, plpy, name, max_rows))
$$;
comment on function ml.refresh_vectorizer(text, int) is
  're-embed (sync) or queue (async) only the rows whose content hash or model differs, at most max_rows per target; removes orphaned embeddings';

create or replace function ml.process_queue(vectorizer text default null, batch_size int default null) returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import vectorizer as vz, errors
return json.dumps(errors.call(plpy, vz.process_queue, plpy, vectorizer, batch_size))
$$;
comment on function ml.process_queue(text, int) is
  'embed one batch of queued rows of an async vectorizer (all vectorizers when NULL); safe to run in parallel (FOR UPDATE SKIP LOCKED); failures are retried with back-off, then kept in ml.vectorizer_failed';

create or replace procedure ml.vectorizer_worker(vectorizer text default null, batch_size int default null,
                                                 max_seconds int default 50)
language plpgsql
as $$
declare
  t0 timestamptz := clock_timestamp();
  r jsonb;
begin
  loop
    r := ml.process_queue(vectorizer, batch_size);
    commit;
    exit when coalesce((r->>'processed')::int, 0) + coalesce((r->>'deleted')::int, 0) = 0
           or clock_timestamp() - t0 > make_interval(secs => max_seconds);
  end loop;
end $$;
comment on procedure ml.vectorizer_worker(text, int, int) is
  'drain the queue batch by batch, committing after each, for up to max_seconds (what pg_cron runs)';

create or replace function ml.retry_vectorizer(name text) returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import vectorizer, errors
return json.dumps(errors.call(plpy, vectorizer.retry, plpy, name))
$$;
comment on function ml.retry_vectorizer(text) is 'move failed items back to the queue and make every queued item due now';

create or replace function ml.alter_vectorizer(name text, mode text default null, batch_size int default null,
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
comment on function ml.alter_vectorizer(text, text, int, int, int, text, int, boolean) is
  'change mode, batch size, chunking (chunk_size => 0 turns it off) or retry limit in place; rows whose chunking changed are re-embedded (sync) or queued (async)';

create or replace function ml.drop_vectorizer(name text, drop_embeddings boolean default false) returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import vectorizer, errors
return json.dumps(errors.call(plpy, vectorizer.drop, plpy, name, drop_embeddings))
$$;
comment on function ml.drop_vectorizer(text, boolean) is 'remove the triggers, queue and catalog row; drop the destination table(s) too when drop_embeddings';

create or replace function ml.migrate_vectorizer(name text, new_model text, backfill boolean default true) returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import vectorizer, errors
return json.dumps(errors.call(plpy, vectorizer.migrate, plpy, name, new_model, backfill))
$$;
comment on function ml.migrate_vectorizer(text, text, boolean) is
  'start a model migration: a staging destination (and HNSW index) kept current by the same triggers while the serving one answers queries';

create or replace function ml.compare_vectorizer_models(name text, sample_queries text[], k int default 10)
returns table(query text, overlap float8, serving_top jsonb, staging_top jsonb)
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import vectorizer, errors
return errors.call(plpy, vectorizer.compare, plpy, name, sample_queries, k)
$$;
comment on function ml.compare_vectorizer_models(text, text[], int) is
  'top-k overlap (0..1) between the serving and the staged model for each sample query';

create or replace function ml.promote_vectorizer(name text, force boolean default false) returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import vectorizer, errors
return json.dumps(errors.call(plpy, vectorizer.promote, plpy, name, force))
$$;
comment on function ml.promote_vectorizer(text, boolean) is
  'swap the staged destination in (atomic rename in one transaction); the previous one stays maintained and can be restored until dropped';

create or replace function ml.restore_vectorizer(name text) returns jsonb
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
begin
  if not exists (select 1 from ml.vectorizers v where v.name = restore_vectorizer.name and v.staging_role = 'previous') then
    raise exception 'vectorizer "%" has no previous model to restore', name
      using errcode = '22023', hint = 'restore works after ml.promote_vectorizer and before ml.drop_vectorizer_staging';
  end if;
  return ml.promote_vectorizer(name, true);
end $$;
comment on function ml.restore_vectorizer(text) is 'swap the previous model''s destination back in after a promotion';

create or replace function ml.drop_vectorizer_staging(name text) returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import vectorizer, errors
return json.dumps(errors.call(plpy, vectorizer.drop_staging, plpy, name))
$$;
comment on function ml.drop_vectorizer_staging(text) is 'drop the staged (abort a migration) or previous (finish it) destination';

create or replace function ml.vectorizer_search(vectorizer text, query text, k int default 10)
returns table(key jsonb, seq int, chunk text, distance float8)
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v ml.vectorizers;
  keyexpr text;
  vs text;
  dest_name text;
  dest_oid oid;
  mdl text;
begin
  select * into v from ml.vectorizers where ml.vectorizers.name = vectorizer;
  if not found then
    raise exception 'vectorizer "%" does not exist', vectorizer using errcode = '42704',
      hint = 'see select name from ml.vectorizers';
  end if;
  if k is null or k <= 0 then
    raise exception 'k must be positive, got %', k using errcode = '22023';
  end if;
  -- a promotion renames tables: lock the table first, then read which model it holds
  dest_name := v.destination::text;
  execute format('lock table %s in access share mode', dest_name);
  dest_oid := to_regclass(dest_name);
  select case when x.destination = dest_oid then x.model when x.staging_destination = dest_oid then x.staging_model end
    into mdl from ml.vectorizers x where x.id = v.id;
  if mdl is null then
    raise exception 'vectorizer "%" changed while searching', vectorizer using errcode = '40001', hint = 'retry';
  end if;
  select string_agg(format('d.%I::text', c), ', ' order by o) into keyexpr
    from unnest(v.key_columns) with ordinality as u(c, o);
  select extnamespace::regnamespace::text into vs from pg_extension where extname = 'vector';
  return query execute format(
    'select jsonb_build_array(%s), d.seq, d.chunk, (d.embedding operator(%s.<=>) $1)::float8 from %s d '
    'order by d.embedding operator(%s.<=>) $1 limit $2', keyexpr, vs, dest_oid::regclass, vs)
    using ml.embed(mdl, query), k;
end $$;
comment on function ml.vectorizer_search(text, text, int) is
  'k nearest chunks to query in the serving destination, embedded with the vectorizer''s current model (keeps working across promotions)';

create or replace function ml.schedule_vectorizer(name text, schedule text default '* * * * *',
                                                  batch_size int default null, max_seconds int default 50) returns bigint
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
begin
  if not exists (select 1 from pg_extension where extname = 'pg_cron') then
    raise exception 'pg_cron is not installed in database "%"', current_database()
      using errcode = '55000',
      detail = format('pg_cron lives only in the database named by cron.database_name (%s) and must be in shared_preload_libraries',
                      coalesce(nullif(current_setting('cron.database_name', true), ''), 'not set')),
      hint = 'schedule from that database, or run `indb worker` or call ml.process_queue(name) yourself';
  end if;
  if not exists (select 1 from ml.vectorizers v where v.name = schedule_vectorizer.name) then
    raise exception 'vectorizer "%" does not exist', name using errcode = '42704';
  end if;
  return cron.schedule('indb_vectorizer_' || name, schedule,
                       format('call ml.vectorizer_worker(%L, %s, %s)', name, coalesce(batch_size::text, 'null'),
                              coalesce(max_seconds, 50)));
end $$;
comment on function ml.schedule_vectorizer(text, text, int, int) is
  'run ml.vectorizer_worker for this vectorizer from pg_cron (only in the database where pg_cron is installed)';

create or replace function ml.unschedule_vectorizer(name text) returns boolean
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
begin
  if not exists (select 1 from pg_extension where extname = 'pg_cron') then
    raise exception 'pg_cron is not installed in database "%"', current_database() using errcode = '55000';
  end if;
  if not exists (select 1 from cron.job where jobname = 'indb_vectorizer_' || name) then
    return false;
  end if;
  perform cron.unschedule('indb_vectorizer_' || name);
  return true;
end $$;

drop view if exists ml.vectorizer_status;
create view ml.vectorizer_status as select * from ml._vectorizer_status();
comment on view ml.vectorizer_status is
  'one row per vectorizer: source rows, embedded rows, pending and failed queue items, oldest pending age, last run and error';
