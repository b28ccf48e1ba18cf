"""registry and training (0.2.0): typed results and other new-user fixes

Functions whose result changes shape are dropped here; sql/ makes them again (re-applied after every
upgrade, and on a fresh install after this migration, where they do not exist yet: hence `if exists`):

* registry.get_run(uuid): jsonb -> one row of columns (run_id, run_name, experiment, status, user_name,
  parent_run_id, start_time, end_time, tenant, tags, params, metrics); artifacts and inputs are lists of their
  own (registry.list_artifacts, the new registry.list_inputs);
* registry.log_artifact(uuid, text, bytea, text): jsonb -> (path, sha256, size_bytes, uri);
* ml.explain(text, jsonb | float8[] | record): jsonb -> (model_id, algorithm, prediction, output, base_value,
  raw_output, explained_class, contributions jsonb);
* ml.evaluate(text, text, bigint): jsonb -> (model_id, rows, metrics jsonb); its PL/Python body changes too;
* ml.feature_importance(text): (feature, importance) -> (feature, importance, kind, model_importance,
  model_kind); its PL/Python body changes too;
* views ml.deployments (ordered; version next to model_id; previous_id -> previous_deployment_id) and
  ml.projects_overview (deployed_version next to deployed_model_id): columns in the middle change.

Nothing stored changes.

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        drop function if exists registry.get_run(uuid);
        drop function if exists registry.log_artifact(uuid, text, bytea, text);
        drop function if exists ml.explain(text, jsonb);
        drop function if exists ml.explain(text, double precision[]);
        drop function if exists ml.explain(text, record);
        drop function if exists ml.evaluate(text, text, bigint);
        drop function if exists ml._evaluate_py(text, text, bigint);
        drop function if exists ml.feature_importance(text);
        drop function if exists ml._feature_importance_py(text);
        drop view if exists ml.deployments;
        drop view if exists ml.projects_overview;
        """
    )


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
