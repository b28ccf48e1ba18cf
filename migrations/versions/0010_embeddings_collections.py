"""embeddings, vectorizers and collections (0.2.0): indb owns every table its functions write

* Vectorizer destinations move to schema ``embeddings``: a fresh table ``embeddings.<name>`` (made here as
  the installing role; sql/990-ownership.sql gives it to indb_owner) receives a copy of the rows of the old
  destination, which 0.1.0 made in the source's schema, owned by the vectorizer's creator, or which was any
  existing table named with ``destination =>``. The old table is left where it is, no longer maintained
  (a NOTICE names it). A copy and not ALTER TABLE ... SET SCHEMA: a moved table would keep whatever its
  owner attached to it (triggers, rules, defaults, indexes on expressions), and indb's SECURITY DEFINER
  functions would then run that code. Rows are copied only from a plain table whose columns have built-in
  types (or pgvector's); otherwise the new destination starts empty and ml.refresh_vectorizer fills it.
  Key types are stored as their built-in base type.
* Collection tables were owned by their creators in 0.1.0, and writers could CREATE in schema
  ``collections``: what they attached is removed before sql/990-ownership.sql gives the tables to
  indb_owner (a trigger, a rule or a function they left there would otherwise run as indb_owner):
  functions, procedures, views, sequences and types in schemas collections and embeddings; triggers that
  are not indb's collection triggers, rules and extended statistics on collection tables and their
  partitions, and on any other table of schema collections. NOTICEs list what was removed.
  (A 0.1.0 database whose writers were not trusted cannot be made trustworthy by an upgrade: in 0.1.0 a
  writer could become a superuser; see SECURITY.md.)
* One-time cleanups that the re-applied sql/ files did with ``drop ... if exists``, and the objects whose
  signature or result changes in 0.2.0 (create or replace cannot change them).

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

DROP_OLD = """
drop function if exists ml._collection_ensure_partitions(ml.collections, text[], timestamptz[]);
drop view if exists ml.vectorizer_status;
drop function if exists ml._vectorizer_status();
drop function if exists ml.vectorizer_search(text, text, int);
drop procedure if exists ml.vectorizer_worker(text, int, int);
"""

MOVE_DESTINATIONS = r"""
do $$
declare
  v record;
  t record;
  vs text := (select extnamespace::regnamespace::text from pg_extension where extname = 'vector');
  old regclass;
  newname text;
  newrel text;
  dims int;
  keycols text;
  keynames text;
  keycasts text;
  base oid;
  typs text[];
  ok boolean;
  i int;
begin
  for v in select x.*, m.dimensions as model_dims, sm.dimensions as staging_dims
             from ml.vectorizers x join ml.embedding_models m on m.name = x.model
             left join ml.embedding_models sm on sm.name = x.staging_model
            order by x.id loop
    for t in select * from (values ('destination', v.destination, v.model_dims, v.name),
                                   ('staging_destination', v.staging_destination, v.staging_dims,
                                    left(v.name, 40) || '_staging_' || v.id)) s(col, rel, dims, want)
              where s.rel is not null loop
      old := t.rel;
      continue when (select relnamespace::regnamespace::text from pg_class where oid = old) = 'embeddings';
      -- key columns as their built-in base types
      typs := '{}';
      ok := true;
      for i in 1 .. cardinality(v.key_types) loop
        begin
          base := v.key_types[i]::regtype;
        exception when others then
          base := null;
        end;
        while base is not null and (select typtype from pg_type where oid = base) = 'd' loop
          base := (select typbasetype from pg_type where oid = base);
        end loop;
        if base is null or base >= 16384 then
          ok := false;
        else
          typs := typs || format_type(base, null);
        end if;
      end loop;
      if not ok then
        raise notice 'indb: vectorizer "%" has key columns of types that are not built in (%); its destination % stays where it is and the vectorizer refuses to run: re-create it on a table with built-in key types',
          v.name, array_to_string(v.key_types, ', '), old;
        continue;
      end if;
      newname := case when octet_length(t.want) <= 63 then t.want else 'vectorizer_' || v.id || left(t.col, 1) end;
      if to_regclass(format('embeddings.%I', newname)) is not null then
        newname := 'vectorizer_' || v.id || '_' || left(t.col, 1);
      end if;
      newrel := format('embeddings.%I', newname);
      select string_agg(format('%I %s not null', k, typs[o]), ', ' order by o),
             string_agg(format('%I', k), ', ' order by o),
             string_agg(format('%I::%s', k, typs[o]), ', ' order by o)
        into keycols, keynames, keycasts
        from unnest(v.key_columns) with ordinality u(k, o);
      execute format('create table %s (%s, seq int not null, chunk text not null, embedding %s.vector(%s) not null, '
                     'content_hash text not null, model text not null, embedded_at timestamptz not null default now(), '
                     'primary key (%s, seq))', newrel, keycols, vs, t.dims, keynames);
      execute format('create index on %s using hnsw (embedding %s.vector_cosine_ops)', newrel, vs);
      execute format('comment on table %s is %L', newrel, 'indb vectorizer destination (ml.vectorizers id ' || v.id || ')');
      -- copy only from a plain table whose columns have built-in (or pgvector) types: reading it runs no code
      ok := (select relkind from pg_class where oid = old) = 'r'
            and not exists (
              select 1 from pg_attribute a
               where a.attrelid = old and a.attnum > 0 and not a.attisdropped
                 and a.attname = any(v.key_columns || array['seq', 'chunk', 'embedding', 'content_hash', 'model', 'embedded_at'])
                 and a.atttypid >= 16384
                 and not exists (select 1 from pg_depend d where d.classid = 'pg_type'::regclass
                                    and d.objid = a.atttypid and d.deptype = 'e'))
            and (select count(*) from pg_attribute a where a.attrelid = old and a.attnum > 0 and not a.attisdropped
                   and a.attname = any(v.key_columns || array['seq', 'chunk', 'embedding', 'content_hash', 'model', 'embedded_at']))
                = cardinality(v.key_columns) + 6;
      if ok then
        execute format('insert into %s (%s, seq, chunk, embedding, content_hash, model, embedded_at) '
                       'select %s, seq, chunk, embedding::text::%s.vector(%s), content_hash, model, embedded_at from %s',
                       newrel, keynames, keycasts, vs, t.dims, old);
      else
        raise notice 'indb: the rows of % were not copied (not a plain table, or columns of types that are not built in); run ml.refresh_vectorizer(%L)',
          old, v.name;
      end if;
      execute format('update ml.vectorizers set %I = %L::regclass where id = %s', t.col, newrel, v.id);
      raise notice 'indb: vectorizer "%": % moved to % (the old table is no longer maintained: drop it when you no longer need it)',
        v.name, old, newrel;
    end loop;
    if typs <> '{}' and typs is distinct from v.key_types then
      update ml.vectorizers set key_types = typs where id = v.id;
    end if;
  end loop;
