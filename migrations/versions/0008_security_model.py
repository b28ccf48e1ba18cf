"""security model (0.2.0): one tenancy model, the caller's identity, a schema for vectorizer destinations

* ml.caller() and ml.current_tenant() (full definitions in sql/010-tenancy.sql; created here because column
  defaults depend on them) replace registry.current_tenant() / registry.is_admin() and the raw
  current_setting('indb.tenant') defaults. Who-did-it columns record the acting role (SET ROLE), not the login.
* tenant columns on the tables that had none although their rows belong to a tenant: training projects and
  trials, the prediction log, the feature store's online store, runs, statistics and quarantine (backfilled
  from the rows they belong to).
* the old tenant policies are dropped; sql/010-tenancy.sql creates the one set of policies on every tenant
  table (forced on the owner too).
* schema embeddings: vectorizer destinations are created there, owned by indb_owner.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

STUBS = """
create or replace function ml.caller() returns name
language sql stable parallel safe
as $$ select coalesce(nullif(pg_catalog.current_setting('role'), 'none'), session_user::text)::name $$;

create or replace function ml.current_tenant() returns text
language sql stable parallel safe
as $$ select nullif(pg_catalog.current_setting('indb.tenant', true), '') $$;
"""

# (table, how to backfill its tenant from the row it belongs to)
NEW_TENANT_COLUMNS = {
    "registry.training_projects": "update registry.training_projects t set tenant = m.tenant "
    "from registry.registered_models m where m.id = t.model_id",
    "registry.training_trials": "update registry.training_trials t set tenant = r.tenant "
    "from registry.runs r where r.id = t.run_id",
    "registry.prediction_log": "update registry.prediction_log t set tenant = m.tenant "
    "from registry.registered_models m where m.id = t.project_id",
    "features.online_store": "update features.online_store t set tenant = v.tenant "
    "from features.feature_views v where v.id = t.view_id",
    "features.materialization_runs": "update features.materialization_runs t set tenant = v.tenant "
    "from features.feature_views v where v.id = t.view_id",
    "features.statistics": "update features.statistics t set tenant = v.tenant "
    "from features.feature_views v where v.id = t.view_id",
    "features.quarantine": "update features.quarantine t set tenant = v.tenant "
    "from features.feature_views v where v.id = t.view_id",
}


def upgrade() -> None:
    op.execute(STUBS)
    for table, backfill in NEW_TENANT_COLUMNS.items():
        op.execute(f"alter table {table} add column if not exists tenant text")
        op.execute(backfill)
    op.execute(
        """
        do $$
        declare c record; p record;
        begin
          -- who-did-it columns: the acting role; tenant columns: the one tenancy function
          for c in select a.attrelid::regclass as tbl, a.attname, pg_get_expr(d.adbin, d.adrelid) as dflt
                     from pg_attribute a join pg_class r on r.oid = a.attrelid
                     join pg_namespace n on n.oid = r.relnamespace
                     left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
                    where n.nspname in ('ml', 'registry', 'features', 'audit') and r.relkind in ('r', 'p')
                      and not r.relispartition and a.attnum > 0 and not a.attisdropped loop
            if c.dflt in ('SESSION_USER', 'CURRENT_USER') then
              execute format('alter table %s alter column %I set default ml.caller()', c.tbl, c.attname);
            elsif c.attname = 'tenant' and c.tbl::text not like 'audit.%' then
              execute format('alter table %s alter column %I set default ml.current_tenant()', c.tbl, c.attname);
            end if;
          end loop;
          -- the policies of 0.1.0 (registry's indb_tenant_*, collections' tenant_isolation): 010-tenancy.sql
          -- creates the one set again
          for p in select pol.polname, pol.polrelid::regclass as tbl from pg_policy pol
                     join pg_class r on r.oid = pol.polrelid join pg_namespace n on n.oid = r.relnamespace
                    where n.nspname in ('ml', 'registry', 'features', 'collections') loop
            execute format('drop policy %I on %s', p.polname, p.tbl);
          end loop;
        end $$;

        drop function if exists registry.apply_tenant_policies(regclass);
        drop function if exists registry.create_tenant(text, text);
        drop function if exists registry.current_tenant();
        drop function if exists registry.is_admin();

        create schema if not exists embeddings;
        comment on schema embeddings is 'indb vectorizer destinations: embeddings of source rows, owned by indb_owner';
        """
    )


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
