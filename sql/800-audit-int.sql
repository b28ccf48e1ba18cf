-- Audit, internals: how events are written and sealed (SECURITY.md, "Audit"). Tables: migrations 0006 and 0012;
-- the API (seal, verify, head, retention, partitions) and the list of audited tables: 810-audit-api.sql.
--
-- Appending an event (audit._append, called by the triggers below, the GRANT/REVOKE event trigger, the sealer's
-- observations, ml.create_tenant and audit.apply_retention) takes no lock another transaction could wait on:
--   * its id comes from a sequence, and its `hash` is the sha256 of its own content (audit._content_hash);
--   * the transaction holds one LANE, a row of audit.lanes claimed with an advisory try-lock at its first event
--     (never waiting: a busy lane is skipped, and a new one is made when all are busy) and kept to commit. Each
--     event records its position in the lane and the hash of the lane's previous event, and the lane's row moves
--     to it. A lane is therefore a chain of committed events; a rollback takes back the events and the lane's
--     moves together.
-- Sealing (audit.seal(), run by pg_cron, `indb worker`, any indb role): committed events that are not sealed yet
-- are hashed into audit.chain in commit order (gap-free seq; prev_hash -> hash = sha256(prev_hash, seq, event id,
-- event hash)). An event is sealed exactly once: sealers lock the chain head's row (SKIP LOCKED) and skip when
-- another one runs (no indb role may lock that row; an advisory key, as in 0.2.0, anyone could hold).
--
-- What protects an event before it is sealed (a PENDING event), precisely:
--   * its content hash: an edit that does not recompute it is reported;
--   * its lane: deleting, inserting or reordering an event breaks the lane (a missing position, a link to a hash
--     that is not the previous event's, a lane head row that is not its newest event) and is reported, sealed or not;
--   * not protected: someone with superuser rights who edits an event AND recomputes its hash AND rewrites every
--     later event of its lane AND moves the lane's head row. The sealed chain has the same limit for its tail (the
--     head must be published outside the database, audit.head(), to detect a rewritten tail); a pending event is
--     exposed to it until it is sealed (pg_cron seals every minute).
--
-- Tables are audited in one of four ways (audit.attach):
--   row          one event per changed row (INSERT/UPDATE/DELETE, with who, the primary key and the diff; bytea
--                columns as "sha256:<hex>", so a change of the bytes alone is an event); TRUNCATE is an event
--   history      rows are history: one summary event per INSERT statement (rows, runs, keys, sha256 of the rows);
--                UPDATE, DELETE and TRUNCATE are refused for everyone (owner and superuser included, unless they
--                disable the trigger)
--   mirror       registry.latest_metrics, derived from registry.metrics: a new or changed row must be a point of
--                registry.metrics (no event of its own: the metrics batch is the event), anything else is refused;
--                DELETE and TRUNCATE are refused
--   append_only  the prediction log: inserts are data (no event); UPDATE, DELETE and TRUNCATE are refused

-- 0.1.0's chain link (sha256 over the content and the previous link): events of 0.1.0 keep it
create or replace function audit._hash(prev bytea, id bigint, ts timestamptz, action text, object text,
                                       row_key jsonb, old_values jsonb, new_values jsonb,
                                       session_user_name text, current_user_name text, application_name text,
                                       client_addr inet, txid bigint, tenant text) returns bytea
language sql stable parallel safe
as $$
  select pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.jsonb_build_array(
           pg_catalog.encode(prev, 'hex'), id, extract(epoch from ts)::text, action, object, row_key, old_values,
           new_values, session_user_name, current_user_name, application_name, pg_catalog.host(client_addr), txid,
           tenant)::text, 'UTF8'))
$$;
comment on function audit._hash(bytea, bigint, timestamptz, text, text, jsonb, jsonb, jsonb, text, text, text, inet, bigint, text) is
  'internal: the chain link of an event of 0.1.0 (sha256 over its content and the previous link)';

