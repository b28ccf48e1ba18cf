"""The BM25 index's top documents come back as two arrays (issue 14)

ml._bm25_topk (and ml.__bm25_topk_py, the PL/Python function it wraps) returned a row per document: the n best
and every document tied with the n-th. A query whose best score many documents share (a common word in short
texts of one length) returned them all, and PL/Python made a row of each at ~3 us, then the wrapper stored them
again (50,000 tied documents: ~300 ms). sql/230 now creates ml._bm25_top / ml.__bm25_top_py, which return one row of
two arrays (document numbers, scores); the old pair goes here. The runtime keeps bm25.topk (rows) for databases of
the cluster that have not been upgraded yet: they share its Python.

Revision ID: 0027
Revises: 0026
"""

from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("drop function if exists ml._bm25_topk(bigint, text[], float8[], float8, float8, float8, int)")
    op.execute("drop function if exists ml.__bm25_topk_py(bigint, text[], float8[], float8, float8, float8, int)")


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
