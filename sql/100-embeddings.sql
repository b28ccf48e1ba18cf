-- Embeddings inside Postgres: ml.embed, the model catalog (ml.register_embedding_model, admins only), chunking,
-- the long-text policy, and the one embed-changed-rows core that collections and vectorizers share.
-- Python: plpython/indb_runtime/embedding.py (load, encode, the core), models.py, chunking.py.

create or replace function ml._embed_py(model text, input text) returns vector
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import embedding, errors
return errors.call(plpy, embedding.embed_one, plpy, model, input)
$$;
select ml._wrap_python('ml.embed', 'ml._embed_py(text, text)');
comment on function ml.embed(text, text) is
  'embed one text with a registered model (NULL gives NULL); the model is loaded once per backend';

create or replace function ml._embed_py(model text, inputs text[]) returns vector[]
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import embedding, errors
return errors.call(plpy, embedding.embed_many, plpy, model, inputs)
$$;
select ml._wrap_python('ml.embed', 'ml._embed_py(text, text[])');
comment on function ml.embed(text, text[]) is 'embed an array of texts in one model call (NULL elements give NULL)';

-- ---------------------------------------------------------------------------------------------
-- Long texts and change detection, shared by collections and vectorizers

-- What is hashed with a text: the chunking settings, so that a change of chunking re-embeds
create or replace function ml._chunking_tag(chunk_size int, chunk_overlap int, chunk_by text) returns text
language sql immutable parallel safe
as $$ select case when chunk_size is null then 'whole|'
                  else format('%s:%s:%s|', chunk_by, chunk_size, coalesce(chunk_overlap, 0)) end $$;

-- The content hash of a text under a chunking tag; a language sql function so that the planner inlines it
-- into the queries that compare a source table with its destination
create or replace function ml._content_hash(tag text, content text) returns text
language sql immutable parallel safe
as $$ select encode(sha256(convert_to(tag || content, 'UTF8')), 'hex') $$;
comment on function ml._content_hash(text, text) is
  'internal: sha256 of a text under a chunking tag (ml._chunking_tag): a row is re-embedded when it changes';

-- The one long-text policy: chunked by the vectorizer's settings, else truncated by the model at max_tokens
-- (ml.register_embedding_model reads it from the model), else at the model's own maximum sequence length
create or replace function ml._long_text_policy(chunk_size int, chunk_overlap int, chunk_by text, max_tokens int)
returns text
language sql immutable parallel safe
as $$
  select case when chunk_size is not null
              then format('chunked: %s %s per chunk, %s overlap', chunk_size, chunk_by, coalesce(chunk_overlap, 0))
              when max_tokens is not null then format('truncated by the model at %s tokens', max_tokens)
              else 'truncated by the model at its own maximum sequence length' end
$$;
comment on function ml._long_text_policy(int, int, text, int) is
  'internal: what happens to a text longer than the model''s window (collections: never chunked)';

-- The embed-changed-rows core for SQL callers (collections; vectorizers call the same Python directly):
-- the rows whose hash differs from their old hash (or that have none) and whose text is not empty, embedded
-- in one model call. Returns the 1-based positions of the embedded texts with their vectors.
create or replace function ml.__embed_changed_py(model text, texts text[], hashes text[] default null,
                                                 old_hashes text[] default null)
returns table(ord int, embedding vector)
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import embedding, errors
return errors.call(plpy, embedding.embed_changed_rows, plpy, model, texts, hashes, old_hashes)
$$;
select ml._wrap_python('ml._embed_changed', 'ml.__embed_changed_py(text, text[], text[], text[])');
comment on function ml._embed_changed(text, text[], text[], text[]) is
  'internal: embed the texts whose hash changed (one model call); rows (position, vector)';

