-- Tenancy: one model for every area. A session's tenant, whether it is an admin, tenant roles, and the
-- row-level security policies that every table with a tenant column gets (see SECURITY.md).

create or replace function registry.current_tenant() returns text
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  t text := nullif(current_setting('indb.tenant', true), '');
  r text;
  roles text[];
begin
  if t is null then
    -- no setting: a role that is a member of exactly one indb_tenant_<name> role works as that tenant
    if (select rolsuper from pg_roles where rolname = current_user) then
      return null;
    end if;
    select array_agg(substr(rolname, 13)) into roles
      from pg_roles where rolname like 'indb\_tenant\_%' and pg_has_role(current_user, oid, 'member');
    if cardinality(roles) = 1 then
      return roles[1];
    end if;
    return null;
  end if;
  r := 'indb_tenant_' || t;
  if exists (select 1 from pg_roles where rolname = r) and not pg_has_role(current_user, r, 'member') then
    raise exception 'role "%" may not act as tenant "%"', current_user, t
      using errcode = '42501',
            detail = format('tenant %L is bound to role %I and role %I is not a member of it', t, r, current_user),
            hint = format('SET indb.tenant to a tenant you belong to, or GRANT %I TO %I', r, current_user);
  end if;
  return t;
end $$;
comment on function registry.current_tenant() is
  'the session''s tenant: setting indb.tenant (checked against role indb_tenant_<name> when that role exists), or the one indb_tenant_* role the user belongs to';

create or replace function registry.is_admin() returns boolean
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$ select case when exists (select 1 from pg_roles where rolname = 'indb_admin')
                  then pg_has_role(current_user, 'indb_admin', 'member')
                  else (select rolsuper from pg_roles where rolname = current_user) end $$;
comment on function registry.is_admin() is 'true for members of indb_admin (and superusers): they see every tenant';

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
