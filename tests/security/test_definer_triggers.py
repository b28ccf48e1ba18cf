"""Reproduction 1 of the trust issue: a writer attaches a trigger to a table that a SECURITY DEFINER function of
indb writes to, so the trigger runs with the definer's rights. Closed by ownership: every table indb's
functions touch belongs to indb_owner, and no working role may attach anything to it."""

from __future__ import annotations

import secrets

import psycopg
import pytest
from helpers import is_superuser, login_name


def test_writer_cannot_attach_a_trigger_to_a_collection_table_and_stays_a_writer(connect_as, sconn):
    w = connect_as("acme_writer")
    name = f"wpart_{secrets.token_hex(3)}"
    w.execute(
        "select ml.create_collection(%s, model => null, partition_by => 'tenant', options => '{\"dimensions\": 3}')",
        [name],
    )
    # the table is indb_owner's, not the writer's
    assert (
        sconn.execute(
            "select relowner::regrole::text from pg_class where oid = %s::regclass", [f"collections.{name}"]
        ).fetchone()[0]
        == "indb_owner"
    )
    me = login_name("acme_writer")
    fn = f"pwn_{secrets.token_hex(3)}"
    body = (
        f"BEGIN IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN "
        f"EXECUTE 'ALTER ROLE {me} SUPERUSER'; END IF; RETURN NULL; END"
    )
    # a function of its own may exist somewhere it can create one (pg_temp): it still cannot be attached
    w.execute(f"create function pg_temp.{fn}() returns trigger language plpgsql as $${body}$$")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        w.execute(
            f"create trigger pwn after delete on collections.{name} for each statement execute function pg_temp.{fn}()"
        )
    # and the definer path the attack used runs as indb_owner, which is not a superuser either
    w.execute(
        "select ml.add_documents(%s, %s)",
        [name, psycopg.types.json.Jsonb([{"id": "1", "content": "x", "embedding": [1, 2, 3]}])],
    )
    assert not is_superuser(sconn, me)
    assert (
        sconn.execute("select rolsuper or rolbypassrls from pg_roles where rolname = 'indb_owner'").fetchone()[0]
        is False
    )
