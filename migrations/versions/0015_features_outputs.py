"""feature store (0.2.0): typed results and other new-user fixes

* features.materialize, materialize_incremental and push return one row of typed columns (run_id,
  feature_view, kind, rows_read, rows_written, rows_quarantined, duplicates_replaced, online_updated,
  min_event_ts, max_event_ts, window_start, window_end, seconds) instead of one jsonb;
  features.create_training_set, training_set, drift and check_skew return typed rows too
  (sql/510, 520 and 530). A changed return type needs the old function dropped: done here;
* internal helpers whose signature changed: _write_offline and _write_stage take a progress flag (ml.progress),
  _status and _odfv_status take the served value (status null_value).

sql/5*-features-*.sql re-creates every function dropped here.

Revision ID: 0015
Revises: 0014
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# signatures whose result type changed (jsonb -> a typed row), or that sql/ no longer defines
OLD_FUNCTIONS = [
    "features.materialize(text, timestamp with time zone, timestamp with time zone, boolean)",
    "features.materialize_incremental(text, boolean)",
    "features.push(text, jsonb, text)",
    "features.create_training_set(text, text, text[], text, interval, text)",
    "features.training_set(text)",
    "features.drift(text, text, text, text, double precision, double precision)",
    "features.check_skew(text, integer, boolean, double precision)",
    "features._write_offline(features.feature_views, timestamp with time zone, timestamp with time zone)",
    "features._write_stage(features.feature_views, bigint, text, boolean)",
    "features._status(boolean, boolean)",
    "features._odfv_status(bigint, jsonb)",
]


def upgrade() -> None:
    for sig in OLD_FUNCTIONS:
        op.execute(f"drop function if exists {sig}")


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
