"""Workers never run a source owner's code with someone else's rights (issue 10, item 3): a superuser's worker
(`indb worker`, ml.process_queue, ml.refresh_vectorizer) reads each vectorizer's source as the role that made
the vectorizer; a tenant's worker processes only its tenant's vectorizers."""

from __future__ import annotations

import secrets

import psycopg
import pytest
from helpers import login_name, one_row, own_schema


@pytest.fixture
def watched(connect_as, sconn):
    """acme's async vectorizer on a table whose (forced) row-level security policy records who reads it."""
    me = login_name("acme_writer")
    schema = own_schema(sconn, me)
    w = connect_as("acme_writer")
    w.execute(f"create table {schema}.readers (who text)")
    w.execute(f"grant usage on schema {schema} to public")
    w.execute(f"grant insert on {schema}.readers to public")
    w.execute(
        f"create function {schema}.seen() returns boolean language plpgsql as $$ begin "
        f"insert into {schema}.readers values (current_user); return true; end $$"
    )
    w.execute(f"create table {schema}.docs (id int primary key, body text)")
    w.execute(f"alter table {schema}.docs enable row level security")
    w.execute(f"alter table {schema}.docs force row level security")
    w.execute(f"create policy p on {schema}.docs using ({schema}.seen()) with check (true)")
    name = f"w_{secrets.token_hex(3)}"
    w.execute("select ml.create_vectorizer(%s, array['body'], name => %s, mode => 'async')", [f"{schema}.docs", name])
    w.execute(f"insert into {schema}.docs values (1, 'first'), (2, 'second')")
    w.execute(f"delete from {schema}.readers")
    return {"name": name, "schema": schema, "me": me}


def test_a_superusers_worker_reads_each_source_as_its_creator(watched, sconn):
    r = one_row(sconn, "select * from ml.process_queue(%s)", [watched["name"]])
    assert r["processed"] == 2 and r["pending"] == 0
    readers = {x[0] for x in sconn.execute(f"select who from {watched['schema']}.readers")}
    assert readers == {watched["me"]}  # read as the creator (a superuser skips row-level security: no row at all)
    assert sconn.execute(f"select count(*) from embeddings.{watched['name']}").fetchone()[0] == 2
    # and the session is back to what it was
    assert sconn.execute("select current_user, current_setting('role')").fetchone() == ("postgres", "none")
    sconn.execute(f"delete from {watched['schema']}.readers")
    sconn.execute("select ml.refresh_vectorizer(%s)", [watched["name"]])
    assert {x[0] for x in sconn.execute(f"select who from {watched['schema']}.readers")} == {watched["me"]}


def test_the_all_vectorizers_worker_switches_per_vectorizer(watched, sconn):
    rows = sconn.execute("select vectorizer from ml.process_queue()").fetchall()  # one row per vectorizer
    assert watched["name"] in {r[0] for r in rows}
    assert {x[0] for x in sconn.execute(f"select who from {watched['schema']}.readers")} == {watched["me"]}


def test_a_tenants_worker_processes_only_its_tenants_vectorizers(watched, connect_as):
    g = connect_as("globex_writer")
    assert watched["name"] not in {r[0] for r in g.execute("select vectorizer from ml.process_queue()")}
    with pytest.raises(psycopg.errors.UndefinedObject):
        g.execute("select ml.process_queue(%s)", [watched["name"]])
    a = connect_as("acme_writer")
    done = dict(a.execute("select vectorizer, processed from ml.process_queue()").fetchall())
    assert done[watched["name"]] >= 2