-- (no SET clause on these: they stay inlinable; every name in them is schema-qualified or pg_catalog)
create or replace function audit._content_hash(id bigint, ts timestamptz, action text, object text, row_key jsonb,
                                               old_values jsonb, new_values jsonb, session_user_name text,
                                               current_user_name text, application_name text, client_addr inet,
                                               txid bigint, tenant text, lane int, lane_pos bigint,
                                               lane_prev bytea) returns bytea
language sql stable parallel safe
as $$
  select pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.jsonb_build_array(
           'indb-audit-2', id, extract(epoch from ts)::text, action, object, row_key, old_values, new_values,
           session_user_name, current_user_name, application_name, pg_catalog.host(client_addr), txid, tenant,
           lane, lane_pos, pg_catalog.encode(lane_prev, 'hex'))::text, 'UTF8'))
$$;
comment on function audit._content_hash(bigint, timestamptz, text, text, jsonb, jsonb, jsonb, text, text, text, inet, bigint, text, int, bigint, bytea) is
  'internal: sha256 of an event''s content, its lane position and the hash of the previous event of its lane';

create or replace function audit._link_hash(prev bytea, seq bigint, event_id bigint, content bytea) returns bytea
language sql immutable parallel safe
as $$
  select pg_catalog.sha256(prev operator(pg_catalog.||) pg_catalog.int8send(seq) operator(pg_catalog.||)
                           pg_catalog.int8send(event_id) operator(pg_catalog.||) content)
$$;
comment on function audit._link_hash(bytea, bigint, bigint, bytea) is
  'internal: a link of the sealed chain: sha256(previous link, position, event id, the event''s content hash)';

create or replace function audit._acting_role() returns text
language sql stable parallel safe
as $$ select coalesce(nullif(pg_catalog.current_setting('role', true), 'none'), session_user::text) $$;

-- the advisory-lock class that claims a lane (audit._append; the second key is the lane)
create or replace function audit._lane_lock() returns int
language sql immutable parallel safe
as $$ select 182285636 $$;   -- hashtext('indb audit lane')

-- append one event (internal: the audit triggers, the functions of this area and ml.create_tenant call it;
-- no working role may execute it). Takes no lock another transaction waits on (see the top of this file).
--
-- C (sql/c/indb_audit.c), one statement per event kept as a saved plan: the lane's row moves to the event and the
-- event is inserted, with audit._content_hash over both. A transaction claims a lane at its first event with a
-- transaction-level advisory try-lock on the lane's number (never waiting; in memory, nothing written): first the
-- lane this session used last, then any lane whose lock is free, then a new lane. Every appender holds the lane's
-- advisory lock before it updates the lane's row, so the update never waits on another appender. The lane held and
-- the place of its row's newest version live in the backend's memory, not in settings a session could SET (a
-- transaction of 100,000 events updates the row by its place and stays linear). The PL/pgSQL it replaces:
-- ~590,000 instructions an event, ~45% of them PL/pgSQL's set-up around the one statement.
-- enable_seqscan = off: the statement's plan is kept for the session, and a plan made while audit.lanes was one
-- page (a sequential scan is then the cheapest) read every dead version of the lane's row for each event once a
-- long transaction had grown the table (5,000 instead of 45,000 events/s, measured); the row is found by its place
-- (TID scan) or by the lane's key (index scan), whatever the table's size was when the plan was made.
create or replace function audit._append(action text, object text, row_key jsonb, old_values jsonb,
                                         new_values jsonb, tenant text, acting_role text default null) returns bigint
language c volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
as '$libdir/indb_audit', 'indb_audit_append';
comment on function audit._append(text, text, jsonb, jsonb, jsonb, text, text) is
  'internal: append one event (no lock another transaction waits on); audit.seal() chains it later';

-- row trigger (C, sql/c/indb_audit.c): TG_ARGV[0] = comma-separated primary key columns, TG_ARGV[1..] = the bytea
-- columns. The event: who, the primary key, the row as jsonb (an UPDATE: only the columns that changed, compared
-- as jsonb; nothing but updated_at: no event). Bytea columns are nulled *before* the row becomes jsonb, so a large
-- value (a 150 MB model) is never turned into a JSON string; they are recorded as "sha256:<hex>", an UPDATE only
-- when the bytes changed (a column the UPDATE did not touch keeps its stored value and is not read).
create or replace function audit._row_trigger() returns trigger
language c security definer parallel unsafe
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
as '$libdir/indb_audit', 'indb_audit_row_trigger';

