-- The cluster roles of indb, created idempotently (several databases of one cluster install indb).
-- SECURITY.md states what each role may do; 999-grants.sql applies it; tests/security proves it.
--
--   indb_app     predict, search, embed, online features
--   indb_reader  indb_app + read the registry, features, collections, lineage, the audit chain's head
--   indb_writer  indb_reader + write data (documents, features), train, deploy, log runs, register models
--   indb_admin   indb_writer + every tenant's rows, tenants, embedding models, on-demand feature code, audit
--
-- Two roles own things and are never granted to anyone (NOLOGIN, no members):
--   indb_owner           owns every schema, table, function and view of indb; SECURITY DEFINER functions
--                        run as it. Not a superuser and without BYPASSRLS, so row-level security applies to
--                        it too (every tenant table is FORCE ROW LEVEL SECURITY).
--   indb_tenant_manager  CREATEROLE, owns only ml.create_tenant: the one place that creates roles.
-- Give people and services one of the four working roles: GRANT indb_writer TO alice.

do $$
declare
  r text;
  spec text[];
begin
  foreach spec slice 1 in array array[
      ['indb_app', 'nologin'], ['indb_reader', 'nologin'], ['indb_writer', 'nologin'], ['indb_admin', 'nologin'],
      ['indb_owner', 'nologin nosuperuser nobypassrls nocreaterole nocreatedb noinherit'],
      ['indb_tenant_manager', 'nologin nosuperuser nobypassrls createrole nocreatedb noinherit']] loop
    r := spec[1];
    if not exists (select 1 from pg_roles where rolname = r) then
      begin
        execute format('create role %I %s', r, spec[2]);
      exception when duplicate_object or unique_violation then
        null;  -- another database of this cluster created it at the same moment
      end;
    end if;
  end loop;
  -- the owner roles must stay what they are: refuse to install over a changed one
  if exists (select 1 from pg_roles where rolname in ('indb_owner', 'indb_tenant_manager')
               and (rolsuper or rolbypassrls or rolcanlogin)) then
    raise exception 'roles indb_owner and indb_tenant_manager must be NOLOGIN, not superusers and without BYPASSRLS'
      using errcode = '42501', hint = 'ALTER ROLE indb_owner NOLOGIN NOSUPERUSER NOBYPASSRLS (same for indb_tenant_manager)';
  end if;
  if exists (select 1 from pg_auth_members m join pg_roles g on g.oid = m.roleid
              where g.rolname in ('indb_owner', 'indb_tenant_manager')) then
    raise exception 'roles indb_owner and indb_tenant_manager must have no members: %',
      (select string_agg(format('%I in %I', u.rolname, g.rolname), ', ')
         from pg_auth_members m join pg_roles g on g.oid = m.roleid join pg_roles u on u.oid = m.member
        where g.rolname in ('indb_owner', 'indb_tenant_manager'))
      using errcode = '42501',
            hint = 'a member could run code as the owner of every indb object: REVOKE indb_owner FROM <role>';
  end if;
end $$;

do $$
declare pair text[];
begin
  foreach pair slice 1 in array array[['indb_app', 'indb_reader'], ['indb_reader', 'indb_writer'],
                                     ['indb_writer', 'indb_admin']] loop
    if not exists (select 1 from pg_auth_members m join pg_roles a on a.oid = m.roleid
                   join pg_roles b on b.oid = m.member where a.rolname = pair[1] and b.rolname = pair[2]) then
      begin
        execute format('grant %I to %I', pair[1], pair[2]);
      exception when others then
        if sqlstate not in ('XX000', '40001', '23505') then raise; end if;
      end;
    end if;
  end loop;
end $$;

comment on role indb_app is 'indb: predict, search, embed, online features';
comment on role indb_reader is 'indb: indb_app + read registry, features, collections, lineage';
comment on role indb_writer is 'indb: indb_reader + write data, train, deploy, log runs';
comment on role indb_admin is 'indb: everything, every tenant, tenants, code-bearing registrations, audit';
comment on role indb_owner is 'indb: owns every indb object; never granted to anyone';
comment on role indb_tenant_manager is 'indb: CREATEROLE, owns only ml.create_tenant; never granted to anyone';
