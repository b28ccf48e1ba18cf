"""feature store (0.2.0): trust and tenancy of the feature store

* every feature view's offline store (features.fv_<id>_offline, partitioned) gets a tenant column: the view's
  tenant, as default and as a check, so every row of a store belongs to its view's tenant (sql/010-tenancy.sql
  then applies the forced tenant policies to it, sql/999-grants.sql its grants);
* materialization runs record who started them (started_by): only that role finishes the run or adds its
  quarantined rows (sql/510-features-write.sql);
* the compiled function of an on-demand feature is renamed features._odfv_<id> (an internal helper: every indb
  role may execute it, as the serving path needs), and its catalog row stores its signature; it is cast to
  regprocedure and checked where it is called (sql/540-features-on-demand.sql);
* functions of 0.1.0 whose signature or language changed are dropped here (sql/ re-creates the new ones).

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# signatures of 0.1.0 that sql/5*-features-*.sql no longer defines (or defines in another language)
OLD_FUNCTIONS = [
    "features._as_query(text, text)",
    "features._describe(text, text)",
    "features._drift_stats(double precision[], double precision[], double precision, double precision)",
    "features._drift_values(features.feature_views, text, text)",
    "features._ensure_partitions(features.feature_views, timestamp with time zone, timestamp with time zone)",
    "features._stats(features.feature_views, bigint)",
]


def upgrade() -> None:
    for sig in OLD_FUNCTIONS:
        op.execute(f"drop function if exists {sig}")
    op.execute(
        """
        alter table features.materialization_runs add column if not exists started_by text default ml.caller();

        do $$
        declare o record;
        begin
          for o in select id from features.on_demand_features loop
            if to_regprocedure(format('features.%I(jsonb, jsonb)', 'odfv_' || o.id)) is not null then
              execute format('alter function features.%I(jsonb, jsonb) rename to %I', 'odfv_' || o.id, '_odfv_' || o.id);
            end if;
            update features.on_demand_features set function_name = format('features.%I(jsonb, jsonb)', '_odfv_' || o.id)
             where id = o.id;
          end loop;
        end $$;

        do $$
        declare v record;
        begin
          for v in select f.id, f.tenant, c.oid::regclass as rel
                     from features.feature_views f
                     join pg_class c on c.relname = 'fv_' || f.id || '_offline'
                     join pg_namespace n on n.oid = c.relnamespace and n.nspname = 'features'
                    where not exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'tenant'
                                         and not a.attisdropped) loop
            execute format('alter table %s add column tenant text default %L check (tenant is not distinct from %L)',
                           v.rel, v.tenant, v.tenant);
          end loop;
        end $$;
        """
    )


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
