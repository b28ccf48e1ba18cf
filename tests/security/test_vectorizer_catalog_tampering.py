"""A catalog value is user input at the moment it is used (issue 10, item 3). In 0.1.0 a writer could
`UPDATE ml.vectorizers SET key_types = array['int4 and collections.pwn2()']` and the worker pasted it into SQL.
Writers can no longer write the catalog (test_vectorizer_definers); here a superuser tampers with it, and indb
still runs nothing it did not mean to: key types are cast through regtype, columns quoted, relations checked,
whether the worker runs as the vectorizer's creator or as a superuser."""

from __future__ import annotations

import secrets

import psycopg
import pytest
from helpers import login_name, own_schema


@pytest.fixture
def trap(connect_as, sconn):
    """An async vectorizer of the writer's, and a function of the writer's that records who ran it."""
    me = login_name("writer")
    schema = own_schema(sconn, me)
    w = connect_as("writer")
    w.execute(f"create table {schema}.calls (who text)")
    w.execute(f"grant usage on schema {schema} to public")
    w.execute(f"grant insert on {schema}.calls to public")
    w.execute(
        f"create function {schema}.pwn2() returns boolean language plpgsql as $$ begin "
        f"insert into {schema}.calls values (current_user); return true; end $$"
    )
    w.execute(f"create table {schema}.docs (id int primary key, body text)")
    name = f"t_{secrets.token_hex(3)}"
    w.execute("select ml.create_vectorizer(%s, array['body'], name => %s, mode => 'async')", [f"{schema}.docs", name])
    w.execute(f"insert into {schema}.docs values (1, 'queued row')")
    yield {"name": name, "schema": schema, "writer": w}
    assert sconn.execute(f"select count(*) from {schema}.calls").fetchone()[0] == 0, "the planted function ran"
    sconn.execute("delete from ml.vectorizers where name = %s", [name])  # the tampered row goes


def _worker_runs_fail(t, sconn, err):
    for c in (t["writer"], sconn):  # the worker as the creator, and as a superuser
        for sql in ("select ml.process_queue(%s)", "select ml.refresh_vectorizer(%s)"):
            with pytest.raises(err):
                c.execute(sql, [t["name"]])


def test_a_tampered_key_type_is_cast_not_pasted(trap, sconn):
    sconn.execute(
        "update ml.vectorizers set key_types = array[%s] where name = %s",
        [f"int4 and {trap['schema']}.pwn2()", trap["name"]],
    )
    _worker_runs_fail(trap, sconn, psycopg.errors.DatatypeMismatch)
    with pytest.raises(psycopg.errors.DatatypeMismatch):  # the trigger too
        trap["writer"].execute(f"insert into {trap['schema']}.docs values (2, 'x')")


def test_a_tampered_column_is_quoted_not_pasted(trap, sconn):
    sconn.execute(
        "update ml.vectorizers set columns = array[%s] where name = %s",
        [f"body::text || {trap['schema']}.pwn2()::text) --", trap["name"]],
    )
    _worker_runs_fail(trap, sconn, psycopg.errors.DatatypeMismatch)  # "missing or not of a built-in type"


def test_a_tampered_source_that_is_a_view_is_not_read(trap, sconn):
    trap["writer"].execute(
        f"create view {trap['schema']}.v as select id, body from {trap['schema']}.docs where {trap['schema']}.pwn2()"
    )
    sconn.execute(
        "update ml.vectorizers set source = %s::regclass where name = %s", [f"{trap['schema']}.v", trap["name"]]
    )
    _worker_runs_fail(trap, sconn, psycopg.errors.WrongObjectType)


def test_a_tampered_destination_is_not_written(trap, sconn):
    w = trap["writer"]
    s = trap["schema"]
    w.execute(
        f"create table {s}.fake (id int, seq int, chunk text, embedding vector(384), content_hash text, model text, "
        "embedded_at timestamptz)"
    )
    w.execute(f"grant all on {s}.fake to public")
    w.execute(
        f"create function {s}.on_fake() returns trigger language plpgsql as $$ begin perform {s}.pwn2(); "
        "return null; end $$"
    )
    w.execute(
        f"create trigger on_fake after insert or delete on {s}.fake for each statement execute function {s}.on_fake()"
    )
    sconn.execute("update ml.vectorizers set destination = %s::regclass where name = %s", [f"{s}.fake", trap["name"]])
    _worker_runs_fail(trap, sconn, psycopg.errors.InsufficientPrivilege)  # not owned by indb_owner
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        w.execute(f"truncate {s}.docs")  # the trigger, as indb_owner, refuses too
