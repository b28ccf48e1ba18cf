"""vector collections and hybrid search (issue 4)

Revision ID: 0004
Revises: 0003
"""
from alembic import op  # noqa: F401

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
