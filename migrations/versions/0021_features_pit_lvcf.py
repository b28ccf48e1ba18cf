"""point-in-time joins: the "last value carried forward" strategy (issue 16, second round)

* features._pit_method(view, estimated entity rows) returns the strategy of one view (lateral, lvcf or
  merge) and replaces features._pit_use_merge (a boolean, two strategies), which is dropped here;
  sql/520-features-read.sql creates the new function and features._pit_lvcf.

Revision ID: 0021
Revises: 0020
"""

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("drop function if exists features._pit_use_merge(features.feature_views, double precision)")


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
