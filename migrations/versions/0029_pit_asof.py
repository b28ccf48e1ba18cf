"""The point-in-time join gains the asof strategy (issue 16)

features._pit_method(view, est_entities) took the estimated entity rows only; it now also takes the number of
features requested from the view (nfeat), to estimate the memory of the asof strategy (sql/c/indb_pit.c) before
choosing it. The old signature goes here; `indb install` then makes the new one and features._pit_asof.

Revision ID: 0029
Revises: 0028
"""

from alembic import op

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("drop function if exists features._pit_method(features.feature_views, float8)")
    # the asof function's first signature (before key_pos), on databases installed from main between the two
    op.execute("drop function if exists features._pit_asof(text, int, text[], int[], interval[], boolean)")


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
