"""A broad equality filter skips the count (issue 14)

A filtered ml.search over an ANN index counted the rows its filter matches, up to exact_threshold + 1, to choose
between an exact scan and the iterative index scan. For a filter matching most rows the count was most of the
search (~6 of ~12 ms at 100,000 documents). ml._search_strategy now asks the planner first, for an equality
filter (keys equal to values: estimated from statistics): more than 4 x exact_threshold rows, the index at once;
at most the threshold, one bounded statement that counts and ranks at most threshold + 1 rows (the index if
there are more); in between, counted. It takes the flag as a new argument (and returns the threshold), so the
old function goes here (sql/220 creates the new one).

Revision ID: 0025
Revises: 0024
"""

from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("drop function if exists ml._search_strategy(ml.collections, text, jsonb, vector, int, jsonb)")


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
