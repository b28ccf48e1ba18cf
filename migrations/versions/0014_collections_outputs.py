"""embeddings, vectorizers and collections (0.2.0): typed results and other new-user fixes

The public functions that returned one jsonb object of fixed fields return columns now (``returns table``);
create or replace cannot change a result type, so the old functions are dropped here and sql/ makes the new
ones (re-applied after every upgrade). Their work moved to internal functions (``ml._create_collection``,
``ml._reindex_collection``, ``ml._tier_partition``, ``ml._collection_health``; the PL/Python ones keep their
bodies and get an internal wrapper), which sql/ makes too. Nothing depends on these functions in the catalog
(pg_cron jobs and plpgsql bodies name them as text).

Revision ID: 0014
Revises: 0013
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

DROP_OLD = """
drop function if exists ml.warmup(text);
drop function if exists ml.register_embedding_model(text, text, int, int, boolean, boolean);
drop function if exists ml.create_vectorizer(regclass, text[], text, text, int, int, text, int, text, boolean, text, int);
drop function if exists ml.refresh_vectorizer(text, int);
drop function if exists ml.process_queue(text, int);
drop function if exists ml.retry_vectorizer(text);
drop function if exists ml.alter_vectorizer(text, text, int, int, int, text, int, boolean);
drop function if exists ml.drop_vectorizer(text, boolean);
drop function if exists ml.migrate_vectorizer(text, text, boolean);
drop function if exists ml.promote_vectorizer(text, boolean);
drop function if exists ml.restore_vectorizer(text);
drop function if exists ml.drop_vectorizer_staging(text);
drop function if exists ml.create_collection(text, text, text, text, text, jsonb);
drop function if exists ml.reindex_collection(text, boolean);
drop function if exists ml.collection_health(text, int);
drop function if exists ml.tier_partition(text, interval, text);
"""


def upgrade() -> None:
    op.execute(DROP_OLD)


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
