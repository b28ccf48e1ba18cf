"""Roles and row-level security: tenants cannot read or change each other's registry rows through any
API function or direct SQL; a tenant bound to a role can only be used by its members; indb roles cannot
create functions (plpython3u stays untrusted)."""

from __future__ import annotations

import secrets

import psycopg
import pytest
from helpers import act_as

# every public registry function and how a tenant-B session calls it on tenant A's objects.
# {run} = A's run uuid, {model} = A's model name, {vid} = A's model version id, {did} = A's dataset id
CROSS_TENANT_CALLS = {
    "get_run": "select registry.get_run('{run}')",
    "metric_history": "select * from registry.metric_history('{run}', 'rmse')",
    "get_artifact": "select registry.get_artifact('{run}', 'a.txt')",
    "list_artifacts": "select * from registry.list_artifacts('{run}')",
    "list_inputs": "select * from registry.list_inputs('{run}')",
    "log_batch": "select registry.log_batch('{run}', array['x'], array[1.0])",
    "log_metric": "select registry.log_metric('{run}', 'x', 1)",
    "log_metrics": "select registry.log_metrics('{run}', '{{\"x\": 1}}')",
    "log_param": "select registry.log_param('{run}', 'x', '1')",
    "log_params": "select registry.log_params('{run}', '{{\"x\": \"1\"}}')",
    "set_tag": "select registry.set_tag('{run}', 'x', '1')",
    "end_run": "select registry.end_run('{run}')",
    "log_artifact": "select registry.log_artifact('{run}', 'b.txt', 'x'::bytea)",
    "log_input": "select registry.log_input('{run}', 'd', 'abc')",
    "start_run": "select registry.start_run('{exp}', 'steal')",
    "create_experiment": "select registry.create_experiment('{exp}')",
    "register_model": "select registry.register_model('{model}', artifact => 'x'::bytea)",
    "set_alias": "select registry.set_alias('{model}', 'champion', 1)",
    "delete_alias": "select registry.delete_alias('{model}', 'champion')",
    "get_model_version": "select * from registry.get_model_version('{model}', 'champion')",
    "list_model_versions": "select * from registry.list_model_versions('{model}')",
    "lineage": "select * from registry.lineage('run', '{run}')",
    "add_lineage": "select registry.add_lineage('run', '{run}', 'model_version', '{vid}')",
    "register_dataset": "select registry.register_dataset('data_{tenant}', 'abc123', materialized => 'pg_class')",
    "log_trials": "select registry.log_trials('{run}', 'r2', '[]')",
    "lineage_by_id": "select * from registry.lineage('model_version', '{vid}')",
    "lineage_dataset": "select * from registry.lineage('dataset', '{did}')",
}
# functions that return rows: tenant B must get nothing of A's
CROSS_TENANT_EMPTY = {
    "search_runs": "select count(*) from registry.search_runs(null, '') where experiment = '{exp}'",
    "search_runs_by_name": "select count(*) from registry.search_runs(array['{exp}'], '')",
    "node_label": "select count(registry.node_label('model_version', '{vid}'))",
}
# and no row of A's in any registry table, read directly
REGISTRY_TABLES = [
    "experiments",
    "runs",
    "params",
    "metrics",
    "latest_metrics",
    "artifacts",
    "datasets",
    "run_inputs",
    "registered_models",
    "model_versions",
    "aliases",
    "deployments",
    "lineage_edges",
]
# not tenant data, or admin-only: checked elsewhere
NOT_TENANT_DATA = {"max_artifact_bytes", "search_runs", "node_label"}


def one(conn, sql, params=None):
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def as_tenant(conn, tenant, role="indb_writer"):
    act_as(conn, role, tenant or None)


@pytest.fixture
def tenant_a(db_dsn):
    """Tenant A's objects, written as indb_writer with indb.tenant = A."""
    ta = f"ta_{secrets.token_hex(3)}"
    with psycopg.connect(db_dsn, autocommit=True) as c:
        as_tenant(c, ta)
        exp = f"exp_{ta}"
        run = str(one(c, "select registry.start_run(%s, 'a-run')", [exp]))
        c.execute("select registry.log_batch(%s, array['rmse'], array[0.5], params => '{\"depth\": \"6\"}')", [run])
        c.execute("select registry.log_artifact(%s, 'a.txt', 'secret'::bytea)", [run])
        did = one(c, "select registry.log_input(%s, %s, 'abc123')", [run, f"data_{ta}"])
        model = f"model_{ta}"
        vid = one(
            c, "select version_id from registry.register_model(%s, %s, 'x'::bytea, flavor => 'sklearn')", [model, run]
        )
        c.execute("select registry.set_alias(%s, 'champion', 1)", [model])
        c.execute("select ml.deploy(%s, model_id => %s)", [model, vid])
        assert one(c, "select count(*) from registry.runs") >= 1
    return dict(tenant=ta, exp=exp, run=run, model=model, vid=vid, did=did)


