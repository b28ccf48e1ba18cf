"""Metadata filters that keep their GIN index under row security (issue 14)

For every role but a superuser the tenant policies of a collection apply, and PostgreSQL lets a condition reach an
index ahead of a policy only when its function is LEAKPROOF (it could otherwise show, through an error, a value of
a row the policy hides). No jsonb operator of PostgreSQL is marked leakproof, so a metadata filter of ml.search,
ml.keyword_search or ml.hybrid_search read every row the caller may see: 41 ms instead of 2.1 ms on 30,000
documents for a filter matching 300.

This migration adds:

* ml.@>(jsonb, jsonb) and ml.?(jsonb, text): PostgreSQL's own jsonb_contains and jsonb_exists (the same C
  functions, so the same answers), declared LEAKPROOF. The judgement: neither raises an error that depends on the
  value of a row, except for corrupt data, out of memory, and (for containment only) a stack overflow, which needs
  a stored value nested deeper than thousands of levels along the very keys of the query (filters that indb
  translates are at most 16 levels deep; indb never stores such values itself). Neither has a side effect; both
  return only true or false.
* ml.jsonb_tenant_path_ops: a GIN operator class for ml.@> with the support functions of PostgreSQL's
  jsonb_path_ops (the same index keys: a hash of each path and value), so the planner can use the index for it.
  jsonb_path_ops rather than jsonb_ops: measured on 100,000 documents, a two-key filter matching 40 rows read
  46 buffers in 1.2 ms against 230 in 4.4 ms, and the index is 1.2 MB instead of 7.3 MB (jsonb_ops indexes every
  key alone, so "cat" leads to every row); the price is that $exists (ml.?) is no longer an index condition.
* Every collection's metadata index is rebuilt with that operator class (same name), and so are the registry's
  params and tags indexes: registry.search_runs' equality conditions on them now reach their GIN indexes under
  row security too (before, only its metric walk kept a reader's search fast). A filter's SQL
  (plpython/indb_runtime/filters.py) now uses operator(ml.@>) and operator(ml.?).

Hand-written SQL with the plain @> operator no longer finds an index on a collection's metadata; write
``metadata operator(ml.@>) '{...}'`` instead (the README says so).

Revision ID: 0024
Revises: 0023
"""

from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
create or replace function ml._jsonb_contains(jsonb, jsonb) returns boolean
language internal immutable strict parallel safe leakproof as 'jsonb_contains';
create or replace function ml._jsonb_exists(jsonb, text) returns boolean
language internal immutable strict parallel safe leakproof as 'jsonb_exists';
comment on function ml._jsonb_contains(jsonb, jsonb) is
  'internal: jsonb @> jsonb (PostgreSQL''s jsonb_contains) declared leakproof, for metadata filters under row security';
comment on function ml._jsonb_exists(jsonb, text) is
  'internal: jsonb ? text (PostgreSQL''s jsonb_exists) declared leakproof, for metadata filters under row security';
do $$
begin
  if to_regoperator('ml.@>(jsonb, jsonb)') is null then
    create operator ml.@> (leftarg = jsonb, rightarg = jsonb, function = ml._jsonb_contains,
                           restrict = matchingsel, join = matchingjoinsel);
  end if;
  if to_regoperator('ml.?(jsonb, text)') is null then
    create operator ml.? (leftarg = jsonb, rightarg = text, function = ml._jsonb_exists,
                          restrict = matchingsel, join = matchingjoinsel);
  end if;
end $$;
-- the GIN operator class: PostgreSQL's own jsonb_path_ops (its support functions and key type, read from the
-- catalog) with ml.@> in place of @> (its jsonpath operators are left out)
do $$
begin
  if not exists (select 1 from pg_opclass c
                  where c.opcnamespace = 'ml'::regnamespace and c.opcname = 'jsonb_tenant_path_ops') then
    execute (
      select format('create operator class ml.jsonb_tenant_path_ops for type jsonb using gin as '
                    'operator 7 ml.@>(jsonb, jsonb), %s, storage %s',
                    (select string_agg(format('function %s %s', f.amprocnum, f.amproc::regprocedure), ', '
                                       order by f.amprocnum)
                       from pg_amproc f where f.amprocfamily = c.opcfamily),
                    format_type(c.opckeytype, null))
        from pg_opclass c
       where c.opcname = 'jsonb_path_ops' and c.opcnamespace = 'pg_catalog'::regnamespace
         and c.opcmethod = (select oid from pg_am where amname = 'gin'));
  end if;
end $$;
comment on operator ml.@>(jsonb, jsonb) is 'jsonb containment, leakproof: a metadata filter that keeps its index under row security';
comment on operator ml.?(jsonb, text) is 'jsonb key exists, leakproof: a metadata filter that keeps its index under row security';
"""
    )
    # the registry's params and tags (registry.search_runs: "params.x = 'y'", "tags.x = 'y'"), same index names
    op.execute(
        """
drop index if exists registry.run_search_params_tags_idx;
create index run_search_params_tags_idx on registry.run_search
  using gin (params ml.jsonb_tenant_path_ops, tags ml.jsonb_tenant_path_ops);
drop index if exists registry.runs_tags_idx;
create index runs_tags_idx on registry.runs using gin (tags ml.jsonb_tenant_path_ops);
"""
    )
    # every collection's metadata index, rebuilt with the leakproof operator class (same name)
    op.execute(
        """
do $$
declare
  c record;
begin
  for c in select x.table_schema, x.table_name from ml.collections x
            where to_regclass(format('%I.%I', x.table_schema, x.table_name)) is not null
            order by x.id loop
    if not exists (select 1 from pg_index i join pg_class ic on ic.oid = i.indexrelid
                    join pg_opclass oc on oc.oid = i.indclass[0]
                   where i.indrelid = format('%I.%I', c.table_schema, c.table_name)::regclass
                     and ic.relname = c.table_name || '_metadata' and oc.opcname = 'jsonb_tenant_path_ops') then
      execute format('drop index if exists %I.%I', c.table_schema, c.table_name || '_metadata');
      execute format('create index %I on %I.%I using gin (metadata ml.jsonb_tenant_path_ops)',
                     c.table_name || '_metadata', c.table_schema, c.table_name);
    end if;
  end loop;
end $$;
"""
    )


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
