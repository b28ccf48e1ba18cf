"""audit: lanes claimed with an advisory try-lock, one sealer by the chain head's row lock (issue 16)

* audit._append claims a lane with a transaction-level advisory try-lock on the lane's number (the lane this
  session used last first) instead of SELECT ... FOR UPDATE SKIP LOCKED on audit.lanes: a statement and a WAL
  record less per audited transaction (functions in sql/800-audit-int.sql).
* audit.seal() and audit.apply_retention() take the chain head's row lock (SKIP LOCKED for the sealer) instead of
  an advisory lock that any role could take and hold to stop sealing: audit._seal_lock(), the key of that
  advisory lock, goes.

No table changes: events, lanes and the chain keep their format, and audit.verify() checks them as before.

Revision ID: 0020
Revises: 0019
"""

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("drop function if exists audit._seal_lock()")


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
