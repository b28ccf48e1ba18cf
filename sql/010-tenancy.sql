-- Tenancy: one model for every area (SECURITY.md, "Tenants").
--
-- * The caller is the role a session acts as: its SET ROLE role, else its login. Inside indb's SECURITY
--   DEFINER functions current_user is their owner, so they ask ml.caller().
-- * A tenant is a role indb_tenant_<name> (ml.create_tenant). A session acts for tenant t when indb.tenant = t
--   and the caller is a member of indb_tenant_t (or of indb_admin). A caller bound to exactly one tenant role
--   acts for it without setting anything. Naming a tenant the caller may not act as is an error (42501) at the
--   first tenant-scoped statement, never a silent fallback.
-- * Every table of indb with a tenant column gets the same four policies (ml._apply_tenant_policies), forced
--   on the table's owner too, so SECURITY DEFINER functions see exactly what their caller may see:
--     read:  shared rows (tenant is null), the session's tenant's rows; admins read every row
--     write: rows of the session's tenant (shared rows when the session has none); admins write every row
--   Superusers and BYPASSRLS roles skip row-level security (PostgreSQL's rule): applications must not connect
--   as one, and ml.runtime_info() warns when a session does.

-- (qualified throughout, operators and types included: it runs with the caller's search_path)
create or replace function ml.caller() returns name
language sql stable parallel safe
as $$
  select (case when current_user operator(pg_catalog.=) any ('{indb_owner,indb_tenant_manager}'::pg_catalog.name[])
               then coalesce(case when pg_catalog.current_setting('role') operator(pg_catalog.=) 'none' then null
                                  else pg_catalog.current_setting('role') end,
                             session_user::pg_catalog.text)
               else current_user::pg_catalog.text end)::pg_catalog.name
$$;
comment on function ml.caller() is
  'the role the session acts as (its SET ROLE role, else its login), also inside indb''s SECURITY DEFINER functions';

-- These run in every tenant policy and column default, so they are cheap: no SET clause (so that the SQL
-- ones are inlined into the query and the plpgsql one keeps its cached plans), every name schema-qualified.
create or replace function ml.is_admin() returns boolean
language sql stable parallel safe
as $$ select pg_catalog.pg_has_role(ml.caller(), 'indb_admin', 'member') $$;
comment on function ml.is_admin() is 'true for members of indb_admin (and superusers): they read and write every tenant''s rows';

-- the tenant roles a role belongs to, directly or through other roles (walked in pg_auth_members; a
-- superuser is bound to no tenant unless it was granted one). plpgsql, not SQL: a SQL function with a FROM
-- clause is never inlined, and its recursive query was planned again at each call of each transaction
-- (~0.5 ms; ml.current_tenant runs it in every tenant policy of every statement); plpgsql keeps the plan.
-- Each step reads only the memberships of the roles found so far (an index scan of pg_auth_members by member,
-- LATERAL ... OFFSET 0 so that the planner cannot turn it into a hash join): a hash join read every membership
-- of the cluster at each step, so the cost grew with the number of roles (with 2,350 memberships, 260-300 us
-- a call instead of 21-36 us; a cluster of 1,000 tenants with a few logins each has that many).
-- It runs with the caller's search_path (no SET clause, for the cached plan), so every operator and type in it
-- is pg_catalog's: a caller who put a schema of their own first, with an `=` on oid that matches a victim's
-- memberships, made this walk return the victim's tenant, and row-level security then showed that tenant's rows
-- (tests/security/test_tenant_search_path.py).
create or replace function ml.tenants_of(who name default null) returns text[]
language plpgsql stable parallel safe
as $$
begin
  return (
    with recursive m(oid) as (
        select pg_catalog.to_regrole(coalesce(who, ml.caller())::pg_catalog.text)::pg_catalog.oid
        union
        select a.roleid from m cross join lateral (
            select a.roleid from pg_catalog.pg_auth_members a where a.member operator(pg_catalog.=) m.oid
            offset 0) a),
    n(name) as (
        select m.oid::pg_catalog.regrole::pg_catalog.text from m)
    select coalesce(pg_catalog.array_agg(pg_catalog.substr(n.name, 13) order by n.name), '{}'::pg_catalog.text[])
      from n
     where n.name operator(pg_catalog.~~) 'indb\_tenant\_%'
       and n.name operator(pg_catalog.<>) 'indb_tenant_manager');
end $$;
comment on function ml.tenants_of(name) is 'the tenants a role is bound to (a member of indb_tenant_<name>, directly or through other roles)';

-- Like ml.tenants_of, it runs with the caller's search_path, and plpgsql resolves the types of its variables with
-- the search_path of the session's first call: every type and operator is pg_catalog's.
create or replace function ml.current_tenant() returns text
language plpgsql stable parallel safe
as $$
declare
  t pg_catalog.text := pg_catalog.current_setting('indb.tenant', true);
  who pg_catalog.name;
  mine pg_catalog.text[];
begin
  if t operator(pg_catalog.=) '' then
    t := null;
  end if;
  who := ml.caller();
  if t is null then
    mine := ml.tenants_of(who);
    if pg_catalog.cardinality(mine) operator(pg_catalog.=) 1 then
      return mine[1];                                              -- bound to one tenant: that one
    end if;
    return null;
  end if;
  if pg_catalog.to_regrole('indb_tenant_' operator(pg_catalog.||) t) is null or t operator(pg_catalog.=) 'manager' then
    raise exception 'tenant "%" does not exist', ml._clip(t) using errcode = '42501',
      hint = 'an admin creates tenants with ml.create_tenant(name, member); RESET indb.tenant to act for no tenant';
  end if;
  if not pg_catalog.pg_has_role(who, 'indb_tenant_' operator(pg_catalog.||) t, 'member')
     and not pg_catalog.pg_has_role(who, 'indb_admin', 'member') then
    mine := ml.tenants_of(who);
    raise exception 'role "%" may not act as tenant "%"', who, t using errcode = '42501',
      detail = pg_catalog.format('it is not a member of role %I', 'indb_tenant_' operator(pg_catalog.||) t),
      hint = pg_catalog.format('its tenants: %s; an admin may GRANT %I TO %I',
                               case when pg_catalog.cardinality(mine) operator(pg_catalog.=) 0 then 'none'
                                    else pg_catalog.array_to_string(mine, ', ') end,
                               'indb_tenant_' operator(pg_catalog.||) t, who);
  end if;
  return t;
end $$;
comment on function ml.current_tenant() is
  'the tenant the session acts for: indb.tenant when the caller may act as it (else 42501), or the one tenant it is bound to, or null';

-- the one policy predicate pair, used by every tenant table (and by nothing else)
create or replace function ml._tenant_read_sql() returns text
language sql immutable parallel safe
as $$ select 'tenant is null or tenant = (select ml.current_tenant()) or (select ml.is_admin())' $$;

create or replace function ml._tenant_write_sql() returns text
language sql immutable parallel safe
as $$ select 'tenant is not distinct from (select ml.current_tenant()) or (select ml.is_admin())' $$;

-- row-level security on a table with a tenant column; forced, so the table's owner (indb's SECURITY DEFINER
-- functions) is filtered too. Idempotent: re-applied by every `indb install` and by the functions that create
-- tenant tables (collections, feature stores).
create or replace function ml._apply_tenant_policies(tbl regclass) returns void
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  p record;
  want jsonb := jsonb_build_object(
    'indb_tenant_select', jsonb_build_array('r', ml._tenant_read_sql(), null),
    'indb_tenant_insert', jsonb_build_array('a', null, ml._tenant_write_sql()),
    'indb_tenant_update', jsonb_build_array('w', ml._tenant_write_sql(), ml._tenant_write_sql()),
    'indb_tenant_delete', jsonb_build_array('d', ml._tenant_write_sql(), null));
begin
  if not exists (select 1 from pg_attribute where attrelid = tbl and attname = 'tenant' and not attisdropped) then
    raise exception 'table % has no tenant column', tbl using errcode = '42703';
  end if;
  execute format('alter table %s enable row level security', tbl);
  execute format('alter table %s force row level security', tbl);
  -- any other policy would widen what a tenant sees (policies are OR-ed): there must be none
  for p in select polname from pg_policy where polrelid = tbl and not (want ? polname) loop
    execute format('drop policy %I on %s', p.polname, tbl);
  end loop;
  for p in select key as name, value ->> 0 as cmd, value ->> 1 as using_sql, value ->> 2 as check_sql
             from jsonb_each(want) loop
    continue when exists (select 1 from pg_policy x where x.polrelid = tbl and x.polname = p.name);
    execute format('create policy %I on %s for %s%s%s', p.name, tbl,
                   case p.cmd when 'r' then 'select' when 'a' then 'insert' when 'w' then 'update' else 'delete' end,
                   coalesce(' using (' || p.using_sql || ')', ''), coalesce(' with check (' || p.check_sql || ')', ''));
  end loop;
end $$;
comment on function ml._apply_tenant_policies(regclass) is
  'internal: the tenant policies (read: shared + own tenant, write: own tenant; admins all), forced on the owner too';

-- every table of indb with a tenant column (partitions follow their parent: they have no grants of their own)
do $$
declare t regclass;
begin
  for t in select c.oid::regclass from pg_class c join pg_namespace n on n.oid = c.relnamespace
            where n.nspname in ('ml', 'registry', 'features', 'collections', 'embeddings')
              and c.relkind in ('r', 'p')
              and exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'tenant'
                                                         and not a.attisdropped)
              and not c.relispartition
  loop
    perform ml._apply_tenant_policies(t);
  end loop;
