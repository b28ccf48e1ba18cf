"""registry.search_runs at 1,000,000 runs (issue 16): an order_by on a metric walks that metric's latest values
in order, reading registry.latest_metrics' (key, value) index; with run_id in the index the walk reads no
latest_metrics row (an index-only scan), only the runs it checks. Replaces latest_metrics_key_value_idx (the
same keys, which the 0.2.0 metric conditions also use).

Revision ID: 0022
Revises: 0021
"""

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "create index if not exists latest_metrics_key_value_run_idx "
        "on registry.latest_metrics (key, value) include (run_id)"
    )
    op.execute("drop index if exists registry.latest_metrics_key_value_idx")


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
