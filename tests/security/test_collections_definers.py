"""Writer to superuser (or to indb_owner) through collections, as a class (issue 10, item 1): writers have no
CREATE in schema collections, cannot attach anything to a collection table, cannot run the collection trigger on
a table of their own, cannot write the collection catalogs; and every SECURITY DEFINER function of collections
refuses a relation that is not indb_owner's, even when a superuser points a catalog row at one."""

from __future__ import annotations

import secrets

import psycopg
import pytest
from helpers import is_superuser, login_name, own_schema
from psycopg.types.json import Jsonb


@pytest.mark.parametrize("who", ["writer", "acme_writer", "admin"])
def test_no_role_creates_anything_in_schema_collections(connect_as, who):
    c = connect_as(who)
    for sql in [
        "create table collections.mine (x int)",
        "create function collections.pwn() returns int language sql as 'select 1'",
        "create view collections.v as select 1",
    ]:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "update ml.collections set table_name = 'x'",
        "delete from ml.collections",
        "insert into ml.collection_terms (collection_id, term, df) values (1, 'x', 1)",
        "update ml.collection_stats set n_docs = 0",
        "delete from ml.collection_terms",
    ],
)
def test_writers_do_not_write_the_collection_catalogs(connect_as, sql):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        connect_as("writer").execute(sql)


def test_the_collection_trigger_cannot_be_attached_to_a_table_of_ones_own(connect_as, sconn):
    me = login_name("writer")
    schema = own_schema(sconn, me)
    w = connect_as("writer")
    w.execute(
        f"create table {schema}.fake (id text, content text, metadata jsonb, tenant text, created_at timestamptz, "
        "embedding vector(2), tsv tsvector, doc_len int)"
    )
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        w.execute(
            f"create trigger f after insert on {schema}.fake referencing new table as new_rows "
            "for each statement execute function ml._collection_trigger('1')"
        )


def test_a_writer_cannot_attach_code_to_a_partition_and_the_partition_maker_stays_safe(connect_as, sconn):
    """The issue's reproduction, with the partitions made on first use by ml.add_documents."""
    w = connect_as("acme_writer")
    name = f"wpart_{secrets.token_hex(3)}"
    w.execute(
        "select ml.create_collection(%s, model => null, partition_by => 'tenant', options => '{\"dimensions\": 3}')",
        [name],
    )
    w.execute("select ml.add_documents(%s, %s)", [name, Jsonb([{"id": "1", "content": "x", "embedding": [1, 2, 3]}])])
    parts = [
        r[0]
        for r in sconn.execute(
            "select inhrelid::regclass::text from pg_inherits where inhparent = %s::regclass", [f"collections.{name}"]
        )
    ]
    assert len(parts) == 2
    for rel in [f"collections.{name}", *parts]:
        assert (
            sconn.execute("select relowner::regrole::text from pg_class where oid = %s::regclass", [rel]).fetchone()[0]
            == "indb_owner"
        )
        w.execute(
            "create or replace function pg_temp.pwn() returns trigger language plpgsql as $$ begin return null; end $$"
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            w.execute(f"create trigger pwn after delete on {rel} for each statement execute function pg_temp.pwn()")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            w.execute(f"create rule pwn as on delete to {rel} do also select 1")
    # partitions are reached only through their parent
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        w.execute(f"insert into {parts[0]} (id, tenant, embedding) values ('9', 'acme', '[1,1,1]')")
    assert not is_superuser(sconn, login_name("acme_writer"))


@pytest.fixture
def tampered(connect_as, sconn):
    """A collection of the writer's, whose catalog row a superuser then points at a table the writer owns."""
    me = login_name("writer")
    schema = own_schema(sconn, me)
    w = connect_as("writer")
    name = f"tmp_{secrets.token_hex(3)}"
    w.execute("select ml.create_collection(%s, model => null, options => '{\"dimensions\": 2}')", [name])
    w.execute(f"create table {schema}.{name} (id text, embedding vector(2), content text, tenant text)")
    # the attacker lets indb_owner see its table, so that only the ownership check stands in the way
    w.execute(f"grant usage on schema {schema} to indb_owner")
    w.execute(f"grant all on {schema}.{name} to indb_owner")
    sconn.execute("update ml.collections set table_schema = %s where name = %s", [schema, name])
    yield name, w
    sconn.execute("update ml.collections set table_schema = 'collections' where name = %s", [name])


@pytest.mark.parametrize(
    "sql",
    [
        "select ml.reindex_collection(%s, false)",
        "select ml.drop_collection(%s)",
        "select ml.ensure_collection_partitions(%s, array['acme'], null)",
        "select ml.tier_partition(%s)",
    ],
)
def test_definers_refuse_a_table_that_is_not_indb_owners(tampered, sql):
    name, w = tampered
    with pytest.raises(psycopg.Error) as e:
        w.execute(sql, [name])
    # either "not owned by indb_owner" (42501) or, for a function that has nothing to do on this collection
    # kind, its own refusal: never a write to the writer's table
    assert e.value.sqlstate in ("42501", "22023"), str(e.value)
    if "reindex" in sql or "drop" in sql:
        assert "not owned by indb_owner" in str(e.value)
