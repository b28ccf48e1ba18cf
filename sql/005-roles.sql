-- The cluster roles of indb (created idempotently: several databases of one cluster install indb).
-- What each role may do is written in SECURITY.md and applied by 999-grants.sql.

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
