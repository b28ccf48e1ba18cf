-- Progress of long calls, seen from any session (plpython/indb_runtime/progress.py): ml.train,
-- features.materialize, vectorizer backfills and refreshes, ml.reindex_collection, in the manner of
-- pg_stat_progress_create_index. A session sees the calls of roles it is a member of; admins see all; only
-- the calls in its own database. The filter is in ml._progress itself, not only in the view: any indb role may
-- execute it, and it reads the server's progress files, which no row security guards (a target names a
-- collection, a vectorizer, a project: another tenant's names).

create or replace function ml._progress_py()
returns table(pid int, database text, role text, command text, target text, phase text, done bigint,
              total bigint, unit text, started_at timestamptz, updated_at timestamptz)
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import progress
live = {r["pid"]: r["started"] for r in plpy.execute(
    "select pid, extract(epoch from backend_start)::float8 as started from pg_stat_activity")}
me = plpy.execute(
    "select current_database()::text as db, ml.is_admin() as admin, "
    "array(select r.rolname::text from pg_roles r where pg_has_role(ml.caller(), r.oid, 'member')) as roles")[0]
mine = set(me["roles"])
import datetime as dt
def ts(x):
    return None if x is None else dt.datetime.fromtimestamp(x, dt.timezone.utc)
return [(s.get("pid"), s.get("database"), s.get("role"), s.get("command"), s.get("target"), s.get("phase"),
         s.get("done"), s.get("total"), s.get("unit"), ts(s.get("started_at")), ts(s.get("updated_at")))
        for s in progress.read_all(live)
        if s.get("database") == me["db"] and (me["admin"] or s.get("role") in mine)]
$$;
select ml._wrap_python('ml._progress', 'ml._progress_py()');

create or replace view ml.progress as
select p.pid, p.database, p.role, p.command, p.target, p.phase, p.done, p.total, p.unit,
       case when p.total > 0 then round(100.0 * p.done / p.total, 1) end as percent,
       p.started_at, p.updated_at,
       case when p.updated_at > p.started_at then round((p.done / extract(epoch from p.updated_at - p.started_at))::numeric, 1) end
         as per_second,
       case when p.total > p.done and p.done > 0 and p.updated_at > p.started_at
            then round(((p.total - p.done) * extract(epoch from p.updated_at - p.started_at) / p.done)::numeric) end
         as seconds_left
  from ml._progress() p;  -- only the caller's database and roles (see the top of this file)
comment on view ml.progress is
  'long indb calls in progress (train, materialize, backfill, refresh, reindex): rows done of total, rate, time left';

-- The one SQL face of progress for long plpgsql calls (collections' add_documents, reindex and big INSERTs;
-- the feature store's materialize and push): indb_runtime.progress.report. A call with a command starts (or
-- moves on) the entry of that command and target; a call without a command moves the current entry on; all
-- NULL ends it. Callers end it in an exception handler too, so that a failed call leaves nothing behind.
create or replace function ml.__report_progress_py(command text, target text default null, phase text default null,
                                                   done bigint default null, total bigint default null,
                                                   unit text default null) returns void
language plpython3u volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
import sys
if 'indb_runtime.bootstrap' not in sys.modules: plpy.execute('select ml._activate()')
from indb_runtime import progress
progress.report(plpy, command, target, phase, done, total, unit)
$$;
select ml._wrap_python('ml._report_progress', 'ml.__report_progress_py(text, text, text, bigint, bigint, text)');
comment on function ml._report_progress(text, text, text, bigint, bigint, text) is
  'internal: the progress of a long SQL call in ml.progress (a command: start or move on; no command: move on; all NULL: end)';
