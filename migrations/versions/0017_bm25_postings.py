"""BM25 postings: a per-term index for ml.keyword_search that never rescans tsvectors

ml.bm25_docs maps each indexed row of a collection to a document number (its tenant, id and created_at, and
its length in tokens); ml.bm25_postings holds, per lexeme, the document numbers, term frequencies and
document lengths of the merged segment (big-endian int4 arrays in bytea, ordered by document number);
ml.bm25_delta holds the postings written since the last merge (one row per lexeme and document) and
ml.bm25_deleted the documents deleted since then (with their lexemes, so a merge touches only those terms).
The collection trigger (sql/200) writes the delta and the tombstones; ml._bm25_merge folds them in.
collection_stats.bm25_indexed says whether a collection's postings are built (install builds them for
existing collections).

Revision ID: 0017
Revises: 0015
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        alter table ml.collection_stats add column bm25_indexed boolean not null default false;
        alter table ml.collection_stats add column bm25_merged_at timestamptz;
        create table ml.bm25_docs (
            collection_id bigint not null references ml.collections(id) on delete cascade,
            doc           bigint generated always as identity,
            id            text not null,
            tenant        text,
            created_at    timestamptz not null,
            dl            int not null,
            primary key (collection_id, doc),
            unique nulls not distinct (collection_id, id, tenant, created_at)
        );
        create table ml.bm25_postings (
            collection_id bigint not null references ml.collections(id) on delete cascade,
            term          text not null,
            n             int not null,
            docs          bytea not null,
            tfs           bytea not null,
            dls           bytea not null,
            primary key (collection_id, term)
        );
        alter table ml.bm25_postings alter column docs set storage external;
        alter table ml.bm25_postings alter column tfs set storage external;
        alter table ml.bm25_postings alter column dls set storage external;
        create table ml.bm25_delta (
            collection_id bigint not null references ml.collections(id) on delete cascade,
            term          text not null,
            doc           bigint not null,
            tf            int not null,
            dl            int not null
        );
        create index bm25_delta_term on ml.bm25_delta (collection_id, term);
        create table ml.bm25_deleted (
            collection_id bigint not null references ml.collections(id) on delete cascade,
            doc           bigint not null,
            terms         text[] not null,
            primary key (collection_id, doc)
        );
        """
    )
    op.execute("comment on table ml.bm25_docs is 'BM25 index: document numbers of the rows of each collection'")
    op.execute(
        "comment on table ml.bm25_postings is 'BM25 index: merged postings per lexeme (doc numbers, tf, doc length)'"
    )
    op.execute("comment on table ml.bm25_delta is 'BM25 index: postings written since the last merge'")
    op.execute("comment on table ml.bm25_deleted is 'BM25 index: documents deleted since the last merge'")


def downgrade() -> None:
    raise NotImplementedError("indb migrations are forward-only")
