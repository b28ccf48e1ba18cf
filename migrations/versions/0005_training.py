"""training, prediction, deployment (issue 5)

Revision ID: 0005
Revises: 0004
"""
from alembic import op  # noqa: F401

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
