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
