"""Feature references and integer entity keys recognised by one regular-expression match (issue 16)

features._parse_feature_ref recognised a reference without blanks by splitting it and checking each part with
features._is_ident and features._is_digits (btrim over the allowed characters: ~5 us a reference; with 20
features, about 40% of a get_online). It now recognises it with one match without groups (~1.7 us with the
split), which also refuses 'view:feature:' (the split accepted it, the syntax does not). features._online_key
tests an integer key the same way (~2 us an entity instead of ~5: get_online_batch makes one per entity). sql/500
creates the new functions; the two old helpers have no other caller and go here.

Revision ID: 0026
Revises: 0025
"""

from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("drop function if exists features._is_ident(text)")
    op.execute("drop function if exists features._is_digits(text, int)")


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
