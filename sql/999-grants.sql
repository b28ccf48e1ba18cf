-- Grants (SECURITY.md, "What each role may do"). Applied last, on every `indb install`, after 990-ownership:
-- it sees every function and table that exists at that point. The result is checked by the golden privilege
-- matrix (tests/sql/golden/privileges.txt) and by the behaviour matrix (tests/security/test_matrix.py).
--
-- Functions (EXECUTE; PUBLIC gets nothing in the indb schemas):
--   * public functions, by what they do: APP (serve: predict, search, embed, online features) < READ (look
--     at things: names in READ_VERBS, and every STABLE/IMMUTABLE function) < WRITE (everything else) <
--     ADMIN (ADMIN_ONLY: tenants, code-bearing registrations, audit retention);
--   * <name>_py, the PL/Python body of a public function, gets exactly the grants of <name>'s wrapper;
--   * internal SECURITY INVOKER helpers (_name) go to every indb role: they can do no more than the caller's
--     own table rights;
--   * internal SECURITY DEFINER helpers are the trust boundary: they validate their arguments and check the
--     caller themselves; they go to indb_writer (the public functions that call them are writer functions)
--     unless listed in DEFINER_APP (called on serving paths) or DEFINER_NOBODY (triggers and install-time
--     helpers that only indb_owner runs).
-- Tables:
--   * catalogs (every table of ml, registry, features that is not data): SELECT for indb_reader (row-level
--     security filters tenants), for indb_app only the ones serving paths read (APP_TABLES); no INSERT,
--     UPDATE, DELETE, TRUNCATE, REFERENCES or TRIGGER for any indb role: only indb's functions write them;
--   * data (DATA_TABLES, and every table of the collections and embeddings schemas and every feature view's
--     offline table): SELECT for reader (and app), INSERT/UPDATE/DELETE for indb_writer, unless APPEND_ONLY;
--   * partitions get no grants: they are reached through their parent, where row-level security applies;
--   * audit: SELECT for indb_admin only.
-- Schemas: USAGE only; no indb role may CREATE in an indb schema (plpython3u functions are made only by
-- `indb install`, and nothing can be attached to indb's tables).

revoke all on schema ml, registry, features, audit, collections, embeddings from public;
grant usage on schema ml, registry, features, collections, embeddings to indb_app, indb_reader, indb_writer, indb_admin;
grant usage on schema audit to indb_reader, indb_admin;
grant usage on schema ml, audit to indb_tenant_manager;
revoke create on schema ml, registry, features, audit, collections, embeddings
  from indb_app, indb_reader, indb_writer, indb_admin;

-- tables made later in these schemas get their grants from the function that makes them, never by default
do $$
declare s text;
begin
  foreach s in array array['ml', 'registry', 'features', 'collections', 'embeddings'] loop
    execute format('alter default privileges in schema %I revoke all on tables from indb_app, indb_reader, indb_writer, indb_admin', s);
    execute format('alter default privileges in schema %I revoke all on sequences from indb_app, indb_reader, indb_writer, indb_admin', s);
  end loop;
end $$;


do $$
declare
  pol jsonb := ml._grant_policy();
  f record;
  qname text;
  base text;
  roles text[];
  ref record;
  kw text;
begin
  for f in
    select p.oid::regprocedure as sig, n.nspname as nsp, p.proname as name, p.provolatile as vol,
           p.prosecdef as definer, p.prokind as kind, p.prorettype in ('trigger'::regtype, 'event_trigger'::regtype) as is_trigger
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where n.nspname in ('ml', 'registry', 'features', 'audit')
       and p.prokind in ('f', 'p')
       and not exists (select 1 from pg_depend d where d.objid = p.oid and d.deptype = 'e')
  loop
    qname := f.nsp || '.' || f.name;
    roles := '{}';
    -- the PL/Python body of a public function: the grants of its wrapper
    base := case when f.name ~ '^_.*_py$' then f.nsp || '.' || regexp_replace(f.name, '^_(.*)_py$', '\1') end;
    if base is not null and exists (select 1 from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                                     where n.nspname || '.' || p.proname = base) then
      qname := base;
    end if;
    if f.nsp = 'audit' then
      if pol -> 'ADMIN_ONLY' ? qname then roles := array['indb_admin']; end if;
      if pol -> 'AUDIT_READ' ? qname then roles := array['indb_reader']; end if;
    elsif split_part(qname, '.', 2) like '\_%' then
      if (f.is_trigger and not pol -> 'TRIGGER_ATTACH' ? qname) or pol -> 'DEFINER_NOBODY' ? qname then
        roles := '{}';
      elsif not f.definer then
        roles := array['indb_app'];                 -- inherited by reader, writer, admin
      elsif pol -> 'DEFINER_APP' ? qname then
        roles := array['indb_app'];
      else
        roles := array['indb_writer'];
      end if;
    elsif pol -> 'ADMIN_ONLY' ? qname then
      roles := array['indb_admin'];
    elsif pol -> 'APP' ? qname then
      roles := array['indb_app'];
    elsif f.vol in ('s', 'i') or split_part(qname, '.', 2) ~ (pol ->> 'READ_VERBS') then
      roles := array['indb_reader'];
    else
      roles := array['indb_writer'];
    end if;
    if qname in ('ml.caller', 'audit._append') then
      roles := roles || 'indb_tenant_manager'::text;   -- ml.create_tenant (owned by it) asks who calls, logs itself
    end if;
    kw := case f.kind when 'p' then 'procedure' else 'function' end;
    -- change the ACL only when it differs (every GRANT/REVOKE is an audit event)
    if (select coalesce(array_agg(g order by g), '{}') from (
          select case when a.grantee = 0 then 'PUBLIC' else a.grantee::regrole::text end as g
            from pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
           where p.oid = f.sig::oid and a.grantee <> p.proowner) x)
       is distinct from (select coalesce(array_agg(r order by r), '{}') from unnest(roles) r) then
      execute format('revoke all on %s %s from public, indb_app, indb_reader, indb_writer, indb_admin, indb_tenant_manager',
                     kw, f.sig);
      if cardinality(roles) > 0 then
        execute format('grant execute on %s %s to %s', kw, f.sig, array_to_string(roles, ', '));
      end if;
    end if;
  end loop;
end $$;



do $$
declare t regclass;
begin
  for t in select c.oid::regclass from pg_class c join pg_namespace n on n.oid = c.relnamespace
            where n.nspname in ('ml', 'registry', 'features', 'audit', 'collections', 'embeddings')
              and c.relkind in ('r', 'p', 'v', 'm', 'f')
              and not exists (select 1 from pg_depend d where d.objid = c.oid and d.deptype = 'e')
  loop
    perform ml._apply_table_grants(t);
  end loop;
end $$;

-- sequences: nobody but the owner (indb's functions insert into catalogs as indb_owner)
do $$
declare s regclass;
begin
  for s in select c.oid::regclass from pg_class c join pg_namespace n on n.oid = c.relnamespace
            where n.nspname in ('ml', 'registry', 'features', 'audit', 'collections', 'embeddings') and c.relkind = 'S'
              and c.relacl is not null and exists (select 1 from aclexplode(c.relacl) a where a.grantee <> c.relowner)
  loop
    execute format('revoke all on sequence %s from public, indb_app, indb_reader, indb_writer, indb_admin', s);
  end loop;
end $$;
