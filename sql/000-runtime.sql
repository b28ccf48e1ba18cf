-- indb runtime bootstrap: activates the runtime venv inside PL/Python and reports on it.
-- Stateless: re-applied (create or replace) by `indb install` after every upgrade.
-- Every PL/Python function of indb starts with the same two lines:
--     import sys
--     if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
-- and then imports what it needs from the indb_runtime package (plpython/indb_runtime).

create or replace function ml.version() returns text
language sql immutable parallel safe
as $$ select '@INDB_VERSION@'::text $$;
comment on function ml.version() is 'version of the installed indb SQL objects';

create or replace function ml._activate() returns text
language plpython3u parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
mod = sys.modules.get('indb_runtime.bootstrap')
if mod is not None and mod.STATE.get('activated_at'):
    return mod.STATE['venv']
import os, site
venv = plpy.execute("select current_setting('indb.venv', true) as v")[0]['v']
if not venv:
    plpy.error('indb runtime venv is not configured for this database',
               detail="the setting indb.venv is empty",
               hint='run `indb install` (it writes ALTER DATABASE ... SET indb.venv), or SET indb.venv to the runtime venv path',
               sqlstate='58P01')
pyver = 'python%d.%d' % sys.version_info[:2]
sp = os.path.join(venv, 'lib', pyver, 'site-packages')
if not os.path.isdir(sp):
    plpy.error('indb runtime venv not usable: %s does not exist or the server cannot read it' % sp,
               detail='PL/Python embeds %s (%s); the venv must be made with that interpreter' % (pyver, sys.version.split()[0]),
               hint='make the venv with /usr/bin/python3.11 -m venv and make sure the database server user can read it',
               sqlstate='58P01')
before = list(sys.path)
site.addsitedir(sp)
added = [p for p in sys.path if p not in before]
sys.path[:] = added + before
try:
    from indb_runtime import bootstrap
except ImportError as e:
    plpy.error('cannot import the indb runtime package from %s: %s' % (venv, e),
               hint='install it into the venv: pip install -e plpython', sqlstate='58P01')
try:
    bootstrap.activate(venv, plpy.execute('select ml.version() as v')[0]['v'])
except bootstrap.RuntimeMismatch as e:
    plpy.error(str(e), hint='re-run `indb install` with the venv that holds the matching runtime', sqlstate='55000')
return venv
$$;
comment on function ml._activate() is 'internal: put the runtime venv (setting indb.venv) on sys.path and check versions';

create or replace function ml.runtime_check() returns jsonb
language plpython3u parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import bootstrap
return json.dumps(bootstrap.runtime_info(import_heavy=False))
$$;
comment on function ml.runtime_check() is 'activates the runtime without heavy imports and returns its versions (used by indb install)';

create or replace function ml.runtime_info() returns jsonb
language plpython3u parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import bootstrap
return json.dumps(bootstrap.runtime_info(import_heavy=True))
$$;
comment on function ml.runtime_info() is 'python version, venv, torch/xgboost/sentence-transformers versions, device, threads, loaded models';

create or replace function ml.warmup(model text default 'all-MiniLM-L6-v2') returns jsonb
language plpython3u parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys, json
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import warmup, errors
return json.dumps(errors.call(plpy, warmup.warmup, plpy, model))
$$;
comment on function ml.warmup(text) is 'import torch, xgboost, sentence-transformers and load the model in this backend; returns seconds spent';
