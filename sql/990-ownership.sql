-- Ownership (SECURITY.md, "Ownership"): every object of indb belongs to indb_owner, a NOLOGIN role that
-- is granted to no one, so no working role can attach a trigger, rule or policy to what indb's SECURITY
-- DEFINER functions touch, and those functions run as a role that row-level security applies to.
-- ml.create_tenant, the one function that creates roles, belongs to indb_tenant_manager (CREATEROLE).
-- Re-applied on every `indb install`: objects made since (by migrations or as the installing role) move over.

do $$
declare
  o record;
  schemas constant text[] := array['ml', 'registry', 'features', 'audit', 'collections', 'embeddings'];
begin
  for o in select n.nspname from pg_namespace n
            where n.nspname = any(schemas) and n.nspowner <> 'indb_owner'::regrole loop
    execute format('alter schema %I owner to indb_owner', o.nspname);
  end loop;
  -- tables, partitions, views and sequences (identity sequences and indexes follow their table)
  for o in select c.oid::regclass as rel, c.relkind from pg_class c join pg_namespace n on n.oid = c.relnamespace
            where n.nspname = any(schemas) and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')
              and c.relowner <> 'indb_owner'::regrole
              and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass and d.objid = c.oid
                                 and (d.deptype = 'e'
                                      or (c.relkind = 'S' and d.deptype in ('a', 'i') and d.refobjid <> c.oid)))
            order by c.oid loop
    execute format('alter %s %s owner to indb_owner',
                   case o.relkind when 'v' then 'view' when 'm' then 'materialized view' when 'S' then 'sequence'
                                  when 'f' then 'foreign table' else 'table' end, o.rel);
  end loop;
  for o in select p.oid::regprocedure as fn, p.prokind,
                  case when p.oid = 'ml.create_tenant(text, text)'::regprocedure then 'indb_tenant_manager'
                       else 'indb_owner' end as want
             from pg_proc p join pg_namespace n on n.oid = p.pronamespace
            where n.nspname = any(schemas)
              and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid
                                 and d.deptype = 'e') loop
    if (select proowner from pg_proc where oid = o.fn) <> o.want::regrole then
      execute format('alter %s %s owner to %I', case o.prokind when 'p' then 'procedure' else 'function' end,
                     o.fn, o.want);
    end if;
  end loop;
  -- standalone types (composite types of tables follow their table)
  for o in select t.oid::regtype as typ from pg_type t join pg_namespace n on n.oid = t.typnamespace
            where n.nspname = any(schemas) and t.typtype in ('c', 'e', 'd') and t.typowner <> 'indb_owner'::regrole
              and (t.typrelid = 0 or (select relkind from pg_class where oid = t.typrelid) = 'c')
              and not exists (select 1 from pg_depend d where d.classid = 'pg_type'::regclass and d.objid = t.oid
                                 and d.deptype in ('e', 'i')) loop
    execute format('alter type %s owner to indb_owner', o.typ);
  end loop;
end $$;
