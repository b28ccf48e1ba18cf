-- Audit (issue 6): an append-only, hash-chained, month-partitioned event log (tables in migration 0006).
--
-- * Every change to the registry catalogs, deployments, feature definitions, vectorizers and collection
--   definitions is one event (row triggers named indb_audit); params and metrics, which arrive in
--   batches of thousands, are one summary event per statement (rows, runs, keys, sha256 of the rows).
--   Not logged: latest_metrics (derived from metrics), lineage edges written by the lineage trigger
--   (implied by the audited row that caused them), UPDATEs that change nothing but updated_at.
--   GRANT/REVOKE are logged by an event trigger.
-- * Each event stores sha256(its content + the previous event's hash). audit._append takes the row lock
--   on audit.chain_head, so ids are gap-free and in chain order; audit.verify() recomputes the chain and
--   returns the first broken link. Publish audit.head() elsewhere to detect a rewrite of the whole tail.
-- * UPDATE, DELETE and TRUNCATE on the log are refused by triggers for every role, owner included, and no
--   role has those privileges. Only audit.apply_retention() (indb_admin) drops whole old partitions; it
--   records an anchor so the chain stays verifiable, and logs itself.

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
  'sha256 over an event''s content and the previous event''s hash (the chain link)';

-- (no SET clause on these two: they stay inlinable; every name in them is schema-qualified or pg_catalog)
create or replace function audit._acting_role() returns text
language sql stable parallel safe
as $$ select coalesce(nullif(pg_catalog.current_setting('role', true), 'none'), session_user::text) $$;

-- append one event (internal: only the audit triggers and functions below call it; no role may execute it).
-- One UPDATE of the chain head takes the row lock (held to commit: appends are serialized, ids gap-free
-- and in chain order), moves the head and computes the new link.
create or replace function audit._append(action text, object text, row_key jsonb, old_values jsonb,
                                         new_values jsonb, tenant text, acting_role text default null) returns bigint
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  nid bigint; prev bytea; hs bytea;
  t timestamptz := clock_timestamp();
  who text := coalesce(acting_role, audit._acting_role());
  app text := current_setting('application_name', true);
  addr inet := inet_client_addr();
  x bigint := txid_current();
begin
  update audit.chain_head h
     set prev_hash = h.last_hash, last_id = h.last_id + 1,
         last_hash = audit._hash(h.last_hash, h.last_id + 1, t, action, object, row_key, old_values, new_values,
                                 session_user::text, who, app, addr, x, tenant)
   returning h.last_id, h.prev_hash, h.last_hash into nid, prev, hs;
  insert into audit.events(id, ts, action, object, row_key, old_values, new_values, session_user_name,
                           current_user_name, application_name, client_addr, txid, tenant, prev_hash, hash)
  values (nid, t, action, object, row_key, old_values, new_values, session_user::text, who, app, addr, x, tenant,
          prev, hs);
  return nid;
end $$;

-- a row as jsonb without the left-out columns; they are set to NULL *before* the conversion, so a
-- large bytea (a 150 MB model) is never turned into a JSON string (that fails above 256 MB and is slow)
create or replace function audit._row_jsonb(r anyelement, drop_cols text[]) returns jsonb
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select to_jsonb(jsonb_populate_record(r, coalesce((select jsonb_object_agg(c, null) from unnest(drop_cols) c),
                                                    '{}'::jsonb))) - drop_cols
$$;

-- row trigger: TG_ARGV[0] = comma-separated primary key columns, TG_ARGV[1..] = columns left out (bytea)
create or replace function audit._row_trigger() returns trigger
language plpgsql security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  o jsonb; n jsonb; k jsonb; src jsonb; drop_cols text[] := tg_argv[1:];
  obj text := tg_table_schema || '.' || tg_table_name;
begin
  -- lineage edges written by registry._lineage_trigger are implied by the audited row that caused them
  if tg_table_name = 'lineage_edges' and tg_op = 'INSERT' and pg_trigger_depth() > 1 then
    return null;
  end if;
  if tg_op in ('UPDATE', 'DELETE') then o := audit._row_jsonb(old, drop_cols); end if;
  if tg_op in ('INSERT', 'UPDATE') then n := audit._row_jsonb(new, drop_cols); end if;
  src := coalesce(n, o);
  select jsonb_object_agg(c, src -> c) into k from unnest(string_to_array(tg_argv[0], ',')) c;
  if tg_op = 'UPDATE' then
    select jsonb_object_agg(key, value) into o from jsonb_each(o) e
     where n -> e.key is distinct from e.value;
    if o is null or o - 'updated_at' = '{}'::jsonb then
      return null;  -- nothing changed but a timestamp
    end if;
    select jsonb_object_agg(key, n -> key) into n from jsonb_object_keys(o) key;
  end if;
  perform audit._append(tg_op, obj, k, o, n, src ->> 'tenant');
  return null;
end $$;

-- statement trigger for high-volume tables (params, metrics): one summary event per INSERT statement
create or replace function audit._batch_trigger() returns trigger
language plpgsql security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare s jsonb; ten text;
begin
  select jsonb_build_object(
           'rows', count(*),
           'run_ids', (select jsonb_agg(distinct x.run_id) from new_rows x),
           'keys', (select jsonb_agg(distinct x.key) from (select key from new_rows limit 10000) x),
           'sha256', encode(sha256(convert_to(string_agg(to_jsonb(r)::text, E'\n' order by to_jsonb(r)::text), 'UTF8')), 'hex')),
         min(r.tenant)
    into s, ten
    from new_rows r;
  if (s ->> 'rows')::bigint > 0 then
    perform audit._append('INSERT_BATCH', tg_table_schema || '.' || tg_table_name, null, null, s, ten);
  end if;
  return null;
end $$;

create or replace function audit._truncate_trigger() returns trigger
language plpgsql security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
begin
  perform audit._append('TRUNCATE', tg_table_schema || '.' || tg_table_name, null, null, null, null);
  return null;
end $$;

create or replace function audit._refuse_change() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  raise exception '% on %.% is refused: the audit log is append-only', tg_op, tg_table_schema, tg_table_name
    using errcode = '42501',
          hint = 'old partitions are removed only by audit.apply_retention(), run by indb_admin';
end $$;

-- the chain head moves one link at a time, to an event that exists with that hash
create or replace function audit._guard_head() returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  -- only a one-link move is allowed: a guard against accidents, not against a superuser (audit.verify()
  -- compares the head with the newest event, so a head moved without its event is reported)
  if tg_op = 'UPDATE' and new.last_id = old.last_id + 1 and new.prev_hash = old.last_hash then
    return new;
  end if;
  raise exception '% on audit.chain_head is refused: only appending an event moves the chain head', tg_op
    using errcode = '42501';
end $$;

-- GRANT / REVOKE inside this database (event trigger)
create or replace function audit._ddl_trigger() returns event_trigger
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare r record; objs jsonb := '[]';
begin
  for r in select * from pg_event_trigger_ddl_commands() loop
    objs := objs || jsonb_build_object('object_type', r.object_type, 'identity', r.object_identity,
                                       'schema', r.schema_name);
  end loop;
  perform audit._append(tg_tag, 'privileges', null, null,
                        jsonb_build_object('command', left(current_query(), 2000), 'objects', objs), null);
end $$;

do $$
begin
  if (select rolsuper from pg_roles where rolname = current_user) then
    drop event trigger if exists indb_audit_grants;
    create event trigger indb_audit_grants on ddl_command_end when tag in ('GRANT', 'REVOKE')
      execute function audit._ddl_trigger();
  else
    raise notice 'indb: not a superuser, GRANT/REVOKE auditing (event trigger) not installed';
  end if;
end $$;

-- partitions: one per month; the default partition catches anything outside them
create or replace function audit.ensure_partitions(months_ahead int default 3) returns text[]
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare m date; name text; made text[] := '{}';
begin
  for i in 0..greatest(months_ahead, 0) loop
    m := (date_trunc('month', now()) + make_interval(months => i))::date;
    name := 'events_' || to_char(m, 'YYYY_MM');
    if to_regclass('audit.' || name) is null then
      if exists (select 1 from audit.events_default where ts >= m and ts < (m + interval '1 month')) then
        raise notice 'audit: events for % are in the default partition; partition % not created', m, name;
        continue;
      end if;
      execute format('create table audit.%I partition of audit.events for values from (%L) to (%L)',
                     name, m, (m + interval '1 month')::date);
      made := made || name;
    end if;
  end loop;
  -- TRUNCATE triggers are per table: (re)attach to every partition
  for name in select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid
               where i.inhparent = 'audit.events'::regclass loop
    execute format('drop trigger if exists indb_append_only_truncate on audit.%I', name);
    execute format('create trigger indb_append_only_truncate before truncate on audit.%I '
                   'for each statement execute function audit._refuse_change()', name);
  end loop;
  return made;
end $$;

create or replace function audit.head(out last_id bigint, out last_hash text)
language sql stable
set search_path = pg_catalog, pg_temp
as $$ select last_id, encode(last_hash, 'hex') from audit.chain_head $$;
comment on function audit.head() is 'the newest event id and hash: publish it outside the database to anchor the chain';

create or replace function audit.verify(out ok boolean, out events_checked bigint, out broken_id bigint,
                                        out reason text, out last_id bigint, out last_hash text)
language plpgsql stable security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  first_ev record; last_ev record; head audit.chain_head; anchored boolean;
  genesis bytea := '\x0000000000000000000000000000000000000000000000000000000000000000';
begin
  select * into head from audit.chain_head;
  select count(*) into events_checked from audit.events;
  last_id := head.last_id; last_hash := encode(head.last_hash, 'hex');
  -- the first surviving event links to the genesis hash or to a retention anchor
  select e.id, e.prev_hash into first_ev from audit.events e order by e.id limit 1;
  if first_ev.id is not null then
    if first_ev.id = 1 then
      anchored := first_ev.prev_hash = genesis;
    else
      anchored := exists (select 1 from audit.anchors a where a.last_dropped_id = first_ev.id - 1
                                                        and a.last_dropped_hash = first_ev.prev_hash);
    end if;
    if not anchored then
      ok := false; broken_id := first_ev.id;
      reason := format('event %s is the oldest but links to nothing: events before it were removed outside '
                       'audit.apply_retention()', first_ev.id);
      return;
    end if;
  end if;
  select c.id, c.problem into broken_id, reason from (
    select e.id,
           case
             when p_id is not null and e.id <> p_id + 1 then
               format('events %s to %s are missing', p_id + 1, e.id - 1)
             when p_id is not null and e.prev_hash <> p_hash then
               format('event %s does not link to event %s (prev_hash differs)', e.id, p_id)
             when e.hash <> audit._hash(e.prev_hash, e.id, e.ts, e.action, e.object, e.row_key, e.old_values,
                                        e.new_values, e.session_user_name, e.current_user_name, e.application_name,
                                        e.client_addr, e.txid, e.tenant) then
               format('event %s was altered: its content does not match its hash', e.id)
           end as problem
      from (select ev.*, lag(ev.id) over w as p_id, lag(ev.hash) over w as p_hash
              from audit.events ev window w as (order by ev.id)) e) c
   where c.problem is not null order by c.id limit 1;
  if broken_id is not null then
    ok := false;
    return;
  end if;
  select e.id, e.hash into last_ev from audit.events e order by e.id desc limit 1;
  if coalesce(last_ev.id, 0) <> head.last_id
     or (last_ev.id is not null and last_ev.hash <> head.last_hash) then
    ok := false; broken_id := coalesce(last_ev.id, 0) + 1;
    reason := format('the chain head is event %s but the newest stored event is %s: events were removed from the end',
                     head.last_id, coalesce(last_ev.id, 0));
    return;
  end if;
  ok := true; reason := 'ok';
end $$;
comment on function audit.verify() is 'recompute the hash chain; ok, or the first broken link and why';

create or replace function audit.apply_retention(keep interval) returns jsonb
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  cutoff timestamptz;
  parts text[]; p text; max_id bigint; max_hash bytea; n bigint := 0; c bigint;
  caller text := audit._acting_role();
begin
  if not (pg_has_role(caller, 'indb_admin', 'member')) then
    raise exception 'only indb_admin may apply audit retention' using errcode = '42501';
  end if;
  if keep is null or keep < interval '1 day' then
    raise exception 'retention must keep at least 1 day of events, got %', keep using errcode = '22023';
  end if;
  cutoff := now() - keep;
  perform 1 from audit.chain_head for update;   -- no appends while partitions go
  select array_agg(c.relname order by c.relname) into parts
    from pg_inherits i join pg_class c on c.oid = i.inhrelid
   where i.inhparent = 'audit.events'::regclass and c.relname ~ '^events_[0-9]{4}_[0-9]{2}$'
     and (to_date(substr(c.relname, 8), 'YYYY_MM') + interval '1 month') <= cutoff;
  if parts is null then
    return jsonb_build_object('dropped', '[]'::jsonb, 'events', 0, 'cutoff', cutoff);
  end if;
  foreach p in array parts loop
    execute format('select count(*) from audit.%I', p) into c;
    n := n + c;
  end loop;
  select e.id, e.hash into max_id, max_hash from audit.events e
   where e.tableoid in (select ('audit.' || quote_ident(x))::regclass from unnest(parts) x)
   order by e.id desc limit 1;
  if max_id is not null then
    if exists (select 1 from audit.events e where e.id < max_id
                 and e.tableoid not in (select ('audit.' || quote_ident(x))::regclass from unnest(parts) x)) then
      raise exception 'audit retention: partitions % are not the oldest events of the chain', parts
        using errcode = '55000';
    end if;
    insert into audit.anchors(last_dropped_id, last_dropped_hash, partitions, dropped_by)
    values (max_id, max_hash, parts, caller);
  end if;
  foreach p in array parts loop
    execute format('drop table audit.%I', p);
  end loop;
  perform audit._append('RETENTION', 'audit.events', null, null,
                        jsonb_build_object('dropped_partitions', to_jsonb(parts), 'events_dropped', n,
                                           'last_dropped_id', max_id, 'cutoff', cutoff), null, caller);
  return jsonb_build_object('dropped', to_jsonb(parts), 'events', n, 'last_dropped_id', max_id, 'cutoff', cutoff);
end $$;
comment on function audit.apply_retention(interval) is
  'indb_admin only: drop whole monthly partitions older than keep, anchor the chain, and log the act';

-- attach the audit triggers to every audited table that exists (other areas' catalogs may not exist yet)
create or replace function audit.attach(tbl regclass, batch boolean default false) returns void
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare pk text; bytea_cols text; args text;
begin
  execute format('drop trigger if exists indb_audit on %s', tbl);
  execute format('drop trigger if exists indb_audit_batch on %s', tbl);
  execute format('drop trigger if exists indb_audit_truncate on %s', tbl);
  execute format('create trigger indb_audit_truncate after truncate on %s '
                 'for each statement execute function audit._truncate_trigger()', tbl);
  select string_agg(quote_literal(a.attname), ', ' order by a.attnum) into bytea_cols
    from pg_attribute a where a.attrelid = tbl and a.attnum > 0 and not a.attisdropped
                          and a.atttypid = 'bytea'::regtype;
  select string_agg(a.attname, ',' order by array_position(i.indkey::int2[], a.attnum)) into pk
    from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
   where i.indrelid = tbl and i.indisprimary;
  args := quote_literal(coalesce(pk, '')) || coalesce(', ' || bytea_cols, '');
  if batch then
    execute format('create trigger indb_audit_batch after insert on %s referencing new table as new_rows '
                   'for each statement execute function audit._batch_trigger()', tbl);
    execute format('create trigger indb_audit after update or delete on %s '
                   'for each row execute function audit._row_trigger(%s)', tbl, args);
  else
    execute format('create trigger indb_audit after insert or update or delete on %s '
                   'for each row execute function audit._row_trigger(%s)', tbl, args);
  end if;
end $$;
comment on function audit.attach(regclass, boolean) is
  'attach the indb_audit trigger to a table (batch: one summary event per INSERT statement)';

do $$
declare t text;
begin
  foreach t in array array[
      'registry.experiments', 'registry.runs', 'registry.artifacts', 'registry.datasets', 'registry.run_inputs',
      'registry.registered_models', 'registry.model_versions', 'registry.aliases', 'registry.deployments',
      'registry.lineage_edges',
      'ml.vectorizers', 'ml.collections', 'ml.embedding_models', 'registry.training_projects',
      'features.entities', 'features.feature_views', 'features.feature_view_versions', 'features.on_demand_features'] loop
    if (select relkind from pg_class where oid = to_regclass(t)) in ('r', 'p') then
      perform audit.attach(t::regclass, false);
    end if;
  end loop;
  foreach t in array array['registry.params', 'registry.metrics'] loop
    perform audit.attach(t::regclass, true);
  end loop;
  -- the log itself: append-only for everyone
  drop trigger if exists indb_append_only on audit.events;
  create trigger indb_append_only before update or delete on audit.events
    for each row execute function audit._refuse_change();
  drop trigger if exists indb_append_only_truncate on audit.events;
  create trigger indb_append_only_truncate before truncate on audit.events
    for each statement execute function audit._refuse_change();
  drop trigger if exists indb_append_only on audit.chain_head;
  create trigger indb_append_only before update or delete on audit.chain_head
    for each row execute function audit._guard_head();
  drop trigger if exists indb_append_only_truncate on audit.chain_head;
  create trigger indb_append_only_truncate before truncate on audit.chain_head
    for each statement execute function audit._refuse_change();
  drop trigger if exists indb_append_only on audit.anchors;
  create trigger indb_append_only before update or delete on audit.anchors
    for each row execute function audit._refuse_change();
  drop trigger if exists indb_append_only_truncate on audit.anchors;
  create trigger indb_append_only_truncate before truncate on audit.anchors
    for each statement execute function audit._refuse_change();
  perform audit.ensure_partitions();
end $$;
