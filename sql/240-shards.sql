-- Sharded collections (issue 15; docs/scale-out.md, section 2).
--
-- A shard is another PostgreSQL with indb installed, registered here by ml.add_shard as a postgres_fdw foreign
-- server (async_capable) with a user mapping that logs in as a role of the shard that is a member of its
-- indb_admin (the shard's "link role"). A sharded collection (ml.create_collection(..., shards => array[...]))
-- is, on the coordinator, a table collections.<name> PARTITION BY HASH (id) with one foreign partition per shard,
-- and on each shard a plain indb collection of the same name (its own HNSW index, BM25 statistics and postings,
-- and its own trigger that embeds the rows that land there, with the shard's model).
--
-- * Writes: plain INSERT and COPY go through the parent (the tenant policy checks them here) and postgres_fdw
--   routes each row to its shard; ml.add_documents sends each shard its documents (by the same hash) as one
--   ml.add_documents call there, all shards in one remote transaction each, committed after every shard
--   succeeded. Embedding happens where the row lands.
-- * Reads: ml.search / keyword_search / hybrid_search send one query to every shard at once (dblink's
--   asynchronous queries: the shards run concurrently), each shard answers its own top k' (ANN: over-fetched),
--   the coordinator merges. Keyword search first sums N, total length and the query terms' df over the shards
--   and passes them to every shard's scorer: scores equal a single node's.
-- * Tenancy: the link role reads every row on the shard, so the coordinator passes the caller's tenant as the
--   option tenant_scope (ANDed to the filter there): a shard returns exactly the rows the caller may read.
--   Plain SELECT on the parent applies the tenant policy here; the foreign partitions have no grants.
-- * A shard that does not answer: SQLSTATE IXS01 naming it; with options => '{"allow_partial": true}' the
--   other shards' results and a WARNING naming it. Never silently partial.
--
-- Why dblink beside postgres_fdw: postgres_fdw reads and writes remote tables; it cannot call a remote function
-- with arguments (the shard's ml.search, with its HNSW settings, filter translation and BM25 index), so the
-- search would have to ship every candidate vector (ORDER BY embedding <=> q is not pushed down per partition
-- with a LIMIT) and could not reach the BM25 postings. dblink_send_query gives the same concurrency as an async
-- Append (every shard works at once) and runs the shard's own indb functions. Both extensions live in schema
-- indb_link, which only indb_owner may use; the functions here that use them are SECURITY DEFINER and check
-- their caller (collection visible by the catalog's tenant policy, table privilege of the caller, tenant).

-- schema indb_link (migration 0019: postgres_fdw and dblink): indb_owner only
revoke all on schema indb_link from public;
revoke all on all functions in schema indb_link from public;
grant usage on schema indb_link to indb_owner;
grant execute on all functions in schema indb_link to indb_owner;
revoke all on foreign data wrapper postgres_fdw from public;
grant usage on foreign data wrapper postgres_fdw to indb_owner;

create or replace function ml._shard(shard text) returns ml.shards
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  s ml.shards;
begin
  select * into s from ml.shards where name = shard;
  if not found then
    raise exception 'shard "%" does not exist', ml._clip(shard) using errcode = '42704',
      detail = coalesce('shards: ' || (select string_agg(name, ', ' order by name) from ml.shards), 'there are no shards yet'),
      hint = 'an admin adds one with ml.add_shard(server_name, dsn)';
  end if;
  return s;
end $$;
comment on function ml._shard(text) is 'internal: the catalog row of a shard, or 42704';

-- a libpq key=value connection string as jsonb (values may be single-quoted); unknown keys refused
create or replace function ml._shard_parse_dsn(dsn text) returns jsonb
language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  m text[];
  out jsonb := '{}';
  pat constant text := '([A-Za-z_]+)\s*=\s*(''((?:[^''\\]|\\.)*)''|[^\s'']+)';
  allowed constant text[] := array['host', 'hostaddr', 'port', 'dbname', 'user', 'password', 'sslmode',
                                   'connect_timeout', 'sslrootcert', 'sslcert', 'sslkey', 'application_name'];
begin
  if dsn is null or dsn ~ '^\s*postgres(ql)?://' then
    raise exception 'the shard''s dsn must be a key=value connection string' using errcode = '22023',
      hint = 'e.g. ''host=10.0.0.5 port=5432 dbname=indb user=indb_link password=...''';
  end if;
  if btrim(regexp_replace(dsn, pat, '', 'g')) <> '' then
    raise exception 'cannot read the shard''s dsn near %', quote_literal(left(btrim(regexp_replace(dsn, pat, '', 'g')), 40))
      using errcode = '22023', hint = 'key=value pairs separated by spaces; quote values with spaces in single quotes';
  end if;
  for m in select regexp_matches(dsn, pat, 'g') loop
    if not (lower(m[1]) = any(allowed)) then
      raise exception 'the shard''s dsn has an unknown key %', quote_literal(m[1]) using errcode = '22023',
        hint = 'keys: ' || array_to_string(allowed, ', ');
    end if;
    out := out || jsonb_build_object(lower(m[1]),
                                     case when m[3] is not null then regexp_replace(m[3], '\\(.)', '\1', 'g') else m[2] end);
  end loop;
  return out;
end $$;
comment on function ml._shard_parse_dsn(text) is 'internal: a key=value libpq connection string as jsonb';

-- the session's dblink connection to a shard (opened once per session, as indb_owner: only SECURITY DEFINER
-- functions of indb reach this, since only indb_owner may use schema indb_link)
create or replace function ml._shard_open(shard text) returns text
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  conn text := 'indb_shard_' || shard;
  why text;
begin
  if conn = any(coalesce(indb_link.dblink_get_connections(), '{}')) then
    return conn;
  end if;
  perform indb_link.dblink_connect(conn, shard);
  return conn;
end $$;

create or replace function ml._shard_close(conn text) returns void
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
begin
  if conn = any(coalesce(indb_link.dblink_get_connections(), '{}')) then
    perform indb_link.dblink_disconnect(conn);
  end if;
exception when others then
  null;  -- a connection that is already gone
end $$;

-- the error of a shard that does not answer (SQLSTATE IXS01), naming it and where it is
create or replace function ml._shard_unreachable(shards text[], why text[], collection text) returns void
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
  raise exception '% % of % unreachable', case when cardinality(shards) = 1 then 'shard' else 'shards' end,
    (select string_agg(format('"%s" (%s:%s/%s)', s.name, s.host, s.port, s.dbname), ', ' order by s.name)
       from ml.shards s where s.name = any(shards)),
    coalesce('collection "' || collection || '" is', 'the shard is')
    using errcode = 'IXS01', detail = array_to_string(why, '; '),
          hint = case when collection is null then 'start the shard''s server (or check the dsn given to ml.add_shard)'
                      else 'start the shard''s server; a search may pass options => ''{"allow_partial": true}'' to get the other shards'' results with a warning' end;
end $$;

-- one statement on an open connection: a command (dblink_exec), or a SELECT whose rows are counted
create or replace function ml._shard_exec1(conn text, sql text) returns text
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  n text;
begin
  if sql !~* '^\s*select\M' then
    return indb_link.dblink_exec(conn, sql);
  end if;
  select r.n into n from indb_link.dblink(conn, format('select count(*)::text from (%s) x', sql)) as r(n text);
  return n;
end $$;

-- run one statement on a shard (synchronously): a connection that died is opened again once; a shard that
-- does not answer raises IXS01 naming it; errors of the statement itself keep their SQLSTATE and message
create or replace function ml._shard_exec(shard text, sql text, collection text default null) returns text
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  conn text := 'indb_shard_' || shard;
  why text;
begin
  begin
    conn := ml._shard_open(shard);
    if indb_link.dblink_is_busy(conn) = 1 then
      perform ml._shard_close(conn);
      conn := ml._shard_open(shard);
    end if;
    return ml._shard_exec1(conn, sql);
  exception when connection_exception or admin_shutdown or crash_shutdown or cannot_connect_now
              or internal_error then  -- dblink: "could not send query: no connection to the server" (XX000)
    perform ml._shard_close(conn);
  end;
  begin
    conn := ml._shard_open(shard);
    return ml._shard_exec1(conn, sql);
  exception when connection_exception or admin_shutdown or crash_shutdown or cannot_connect_now then
    get stacked diagnostics why = pg_exception_detail;
    perform ml._shard_close(conn);
    perform ml._shard_unreachable(array[shard], array[shard || ': ' || btrim(coalesce(nullif(why, ''), sqlerrm))], collection);
  end;
  return null;
end $$;

-- send one query to each shard without waiting (dblink_send_query): they all run at once. Returns, per
-- shard, null when sent or why it could not be (the shard does not answer). A cached connection that died
-- (the shard restarted) is opened again once.
create or replace function ml._shard_send(shards text[], sqls text[]) returns text[]
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  errs text[] := array_fill(null::text, array[cardinality(shards)]);
  msgs text := current_setting('client_min_messages');
  conn text;
  why text;
begin
  -- dblink says NOTICE "could not send query" on a dead cached connection: that case is handled here
  perform set_config('client_min_messages', 'warning', true);
  for i in 1 .. cardinality(shards) loop
    begin
      conn := ml._shard_open(shards[i]);
      if indb_link.dblink_send_query(conn, sqls[i]) <> 1 then
        perform ml._shard_close(conn);
        conn := ml._shard_open(shards[i]);
        if indb_link.dblink_send_query(conn, sqls[i]) <> 1 then
          raise exception 'could not send the query to shard %', shards[i] using errcode = '08006';
        end if;
      end if;
    exception when connection_exception or admin_shutdown or crash_shutdown or cannot_connect_now then
      get stacked diagnostics why = pg_exception_detail;
      errs[i] := shards[i] || ': ' || btrim(coalesce(nullif(why, ''), sqlerrm));
      perform ml._shard_close('indb_shard_' || shards[i]);
    end;
  end loop;
  perform set_config('client_min_messages', msgs, true);
  return errs;
end $$;

-- One query per shard, each returning one jsonb value: all sent at once (ml._shard_send), then collected. A
-- shard that does not answer gets err (and answer null); with retry, a cached connection the shard closed (it
-- restarted since) is tried once more on a new connection before the shard counts as down.
create or replace function ml._shard_fanout(shards text[], sqls text[], retry boolean)
returns table(ord int, answer jsonb, err text)
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  errs text[] := ml._shard_send(shards, sqls);
  conn text;
  a jsonb;
  why text;
begin
  for i in 1 .. cardinality(shards) loop
    ord := i; answer := null; err := errs[i]; a := null;
    conn := 'indb_shard_' || shards[i];
    if err is null then
      begin
        select x.j into a from indb_link.dblink_get_result(conn) as x(j jsonb);
        perform 1 from indb_link.dblink_get_result(conn) as x(j jsonb);
        answer := a;
      exception when connection_exception or admin_shutdown or crash_shutdown or cannot_connect_now then
        get stacked diagnostics why = pg_exception_detail;
        err := shards[i] || ': ' || btrim(coalesce(nullif(why, ''), sqlerrm));
        perform ml._shard_close(conn);
        if retry then
          begin
            select x.j into a from indb_link.dblink(ml._shard_open(shards[i]), sqls[i]) as x(j jsonb);
            answer := a; err := null;
          exception when connection_exception or admin_shutdown or crash_shutdown or cannot_connect_now then
            get stacked diagnostics why = pg_exception_detail;
            err := shards[i] || ': ' || btrim(coalesce(nullif(why, ''), sqlerrm));
            perform ml._shard_close(conn);
          end;
        end if;
      end;
    end if;
    return next;
  end loop;
end $$;

-- what the caller may read on a shard: admins any row (their own tenant_scope, if any, narrows it), others
-- the shared rows and their tenant's, exactly as the tenant policy on one node
create or replace function ml._shard_scope(options jsonb) returns jsonb
language sql stable parallel safe
as $$
  select case when ml.is_admin() then coalesce(options, '{}') - 'allow_partial' - 'over_fetch'
              else (coalesce(options, '{}') - 'allow_partial' - 'over_fetch' - 'tenant_scope')
                   || jsonb_build_object('tenant_scope', ml.current_tenant()) end
$$;

-- a sharded collection the caller may read (or write), checked inside the SECURITY DEFINER functions below:
-- the catalog row as the caller's tenant sees it, and the caller's own privilege on the collection's table
create or replace function ml._shard_collection(collection text, priv text) returns ml.collections
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections := ml._collection(collection);
begin
  if c.shards is null then
    raise exception 'collection "%" is not sharded', c.name using errcode = '22023';
  end if;
  if not has_table_privilege(ml.caller(), ml._collection_table(c), priv) then
    raise exception 'permission denied for table %', ml._collection_table(c) using errcode = '42501',
      hint = case priv when 'SELECT' then 'searching needs indb_app, indb_reader or above'
                       else 'writing documents needs indb_writer or above' end;
  end if;
  return c;
end $$;

-- the answer of every shard that answered; the shards that did not: IXS01, or (allow_partial) a WARNING
create or replace function ml._shard_missing(c ml.collections, errs text[], allow_partial boolean) returns void
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  down text[];
  why text[];
begin
  select array_agg(c.shards[i] order by i), array_agg(errs[i] order by i) into down, why
    from generate_subscripts(c.shards, 1) i where errs[i] is not null;
  if down is null then
    return;
  end if;
  if not allow_partial then
    perform ml._shard_unreachable(down, why, c.name);
  end if;
  raise warning 'indb: % of collection "%" unreachable: results come from the other % shard(s) only (allow_partial)',
    (select string_agg(format('shard "%s" (%s:%s/%s)', s.name, s.host, s.port, s.dbname), ', ' order by s.name)
       from ml.shards s where s.name = any(down)),
    c.name, cardinality(c.shards) - cardinality(down)
    using detail = array_to_string(why, '; ');
end $$;

-- ---------------------------------------------------------------------------------------------- shards

create or replace function ml.add_shard(server_name text, dsn text)
returns table(shard text, host text, port int, dbname text, remote_user text, indb_version text, revision text)
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
-- SECURITY DEFINER: the foreign server and its user mappings belong to indb_owner (the only role that may use
-- postgres_fdw and dblink here). Admins only (checked here too, not only by the grant).
declare
  o jsonb;
  conn text;
  r record;
  here text := (select version_num from ml.alembic_version);
  srv_opts text;
  why text;
begin
  if not ml.is_admin() then
    raise exception 'only an indb_admin may add shards' using errcode = '42501';
  end if;
  if server_name is null or server_name !~ '^[a-z_][a-z0-9_]{0,47}$' then
    raise exception 'invalid shard name %', coalesce(quote_literal(server_name), 'null') using errcode = '22023',
      hint = 'use 1-48 lowercase letters, digits and underscores, starting with a letter or underscore';
  end if;
  if exists (select 1 from ml.shards s where s.name = server_name)
     or exists (select 1 from pg_foreign_server f where f.srvname = server_name) then
    raise exception 'shard (foreign server) "%" already exists', server_name using errcode = '42710',
      hint = 'pick another name, or remove it first with ml.remove_shard(name)';
  end if;
  o := ml._shard_parse_dsn(dsn);
  if not (o ? 'host' or o ? 'hostaddr') or not (o ? 'dbname') or not (o ? 'user') or not (o ? 'password') then
    raise exception 'the shard''s dsn needs host, dbname, user and password' using errcode = '22023',
      hint = 'indb connects to the shard as a login role of the shard that is a member of its indb_admin, '
             'with a password (PostgreSQL requires one for connections made on behalf of roles that are not superusers)';
  end if;
  select string_agg(format('%I %L', key, value), ', ') into srv_opts
    from jsonb_each_text(o - 'user' - 'password') where key <> 'application_name';
  execute format('create server %I foreign data wrapper postgres_fdw options (%s, async_capable %L, fetch_size %L, '
                 'batch_size %L, extensions %L)', server_name, srv_opts, 'true', '1000', '100', 'vector');
  -- indb_owner: the coordinator's functions; PUBLIC: plain INSERT/COPY/SELECT through the parent table run as
  -- their caller, and postgres_fdw looks up exactly that role's mapping. Only indb_owner (the server's owner)
  -- may use the server, and only it and superusers can read a PUBLIC mapping's options.
  execute format('create user mapping for indb_owner server %I options (user %L, password %L)',
                 server_name, o ->> 'user', o ->> 'password');
  execute format('create user mapping for public server %I options (user %L, password %L)',
                 server_name, o ->> 'user', o ->> 'password');
  conn := 'indb_shard_' || server_name;
  perform ml._shard_close(conn);
  begin
    perform indb_link.dblink_connect(conn, server_name);
  exception when connection_exception then
    get stacked diagnostics why = pg_exception_detail;
    raise exception 'shard "%" (%:%/%) is unreachable', server_name, coalesce(o ->> 'host', o ->> 'hostaddr'),
      coalesce(o ->> 'port', '5432'), o ->> 'dbname' using errcode = 'IXS01', detail = btrim(coalesce(nullif(why, ''), sqlerrm)),
      hint = 'check that its server runs and accepts a password login of that user from this host (pg_hba.conf)';
  end;
  begin
    select * into r from indb_link.dblink(conn,
      'select ml.version(), (select version_num from ml.alembic_version), ml.is_admin(), '
      '(select extnamespace::regnamespace::text from pg_extension where extname = ''vector'')')
      as x(version text, revision text, admin boolean, vector_schema text);
  exception when connection_exception then
    perform ml._shard_close(conn);
    raise;
  when others then
    perform ml._shard_close(conn);
    raise exception 'shard "%" has no indb installed (%)', server_name, sqlerrm using errcode = 'IXS02',
      hint = 'install indb there (`indb install` with its DSN, or `make install` in its checkout), then add it again';
  end;
  if r.revision is distinct from here then
    perform ml._shard_close(conn);
    raise exception 'shard "%" has indb at schema revision %, this node at %', server_name,
      coalesce(r.revision, 'none'), coalesce(here, 'none') using errcode = 'IXS02',
      hint = 'run `indb install` on both so that they run the same indb';
  end if;
  if not r.admin then
    perform ml._shard_close(conn);
    raise exception 'role % of shard "%" is not a member of indb_admin there', quote_ident(o ->> 'user'), server_name
      using errcode = '42501',
      hint = format('on the shard: GRANT indb_admin TO %I (the coordinator passes each caller''s tenant itself)', o ->> 'user');
  end if;
  insert into ml.shards (name, host, port, dbname, remote_user, vector_schema, indb_version, revision)
  values (server_name, coalesce(o ->> 'host', o ->> 'hostaddr'), coalesce((o ->> 'port')::int, 5432), o ->> 'dbname',
          o ->> 'user', coalesce(r.vector_schema, 'public'), r.version, r.revision);
  return query select s.name, s.host, s.port, s.dbname, s.remote_user, s.indb_version, s.revision
                 from ml.shards s where s.name = server_name;
end $$;
comment on function ml.add_shard(text, text) is
  'admin: register a shard (another PostgreSQL with indb, reached as a member of its indb_admin): a postgres_fdw server with user mappings, checked to have the same indb';

create or replace function ml.remove_shard(server_name text) returns boolean
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  s ml.shards;
  used text;
begin
  if not ml.is_admin() then
    raise exception 'only an indb_admin may remove shards' using errcode = '42501';
  end if;
  s := ml._shard(server_name);
  select string_agg(c.name, ', ' order by c.name) into used from ml.collections c where s.name = any(c.shards);
  if used is not null then
    raise exception 'shard "%" holds collections: %', s.name, used using errcode = '2BP01',
      hint = 'drop them first (ml.drop_collection); their documents live on the shard';
  end if;
  perform ml._shard_close('indb_shard_' || s.name);
  execute format('drop server %I cascade', s.name);  -- and its user mappings
  delete from ml.shards where name = s.name;
  return true;
end $$;
comment on function ml.remove_shard(text) is 'admin: remove a shard that holds no collection (its foreign server and user mappings)';

create or replace function ml.list_shards()
returns table(shard text, host text, port int, dbname text, remote_user text, indb_version text, revision text,
              added_at timestamptz, collections text[])
language sql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select s.name, s.host, s.port, s.dbname, s.remote_user, s.indb_version, s.revision, s.added_at,
         coalesce((select array_agg(c.name order by c.name) from ml.collections c where s.name = any(c.shards)), '{}')
    from ml.shards s order by s.name
$$;
comment on function ml.list_shards() is 'the shards (ml.add_shard) and the sharded collections on each that the session sees';

-- ---------------------------------------------------------------------------------------------- create, drop

create or replace function ml._shard_check_args(shards text[], partition_by text) returns void
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  s text;
begin
  if cardinality(shards) is null or cardinality(shards) < 1 or cardinality(shards) > 64 then
    raise exception 'shards must name 1 to 64 shards' using errcode = '22023',
      hint = 'shards => array[''s1'', ''s2''] (servers made by ml.add_shard; ml.list_shards() lists them)';
  end if;
  if (select count(distinct x) from unnest(shards) x) <> cardinality(shards) or array_position(shards, null) is not null then
    raise exception 'shards must name distinct shards, got %', shards using errcode = '22023';
  end if;
  foreach s in array shards loop
    perform ml._shard(s);
  end loop;
  if partition_by is not null then
    raise exception 'a sharded collection is partitioned by hash of id over its shards; partition_by must be null'
      using errcode = '22023', hint = 'drop partition_by (tenants are kept apart by row-level security on every shard)';
  end if;
end $$;

-- the tenant policy's write rule on the rows of a sharded collection (see ml._shard_make_collection): the rows
-- of the session's tenant (shared rows when it has none); admins any. Runs as the writer, like the policy.
create or replace function ml._shard_tenant_check() returns trigger
language plpgsql stable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
  if new.tenant is distinct from ml.current_tenant() and not ml.is_admin() then
    raise exception 'new row violates row-level security policy for table "%"', TG_ARGV[0] using errcode = '42501',
      detail = format('the row has tenant %s; this session acts for %s', coalesce(quote_literal(new.tenant), 'none'),
                      coalesce(quote_literal(ml.current_tenant()), 'no tenant')),
      hint = 'write rows of the tenant the session acts for (SET indb.tenant)';
  end if;
  return new;
end $$;

-- the coordinator's table (hash partitions by id, one foreign partition per shard) and a plain collection on
-- each shard. Called by ml._create_collection (SECURITY DEFINER) after the catalog row is written.
create or replace function ml._shard_make_collection(c ml.collections, options jsonb) returns regclass
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  tbl text := ml._collection_table(c);
  n int := cardinality(c.shards);
  made text[] := '{}';
  s text;
  e_msg text; e_state text; e_detail text; e_hint text;
begin
  execute format($f$
    create table %s (
      id         text not null check (id <> ''),
      content    text,
      metadata   jsonb not null default '{}' check (jsonb_typeof(metadata) = 'object'),
      tenant     text default ml.current_tenant(),
      created_at timestamptz not null default now(),
      embedding  %s
    ) partition by hash (id)$f$, tbl, ml._collection_vtype(c));
  execute format('comment on table %s is %L', tbl,
                 'indb sharded collection ' || c.name || ' over ' || array_to_string(c.shards, ', ') || ' (ml.create_collection)');
  -- PostgreSQL does not check row-level security's WITH CHECK on rows it routes to a foreign partition: the
  -- tenant write rule is checked by this row trigger instead (the read rule filters scans as on any table)
  execute format('create trigger indb_tenant_check before insert or update on %s for each row '
                 'execute function ml._shard_tenant_check(%L)', tbl, c.name);
  begin
    for i in 1 .. n loop
      s := c.shards[i];
      perform ml._shard_exec(s, format('select ml.create_collection(%L, %L, %L, %L, null, %L::jsonb)',
                                       c.name, c.model, c.index_type, c.metric,
                                       coalesce(options, '{}') || jsonb_build_object('dimensions', c.dimensions)));
      made := made || s;
      execute format('create foreign table %I.%I partition of %s for values with (modulus %s, remainder %s) '
                     'server %I options (schema_name %L, table_name %L)',
                     c.table_schema, left(c.table_name || '_' || s, 63), tbl, n, i - 1, s, c.table_schema, c.table_name);
    end loop;
  exception when others then
    get stacked diagnostics e_msg = message_text, e_state = returned_sqlstate, e_detail = pg_exception_detail,
                            e_hint = pg_exception_hint;
    -- what was made on the shards before the failure goes again (this node's part rolls back)
    foreach s in array made loop
      begin
        perform ml._shard_exec(s, format('select ml.drop_collection(%L, true)', c.name));
      exception when others then
        raise warning 'indb: collection "%" stays on shard "%": %', c.name, s, sqlerrm;
      end;
    end loop;
    raise exception using message = format('shard "%s": %s', c.shards[cardinality(made) + 1], e_msg),
      errcode = e_state, detail = coalesce(e_detail, ''), hint = coalesce(e_hint, '');
  end;
  return tbl::regclass;
end $$;

create or replace function ml._shard_drop_collection(c ml.collections) returns void
language plpgsql volatile parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  s text;
begin
  foreach s in array c.shards loop
    perform ml._shard_exec(s, format('select ml.drop_collection(%L, true)', c.name), c.name);
  end loop;
end $$;

-- ---------------------------------------------------------------------------------------------- writes
-- ml.add_documents on a sharded collection: each shard gets its documents (by the hash of id the partitions
-- use) as one ml.add_documents call there, in a remote transaction per shard, all committed after every shard
-- succeeded. The tenant of each document is filled in here as one node would (the session's tenant) and
-- checked as the tenant policy would; a document whose id another tenant holds on the shard is refused (42501)
-- as the policy refuses the upsert on one node.
create or replace function ml._shard_add_documents(collection text, docs jsonb) returns bigint
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections := ml._shard_collection(collection, 'INSERT');
  tbl regclass := ml._collection_table(c)::regclass;
  me text := ml.current_tenant();
  adm boolean := ml.is_admin();
  bad jsonb;
  part jsonb;
  ids text[];
  sqls text[] := '{}';
  sent text[] := '{}';
  begun text[] := '{}';
  r record;
  total bigint := 0;
  s text;
begin
  perform ml._documents_check(c, docs);
  docs := (select jsonb_agg(d || jsonb_build_object('tenant', coalesce(d ->> 'tenant', me)) order by i)
             from jsonb_array_elements(docs) with ordinality x(d, i));
  if not adm then
    select d into bad from jsonb_array_elements(docs) d where (d ->> 'tenant') is distinct from me limit 1;
    if bad is not null then
      raise exception 'new row violates row-level security policy for table "%"', c.table_name using errcode = '42501',
        detail = format('document %s has tenant %s; this session acts for %s', bad -> 'id',
                        coalesce(quote_literal(bad ->> 'tenant'), 'none'), coalesce(quote_literal(me), 'no tenant')),
        hint = 'write documents of the tenant the session acts for (SET indb.tenant)';
    end if;
  end if;
  begin
    for i in 1 .. cardinality(c.shards) loop
      select jsonb_agg(d order by d ->> 'id'), array_agg(d ->> 'id') into part, ids from jsonb_array_elements(docs) d
       where satisfies_hash_partition(tbl::oid, cardinality(c.shards), i - 1, d ->> 'id');
      continue when part is null;
      perform ml._shard_exec(c.shards[i], 'begin', c.name);
      begun := begun || c.shards[i];
      sent := sent || c.shards[i];
      -- no row (null) when an id of the call belongs to another tenant on the shard
      sqls := sqls || format(
        'select to_jsonb(ml.add_documents(%L, %L::jsonb)) from (select 1) x where %s or not exists '
        '(select 1 from %I.%I t where t.id = any(%L::text[]) and t.tenant is distinct from %L)',
        c.name, part, case when adm then 'true' else 'false' end, c.table_schema, c.table_name, ids, me);
    end loop;
    for r in select * from ml._shard_fanout(sent, sqls, false) loop
      if r.err is not null then
        perform ml._shard_unreachable(array[sent[r.ord]], array[r.err], c.name);
      end if;
      if r.answer is null then
        raise exception 'new row violates row-level security policy for table "%"', c.table_name using errcode = '42501',
          detail = format('a document id of this call belongs to another tenant (on shard %s)', sent[r.ord]),
          hint = 'document ids are unique in a collection across tenants; pick other ids';
      end if;
      total := total + (r.answer #>> '{}')::bigint;
    end loop;
    foreach s in array begun loop
      perform ml._shard_exec(s, 'commit', c.name);
    end loop;
  exception when others then
    foreach s in array begun loop
      begin
        perform indb_link.dblink_exec('indb_shard_' || s, 'rollback');
      exception when others then
        perform ml._shard_close('indb_shard_' || s);  -- closing the connection rolls its transaction back
      end;
    end loop;
    raise;
  end;
  return total;
end $$;
comment on function ml._shard_add_documents(text, jsonb) is
  'internal (definer): ml.add_documents on a sharded collection: each shard upserts and embeds its own documents';

-- ---------------------------------------------------------------------------------------------- reads

-- the ef_search each shard's HNSW scan uses when the caller names none (option ef_search: theirs wins, as is):
-- 5 x k' (the shard's top k'; 100 for k 10), at least this session's hnsw.ef_search and, with a filter, at least
-- the 100 a filtered search takes on one node; at most 1000 (pgvector's limit). Why: at 200,000 documents each
-- shard searching at ef_search 40 for its top 20 gave recall@10 0.938, at 100 0.966 (benchmarks/results/
-- scale_out_shards.json): the shards return more candidates than one node does, and each of them must be good.
-- The cost is each shard's HNSW scan visiting more of its graph (see docs/scale-out.md for the latency).
create or replace function ml._shard_ef_search(kk int, filter jsonb) returns int
language sql stable parallel safe
as $$
  select least(1000, greatest(5 * kk, coalesce(current_setting('hnsw.ef_search', true)::int, 40),
                              case when filter is not null and filter <> '{}' then 100 else 0 end))
$$;
comment on function ml._shard_ef_search(int, jsonb) is
  'internal: the ef_search a sharded ANN search asks each shard for when the caller names none (5 x k'', at least hnsw.ef_search)';

-- ml.search on a sharded collection: every shard at once answers its top k' (exact: k; ANN: over_fetch * k, at
-- least k + 10, with ml._shard_ef_search) with the caller's tenant scope, the coordinator merges by score
create or replace function ml._shard_search(collection text, query vector, k int, filter jsonb, options jsonb)
returns table(id text, score float8, content text, metadata jsonb)
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections := ml._shard_collection(collection, 'SELECT');
  opts jsonb := ml._check_search_options(options, 'ml.search');
  kk int;
  sqls text[] := '{}';
  s ml.shards;
  got jsonb[] := '{}';
  errs text[] := '{}';
  r record;
begin
  perform ml._check_k(k);
  if query is null then
    raise exception 'query vector is null' using errcode = '22004', hint = 'pass a vector or a text query';
  end if;
  kk := case when ml._opt_bool(opts, 'exact', false) then k
             else least(10000, greatest(ceil(k * ml._opt_float(opts, 'over_fetch', 2, 1, 100))::int, k + 10)) end;
  if not ml._opt_bool(opts, 'exact', false) and not opts ? 'ef_search' then
    opts := opts || jsonb_build_object('ef_search', ml._shard_ef_search(kk, filter));
  end if;
  for i in 1 .. cardinality(c.shards) loop
    s := ml._shard(c.shards[i]);
    sqls := sqls || format('select coalesce(jsonb_agg(jsonb_build_array(s.id, s.score, s.content, s.metadata)), ''[]'') '
                           'from ml.search(%L, %L::%I.vector, %s, %L::jsonb, %L::jsonb) s',
                           c.name, query::text, s.vector_schema, kk, filter, ml._shard_scope(opts));
  end loop;
  for r in select * from ml._shard_fanout(c.shards, sqls, true) loop
    got := got || r.answer;
    errs := errs || r.err;
  end loop;
  perform ml._shard_missing(c, errs, ml._opt_bool(opts, 'allow_partial', false));
  return query select x ->> 0, (x ->> 1)::float8, x ->> 2, x -> 3
                 from unnest(got) g, jsonb_array_elements(g) x
                order by 2 desc, 1 limit k;
end $$;
comment on function ml._shard_search(text, vector, int, jsonb, jsonb) is
  'internal (definer): ml.search fanned out to the shards of a sharded collection and merged';

-- ml.keyword_search on a sharded collection: round 1 sums N, total length and the query terms' df over the
-- shards; round 2 asks every shard for its top k scored with those global statistics; merged by score
create or replace function ml._shard_keyword_search(collection text, query text, k int, filter jsonb, options jsonb)
returns table(id text, score float8, content text, metadata jsonb)
language plpgsql volatile security definer parallel unsafe
set search_path = pg_catalog, pg_temp
as $$
declare
  c ml.collections := ml._shard_collection(collection, 'SELECT');
  opts jsonb := ml._check_search_options(options, 'ml.keyword_search');
  partial boolean := ml._opt_bool(opts, 'allow_partial', false);
  sqls text[] := '{}';
  errs text[] := '{}';
  stats jsonb[] := '{}';
  live text[] := '{}';
  got jsonb[] := '{}';
  g jsonb;
  r record;
begin
  perform ml._check_k(k);
  if query is null or btrim(query) = '' then
    raise exception 'empty query' using errcode = '22023', hint = 'pass the words to search for';
  end if;
  for i in 1 .. cardinality(c.shards) loop
    sqls := sqls || format('select ml._bm25_stats(%L, %L)', c.name, query);
  end loop;
  for r in select * from ml._shard_fanout(c.shards, sqls, true) loop
    errs := errs || r.err;
    if r.err is null then
      stats := stats || r.answer;
      live := live || c.shards[r.ord];
    end if;
  end loop;
  perform ml._shard_missing(c, errs, partial);
  -- the global statistics: sums over the shards that answered (all of them unless allow_partial)
  select jsonb_build_object(
           'nd', coalesce(sum((x ->> 'nd')::bigint), 0), 'tl', coalesce(sum((x ->> 'tl')::bigint), 0),
           'df', coalesce((select jsonb_object_agg(d.key, d.df) from (
                             select e.key, sum((e.value #>> '{}')::bigint) as df
                               from unnest(stats) y, jsonb_each(y -> 'df') e group by e.key) d), '{}'))
    into g from unnest(stats) x;
  if cardinality(live) = 0 or (g ->> 'nd')::bigint = 0 or g -> 'df' = '{}' then
    return;
  end if;
  sqls := '{}';
  for i in 1 .. cardinality(live) loop
    sqls := sqls || format('select coalesce(jsonb_agg(jsonb_build_array(s.id, s.score, s.content, s.metadata)), ''[]'') '
                           'from ml.keyword_search(%L, %L, %s, %L::jsonb, %L::jsonb) s',
                           c.name, query, k, filter, ml._shard_scope(opts) || jsonb_build_object('bm25_stats', g));
  end loop;
  errs := '{}';
  for r in select * from ml._shard_fanout(live, sqls, true) loop
    got := got || r.answer;
    errs := errs || r.err;
  end loop;
  if exists (select 1 from unnest(errs) e where e is not null) then
    c.shards := live;  -- a shard that went away between the two rounds
    perform ml._shard_missing(c, errs, partial);
  end if;
  return query select x ->> 0, (x ->> 1)::float8, x ->> 2, x -> 3
                 from unnest(got) g2, jsonb_array_elements(g2) x
                order by 2 desc, 1 limit k;
end $$;
comment on function ml._shard_keyword_search(text, text, int, jsonb, jsonb) is
  'internal (definer): ml.keyword_search fanned out with global BM25 statistics summed over the shards, merged';

-- functions that work on one node's table only refuse a sharded collection with a pointer to the shards
create or replace function ml._refuse_sharded(c ml.collections, fn text) returns void
language plpgsql stable parallel safe
as $$
begin
  if c.shards is not null then
    raise exception '% does not work on sharded collection "%"', fn, c.name using errcode = '0A000',
      hint = 'run it on each shard (' || array_to_string(c.shards, ', ') || '), where the collection is a plain one';
  end if;
end $$;
