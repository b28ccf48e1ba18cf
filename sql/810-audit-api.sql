-- Audit, API: sealing, verification, the published head, retention, partitions, and the list of audited tables
-- (SECURITY.md, "Audit"; how events are appended and what protects them: 800-audit-int.sql).
--
-- * Every change to an audited table is an event; the list is at the end of this file, and a table missing from
--   the database is an install error (the migrations create every one).
-- * audit.seal() chains committed events in commit order, and logs what it observes changed since the last seal
--   without an event of its own (membership in indb's roles, privileges an install or an ALTER ... OWNER changed);
--   pg_cron runs it every minute where pg_cron is installed
--   (the job is scheduled at install in the database named by cron.database_name), `indb worker` runs it between
--   batches, and any indb role may call it.
-- * audit.verify() is read-only (it runs on read replicas too): it checks every event's content hash, the
--   sealed chain, the lanes of pending and sealed events, and the heads; and says how many events are pending.
-- * Nobody, the owner included, may UPDATE, DELETE or TRUNCATE the log (triggers, and no role has those
--   privileges). Only audit.apply_retention() (indb_admin) drops whole old months; it records anchors so the
--   chain stays verifiable, and logs itself.

-- partitions of the log (events and chain, one pair per month); the default partitions catch anything else.
-- A new partition gets a TRUNCATE trigger when it is made; existing ones are never touched (that would lock
-- them against appending transactions).
create or replace function audit.ensure_partitions(months_ahead int default 3) returns text[]
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  m date;
  suffix text;
  made text[] := '{}';
  t record;
begin
  for i in 0..greatest(months_ahead, 0) loop
    m := (date_trunc('month', now()) + make_interval(months => i))::date;
    suffix := to_char(m, 'YYYY_MM');
    continue when to_regclass(format('audit.%I', 'events_' || suffix)) is not null
              and to_regclass(format('audit.%I', 'chain_' || suffix)) is not null;
    if exists (select 1 from audit.events_default where ts >= m and ts < (m + interval '1 month'))
       or exists (select 1 from audit.chain_default where event_ts >= m and event_ts < (m + interval '1 month')) then
      raise notice 'audit: events for % are in the default partition; partitions for that month not created', m;
      continue;
    end if;
    if to_regclass(format('audit.%I', 'events_' || suffix)) is null then
      execute format('create table audit.%I partition of audit.events for values from (%L) to (%L)',
                     'events_' || suffix, m, (m + interval '1 month')::date);
      made := made || ('events_' || suffix);
    end if;
    if to_regclass(format('audit.%I', 'chain_' || suffix)) is null then
      execute format('create table audit.%I partition of audit.chain for values from (%L) to (%L)',
                     'chain_' || suffix, m, (m + interval '1 month')::date);
      made := made || ('chain_' || suffix);
    end if;
  end loop;
  for t in select c.oid::regclass as rel from pg_inherits i join pg_class c on c.oid = i.inhrelid
            where i.inhparent in ('audit.events'::regclass, 'audit.chain'::regclass)
              and not exists (select 1 from pg_trigger g where g.tgrelid = c.oid
                                                          and g.tgname = 'indb_append_only_truncate') loop
    execute format('create trigger indb_append_only_truncate before truncate on %s '
                   'for each statement execute function audit._refuse_change()', t.rel);
  end loop;
  return made;
end $$;
comment on function audit.ensure_partitions(int) is
  'make the monthly partitions of the log (events and chain) for this month and the next months_ahead';

-- from audit.seal(): the same, but never waiting for a lock (making a partition locks the parent table)
create or replace function audit._ensure_partitions_nowait() returns void
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
set lock_timeout = '200ms'
as $$
begin
  perform audit.ensure_partitions();
exception when lock_not_available then
  null;   -- busy: the next seal tries again
end $$;

create or replace function audit.seal() returns bigint
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare n bigint;
begin
  if pg_is_in_recovery() then
    raise exception 'audit.seal() cannot run on a standby: the chain is sealed on the primary'
      using errcode = '25006',
            hint = 'call audit.seal() on the primary (pg_cron and indb worker seal there every minute); '
                   'audit.verify() and audit.head() run here';
  end if;
  if current_setting('transaction_isolation') <> 'read committed' then
    raise exception 'audit.seal() must run at READ COMMITTED, not %', upper(current_setting('transaction_isolation'))
      using errcode = '25000',
            hint = 'call it in a transaction of its own (pg_cron and indb worker do), or at READ COMMITTED';
  end if;
  -- one sealer at a time: the chain head's row lock (SKIP LOCKED: never waiting). Not an advisory lock, which any
  -- role could take and hold to stop sealing; locking this row needs a privilege no indb role has.
  perform 1 from audit.chain_head for update skip locked;
  if not found then
    return 0;   -- another sealer is at work; what it does not see, the next call seals
  end if;
  perform audit._observe_roles();
  perform audit._observe_privileges();
  n := audit._seal();
  if to_regclass(format('audit.%I', 'events_' || to_char(now() + interval '1 month', 'YYYY_MM'))) is null then
    perform audit._ensure_partitions_nowait();
  end if;
  return n;
end $$;
comment on function audit.seal() is
  'hash the committed events that are not sealed yet into the chain, in commit order; returns how many (0 when '
  'another sealer is at work). Idempotent; pg_cron runs it every minute where it is installed';

create or replace function audit.head(out last_id bigint, out last_hash text)
language sql stable security definer parallel safe
set search_path = pg_catalog, pg_temp
as $$ select last_id, encode(last_hash, 'hex') from audit.chain_head $$;
comment on function audit.head() is
  'the newest sealed chain position and its hash: publish it outside the database to anchor the chain';

-- audit.verify() in named steps: each returns (event_id, prio, problem) rows for one kind of check; verify
-- reports the first problem (by event, then by prio) and how many there are.

-- the hash the first event of the chain links to
create or replace function audit._genesis() returns bytea
language sql immutable parallel safe
as $$ select '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea $$;

-- what retention dropped: chain positions (with the hash where each dropped run ends) and lane positions
create or replace function audit._verify_gone(out seqs int8multirange, out links jsonb)
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  with anchors as (
    select coalesce(a.dropped_seqs, int8multirange(int8range(1, a.last_dropped_id + 1))) as seqs,
           coalesce(a.links, jsonb_build_object(a.last_dropped_id::text, encode(a.last_dropped_hash, 'hex'))) as links
      from audit.anchors a)
  select coalesce((select range_agg(x.seqs) from anchors x), '{}'::int8multirange),
         coalesce((select jsonb_object_agg(l.key, l.value) from anchors x, jsonb_each_text(x.links) l), '{}')
$$;

create or replace function audit._verify_lane_gone() returns table(lane int, pos int8multirange)
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select l.key::int, range_agg(l.value::int8multirange)
    from audit.anchors a, jsonb_each_text(coalesce(a.lanes, '{}')) l group by 1
$$;

-- every event's content matches its hash; every event of 0.1.0 is in the chain
create or replace function audit._verify_events() returns table(event_id bigint, prio int, problem text)
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select e.id, 1,
         case
           when e.lane is null and e.prev_hash is null then
             format('event %s has no lane: it was not appended by audit._append', e.id)
           when e.lane is null and e.hash <> audit._hash(e.prev_hash, e.id, e.ts, e.action, e.object, e.row_key,
                                                          e.old_values, e.new_values, e.session_user_name,
                                                          e.current_user_name, e.application_name, e.client_addr,
                                                          e.txid, e.tenant) then
             format('event %s was altered: its content does not match its hash', e.id)
           when e.lane is not null
                and e.hash <> audit._content_hash(e.id, e.ts, e.action, e.object, e.row_key, e.old_values,
                                                  e.new_values, e.session_user_name, e.current_user_name,
                                                  e.application_name, e.client_addr, e.txid, e.tenant, e.lane,
                                                  e.lane_pos, e.lane_prev) then
             format('event %s was altered: its content does not match its hash', e.id)
         end
    from audit.events e
  union all
  select e.id, 1, format('event %s of 0.1.0 is not in the chain', e.id)
    from audit.events e
   where e.lane is null and e.prev_hash is not null
     and not exists (select 1 from audit.chain c where c.event_id = e.id and c.event_ts = e.ts)
$$;

-- the sealed chain: gap-free positions, each linked to the one before (or to a retention anchor), and the
-- chain head naming the newest sealed event
create or replace function audit._verify_chain(head audit.chain_head) returns table(event_id bigint, prio int, problem text)
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  with
    gone as (select * from audit._verify_gone()),
    chj as (
      select c.seq, c.event_id, c.prev_hash, c.hash, c.p_seq, c.p_hash, c.p_event_id, c.n_seq,
             e.id, e.hash as e_hash, e.prev_hash as e_prev, e.lane
        from (select c.*, lag(c.seq) over w as p_seq, lag(c.hash) over w as p_hash,
                     lag(c.event_id) over w as p_event_id, lead(c.seq) over w as n_seq
                from audit.chain c window w as (order by c.seq, c.event_id)) c
        left join audit.events e on e.id = c.event_id and e.ts = c.event_ts)
  select case when j.seq = j.p_seq then least(j.event_id, j.p_event_id) else j.event_id end, 2,
         case
           when j.id is null then
             format('event %s, sealed at position %s, is missing', j.event_id, j.seq)
           when j.seq = j.p_seq then
             format('events %s and %s are both sealed at position %s', least(j.event_id, j.p_event_id),
                    greatest(j.event_id, j.p_event_id), j.seq)
           when j.seq <> coalesce(j.p_seq, 0) + 1
                and not (int8range(coalesce(j.p_seq, 0) + 1, j.seq) <@ (select g.seqs from gone g)) then
             format('the events sealed at positions %s to %s are missing', coalesce(j.p_seq, 0) + 1, j.seq - 1)
           when j.seq = coalesce(j.p_seq, 0) + 1 and j.prev_hash <> coalesce(j.p_hash, audit._genesis()) then
             format('event %s does not link to the event sealed before it (position %s)', j.id, j.seq - 1)
           when j.seq <> coalesce(j.p_seq, 0) + 1
                and j.prev_hash is distinct from decode((select g.links from gone g) ->> (j.seq - 1)::text, 'hex') then
             format('event %s does not link to the anchor retention left at position %s', j.id, j.seq - 1)
           when j.lane is null and (j.hash <> j.e_hash or j.prev_hash is distinct from j.e_prev) then
             format('event %s is not the event of 0.1.0 chained at position %s', j.id, j.seq)
           when j.lane is not null and j.hash <> audit._link_hash(j.prev_hash, j.seq, j.id, j.e_hash) then
             format('event %s is not what was sealed at position %s: its hash changed', j.id, j.seq)
         end
    from chj j
  union all
  select t.event_id, 5,
         case
           when t.seq is null and head.last_id <> 0
                and not (int8range(head.last_id, head.last_id, '[]') <@ (select g.seqs from gone g)) then
             format('the chain head is at position %s but no sealed event is stored: sealed events were removed '
                    'from the end', head.last_id)
           when t.seq is null and head.last_id = 0 and head.last_hash <> audit._genesis() then
             'the chain head moved but no event was sealed'
           when t.seq is null and head.last_id <> 0
                and head.last_hash is distinct from decode((select g.links from gone g) ->> head.last_id::text, 'hex') then
             format('the chain head at position %s is not the anchor retention left', head.last_id)
           when t.seq < head.last_id then
             format('the chain head is at position %s but the newest sealed event is at position %s: sealed events '
                    'were removed from the end', head.last_id, t.seq)
           when t.seq > head.last_id then
             format('event %s is sealed at position %s, beyond the chain head (position %s): it was inserted',
                    t.event_id, t.seq, head.last_id)
           when t.hash <> head.last_hash then
             format('the chain head''s hash is not the hash of the newest sealed event (%s)', t.event_id)
         end
    from (select 1) one left join (select * from chj where chj.n_seq is null) t on true
$$;

-- lanes: gap-free positions, each event linked to the previous one of its lane (sealed or pending), and each
-- lane's row naming its newest event
create or replace function audit._verify_lanes() returns table(event_id bigint, prio int, problem text)
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  with
    lane_gone as (select * from audit._verify_lane_gone()),
    ev as (
      select e.id, e.hash, e.lane, e.lane_pos, e.lane_prev,
             lag(e.lane_pos) over w as p_pos, lag(e.hash) over w as p_hash, lag(e.id) over w as p_id,
             lead(e.lane_pos) over w as n_pos
        from audit.events e where e.lane is not null
      window w as (partition by e.lane order by e.lane_pos, e.id))
  select case when j.lane_pos = j.p_pos then least(j.id, j.p_id) else j.id end, 3,
         case
           when j.lane_pos = j.p_pos then
             format('events %s and %s hold the same position %s of lane %s', least(j.id, j.p_id),
                    greatest(j.id, j.p_id), j.lane_pos, j.lane)
           when j.lane_pos <> coalesce(j.p_pos, 0) + 1
                and not (int8range(coalesce(j.p_pos, 0) + 1, j.lane_pos)
                         <@ coalesce((select lg.pos from lane_gone lg where lg.lane = j.lane), '{}')) then
             format('events at positions %s to %s of lane %s are missing (before event %s)',
                    coalesce(j.p_pos, 0) + 1, j.lane_pos - 1, j.lane, j.id)
           when j.lane_pos = coalesce(j.p_pos, 0) + 1 and j.lane_prev is distinct from j.p_hash then
             format('event %s does not link to the previous event of lane %s', j.id, j.lane)
         end
    from ev j
  union all
  select coalesce(t.id, l.last_id), 4,
         case
           when l.lane is null then
             format('event %s is in lane %s, which does not exist', t.id, t.lane)
           when t.id is null and l.pos > 0
                and not (int8range(l.pos, l.pos, '[]')
                         <@ coalesce((select lg.pos from lane_gone lg where lg.lane = l.lane), '{}')) then
             format('lane %s ends at event %s (position %s), which is missing: events were removed from the end '
                    'of the lane', l.lane, l.last_id, l.pos)
           when t.lane_pos < l.pos then
             format('lane %s ends at event %s (position %s) but its newest stored event is %s (position %s): '
                    'events were removed from the end of the lane', l.lane, l.last_id, l.pos, t.id, t.lane_pos)
           when t.lane_pos > l.pos then
             format('event %s (position %s of lane %s) is beyond the head of its lane (position %s): it was '
                    'inserted', t.id, t.lane_pos, l.lane, l.pos)
           when t.id <> l.last_id or t.hash <> l.last_hash then
             format('lane %s ends at event %s but its newest stored event is %s, with another hash',
                    l.lane, l.last_id, t.id)
         end
    from (select * from ev where ev.n_pos is null) t
    full join audit.lanes l on l.lane = t.lane
$$;

create or replace function audit.verify(out ok boolean, out events_checked bigint, out broken_id bigint,
                                        out reason text, out last_id bigint, out last_hash text, out pending bigint)
language plpgsql stable security definer parallel unsafe
set search_path = pg_catalog, pg_temp
set jit = off   -- many expressions, evaluated once per row: compiling them costs more than it saves
as $$
declare
  head audit.chain_head;
  problems bigint;
begin
  select * into head from audit.chain_head;
  last_id := head.last_id;
  last_hash := encode(head.last_hash, 'hex');
  select (select count(*) from audit.events),
         (select count(*) from audit.events e
           where not exists (select 1 from audit.chain c where c.event_id = e.id and c.event_ts = e.ts)),
         count(*),
         (array_agg(f.event_id order by f.event_id nulls last, f.prio))[1],
         (array_agg(f.problem order by f.event_id nulls last, f.prio))[1]
    into events_checked, pending, problems, broken_id, reason
    from (select * from audit._verify_events()
          union all select * from audit._verify_chain(head)
          union all select * from audit._verify_lanes()) f
   where f.problem is not null;
  ok := problems = 0;
  reason := case when ok then 'ok'
                 when problems > 1 then reason || format(' (%s problems in all)', problems)
                 else reason end;
end $$;
comment on function audit.verify() is
  'read-only: check every event''s hash, the sealed chain, the lanes and the heads; ok, or the first broken '
  'event and why; pending = events not sealed yet';

create or replace function audit.apply_retention(keep interval) returns jsonb
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  cutoff timestamptz;
  parts text[];
  evp oid[];
  chp oid[];
  p text;
  n bigint;
  dropped int8multirange;
  links jsonb;
  lanes jsonb;
  max_seq bigint;
  max_hash bytea;
  caller text := audit._acting_role();
begin
  if not (pg_has_role(caller, 'indb_admin', 'member')) then
    raise exception 'only indb_admin may apply audit retention' using errcode = '42501',
      hint = 'ask an administrator (a member of indb_admin)';
  end if;
  if keep is null or keep < interval '1 day' then
    raise exception 'retention must keep at least 1 day of events, got %', coalesce(keep::text, 'NULL')
      using errcode = '22023', hint = 'pass an interval such as ''365 days''';
  end if;
  cutoff := now() - keep;
  perform 1 from audit.chain_head for update;   -- no sealing while partitions go (waits for a running sealer)
  select array_agg(c.relname order by c.relname) into parts
    from pg_inherits i join pg_class c on c.oid = i.inhrelid
   where i.inhparent = 'audit.events'::regclass and c.relname ~ '^events_[0-9]{4}_[0-9]{2}$'
     and (to_date(substr(c.relname, 8), 'YYYY_MM') + interval '1 month') <= cutoff;
  if parts is null then
    return jsonb_build_object('dropped', '[]'::jsonb, 'events', 0, 'cutoff', cutoff);
  end if;
  -- a transaction still appending into these months finishes first; then everything in them is sealed
  foreach p in array parts loop
    execute format('lock table audit.%I in access exclusive mode', p);
    if to_regclass(format('audit.%I', 'chain_' || substr(p, 8))) is not null then
      execute format('lock table audit.%I in access exclusive mode', 'chain_' || substr(p, 8));
    end if;
  end loop;
  perform audit._seal();
  evp := array(select format('audit.%I', x)::regclass::oid from unnest(parts) x);
  chp := array(select to_regclass(format('audit.%I', 'chain_' || substr(x, 8)))::oid from unnest(parts) x
                where to_regclass(format('audit.%I', 'chain_' || substr(x, 8))) is not null);
  select count(*) into n from audit.events e where e.tableoid = any(evp);
  if exists (select 1 from audit.events e where e.tableoid = any(evp)
               and not exists (select 1 from audit.chain c where c.event_id = e.id and c.event_ts = e.ts
                                                             and c.tableoid = any(chp))) then
    raise exception 'audit retention: events of % are not sealed in the chain partitions of the same months', parts
      using errcode = '55000', hint = 'every month of audit.events needs its audit.chain partition (audit.ensure_partitions() makes both)';
  end if;
  -- what leaves: chain positions (with the hash at the end of each run, where the chain resumes) and lane positions
  select range_agg(int8range(c.seq, c.seq, '[]')) into dropped from audit.chain c where c.tableoid = any(chp);
  if dropped is not null then
    select jsonb_object_agg((upper(r) - 1)::text, encode(c.hash, 'hex')) into links
      from unnest(dropped) r join audit.chain c on c.seq = upper(r) - 1 and c.tableoid = any(chp);
    max_seq := upper(dropped) - 1;
    select c.hash into max_hash from audit.chain c where c.seq = max_seq and c.tableoid = any(chp);
    select coalesce(jsonb_object_agg(x.lane::text, x.pos::text), '{}') into lanes
      from (select e.lane, range_agg(int8range(e.lane_pos, e.lane_pos, '[]')) as pos
              from audit.events e where e.tableoid = any(evp) and e.lane is not null group by e.lane) x;
    insert into audit.anchors(last_dropped_id, last_dropped_hash, partitions, dropped_by, dropped_seqs, links, lanes)
    values (max_seq, max_hash, parts, caller, dropped, links, lanes);
  end if;
  foreach p in array parts loop
    execute format('drop table audit.%I', p);
    if to_regclass(format('audit.%I', 'chain_' || substr(p, 8))) is not null then
      execute format('drop table audit.%I', 'chain_' || substr(p, 8));
    end if;
  end loop;
  perform audit._append('RETENTION', 'audit.events', null, null,
                        jsonb_build_object('dropped_partitions', to_jsonb(parts), 'events_dropped', n,
                                           'last_dropped_seq', max_seq, 'cutoff', cutoff), null, caller);
  return jsonb_build_object('dropped', to_jsonb(parts), 'events', n, 'last_dropped_seq', max_seq, 'cutoff', cutoff);
end $$;
comment on function audit.apply_retention(interval) is
  'indb_admin only: drop whole monthly partitions older than keep (events and chain), anchor the chain, and log the act';

-- the audited tables (SECURITY.md, "Audit"). Every one exists: a missing one is an install error.
-- Not audited, and why: collections.*, embeddings.*, features.online_store, features.quarantine and the feature
-- views' offline tables are data; ml.vectorizer_queue/_failed/_stats, ml.collection_stats/_terms,
-- features.materialization_runs and features.statistics are work queues and derived counters; ml.installs and
-- ml.alembic_version are written by `indb install` only.
do $$
declare
  spec text[];
  t regclass;
begin
  foreach spec slice 1 in array array[
      ['registry.experiments', 'row'], ['registry.runs', 'row'], ['registry.artifacts', 'row'],
      ['registry.datasets', 'row'], ['registry.run_inputs', 'row'], ['registry.registered_models', 'row'],
      ['registry.model_versions', 'row'], ['registry.aliases', 'row'], ['registry.deployments', 'row'],
      ['registry.lineage_edges', 'row'], ['registry.training_projects', 'row'],
      ['ml.embedding_models', 'row'], ['ml.vectorizers', 'row'], ['ml.collections', 'row'], ['ml.shards', 'row'],
      ['features.entities', 'row'], ['features.feature_views', 'row'], ['features.on_demand_features', 'row'],
      ['registry.params', 'history'], ['registry.metrics', 'history'], ['registry.training_trials', 'history'],
      ['registry.latest_metrics', 'mirror'],
      ['registry.prediction_log', 'append_only']] loop
    t := to_regclass(spec[1]);
    if t is null then
      raise exception 'audited table % does not exist', spec[1] using errcode = '42P01',
        hint = 'the migrations create every audited table: is the database at the head revision? (indb install)';
    end if;
    perform audit.attach(t, spec[2]);
  end loop;
  -- the log itself: append-only for everyone
  foreach t in array array['audit.events', 'audit.chain', 'audit.anchors']::regclass[] loop
    execute format('drop trigger if exists indb_append_only on %s', t);
    execute format('create trigger indb_append_only before update or delete on %s '
                   'for each row execute function audit._refuse_change()', t);
    execute format('drop trigger if exists indb_append_only_truncate on %s', t);
    execute format('create trigger indb_append_only_truncate before truncate on %s '
                   'for each statement execute function audit._refuse_change()', t);
  end loop;
  drop trigger if exists indb_append_only on audit.chain_head;
  create trigger indb_append_only before update or delete on audit.chain_head
    for each row execute function audit._guard_head();
  drop trigger if exists indb_append_only_truncate on audit.chain_head;
  create trigger indb_append_only_truncate before truncate on audit.chain_head
    for each statement execute function audit._refuse_change();
  drop trigger if exists indb_append_only on audit.lanes;
  create trigger indb_append_only before delete on audit.lanes
    for each row execute function audit._refuse_change();
  drop trigger if exists indb_append_only_truncate on audit.lanes;
  create trigger indb_append_only_truncate before truncate on audit.lanes
    for each statement execute function audit._refuse_change();
  perform audit.ensure_partitions();
end $$;

-- sealing every minute where pg_cron lives (only in the database named by cron.database_name); elsewhere
-- `indb worker` seals, or schedule it from that database as the notice says
do $$
begin
  if exists (select 1 from pg_extension where extname = 'pg_cron') then
    perform cron.schedule('indb_audit_seal', '* * * * *', 'select audit.seal()');
  elsif current_setting('cron.database_name', true) is not null then
    raise notice 'indb: pg_cron lives in database %; to seal this database''s audit log every minute, run there: '
                 'select cron.schedule_in_database(%, ''* * * * *'', ''select audit.seal()'', %)',
                 current_setting('cron.database_name'), quote_literal('indb_audit_seal_' || current_database()),
                 quote_literal(current_database());
  end if;
end $$;