-- statement trigger of history tables (C, sql/c/indb_audit.c): one summary event per INSERT statement. TG_ARGV[0]:
-- the column summarized as "keys" (metrics/params: key, training trials: metric); every history table has run_id
-- and tenant. The event's new_values: {rows, run_ids, keys, sha256}; sha256 over the rows' text form (record
-- output, as in `SELECT r::text`), one line per row, in the order the statement inserted them (0.2.0 hashed each
-- row's jsonb: 5x the cost, for the same evidence). Its query is planned once per table and kept.
create or replace function audit._batch_trigger() returns trigger
language c security definer parallel unsafe
set search_path = pg_catalog, pg_temp
set enable_seqscan = off
as '$libdir/indb_audit', 'indb_audit_batch_trigger';

-- registry.latest_metrics is derived from registry.metrics (registry.log_batch writes both in one call): every
-- row an INSERT or UPDATE leaves must be a logged point. Falsifying a result therefore means changing
-- registry.metrics, which is history (refused).
create or replace function audit._latest_metrics_trigger() returns trigger
language plpgsql security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare bad record;
begin
  select n.run_id, n.key, n.value, n.step into bad
    from new_rows n
   where not exists (select 1 from registry.metrics m
                      where m.run_id = n.run_id and m.key = n.key and m.step = n.step and m.ts = n.ts
                        and m.value = n.value)
   limit 1;
  if found then
    raise exception '% on registry.latest_metrics is refused: metric % = % (step %) of run % is not a logged point',
                    tg_op, quote_literal(bad.key), bad.value, bad.step, bad.run_id
      using errcode = '42501',
            detail = 'registry.latest_metrics holds the newest point of each metric of registry.metrics, which is history',
            hint = 'log the point with registry.log_batch: it writes both tables';
  end if;
  return null;
end $$;

-- history, mirror and append-only tables: UPDATE, DELETE and TRUNCATE are refused (row and statement triggers)
create or replace function audit._refuse_history() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  raise exception '% on %.% is refused: its rows are history (append-only)', tg_op, tg_table_schema, tg_table_name
    using errcode = '42501',
          hint = case tg_table_name
                   when 'metrics' then 'log a new point with registry.log_batch'
                   when 'latest_metrics' then 'log a new point with registry.log_batch; the newest point of each metric is kept'
                   when 'params' then 'params are immutable once logged: log another key, or start a new run'
                   when 'training_trials' then 'trials are the record of a search: train again to search again'
                   else 'old months of a partitioned log leave by dropping their partitions'
                 end;
end $$;

create or replace function audit._truncate_trigger() returns trigger
language plpgsql security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
begin
  perform audit._append('TRUNCATE', tg_table_schema || '.' || tg_table_name, null, null, null, null);
  return null;
end $$;

-- the log itself (events, chain, anchors) and lanes: append-only for everyone
create or replace function audit._refuse_change() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  raise exception '% on %.% is refused: the audit log is append-only', tg_op, tg_table_schema, tg_table_name
    using errcode = '42501',
          hint = 'old partitions are removed only by audit.apply_retention(), run by indb_admin';
end $$;

-- the chain head only moves forward, to a sealed link that exists (a guard against accidents, not against a
-- superuser: audit.verify() compares the head with the newest sealed link)
create or replace function audit._guard_head() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  if tg_op = 'UPDATE' and new.singleton and new.last_id >= old.last_id and new.txid_water >= old.txid_water
     and ((new.last_id = old.last_id and new.last_hash = old.last_hash)
          or exists (select 1 from audit.chain c where c.seq = new.last_id and c.hash = new.last_hash)) then
    return new;
  end if;
  raise exception '% on audit.chain_head is refused: only audit.seal() moves the chain head', tg_op
    using errcode = '42501';
end $$;

-- seal: hash committed, unsealed events into the chain in commit order. The caller holds the chain head's row lock
-- (audit.seal() tries it, audit.apply_retention() waits for it) and runs at READ COMMITTED.
--   * commit order: this call seals the events its snapshot sees, ordered by id; an event committed later is
--     sealed by a later call, after them. Events of one session are sealed in the order it committed them.
--   * where to look: every event of a transaction whose txid is below chain_head.txid_water is sealed. The
--     water is the oldest transaction still running when this call started (its snapshot's xmin): every
--     event of an older transaction was committed (or rolled back) before this call's snapshot, so it is
--     sealed now and never looked at again.
create or replace function audit._seal() returns bigint
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  water bigint := pg_snapshot_xmin(pg_current_snapshot())::text::bigint;  -- the calling statement's snapshot
  h audit.chain_head;
  r record;
  ids bigint[] := '{}';
  tss timestamptz[] := '{}';
  seqs bigint[] := '{}';
  prevs bytea[] := '{}';
  links bytea[] := '{}';
  prev bytea;
  link bytea;
  s bigint;
begin
  select * into h from audit.chain_head for update;
  prev := h.last_hash;
  s := h.last_id;
  -- dynamic: planned with the actual water each time (an index scan of the few recent transactions)
  for r in execute 'select e.id, e.ts, e.hash from audit.events e
                     where e.txid >= $1
                       and not exists (select 1 from audit.chain c where c.event_id = e.id and c.event_ts = e.ts)
                     order by e.id'
           using h.txid_water loop
    s := s + 1;
    link := audit._link_hash(prev, s, r.id, r.hash);
    ids := ids || r.id;
    tss := tss || r.ts;
    seqs := seqs || s;
    prevs := prevs || prev;
    links := links || link;
    prev := link;
  end loop;
  if cardinality(ids) > 0 then
    insert into audit.chain(seq, event_id, event_ts, prev_hash, hash)
    select u.seq, u.id, u.ts, u.prev, u.link from unnest(seqs, ids, tss, prevs, links) as u(seq, id, ts, prev, link);
  end if;
  if cardinality(ids) > 0 or water > h.txid_water then
    update audit.chain_head
       set last_id = s, last_hash = prev,
           prev_hash = case when cardinality(ids) > 0 then prevs[cardinality(prevs)] else h.prev_hash end,
           txid_water = greatest(h.txid_water, water);
  end if;
  return cardinality(ids);
end $$;
comment on function audit._seal() is 'internal: seal committed events (the caller holds the chain head''s row lock; see audit.seal())';

-- Role membership (GRANT indb_writer TO alice) changes a shared catalog, which event triggers never see. Each seal
-- compares the memberships of indb's roles (indb_*, tenants included) with the ones it saw last and logs the
-- difference as an event: observed at that seal, by whoever sealed, not attributed to who made the change.
create or replace function audit._observe_roles() returns boolean
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  added jsonb;
  removed jsonb;
begin
  -- one statement, one snapshot: what is logged is exactly what is stored
  with cur as (
         select r.rolname as role, m.rolname as member, bool_or(am.admin_option) as admin_option
           from pg_auth_members am join pg_roles r on r.oid = am.roleid join pg_roles m on m.oid = am.member
          where r.rolname like 'indb\_%'
          group by 1, 2),
       a as (select * from cur except select * from audit.memberships),
       d as (select * from audit.memberships except select * from cur),
       gone as (delete from audit.memberships x using d
                 where x.role = d.role and x.member = d.member and x.admin_option = d.admin_option),
       made as (insert into audit.memberships select * from a)
  select (select jsonb_agg(to_jsonb(a) order by a.role, a.member) from a),
         (select jsonb_agg(to_jsonb(d) order by d.role, d.member) from d)
    into added, removed;
  if added is null and removed is null then
    return false;
  end if;
  perform audit._append('ROLE_MEMBERSHIP', 'roles', null, null,
                        jsonb_build_object('added', coalesce(added, '[]'), 'removed', coalesce(removed, '[]'),
                                           'observed_by', 'audit.seal()'), null);
  return true;
end $$;

-- GRANT / REVOKE / ALTER DEFAULT PRIVILEGES: an event only when the ACL of one of indb's objects changed.
-- Event triggers do not say which objects a GRANT named (and the query text is whatever the session sent), so
-- the ACLs of indb's schemas, relations, columns, functions, types and default privileges are compared before
-- (ddl_command_start) and after (ddl_command_end) the command; audit.acls keeps the ACLs last logged, and each
-- seal logs what changed without an event. Role membership (GRANT indb_writer TO x) is a change of a shared
-- object, which event triggers never see: each seal logs it too (audit._observe_roles).
create or replace function audit._indb_acls() returns table(k text, h bigint, acl aclitem[])
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
  -- objects by name, not oid (a view dropped and made again with the same privileges is no change);
  -- plpgsql: the plan is kept for the session (this runs twice per GRANT anywhere in the database)
  return query
  with s(oid) as (select n.oid from pg_namespace n
                   where n.nspname in ('ml', 'registry', 'features', 'audit', 'collections', 'embeddings')),
       r(oid) as (select a.oid from pg_roles a
                   where a.rolname in ('indb_app', 'indb_reader', 'indb_writer', 'indb_admin', 'indb_owner',
                                       'indb_tenant_manager'))
  select 'schema ' || quote_ident(n.nspname), hash_array_extended(n.nspacl, 0), n.nspacl from pg_namespace n
   where n.oid in (select s.oid from s) and n.nspacl is not null
  union all
  select 'relation ' || c.oid::regclass::text, hash_array_extended(c.relacl, 0), c.relacl from pg_class c
   where c.relnamespace in (select s.oid from s) and c.relacl is not null
  union all
  select 'column ' || a.attrelid::regclass::text || '.' || quote_ident(a.attname), hash_array_extended(a.attacl, 0),
         a.attacl
    from pg_attribute a
   where a.attacl is not null
     and a.attrelid in (select c.oid from pg_class c where c.relnamespace in (select s.oid from s))
  union all
  select 'function ' || p.oid::regprocedure::text, hash_array_extended(p.proacl, 0), p.proacl from pg_proc p
   where p.pronamespace in (select s.oid from s) and p.proacl is not null
  union all
  select 'type ' || t.oid::regtype::text, hash_array_extended(t.typacl, 0), t.typacl from pg_type t
   where t.typnamespace in (select s.oid from s) and t.typacl is not null
  union all
  select format('default privileges of %s%s on %s', d.defaclrole::regrole,
                coalesce(' in ' || d.defaclnamespace::regnamespace::text, ''), d.defaclobjtype),
         hash_array_extended(d.defaclacl, 0), d.defaclacl
    from pg_default_acl d
   where d.defaclnamespace in (select s.oid from s) or d.defaclrole in (select r.oid from r);
end $$;

-- `indb install` re-applies the grant policy (999-grants.sql): hundreds of GRANTs on indb's objects, most of which
-- change nothing in the end. Comparing ACLs around each would double the install's time, and logging each would
-- fill the log with the text of 999-grants.sql; so an install's GRANTs are not events one by one: what they changed
-- is logged by the next audit.seal() as one PRIVILEGES event (audit._observe_privileges). A session is installing
-- when it is a superuser's and holds the install lock of client/indb/install.py (remembered for the transaction).
create or replace function audit._installing() returns boolean
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
begin
  if current_setting('indb.audit_installing', true) = 'on' then
    return true;
  end if;
  if not (select rolsuper from pg_roles where rolname = session_user) then
    return false;
  end if;
  if exists (select 1 from pg_locks l
              where l.locktype = 'advisory' and l.pid = pg_backend_pid() and l.granted and l.objsubid = 1
                and l.database = (select oid from pg_database where datname = current_database())
                -- pg_advisory_xact_lock(hashtext('indb install')), as client/indb/install.py takes it
                and l.classid = ((hashtext('indb install')::bigint >> 32) & 4294967295)::oid
                and l.objid = (hashtext('indb install')::bigint & 4294967295)::oid) then
    perform set_config('indb.audit_installing', 'on', true);
    return true;
  end if;
  return false;
end $$;

create or replace function audit._grant_start() returns event_trigger
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if audit._installing() then
    return;
  end if;
  perform set_config('indb.audit_acls',
                     coalesce((select jsonb_object_agg(a.k, a.h::text) from audit._indb_acls() a), '{}')::text, true);
end $$;

-- the changes of indb's ACLs as a jsonb array of {object, acl}: between a snapshot ({object: hash}) and now, or
-- (before null) between audit.acls, what was logged last, and now; what is returned is recorded in audit.acls
create or replace function audit._acl_changes(before jsonb default null) returns jsonb
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare objs jsonb;
begin
  with b as (select x.key as k, x.value as h from jsonb_each_text(before) x
              where before is not null
             union all
             select a.k, a.h from audit.acls a where before is null),
       a as (select i.k, i.acl, i.h::text as h from audit._indb_acls() i),
       d as (select coalesce(a.k, b.k) as k, a.h, a.acl from a full join b on a.k = b.k where a.h is distinct from b.h),
       gone as (delete from audit.acls x using d where x.k = d.k and d.h is null),
       made as (insert into audit.acls(k, h) select d.k, d.h from d where d.h is not null
                on conflict (k) do update set h = excluded.h)
  select jsonb_agg(jsonb_build_object('object', d.k, 'acl', d.acl::text) order by d.k)
    into objs
    from d;
  return objs;
end $$;

create or replace function audit._ddl_trigger() returns event_trigger
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  before jsonb := coalesce(nullif(current_setting('indb.audit_acls', true), ''), '{}')::jsonb;
  objs jsonb;
begin
  if audit._installing() then
    return;   -- logged by the next seal, as the net change of the install
  end if;
  perform set_config('indb.audit_acls', '', true);
  objs := audit._acl_changes(before);
  if objs is null then
    return;   -- none of indb's privileges changed: not an event (anyone may GRANT on their own objects)
  end if;
  perform audit._append(tg_tag, 'privileges', null, null,
                        jsonb_build_object('command', left(current_query(), 2000),
                                           'object_type', (select string_agg(distinct lower(c.object_type), ', ')
                                                             from pg_event_trigger_ddl_commands() c),
                                           'objects', objs), null);
end $$;

-- privileges that changed without an event (an install's GRANTs, ALTER ... OWNER, anything event triggers do not
-- see): each seal compares indb's ACLs with what was logged last and logs the difference as one PRIVILEGES event
create or replace function audit._observe_privileges() returns boolean
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare objs jsonb := audit._acl_changes(null);
begin
  if objs is null then
    return false;
  end if;
  perform audit._append('PRIVILEGES', 'privileges', null, null,
                        jsonb_build_object('objects', objs, 'observed_by', 'audit.seal()'), null);
  return true;
end $$;

do $$
begin
  if (select rolsuper from pg_roles where rolname = current_user) then
    drop event trigger if exists indb_audit_grants_start;
    create event trigger indb_audit_grants_start on ddl_command_start
      when tag in ('GRANT', 'REVOKE', 'ALTER DEFAULT PRIVILEGES') execute function audit._grant_start();
    drop event trigger if exists indb_audit_grants;
    create event trigger indb_audit_grants on ddl_command_end
      when tag in ('GRANT', 'REVOKE', 'ALTER DEFAULT PRIVILEGES') execute function audit._ddl_trigger();
  else
    raise notice 'indb: not a superuser, GRANT/REVOKE auditing (event trigger) not installed';
  end if;
end $$;

-- attach the audit triggers to a table: kind row | history | mirror | append_only (see the top of this file)
create or replace function audit.attach(tbl regclass, kind text default 'row') returns void
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  pk text;
  bytea_cols text;
  args text;
  trg text;
  cond text;
begin
  if kind is null or kind not in ('row', 'history', 'mirror', 'append_only') then
    raise exception 'unknown audit kind %', coalesce(quote_literal(kind), 'NULL') using errcode = '22023',
      hint = 'kinds: row, history, mirror, append_only';
  end if;
  foreach trg in array array['indb_audit', 'indb_audit_update', 'indb_audit_batch', 'indb_audit_truncate',
                             'indb_audit_mirror_insert',
                             'indb_audit_mirror_update', 'indb_append_only', 'indb_append_only_truncate'] loop
    execute format('drop trigger if exists %I on %s', trg, tbl);
  end loop;
  if kind = 'row' then
    select string_agg(quote_literal(a.attname), ', ' order by a.attnum) into bytea_cols
      from pg_attribute a where a.attrelid = tbl and a.attnum > 0 and not a.attisdropped
                            and a.atttypid = 'bytea'::regtype;
    select string_agg(a.attname, ',' order by array_position(i.indkey::int2[], a.attnum)) into pk
      from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
     where i.indrelid = tbl and i.indisprimary;
    args := quote_literal(coalesce(pk, '')) || coalesce(', ' || bytea_cols, '');
    if bytea_cols is not null then
      execute format('create trigger indb_audit after insert or update or delete on %s '
                     'for each row execute function audit._row_trigger(%s)', tbl, args);
    else
      -- cheap filters in C, before any PL/pgSQL runs: edges the lineage trigger writes are implied by the
      -- audited row that caused them; an UPDATE that changes nothing but updated_at is not an event
      execute format('create trigger indb_audit after insert or delete on %s for each row %s'
                     'execute function audit._row_trigger(%s)', tbl,
                     case when tbl = 'registry.lineage_edges'::regclass then 'when (pg_trigger_depth() = 0) ' else '' end,
                     args);
      -- the columns but updated_at, compared in C with their types' equality operators (0.2.0 compared the rows
      -- as jsonb: two conversions per UPDATE before the trigger made the same two again); a type without an
      -- equality operator (json, point, ...) makes the comparison fail to build: then the rows are compared as jsonb
      select format('row(%s) is distinct from row(%s)',
                    string_agg(format('old.%I', a.attname), ', ' order by a.attnum),
                    string_agg(format('new.%I', a.attname), ', ' order by a.attnum))
        into cond
        from pg_attribute a
       where a.attrelid = tbl and a.attnum > 0 and not a.attisdropped and a.attname <> 'updated_at';
      begin
        execute format('create trigger indb_audit_update after update on %s for each row when (%s) '
                       'execute function audit._row_trigger(%s)', tbl, cond, args);
      exception when undefined_function then
        execute format('create trigger indb_audit_update after update on %s for each row when (%s) '
                       'execute function audit._row_trigger(%s)', tbl,
                       '(to_jsonb(old.*) - ''updated_at'') is distinct from (to_jsonb(new.*) - ''updated_at'')', args);
      end;
    end if;
    execute format('create trigger indb_audit_truncate after truncate on %s '
                   'for each statement execute function audit._truncate_trigger()', tbl);
    return;
  end if;
  if kind = 'history' then
    execute format('create trigger indb_audit_batch after insert on %s referencing new table as new_rows '
                   'for each statement execute function audit._batch_trigger(%L)', tbl,
                   case when tbl = 'registry.training_trials'::regclass then 'metric' else 'key' end);
  elsif kind = 'mirror' then
    execute format('create trigger indb_audit_mirror_insert after insert on %s referencing new table as new_rows '
                   'for each statement execute function audit._latest_metrics_trigger()', tbl);
    execute format('create trigger indb_audit_mirror_update after update on %s referencing new table as new_rows '
                   'for each statement execute function audit._latest_metrics_trigger()', tbl);
  end if;
  execute format('create trigger indb_append_only before %s on %s for each row execute function audit._refuse_history()',
                 case kind when 'mirror' then 'delete' else 'update or delete' end, tbl);
  execute format('create trigger indb_append_only_truncate before truncate on %s '
                 'for each statement execute function audit._refuse_history()', tbl);
end $$;
comment on function audit.attach(regclass, text) is
  'install time: attach the audit triggers to a table; kind row | history | mirror | append_only';
