"""Vectorizers attacked by real logins (issue 10, items 1, 4, 7, 8): destinations are made by indb in schema
embeddings and owned by indb_owner (never an existing table, never in the source's schema); they follow their
vectorizer's tenant; the statement trigger runs as indb_owner but only on the source its catalog row names; a
type a user made never reaches indb's code; catalogs are written only by indb's functions."""

from __future__ import annotations

import secrets

import psycopg
import pytest
from helpers import login_name, one_row, own_schema


@pytest.fixture
def acme_vectorizer(connect_as, sconn):
    """A sync vectorizer made by acme's writer (no SET indb.tenant) on a table of its own schema."""
    schema = own_schema(sconn, login_name("acme_writer"))
    w = connect_as("acme_writer")
    name = f"vz_{secrets.token_hex(3)}"
    w.execute(f"create table {schema}.docs (id int primary key, body text)")
    w.execute(f"insert into {schema}.docs values (1, 'acme quarterly numbers'), (2, 'acme merger plan')")
    out = one_row(w, "select * from ml.create_vectorizer(%s, array['body'], name => %s)", [f"{schema}.docs", name])
    return {"name": name, "schema": schema, "source": f"{schema}.docs", "id": out["id"], "dest": out["destination"]}


def test_a_tenant_writer_makes_a_vectorizer_whose_destination_is_indb_owners(acme_vectorizer, connect_as, sconn):
    v = acme_vectorizer
    assert v["dest"] == f"embeddings.{v['name']}"
    owner, nsp = sconn.execute(
        "select relowner::regrole::text, relnamespace::regnamespace::text from pg_class where oid = %s::regclass",
        [v["dest"]],
    ).fetchone()
    assert (owner, nsp) == ("indb_owner", "embeddings")
    assert sconn.execute("select tenant, created_by from ml.vectorizers where id = %s", [v["id"]]).fetchone() == (
        "acme",
        login_name("acme_writer"),
    )
    w = connect_as("acme_writer")
    assert w.execute(f"select count(*) from {v['dest']}").fetchone()[0] == 2
    w.execute("create function pg_temp.pwn() returns trigger language plpgsql as $$ begin return null; end $$")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        w.execute(f"create trigger pwn after insert on {v['dest']} for each statement execute function pg_temp.pwn()")


def test_the_destinations_follow_the_vectorizers_tenant(acme_vectorizer, connect_as):
    v = acme_vectorizer
    assert connect_as("acme_reader").execute(f"select count(*) from {v['dest']}").fetchone()[0] == 2
    assert [
        r[0]
        for r in connect_as("acme_app").execute("select id from ml.vectorizer_search(%s, 'merger', 1)", [v["name"]])
    ] == ["2"]
    for who in ("globex_reader", "globex_app", "app", "reader"):
        c = connect_as(who)
        assert c.execute(f"select count(*) from {v['dest']}").fetchone()[0] == 0, who  # plain SELECT
        with pytest.raises(psycopg.errors.UndefinedObject):
            c.execute("select * from ml.vectorizer_search(%s, 'merger', 1)", [v["name"]])
    g = connect_as("globex_writer")
    assert g.execute(f"delete from {v['dest']}").rowcount == 0
    assert connect_as("admin").execute(f"select count(*) from {v['dest']}").fetchone()[0] == 2


def test_a_destination_is_never_an_existing_or_foreign_table(connect_as, sconn):
    schema = own_schema(sconn, login_name("writer"))
    w = connect_as("writer")
    w.execute(f"create table {schema}.src (id int primary key, body text)")
    w.execute(
        f"create table {schema}.mine (id int, seq int, chunk text, embedding vector(384), content_hash text, "
        "model text, embedded_at timestamptz)"
    )
    with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
        w.execute(
            "select ml.create_vectorizer(%s, array['body'], destination => %s)", [f"{schema}.src", f"{schema}.mine"]
        )
    assert "schema embeddings" in str(e.value)
    # the default is no longer <source>_embeddings in the source's schema
    out = one_row(
        w, "select * from ml.create_vectorizer(%s, array['body'], name => %s)", [f"{schema}.src", f"v_{schema}"]
    )
    assert out["destination"] == f"embeddings.v_{schema}"
    assert sconn.execute("select to_regclass(%s)", [f"{schema}.src_embeddings"]).fetchone()[0] is None
    with pytest.raises(psycopg.errors.DuplicateTable):  # an existing table of schema embeddings is not taken over
        w.execute(
            "select ml.create_vectorizer(%s, array['body'], name => %s, destination => %s)",
            [f"{schema}.src", f"w_{schema}", f"v_{schema}"],
        )


