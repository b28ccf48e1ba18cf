"""Upgrading a 0.1.0 database (migration 0010): vectorizer destinations move to schema embeddings as fresh tables
owned by indb_owner (the rows are copied; the old table, with whatever its owner attached, stays where it was),
and what writers could attach to collection tables and schema collections in 0.1.0 is removed before indb_owner
takes the tables over."""

from __future__ import annotations

import sys

import psycopg


def test_upgrade_moves_destinations_and_strips_what_writers_attached(empty_db):
    from indb.install import install

    dsn = empty_db("indb_upg10")
    install(dsn, venv=sys.prefix, target="0009", apply_sql=False)
    with psycopg.connect(dsn, autocommit=True) as c:
        # a 0.1.0 vectorizer: its destination in the source's schema, with a trigger its owner attached
        c.execute("create table public.docs (id int primary key, body text)")
        c.execute("insert into public.docs values (1, 'a'), (2, 'b')")
        c.execute(
            "create table public.docs_embeddings (id int not null, seq int not null, chunk text not null, "
            "embedding vector(384) not null, content_hash text not null, model text not null, "
            "embedded_at timestamptz not null default now(), primary key (id, seq))"
        )
        c.execute(
            "insert into public.docs_embeddings select id, 0, body, array_fill(0.1, array[384])::vector, 'h', "
            "'all-MiniLM-L6-v2', now() from public.docs"
        )
        c.execute("create function public.pwn() returns trigger language plpgsql as $$ begin return null; end $$")
        c.execute(
            "create trigger pwn after insert on public.docs_embeddings for each statement execute function public.pwn()"
        )
        c.execute(
            "insert into ml.vectorizers (name, source, key_columns, key_types, columns, model, destination) "
            "values ('docs', 'public.docs', '{id}', '{int4}', '{body}', 'all-MiniLM-L6-v2', 'public.docs_embeddings')"
        )
        # a 0.1.0 collection table and what its owner (a writer, with CREATE in schema collections) attached
        c.execute(
            "create table collections.coll (id text primary key, content text, metadata jsonb not null default '{}', "
            "tenant text, created_at timestamptz not null default now(), embedding vector(3))"
        )
        c.execute(
            "insert into ml.collections (name, table_name, dimensions, index_type, metric) "
            "values ('coll', 'coll', 3, 'none', 'cosine')"
        )
        c.execute("create function collections.pwn() returns trigger language plpgsql as $$ begin return null; end $$")
        c.execute(
            "create trigger pwn after insert on collections.coll for each statement execute function collections.pwn()"
        )
        c.execute("create rule pwn as on update to collections.coll do also notify pwn")
        c.execute("create view collections.leak as select 1 as x")
        c.execute("create statistics collections.st on id, content from collections.coll")
    install(dsn, venv=sys.prefix)
    with psycopg.connect(dsn, autocommit=True) as c:
        dest, key_types = c.execute(
            "select destination::text, key_types from ml.vectorizers where name = 'docs'"
        ).fetchone()
        assert dest == "embeddings.docs" and key_types == ["integer"]
        assert (
            c.execute(
                "select relowner::regrole::text from pg_class where oid = 'embeddings.docs'::regclass"
            ).fetchone()[0]
            == "indb_owner"
        )
        assert c.execute("select count(*) from embeddings.docs").fetchone()[0] == 2
        assert (
            c.execute("select count(*) from pg_trigger where tgrelid = 'embeddings.docs'::regclass").fetchone()[0] == 0
        )
        assert (
            c.execute("select count(*) from pg_policy where polrelid = 'embeddings.docs'::regclass").fetchone()[0] == 1
        )
        assert c.execute("select to_regclass('public.docs_embeddings') is not null").fetchone()[0]  # left in place
        # the trigger of the source is indb's again: a write reaches the new destination
        vid = c.execute("select id from ml.vectorizers where name = 'docs'").fetchone()[0]
        c.execute(
            "create trigger indb_vectorizer_insert after insert on public.docs referencing new table as indb_new "
            f"for each statement execute function ml._vectorizer_trigger('{vid}')"
        )
        c.execute("insert into public.docs values (3, 'c')")
        assert c.execute("select count(*) from embeddings.docs where id = 3").fetchone()[0] == 1
        # schema collections holds only tables again; the collection table lost what its owner attached
        assert c.execute("select to_regprocedure('collections.pwn()') is null").fetchone()[0]
        assert c.execute("select to_regclass('collections.leak') is null").fetchone()[0]
        assert (
            c.execute(
                "select count(*) from pg_trigger where tgrelid = 'collections.coll'::regclass and not tgisinternal"
            ).fetchone()[0]
            == 0
        )
        assert (
            c.execute("select count(*) from pg_rewrite where ev_class = 'collections.coll'::regclass").fetchone()[0]
            == 0
        )
        assert (
            c.execute("select count(*) from pg_statistic_ext where stxrelid = 'collections.coll'::regclass").fetchone()[
                0
            ]
            == 0
        )
        assert (
            c.execute(
                "select relowner::regrole::text from pg_class where oid = 'collections.coll'::regclass"
            ).fetchone()[0]
            == "indb_owner"
        )
