"""Filtered vector search in one statement (issue 14)

A filtered ml.search over an ANN index first counted the rows its filter matches (up to exact_threshold + 1) and
then, when they were few, ran the exact query: two statements, each planned at the call, each reading the
filter's index and the heap. sql/220-vector-search.sql now does both in one statement: the matching rows' tids
counted, and the exact top k of them read again by tid (a TID scan), which runs only when the count is at most
exact_threshold; otherwise the iterative index scan answers, as before. ml._search_strategy therefore no longer
counts, and takes fewer arguments: the old function goes here (sql/220 creates the new one).

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