def test_long_names_are_refused_instead_of_sharing_a_destination(connect_as, sconn):
    schema = own_schema(sconn, login_name("writer"))
    w = connect_as("writer")
    w.execute(f"create table {schema}.src (id int primary key, body text)")
    base = "v" * 63
    for name in (base + "_one", base + "_two"):
        with pytest.raises(psycopg.errors.NameTooLong) as e:
            w.execute("select ml.create_vectorizer(%s, array['body'], name => %s)", [f"{schema}.src", name])
        assert "63 bytes" in str(e.value)
    assert sconn.execute("select count(*) from ml.vectorizers where name like 'vvvv%'").fetchone()[0] == 0


def test_a_forged_trigger_on_a_table_of_ones_own_does_nothing(acme_vectorizer, connect_as, sconn):
    v = acme_vectorizer
    before = sconn.execute(f"select count(*) from {v['dest']}").fetchone()[0]
    for who in ("globex_writer", "acme_writer"):
        schema = own_schema(sconn, login_name(who))
        c = connect_as(who)
        c.execute(f"create table {schema}.bait (id int primary key, body text)")
        for ev, ref in (
            ("insert", "referencing new table as indb_new"),
            ("delete", "referencing old table as indb_old"),
        ):
            c.execute(
                f"create trigger forged_{ev} after {ev} on {schema}.bait {ref} for each statement "
                f"execute function ml._vectorizer_trigger('{v['id']}')"
            )
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            c.execute(f"insert into {schema}.bait values (1, 'planted'), (2, 'planted too')")
        # globex does not see acme's vectorizer; acme does, but the trigger fires on another table than its source
        msg = str(e.value)
        assert ("is visible to this session" in msg) if who == "globex_writer" else ("but its source is" in msg), msg
        c.execute(f"alter table {schema}.bait disable trigger forged_insert")
        c.execute(f"insert into {schema}.bait values (1, 'x')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(f"delete from {schema}.bait")
    assert sconn.execute(f"select count(*) from {v['dest']}").fetchone()[0] == before


@pytest.mark.parametrize(
    "sql",
    [
        "update ml.vectorizers set key_types = array['int4 and pg_catalog.now() is null']",
        "delete from ml.vectorizers",
        "insert into ml.vectorizer_queue (vectorizer_id, key) values (1, '[\"1\"]')",
        "delete from ml.vectorizer_queue",
        "update ml.vectorizer_stats set last_error = 'x'",
        "delete from ml.vectorizer_failed",
        "update ml.embedding_models set source_path = 'package:os'",
        "insert into ml.embedding_models (name, source_path, dimensions) values ('x', '/tmp', 3)",
    ],
)
@pytest.mark.parametrize("who", ["writer", "acme_writer", "admin"])
def test_no_role_writes_the_vectorizer_and_model_catalogs(connect_as, who, sql):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        connect_as(who).execute(sql)


def test_the_catalog_writers_check_the_callers_tenant(acme_vectorizer, connect_as):
    v = acme_vectorizer
    g = connect_as("globex_writer")
    for sql, args in [
        ("select ml._vectorizer_enqueue(%s, '[[\"1\"]]')", [v["id"]]),
        ("select ml._vectorizer_touch(%s, 0, 'x')", [v["id"]]),
        ("select ml._vectorizer_clear_queue(%s)", [v["id"]]),
        ("select * from ml._vectorizer_take(%s, 10)", [v["id"]]),
    ]:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            g.execute(sql, args)
    for fn in ("ml.drop_vectorizer(%s)", "ml.alter_vectorizer(%s, mode => 'async')", "ml.refresh_vectorizer(%s)"):
        with pytest.raises(psycopg.errors.UndefinedObject):
            g.execute(f"select {fn}", [v["name"]])


def test_a_type_a_user_made_never_reaches_indb_code(connect_as, sconn):
    """An enum with a cast to text that runs the writer's function: it would run as indb_owner in the trigger, and as
    the worker's role (a superuser's) in the queue worker. Refused where the vectorizer is made, and again at every
    point of use after the owner changes the column's type."""
    me = login_name("writer")
    schema = own_schema(sconn, me)
    w = connect_as("writer")
    w.execute(f"create table {schema}.calls (who text)")
    w.execute(f"grant insert on {schema}.calls to public")
    w.execute(f"grant usage on schema {schema} to public")
    w.execute(f"create type {schema}.mood as enum ('happy', 'sad')")
    w.execute(
        f"create function {schema}.mood_text({schema}.mood) returns text language plpgsql as $$ begin "
        f"insert into {schema}.calls values (current_user); return 'x'; end $$"
    )
    w.execute(f"create cast ({schema}.mood as text) with function {schema}.mood_text({schema}.mood)")
    w.execute(f"create table {schema}.src (id int primary key, body text, mood {schema}.mood)")
    with pytest.raises(psycopg.errors.DatatypeMismatch) as e:
        w.execute("select ml.create_vectorizer(%s, array['mood'], name => %s)", [f"{schema}.src", f"m_{schema}"])
    assert "built-in type" in str(e.value)
    for mode in ("sync", "async"):
        name = f"{mode[0]}_{schema}"
        w.execute(f"create table {schema}.{name} (id int primary key, body text)")
        w.execute(
            "select ml.create_vectorizer(%s, array['body'], name => %s, mode => %s)", [f"{schema}.{name}", name, mode]
        )
        w.execute(f"alter table {schema}.{name} alter column body type {schema}.mood using 'happy'::{schema}.mood")
        with pytest.raises(psycopg.errors.DatatypeMismatch):
            w.execute(f"insert into {schema}.{name} values (10, 'sad')")
        w.execute(f"alter table {schema}.{name} disable trigger user")
        w.execute(f"insert into {schema}.{name} values (11, 'sad')")
        w.execute(f"alter table {schema}.{name} enable trigger user")
        w.execute("select ml._vectorizer_enqueue(id, '[[\"11\"]]') from ml.vectorizers where name = %s", [name])
        for c in (w, sconn):  # the worker, as the writer and as a superuser
            with pytest.raises(psycopg.errors.DatatypeMismatch):
                c.execute("select ml.process_queue(%s)", [name])
            with pytest.raises(psycopg.errors.DatatypeMismatch):
                c.execute("select ml.refresh_vectorizer(%s)", [name])
    assert sconn.execute(f"select array_agg(distinct who) from {schema}.calls").fetchone()[0] is None


def test_dropping_a_source_table_removes_its_vectorizer_and_keeps_the_embeddings(acme_vectorizer, connect_as, sconn):
    """DROP TABLE of a source, by its owner (a tenant's writer): the vectorizer goes with it (its name can be
    used again, no worker keeps failing on it), its embeddings stay for an admin, and the tenant still cannot
    drop or change anybody else's vectorizer this way."""
    v = acme_vectorizer
    g = connect_as("globex_writer")
    gschema = own_schema(sconn, login_name("globex_writer"))
    g.execute(f"create table {gschema}.docs (id int primary key, body text)")
    other = f"vz_{secrets.token_hex(3)}"
    g.execute("select ml.create_vectorizer(%s, array['body'], name => %s, mode => 'async')", [f"{gschema}.docs", other])
    g.execute(f"insert into {gschema}.docs values (1, 'globex pending row')")

    w = connect_as("acme_writer")
    w.execute(f"drop table {v['source']}")
    assert sconn.execute("select count(*) from ml.vectorizers where name = %s", [v["name"]]).fetchone()[0] == 0
    kept = sconn.execute(f"select count(*) from {v['dest']}").fetchone()[0]
    assert kept == 2  # the embeddings are not lost with the source
    # the name is free again, on a new table of the same tenant
    w.execute(f"create table {v['schema']}.docs2 (id int primary key, body text)")
    w.execute("select ml.create_vectorizer(%s, array['body'], name => %s)", [f"{v['schema']}.docs2", v["name"] + "b"])
    # globex's vectorizer and its queue are untouched by acme's DROP
    row = sconn.execute("select pending from ml.vectorizer_status where name = %s", [other]).fetchone()
    assert row == (1,)
    # a writer cannot delete a catalog row directly, dropped source or not
    g.execute(f"drop table {gschema}.docs")
    assert sconn.execute("select count(*) from ml.vectorizers where name = %s", [other]).fetchone()[0] == 0
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        w.execute("delete from ml.vectorizers")


def test_a_bulk_insert_analyzes_the_destination_without_showing_its_values_to_anyone(
    acme_vectorizer, connect_as, sconn
):
    """A writer's INSERT of 1,000 rows or more makes the vectorizer's trigger (as indb_owner) ANALYZE the
    destination, so that single-row writes after it find their keys by index. The statistics hold samples of the
    chunks' text: pg_stats shows none of them to another tenant, to a role without rights, nor to the writer
    itself (the destination is under forced row security); the write raises no notice."""
    v = acme_vectorizer
    w = connect_as("acme_writer")
    notices: list[str] = []
    w.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    w.execute(f"insert into {v['source']} select g, 'acme secret number ' || g from generate_series(3, 1002) g")
    assert notices == []
    assert sconn.execute(f"select count(*) from {v['dest']}").fetchone()[0] == 1002
    stats = "select count(*) from pg_stats where schemaname = 'embeddings' and tablename = %s and attname = 'chunk'"
    assert sconn.execute(stats, [v["name"]]).fetchone()[0] == 1, "the bulk INSERT analyzed the destination"
    for who in ("acme_writer", "acme_reader", "globex_reader", "globex_writer", "reader", "app", "norights"):
        assert connect_as(who).execute(stats, [v["name"]]).fetchone()[0] == 0, who
