-- Vectorizers, internals: the statement trigger on a source table and the status query.

create or replace function ml._vectorizer_trigger() returns trigger
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import vectorizer, errors
errors.call(plpy, vectorizer.on_trigger, plpy, TD)
return None
$$;
comment on function ml._vectorizer_trigger() is 'internal: statement-level trigger of a vectorizer''s source table (argument: vectorizer id)';

create or replace function ml._vectorizer_status()
returns table(name text, source regclass, destination regclass, model text, mode text, source_rows bigint,
              embedded_rows bigint, chunks bigint, pending bigint, failed bigint, oldest_pending_age interval,
              last_run_at timestamptz, last_error text, long_text text, staging_model text, staging_role text,
              staging_rows bigint)
language plpgsql stable parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  v record;
begin
  for v in select * from ml.vectorizers order by id loop
    name := v.name; source := v.source; destination := v.destination; model := v.model; mode := v.mode;
    select st.last_run_at, st.last_error into last_run_at, last_error
      from ml.vectorizer_stats st where st.vectorizer_id = v.id;
    staging_model := v.staging_model; staging_role := v.staging_role;
    execute format('select count(*) from %s', v.source) into source_rows;
    execute format('select count(*) filter (where seq = 0 and model = $1), count(*) from %s', v.destination)
      into embedded_rows, chunks using v.model;
    staging_rows := null;
    if v.staging_destination is not null then
      execute format('select count(*) from %s where seq = 0 and model = $1', v.staging_destination)
        into staging_rows using v.staging_model;
    end if;
    select count(*), now() - min(q.enqueued_at) into pending, oldest_pending_age
      from ml.vectorizer_queue q where q.vectorizer_id = v.id;
    select count(*) into failed from ml.vectorizer_failed f where f.vectorizer_id = v.id;
    long_text := case when v.chunk_size is not null
                      then format('chunked: %s %s per chunk, %s overlap', v.chunk_size, v.chunk_by, v.chunk_overlap)
                      else format('truncated by the model at %s tokens',
                                  (select m.max_tokens from ml.embedding_models m where m.name = v.model)) end;
    return next;
  end loop;
end $$;
