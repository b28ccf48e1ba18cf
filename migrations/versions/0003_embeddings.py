"""embeddings, models catalog, vectorizers, queues (issue 3)

Revision ID: 0003
Revises: 0002
"""
from alembic import op  # noqa: F401

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
