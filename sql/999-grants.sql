-- Grants (issue 6). Applied last, after every other sql/ file, on every `indb install`, so it sees every
-- function and table that exists at that point and tolerates the ones that do not (yet).
--
-- Policy (a function is classified by schema, name and volatility; the result is checked by the
-- golden privilege matrix tests/sql/golden/privileges.txt):
--   * PUBLIC gets nothing in ml, registry, features, audit (Postgres grants EXECUTE to PUBLIC by default:
--     it is revoked on every function of these schemas).
--   * indb_admin:  every function in ml, registry, features; audit.verify/head/apply_retention/
--                  ensure_partitions/attach; SELECT on audit tables; all DML on ml/registry/features tables.
--   * indb_writer: every function in ml, registry, features except the ADMIN_ONLY list and SECURITY
--                  DEFINER internals; INSERT/UPDATE/DELETE/SELECT on ml, registry, features tables.
--   * indb_reader: indb_app + functions that cannot write (STABLE/IMMUTABLE) + read verbs (READ_VERBS:
--                  names starting get_, list_, search, describe, explain, evaluate, show_, lineage,
--                  similar, runtime_info, metric_history, collection_health, drift, check_skew,
--                  feature_importance, historical_query); SELECT on ml, registry, features tables;
--                  audit.verify() and audit.head().
--   * indb_app:    APP_FUNCTIONS only (predict, search, embed, online features) + internal helpers;
--                  SELECT on ml and features tables (collections, online store) and on the four
--                  registry tables prediction needs (registered_models, model_versions, aliases, deployments).
--   * Internal helpers (names starting with _) that are SECURITY INVOKER are executable by every indb role:
--     public functions call them as the caller, and they can do no more than the caller's table rights.
--     SECURITY DEFINER internals are executable by no one but the owner; audit._* likewise.
-- Areas adding a function that indb_app or indb_reader must reach add its name to APP_FUNCTIONS or
-- READ_VERBS below; everything else is right by default.
-- No indb role gets CREATE on the indb schemas: plpython3u functions are created only by `indb install`.

revoke all on schema ml, registry, features, audit from public;
grant usage on schema ml, registry, features to indb_app, indb_reader, indb_writer, indb_admin;
grant usage on schema audit to indb_reader, indb_admin;

do $$
declare
  app_functions text[] := array[
    'ml.version', 'ml.embed', 'ml.search', 'ml.keyword_search', 'ml.hybrid_search', 'ml.similar',
    'ml.predict', 'ml.predict_proba', 'ml.predict_batch', 'ml.predict_many', 'ml.warmup',
    'ml.vectorizer_search',
    'features.get_online_features', 'features.online_features', 'features.get_online', 'features.get_online_batch',
    'features.read_online',
    'registry.current_tenant', 'registry.is_admin'];
  read_verbs text := '^(get_|list_|search|describe|explain|evaluate|show_|lineage|similar|runtime_info|metric_history|node_label|version$|embed|predict|collection_health|drift|check_skew|feature_importance|historical_query)';
  admin_only text[] := array['registry.create_tenant', 'registry.apply_tenant_policies'];
  admin_audit text[] := array['audit.verify', 'audit.head', 'audit.apply_retention', 'audit.ensure_partitions',
                              'audit.attach'];
  f record;
  qname text;
  roles text[];
begin
  for f in
    select p.oid::regprocedure as sig, n.nspname as nsp, p.proname as name, p.provolatile as vol,
           p.prosecdef as definer, p.prokind as kind
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where n.nspname in ('ml', 'registry', 'features', 'audit')
       and p.prokind in ('f', 'p')
       and not exists (select 1 from pg_depend d where d.objid = p.oid and d.deptype = 'e')
  loop
    qname := f.nsp || '.' || f.name;
    roles := '{}';
    if f.nsp = 'audit' then
      if qname = any(admin_audit) then roles := array['indb_admin']; end if;
      if qname in ('audit.verify', 'audit.head') then roles := array['indb_reader']; end if;
    elsif f.name like '\_%' then
      if not f.definer then roles := array['indb_app']; end if;   -- inherited by reader, writer, admin
    elsif qname = any(admin_only) then
      roles := array['indb_admin'];
    elsif qname = any(app_functions) then
      roles := array['indb_app'];
    elsif f.vol in ('s', 'i') or f.name ~ read_verbs then
      roles := array['indb_reader'];
    else
      roles := array['indb_writer'];
    end if;
    -- change the ACL only when it differs (every GRANT/REVOKE is an audit event)
    if (select coalesce(array_agg(g order by g), '{}') from (
          select case when a.grantee = 0 then 'PUBLIC' else a.grantee::regrole::text end as g
            from pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
           where p.oid = f.sig::oid and a.grantee <> p.proowner) x)
       is distinct from (select coalesce(array_agg(r order by r), '{}') from unnest(roles) r) then
      execute format('revoke all on %s %s from public, indb_app, indb_reader, indb_writer, indb_admin',
                     case f.kind when 'p' then 'procedure' else 'function' end, f.sig);
      if cardinality(roles) > 0 then
        execute format('grant execute on %s %s to %s', case f.kind when 'p' then 'procedure' else 'function' end,
                       f.sig, array_to_string(roles, ', '));
      end if;
    end if;
  end loop;
