"""Error messages that name what a caller supplied stay short: a 1,000,000-character name is refused with the
usual SQLSTATE, and the message shows its first 100 characters and its length (ml._clip), not the whole name,
so that one call cannot write a 1 MB line into the server log and the client's error. Every attack runs as a
LOGIN role that is not a superuser."""

from __future__ import annotations

import json
import secrets

import psycopg
import pytest

BIG = "n" * 1_000_000
CLIPPED = "(1000000 characters)"


def refused(conn, sql, params, state: str) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as ei:
        conn.execute(sql, params)
    e = ei.value
    assert e.sqlstate == state, (sql, e.sqlstate, str(e)[:300])
    return e


@pytest.mark.parametrize(
    "who, sql, params, state",
    [
        ("acme_app", "select * from ml.search(%s, 'q', 5)", [BIG], "42704"),  # collection
        ("acme_app", "select * from ml.vectorizer_search(%s, 'q', 5)", [BIG], "42704"),  # vectorizer
        ("acme_app", "select ml.predict(%s, '{}'::jsonb)", [BIG], "42704"),  # project
        ("acme_app", "select features.get_online(array[%s || ':x'], '{\"k\": 1}')", [BIG], "42704"),  # feature view
        ("acme_reader", "select * from registry.lineage('model_version', %s)", [BIG], "42704"),  # registered model
        ("acme_writer", "select ml.create_collection(%s)", [BIG], "22023"),  # an invalid new name
    ],
    ids=["collection", "vectorizer", "project", "feature_view", "registered_model", "new_collection"],
)
def test_a_name_of_a_million_characters_is_refused_with_a_short_message(connect_as, who, sql, params, state):
    e = refused(connect_as(who), sql, params, state)
    msg = e.diag.message_primary or ""
    assert CLIPPED in msg and len(msg) < 400, msg[:300]


def test_a_tenant_setting_of_a_million_characters_is_refused_with_a_short_message(connect_as):
    app = connect_as("app")
    app.execute("select set_config('indb.tenant', %s, false)", [BIG])
    e = refused(app, "select ml.current_tenant()", None, "42501")
    msg = e.diag.message_primary or ""
    assert CLIPPED in msg and len(msg) < 400, msg[:300]


def test_a_feature_requested_thousands_of_times_gets_a_short_detail(sconn, logins, connect_as):
    """The duplicate-name error's DETAIL lists where the name was requested from: cut at 1,000 characters."""
    src = f"dup_src_{secrets.token_hex(3)}"
    sconn.execute(f"create table public.{src} (k int, ts timestamptz, x float8)")
    sconn.execute(f"grant select on public.{src} to indb_writer")
    ent, view = f"dup_ent_{secrets.token_hex(3)}", f"dup_view_{secrets.token_hex(3)}"
    with psycopg.connect(logins["acme_writer"], autocommit=True) as w:
        w.execute("select features.create_entity(%s, array['k'])", [ent])
        w.execute(
            "select features.create_feature_view(%s, %s, %s, 'ts', %s)",
            [view, ent, f"public.{src}", json.dumps([{"name": "x"}])],
        )
    app = connect_as("acme_app")
    e = refused(app, "select features.get_online(%s, '{\"k\": 1}')", [[f"{view}:x"] * 5000], "42710")
    detail = e.diag.message_detail or ""
    assert detail.startswith(f"{view}@1:x") and "characters)" in detail and len(detail) < 1100, detail[:300]
    # the name itself is short, so the message shows it whole
    assert (e.diag.message_primary or "").startswith('feature name "x" is requested from more than one view')
