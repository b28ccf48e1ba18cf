"""ml.search with a query vector starts in ml._search_static (issue 14)

ml._search_static took (query, k, collection id, signature) and returned one row of arrays, called by ml._search
after its own checks; it is now the entry point of ml.search(text, vector, ...): (collection, query, k, filter,
options), rows, one plpgsql layer instead of two (sql/220). ml._search_ann_sql takes the query vector's reference
as a fourth argument (default $1). The old signatures go here; `indb install` then makes the new function with
every collection's branch.

Revision ID: 0028
Revises: 0027
"""

from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("drop function if exists ml._search_static(vector, int, bigint, text)")
    op.execute("drop function if exists ml._search_ann_sql(ml.collections, text, text)")


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