end $$;

-- tables: whatever exists now in ml, registry, features (other areas add theirs before this file runs)
do $$
declare t record; rel text; want text[];
begin
  for t in select n.nspname as nsp, c.relname as name, c.oid::regclass as rel
             from pg_class c join pg_namespace n on n.oid = c.relnamespace
            where n.nspname in ('ml', 'registry', 'features', 'audit') and c.relkind in ('r', 'p', 'v', 'm', 'f')
              and not exists (select 1 from pg_depend d where d.objid = c.oid and d.deptype = 'e')
  loop
    want := '{}';
    if t.nsp = 'audit' then
      want := array['indb_admin:SELECT'];
    else
      want := array['indb_reader:SELECT', 'indb_writer:INSERT', 'indb_writer:UPDATE', 'indb_writer:DELETE',
                    'indb_admin:TRUNCATE', 'indb_admin:REFERENCES', 'indb_admin:TRIGGER'];
      if t.nsp in ('ml', 'features')
         or (t.nsp = 'registry' and t.name in ('registered_models', 'model_versions', 'aliases', 'deployments')) then
        want := want || 'indb_app:SELECT'::text;
      end if;
      if (t.nsp = 'ml' and t.name in ('installs', 'alembic_version')) then
        want := array['indb_reader:SELECT'];
      end if;
    end if;
    -- change the ACL only when it differs (every GRANT/REVOKE is an audit event)
    if (select coalesce(array_agg(g order by g), '{}') from (
          select case when a.grantee = 0 then 'PUBLIC' else a.grantee::regrole::text end || ':' || a.privilege_type as g
            from pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
           where c.oid = t.rel::oid and a.grantee <> c.relowner) x)
       is not distinct from (select array_agg(w order by w) from unnest(want) w) then
      continue;
    end if;
    execute format('revoke all on %s from public, indb_app, indb_reader, indb_writer, indb_admin', t.rel);
    if (t.nsp = 'ml' and t.name in ('installs', 'alembic_version')) then
      execute format('grant select on %s to indb_reader', t.rel);
    elsif t.nsp = 'audit' then
      execute format('grant select on %s to indb_admin', t.rel);     -- nobody may change the log
    else
      execute format('grant select on %s to indb_reader', t.rel);
      execute format('grant insert, update, delete on %s to indb_writer', t.rel);
      execute format('grant truncate, references, trigger on %s to indb_admin', t.rel);
      if t.nsp in ('ml', 'features')
         or (t.nsp = 'registry' and t.name in ('registered_models', 'model_versions', 'aliases', 'deployments')) then
        execute format('grant select on %s to indb_app', t.rel);
      end if;
    end if;
  end loop;
  for rel in select c.oid::regclass::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where n.nspname in ('ml', 'registry', 'features') and c.relkind = 'S' loop
    execute format('grant usage, select on sequence %s to indb_writer', rel);
  end loop;
end $$;

-- tables created later in these schemas by the installing role (e.g. a collection's table) get the same
-- read/write split; functions are re-classified by the next `indb install`.
alter default privileges in schema ml, registry, features grant select on tables to indb_reader;
alter default privileges in schema ml, registry, features grant insert, update, delete on tables to indb_writer;
alter default privileges in schema ml, features grant select on tables to indb_app;
alter default privileges in schema ml, registry, features grant usage, select on sequences to indb_writer;