-- ---------------------------------------------------------------------------------------------
-- Model catalog (admins register code-bearing things: a model folder is loaded by the server's Python)

create or replace function ml._register_embedding_model_py(name text, path text, dimensions int default null,
                                                           max_tokens int default null,
                                                           "normalize" boolean default true,
                                                           replace boolean default false) returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import models, errors
return json.dumps(errors.call(plpy, models.register, plpy, name, path, dimensions, max_tokens, normalize, replace))
$$;
select ml._wrap_python('ml._register_embedding_model', 'ml._register_embedding_model_py(text, text, int, int, boolean, boolean)');
comment on function ml._register_embedding_model(text, text, int, int, boolean, boolean) is
  'internal: ml.register_embedding_model''s result as one jsonb object (its body runs only for indb_admin)';

create or replace function ml.register_embedding_model(name text, path text, dimensions int default null,
                                                       max_tokens int default null, "normalize" boolean default true,
                                                       replace boolean default false)
returns table(name text, source_path text, folder text, dimensions int, max_tokens int, "normalize" boolean)
language sql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
  select r.name, r.source_path, r.folder, r.dimensions, r.max_tokens, r."normalize"
    from jsonb_to_record(ml._register_embedding_model($1, $2, $3, $4, $5, $6))
         as r(name text, source_path text, folder text, dimensions int, max_tokens int, "normalize" boolean)
$$;
comment on function ml.register_embedding_model(text, text, int, int, boolean, boolean) is
  'indb_admin: register a local sentence-transformers folder (as the server sees it) or package:<module> of the runtime venv under a name; dimensions and max_tokens are read from the model when NULL; one row: what was registered';

-- the one writer of ml.embedding_models (ml.register_embedding_model validates the folder and calls it)
create or replace function ml._embedding_model_save(name text, source_path text, dimensions int, max_tokens int,
                                                    "normalize" boolean, replace boolean) returns ml.embedding_models
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  m ml.embedding_models;
  used text;
begin
  if not ml.is_admin() then
    raise exception 'only indb_admin may register embedding models' using errcode = '42501',
      detail = 'a model folder is code the server loads: registering one is trusted to administrators',
      hint = 'ask an administrator (a member of indb_admin)';
  end if;
  if name is null or btrim(name) = '' or length(name) > 200 or name ~ '[[:cntrl:]]' then
    raise exception 'invalid embedding model name %', coalesce(quote_literal(ml._clip(name, 80)), 'NULL')
      using errcode = '22023', hint = 'a model name is 1-200 printable characters';
  end if;
  if source_path is null or (source_path !~ '^package:[A-Za-z_][A-Za-z0-9_]*$' and source_path !~ '^/') then
    raise exception 'invalid model source %', coalesce(quote_literal(ml._clip(source_path, 200)), 'NULL')
      using errcode = '22023', hint = 'an absolute folder path as the server sees it, or package:<module of the runtime venv>';
  end if;
  if dimensions is null or dimensions < 1 or dimensions > 16000 then
    raise exception 'dimensions must be between 1 and 16000, got %', coalesce(dimensions::text, 'NULL')
      using errcode = '22023';
  end if;
  select * into m from ml.embedding_models x where x.name = _embedding_model_save.name;
  if found and not replace then
    raise exception 'embedding model "%" is already registered', name using errcode = '42710',
      hint = 'pass replace => true to point it at another folder';
  end if;
  if found then
    select string_agg(v.name, ', ' order by v.name) into used from ml.vectorizers v
     where (v.model = m.name or v.staging_model = m.name) and m.dimensions <> _embedding_model_save.dimensions;
    if used is not null then
      raise exception 'embedding model "%" is used by vectorizer(s) % with other dimensions than %', name, used, dimensions
        using errcode = '22023', hint = 'register the new folder under a new name and use ml.migrate_vectorizer';
    end if;
  end if;
  insert into ml.embedding_models as x (name, source_path, dimensions, max_tokens, normalize)
  values (name, source_path, dimensions, max_tokens, coalesce("normalize", true))
  on conflict on constraint embedding_models_pkey do update
     set source_path = excluded.source_path, dimensions = excluded.dimensions, max_tokens = excluded.max_tokens,
         normalize = excluded.normalize, registered_at = now(), registered_by = ml.caller()
  returning * into m;
  return m;
end $$;
comment on function ml._embedding_model_save(text, text, int, int, boolean, boolean) is
  'internal (indb_admin): the one writer of ml.embedding_models';

create or replace function ml._chunk_py(input text, chunk_size int, overlap int default 0, by text default 'tokens',
                                        model text default 'all-MiniLM-L6-v2')
returns table(seq int, chunk text)
language plpython3u stable parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import models, errors
return errors.call(plpy, models.chunk, plpy, input, chunk_size, overlap, by, model)
$$;
select ml._wrap_python('ml.chunk', 'ml._chunk_py(text, int, int, text, text)');
comment on function ml.chunk(text, int, int, text, text) is
  'split text into chunks of chunk_size tokens of the model''s own tokenizer (or characters) with overlap; chunks are slices of the input';
