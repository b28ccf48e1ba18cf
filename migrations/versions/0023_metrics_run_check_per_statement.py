"""registry.metrics: the run check per statement, not per point (issue 16, client metric logging)

registry.metrics is the largest registry table (2,000 points a run in the logging benchmark, millions at 1M
runs), and its foreign key to registry.runs checked the run once per inserted point: one SPI query each,
~11 ms of the ~40 ms registry.log_batch spent on 2,000 points. The key goes; sql/300-registry-int.sql keeps the
same guarantee per statement instead:

* after an INSERT into registry.metrics, every run_id of the new rows must be a run, and those runs are locked
  FOR KEY SHARE, as the key's check locked them (no concurrent delete or id change until commit);
* a run whose points are in registry.metrics cannot be deleted (the key cascaded the delete to the points,
  which their append-only trigger then refused; the error now says why directly). Run ids are generated
  always: no UPDATE changes one.

Revision ID: 0023
Revises: 0022
"""

from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("alter table registry.metrics drop constraint if exists metrics_run_id_fkey")


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