def test_every_registry_function_is_covered():
    import re
    from pathlib import Path

    sql = Path(__file__).resolve().parents[2] / "sql"
    text = "".join(p.read_text() for p in sorted(sql.glob("*.sql")))
    public = {m for m in re.findall(r"create or replace function registry\.([a-z][a-z0-9_]*)\(", text)}
    covered = set(CROSS_TENANT_CALLS) | NOT_TENANT_DATA
    assert public - covered == set(), "add the new registry functions to CROSS_TENANT_CALLS"


def test_rows_have_the_writer_tenant(conn, tenant_a):
    assert {
        r[0]
        for r in conn.execute(
            "select distinct tenant from registry.runs r where r.run_uuid = %s union all "
            "select distinct m.tenant from registry.metrics m join registry.runs r on r.id = m.run_id where r.run_uuid = %s "
            "union all select tenant from registry.model_versions where id = %s union all "
            "select tenant from registry.deployments where version_id = %s",
            [tenant_a["run"], tenant_a["run"], tenant_a["vid"], tenant_a["vid"]],
        ).fetchall()
    } == {tenant_a["tenant"]}


@pytest.mark.parametrize("role", ["indb_writer", "indb_reader"])
def test_other_tenant_cannot_read_or_write_through_any_function(db_dsn, tenant_a, role):
    tb = f"tb_{secrets.token_hex(3)}"
    with psycopg.connect(db_dsn, autocommit=True) as c:
        as_tenant(c, tb, "indb_writer")
        own = str(one(c, "select registry.start_run(%s, 'b-run')", [f"exp_{tb}"]))
        as_tenant(c, tb, role)
        for name, sql in CROSS_TENANT_CALLS.items():
            with pytest.raises(psycopg.Error) as e:
                c.execute(sql.format(**tenant_a))
            # not found, name taken, or not allowed at all -- never A's data
            assert e.value.sqlstate in ("42704", "42710", "42501"), (name, e.value)
            assert "secret" not in str(e.value)
        for name, sql in CROSS_TENANT_EMPTY.items():
            assert one(c, sql.format(**tenant_a)) == 0, name
        for t in REGISTRY_TABLES:
            assert one(c, f"select count(*) from registry.{t} where tenant is not null and tenant <> %s", [tb]) == 0, t
        assert [
            str(r[0])
            for r in c.execute("select run_id from registry.search_runs(null, '') where experiment = %s", [f"exp_{tb}"])
        ] == [own]
        # writing a row labelled with A's tenant is refused
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("insert into registry.experiments(name, tenant) values (%s, %s)", [f"x_{tb}", tenant_a["tenant"]])
        c.execute("reset role")
    # nothing of A changed
    with psycopg.connect(db_dsn, autocommit=True) as c:
        cur = c.execute("select * from registry.get_run(%s)", [tenant_a["run"]])
        info = dict(zip([d.name for d in cur.description], cur.fetchone()))
        assert info["status"] == "RUNNING" and info["params"] == {"depth": "6"} and info["metrics"] == {"rmse": 0.5}
        assert info["tags"] == {}


def test_tenant_sees_own_and_shared_rows_admin_sees_all(db_dsn, tenant_a):
    with psycopg.connect(db_dsn, autocommit=True) as c:
        shared = f"shared_{secrets.token_hex(3)}"
        as_tenant(c, None, "indb_writer")
        c.execute("select registry.start_run(%s, 'shared-run')", [shared])
        as_tenant(c, tenant_a["tenant"], "indb_reader")
        names = {r[0] for r in c.execute("select e.name from registry.experiments e")}
        assert tenant_a["exp"] in names and shared in names
        # shared rows are read-only to a tenant
        run = one(c, "select run_id from registry.search_runs(array[%s], '')", [shared])
        as_tenant(c, tenant_a["tenant"], "indb_writer")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="shared"):
            c.execute("select registry.log_metric(%s, 'x', 1)", [str(run)])
        as_tenant(c, "", "indb_admin")
        assert (
            one(
                c,
                "select count(*) from registry.runs r join registry.experiments e on e.id = r.experiment_id "
                "where e.name in (%s, %s)",
                [tenant_a["exp"], shared],
            )
            == 2
        )
        c.execute("reset role")


