-- Embeddings inside Postgres (issue 3 grows this file: catalog, vectorizers, queues, migration).

create or replace function ml.embed(model text, input text) returns vector
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import embedding, errors
if input is None:
    return None
spec = errors.call(plpy, embedding.resolve, plpy, model)
vecs = errors.call(plpy, embedding.encode, spec, [input])
return embedding.to_pgvector(vecs[0])
$$;

create or replace function ml.embed(model text, inputs text[]) returns vector[]
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import embedding, errors
if inputs is None:
    return None
spec = errors.call(plpy, embedding.resolve, plpy, model)
present = [i for i, t in enumerate(inputs) if t is not None]
tick = plpy.prepare('select 1')
vecs = errors.call(plpy, embedding.encode, spec, [inputs[i] for i in present], check=lambda: plpy.execute(tick))
out = [None] * len(inputs)
for i, v in zip(present, vecs):
    out[i] = embedding.to_pgvector(v)
return out
$$;

comment on function ml.embed(text, text) is 'embed one text with a registered model (NULL gives NULL); the model is loaded once per backend';
comment on function ml.embed(text, text[]) is 'embed an array of texts in one model call (NULL elements give NULL)';

-- ---------------------------------------------------------------------------------------------
-- Model catalog and chunking

create or replace function ml.register_embedding_model(name text, path text, dimensions int default null,
                                                       max_tokens int default null, "normalize" boolean default true,
                                                       replace boolean default false) returns jsonb
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import models, errors
return json.dumps(errors.call(plpy, models.register, plpy, name, path, dimensions, max_tokens, normalize, replace))
$$;
comment on function ml.register_embedding_model(text, text, int, int, boolean, boolean) is
  'register a local sentence-transformers folder (as the server sees it) under a name; dimensions and max_tokens are read from the model when NULL';

create or replace function ml.chunk(input text, chunk_size int, overlap int default 0, by text default 'tokens',
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
comment on function ml.chunk(text, int, int, text, text) is
  'split text into chunks of chunk_size tokens of the model''s own tokenizer (or characters) with overlap; chunks are slices of the input';

-- ---------------------------------------------------------------------------------------------
-- Vectorizers
