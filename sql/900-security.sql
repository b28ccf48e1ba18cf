-- Roles and row-level security (issue 6).
--
-- Roles (cluster-wide, NOLOGIN, created idempotently: several databases of one cluster install indb):
--   indb_app     predict, search, online features only
--   indb_reader  indb_app + read the registry, features, collections; search runs; lineage
--   indb_writer  indb_reader + train, deploy, write data, log runs, register models
--   indb_admin   indb_writer + everything: audit log, retention, tenants, every tenant's rows
-- Give people and services one of them: GRANT indb_writer TO alice. What each role may execute is set
-- in 999-grants.sql. plpython3u stays untrusted: no indb role may create functions in the indb schemas.
--
-- Tenancy: a session's tenant is registry.current_tenant() (the setting indb.tenant, or its single
-- indb_tenant_<name> role). Every table below with a tenant column gets four policies: rows of the
-- session's tenant and shared rows (tenant is null) are visible; only the session's own tenant can be
-- written; indb_admin sees and writes everything. registry.create_tenant(name) makes role
-- indb_tenant_<name>; from then on only its members may SET indb.tenant = '<name>'.

do $$
declare r text;
begin
  foreach r in array array['indb_app', 'indb_reader', 'indb_writer', 'indb_admin'] loop
    if not exists (select 1 from pg_roles where rolname = r) then
      begin
        execute format('create role %I nologin', r);
      exception when duplicate_object or unique_violation then
        null;  -- another database of this cluster created it at the same moment
      end;
    end if;
  end loop;
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

comment on role indb_app is 'indb: predict, search, online features only';
comment on role indb_reader is 'indb: indb_app + read registry, features, collections, lineage';
comment on role indb_writer is 'indb: indb_reader + train, deploy, write data, log runs';
comment on role indb_admin is 'indb: everything, every tenant, audit log and retention';

create or replace function registry.create_tenant(name text, member text default null) returns text
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare r text := 'indb_tenant_' || name;
begin
  if not registry.is_admin() and not pg_has_role(session_user, 'indb_admin', 'member') then
    raise exception 'only indb_admin may create tenants' using errcode = '42501';
  end if;
  if name is null or name !~ '^[a-z][a-z0-9_]{0,49}$' then
    raise exception 'invalid tenant name %', coalesce(quote_literal(name), 'NULL') using errcode = '22023',
      hint = 'tenant names are lowercase letters, digits and _, starting with a letter (at most 50)';
  end if;
  if not exists (select 1 from pg_roles where rolname = r) then
    execute format('create role %I nologin', r);
  end if;
  if member is not null then
    execute format('grant %I to %I', r, member);
  end if;
  return r;
end $$;
comment on function registry.create_tenant(text, text) is
  'indb_admin: create role indb_tenant_<name> (only its members may then act as that tenant) and optionally add a member';

-- tenant policies on a table with a tenant column (also for other areas' tables: call it from their sql)
create or replace function registry.apply_tenant_policies(tbl regclass) returns void
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  mine text := 'tenant is not distinct from (select registry.current_tenant()) or (select registry.is_admin())';
  seen text := 'tenant is null or tenant = (select registry.current_tenant()) or (select registry.is_admin())';
begin
  if not exists (select 1 from pg_attribute where attrelid = tbl and attname = 'tenant' and not attisdropped) then
    raise exception 'table % has no tenant column', tbl using errcode = '42703';
  end if;
  execute format('alter table %s enable row level security', tbl);
  execute format('drop policy if exists indb_tenant_select on %s', tbl);
  execute format('drop policy if exists indb_tenant_insert on %s', tbl);
  execute format('drop policy if exists indb_tenant_update on %s', tbl);
  execute format('drop policy if exists indb_tenant_delete on %s', tbl);
  execute format('create policy indb_tenant_select on %s for select using (%s)', tbl, seen);
  execute format('create policy indb_tenant_insert on %s for insert with check (%s)', tbl, mine);
  execute format('create policy indb_tenant_update on %s for update using (%s) with check (%s)', tbl, mine, mine);
  execute format('create policy indb_tenant_delete on %s for delete using (%s)', tbl, mine);
end $$;
comment on function registry.apply_tenant_policies(regclass) is
  'enable row-level security on a table with a tenant column: a session sees its tenant''s and shared rows, writes only its own';

do $$
declare t regclass;
begin
  -- every registry table with a tenant column, and the other areas' catalogs that have one
  for t in select c.oid::regclass from pg_class c join pg_namespace n on n.oid = c.relnamespace
            where n.nspname in ('registry', 'ml', 'features') and c.relkind in ('r', 'p')
              and exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'tenant'
                                                         and not a.attisdropped)
              and (n.nspname = 'registry'
                   or not exists (select 1 from pg_policy p where p.polrelid = c.oid
                                   and p.polname not like 'indb\_tenant\_%'))
              and not exists (select 1 from pg_inherits i where i.inhrelid = c.oid)  -- partitions follow the parent
  loop
    perform registry.apply_tenant_policies(t);
  end loop;
end $$;