end $$;
"""

SANITIZE_COLLECTIONS = r"""
do $$
declare
  o record;
  rel regclass;
begin
  -- 1. everything in schemas collections and embeddings that is not a table (0.1.0 writers had CREATE there)
  for o in select p.oid::regprocedure::text as sig, case p.prokind when 'p' then 'procedure'
                  when 'a' then 'aggregate' else 'function' end as kind
             from pg_proc p where p.pronamespace in ('collections'::regnamespace, 'embeddings'::regnamespace) loop
    raise notice 'indb: dropping % % (schema collections/embeddings hold only indb''s tables)', o.kind, o.sig;
    execute format('drop %s if exists %s cascade', o.kind, o.sig);
  end loop;
  for o in select c.oid::regclass::text as rel, case c.relkind when 'v' then 'view' when 'm' then 'materialized view'
                  when 'f' then 'foreign table' else 'sequence' end as kind
             from pg_class c where c.relnamespace in ('collections'::regnamespace, 'embeddings'::regnamespace)
              and (c.relkind in ('v', 'm', 'f')
                   or (c.relkind = 'S' and not exists (select 1 from pg_depend d where d.objid = c.oid
                                                          and d.classid = 'pg_class'::regclass and d.deptype in ('a', 'i')))) loop
    raise notice 'indb: dropping % %', o.kind, o.rel;
    execute format('drop %s if exists %s cascade', o.kind, o.rel);
  end loop;
  for o in select t.oid::regtype::text as typ from pg_type t
            where t.typnamespace in ('collections'::regnamespace, 'embeddings'::regnamespace)
              and (t.typtype in ('e', 'd', 'r', 'm') or (t.typtype = 'c' and (select relkind from pg_class where oid = t.typrelid) = 'c')) loop
    raise notice 'indb: dropping type %', o.typ;
    execute format('drop type if exists %s cascade', o.typ);
  end loop;
  -- 2. code attached to the tables of schema collections (collection tables, their partitions, anything else)
  for rel in select c.oid::regclass from pg_class c
              where c.relnamespace = 'collections'::regnamespace and c.relkind in ('r', 'p') loop
    for o in select tgname from pg_trigger
              where tgrelid = rel and not tgisinternal
                and not (tgname in ('collection_insert', 'collection_update', 'collection_delete', 'collection_truncate')
                         and tgfoid::regprocedure::text = 'ml._collection_trigger()') loop
      raise notice 'indb: dropping trigger % on %', o.tgname, rel;
      execute format('drop trigger %I on %s', o.tgname, rel);
    end loop;
    for o in select rulename from pg_rewrite where ev_class = rel and rulename <> '_RETURN' loop
      raise notice 'indb: dropping rule % on %', o.rulename, rel;
      execute format('drop rule %I on %s', o.rulename, rel);
    end loop;
    for o in select oid, stxname from pg_statistic_ext where stxrelid = rel loop
      raise notice 'indb: dropping statistics % on %', o.stxname, rel;
      execute format('drop statistics %s', (select format('%I.%I', stxnamespace::regnamespace, stxname)
                                             from pg_statistic_ext where oid = o.oid));
    end loop;
    for o in select conname from pg_constraint where conrelid = rel and contype in ('f', 't', 'x') and conislocal loop
      raise notice 'indb: dropping constraint % on %', o.conname, rel;
      execute format('alter table %s drop constraint %I', rel, o.conname);
    end loop;
  end loop;
end $$;
"""


def upgrade() -> None:
    op.execute(DROP_OLD)
    op.execute(MOVE_DESTINATIONS)
    op.execute(SANITIZE_COLLECTIONS)


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