end $$;

-- tenants: roles indb_tenant_<name>. The only function that creates roles; owned by indb_tenant_manager
-- (CREATEROLE), executable by indb_admin (999-grants.sql).
create or replace function ml.create_tenant(name text, member text default null) returns text
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  r text := 'indb_tenant_' || name;
  m pg_roles;
  made boolean := false;
  bound boolean := false;
begin
  if not pg_has_role(ml.caller(), 'indb_admin', 'member') then
    raise exception 'only indb_admin may create tenants' using errcode = '42501',
      hint = 'ask an administrator (a member of indb_admin)';
  end if;
  if name is null or name !~ '^[a-z][a-z0-9_]{0,49}$' or name = 'manager' then
    raise exception 'invalid tenant name %', coalesce(quote_literal(name), 'NULL') using errcode = '22023',
      hint = 'tenant names are 1-50 lowercase letters, digits and _, starting with a letter (not "manager")';
  end if;
  if member is not null then
    select * into m from pg_roles where rolname = member;
    if m.oid is null then
      raise exception 'role "%" does not exist', ml._clip(member) using errcode = '42704', hint = 'create the login role first';
    end if;
    if m.rolsuper or m.rolbypassrls or m.rolname like 'indb\_tenant\_%'
       or m.rolname in ('indb_app', 'indb_reader', 'indb_writer', 'indb_admin', 'indb_owner') then
      raise exception 'role "%" cannot be bound to a tenant', member using errcode = '22023',
        detail = 'superusers and BYPASSRLS roles skip row-level security; indb''s own roles are shared by every tenant',
        hint = 'bind the login roles of the tenant''s people and services';
    end if;
  end if;
  if not exists (select 1 from pg_roles where rolname = r) then
    execute format('create role %I nologin', r);
    execute format('comment on role %I is %L', r, 'indb tenant ' || name || ' (ml.create_tenant)');
    made := true;
  end if;
  if member is not null and not pg_has_role(member, r, 'member') then
    execute format('grant %I to %I', r, member);
    bound := true;
  end if;
  if made or bound then   -- role changes are invisible to event triggers: this function logs its own
    perform audit._append('CREATE_TENANT', 'ml.tenants', jsonb_build_object('tenant', name), null,
                          jsonb_build_object('tenant', name, 'role', r, 'created', made,
                                             'member', case when bound then member end),
                          name, ml.caller()::text);
  end if;
  return name;
end $$;
comment on function ml.create_tenant(text, text) is
  'indb_admin: create tenant <name> (role indb_tenant_<name>; only its members may act as it) and optionally bind a role to it';