def test_tenant_bound_to_a_role(db_dsn):
    t = f"tc_{secrets.token_hex(3)}"
    member = f"indb_t_member_{secrets.token_hex(3)}"
    with psycopg.connect(db_dsn, autocommit=True) as c:
        c.execute("set role indb_writer")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("select ml.create_tenant(%s)", [t])
        c.execute("reset role")
        assert one(c, "select ml.create_tenant(%s)", [t]) == t
        c.execute(f"create role {member} nologin in role indb_writer")
        assert one(c, "select ml.create_tenant(%s, %s)", [t, member]) == t  # idempotent; binds the member
        try:
            # a writer that is not a member cannot claim the tenant, nor can anyone claim a tenant that does not exist
            as_tenant(c, None, "indb_writer")
            c.execute("select set_config('indb.tenant', %s, false)", [t])
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not act as tenant"):
                c.execute("select count(*) from registry.runs")
            c.execute("select set_config('indb.tenant', 'no_such_tenant', false)")
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="does not exist"):
                c.execute("select count(*) from registry.runs")
            # the member needs no setting at all: its tenant role says who it is
            c.execute("reset role")
            c.execute("reset indb.tenant")
            c.execute(f"set role {member}")
            assert one(c, "select ml.current_tenant()") == t
            rid = one(c, "select registry.start_run(%s)", [f"exp_{t}"])
            assert one(c, "select tenant from registry.runs where run_uuid = %s", [rid]) == t
        finally:
            c.execute("reset role")
            c.execute(f"drop owned by {member}")
            c.execute(f"drop role {member}")


def test_tenants_of_walks_memberships_through_groups(db_dsn):
    """A login's tenants are found through any chain of groups (three levels, two paths to one tenant), every
    tenant once, in name order; indb_tenant_manager is not a tenant; a role with no tenant role has none; the
    tenant roles of other logins in the cluster do not leak into the answer."""
    x = secrets.token_hex(3)
    t1, t2, other = f"tw1_{x}", f"tw2_{x}", f"tw3_{x}"
    login, g1, g2, g3, stranger = (f"indb_tw_{n}_{x}" for n in ("login", "g1", "g2", "g3", "stranger"))
    with psycopg.connect(db_dsn, autocommit=True) as c:
        for t in (t1, t2, other):
            c.execute("select ml.create_tenant(%s)", [t])
        try:
            for r in (g3, g2, g1, login, stranger):
                c.execute(f"create role {r} nologin")
            c.execute(f"grant indb_tenant_{t2}, indb_tenant_{t1} to {g3}")  # deepest group: both tenants
            c.execute(f"grant {g3} to {g2}")
            c.execute(f"grant {g2}, indb_tenant_{t1} to {g1}")  # a second path to t1
            c.execute(f"grant {g1}, indb_tenant_manager to {login}")
            c.execute(f"grant indb_tenant_{other} to {stranger}")
            assert one(c, "select ml.tenants_of(%s)", [login]) == sorted([t1, t2])
            assert one(c, "select ml.tenants_of(%s)", [g2]) == sorted([t1, t2])
            assert one(c, "select ml.tenants_of(%s)", [stranger]) == [other]
            c.execute(f"revoke {g2} from {g1}")
            assert one(c, "select ml.tenants_of(%s)", [login]) == [t1]
            c.execute(f"revoke indb_tenant_{t1} from {g1}")
            assert one(c, "select ml.tenants_of(%s)", [login]) == []
        finally:
            for r in (login, g1, g2, g3, stranger):
                c.execute(f"drop role if exists {r}")


@pytest.mark.parametrize("role", ["indb_app", "indb_reader", "indb_writer", "indb_admin"])
def test_indb_roles_cannot_create_functions(conn, role):
    conn.execute(f"set role {role}")
    try:
        for schema in ("ml", "registry", "features", "audit"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"create function {schema}.evil() returns int language sql as 'select 1'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="plpython3u"):
            conn.execute("create function pg_temp.evil() returns int language plpython3u as 'return 1'")
    finally:
        conn.execute("reset role")


def test_roles_exist_with_the_documented_hierarchy(conn):
    rows = dict(
        conn.execute(
            "select r.rolname, array(select b.rolname from pg_auth_members m join pg_roles b on b.oid = m.roleid "
            "where m.member = r.oid order by 1) from pg_roles r where r.rolname like 'indb\\_%%' "
            "and r.rolname in ('indb_app', 'indb_reader', 'indb_writer', 'indb_admin')"
        ).fetchall()
    )
    assert rows == {
        "indb_app": [],
        "indb_reader": ["indb_app"],
        "indb_writer": ["indb_reader"],
        "indb_admin": ["indb_writer"],
    }
    assert not any(
        conn.execute(
            "select rolcanlogin or rolsuper from pg_roles where rolname in "
            "('indb_app', 'indb_reader', 'indb_writer', 'indb_admin')"
        ).fetchall()[0]
    )
