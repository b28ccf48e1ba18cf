"""ml.train on real data (California housing, Titanic): every algorithm trains and predicts, the registry
records run/snapshot/metrics/curves/lineage, preprocessing round-trips, bad input fails clearly."""

from __future__ import annotations

import json
import math

import psycopg
import pytest

HOUSING_COLS = (
    "longitude float8, latitude float8, housing_median_age float8, total_rooms float8, "
    "total_bedrooms float8, population float8, households float8, median_income float8, "
    "median_house_value float8, ocean_proximity text"
)
PRE = json.dumps({"ocean_proximity": {"encode": "one_hot"}, "total_bedrooms": {"impute": "median"}})


def load_housing(conn, data_dir):
    if conn.execute("select to_regclass('public.housing')").fetchone()[0]:
        return
    conn.execute(f"create table public.housing ({HOUSING_COLS})")
    with conn.cursor().copy("copy public.housing from stdin with (format csv, header true)") as cp:
        cp.write((data_dir / "california_housing" / "housing.csv").read_bytes())
    # a small deterministic slice for fast tests: every 10th block group (2,064 rows)
    conn.execute(
        "create view public.housing_small as select * from "
        "(select h.*, row_number() over () as rn from public.housing h) s where rn % 10 = 0"
    )
    conn.execute(
        "create view public.housing_feats as select longitude, latitude, housing_median_age, total_rooms, "
        "total_bedrooms, population, households, median_income, ocean_proximity, median_house_value "
        "from public.housing_small"
    )


def load_titanic(conn, data_dir):
    if conn.execute("select to_regclass('public.titanic')").fetchone()[0]:
        return
    conn.execute(
        'create table public.titanic ("PassengerId" int, "Survived" int, "Pclass" int, "Name" text, '
        '"Sex" text, "Age" float8, "SibSp" int, "Parch" int, "Ticket" text, "Fare" float8, "Cabin" text, '
        '"Embarked" text)'
    )
    with conn.cursor().copy("copy public.titanic from stdin with (format csv, header true)") as cp:
        cp.write((data_dir / "titanic" / "train.csv").read_bytes())


@pytest.fixture(scope="module")
def housing(sconn, data_dir):
    load_housing(sconn, data_dir)
    return sconn


def train(conn, project, **kw):
    args = ", ".join(f"{k} => %({k})s" for k in kw)
    row = conn.execute(f"select * from ml.train(%(project)s, {args})", dict(project=project, **kw)).fetchone()
    return {"project": row[0], "model_id": row[1], "algorithm": row[2], "metrics": row[3], "deployed": row[4]}


def test_xgboost_regression_records_everything(housing):
    r = train(
        housing,
        "house_xgb",
        task="regression",
        relation="housing_feats",
        target="median_house_value",
        preprocess=PRE,
        hyperparams=json.dumps({"n_estimators": 60, "max_depth": 5}),
    )
    assert r["deployed"] is True
    m = r["metrics"]
    assert m["r2"] > 0.6 and 30000 < m["rmse"] < 80000 and m["mae"] > 0
    # the registry chain: run with params/metrics, snapshot, curves, model version, deployment, lineage
    run_id = housing.execute("select run_id from registry.model_versions where id = %s", [r["model_id"]]).fetchone()[0]
    params = dict(housing.execute("select key, value from registry.params where run_id = %s", [run_id]).fetchall())
    assert (
        params["algorithm"] == "xgboost" and params["hp.max_depth"] == "5" and params["target"] == "median_house_value"
    )
    curve = housing.execute(
        "select count(*) from registry.metrics where run_id = %s and key = 'curve.test_rmse'", [run_id]
    ).fetchone()[0]
    assert curve == 60
    snap = housing.execute(
        "select d.kind, d.row_count, d.schema, d.profile from registry.run_inputs ri "
        "join registry.datasets d on d.id = ri.dataset_id where ri.run_id = %s",
        [run_id],
    ).fetchone()
    assert snap[0] == "snapshot" and snap[1] == 2064
    assert {c["name"] for c in snap[2]} >= {"median_income", "ocean_proximity"}
    assert snap[3]["total_bedrooms"]["nulls"] > 0 and snap[3]["ocean_proximity"]["distinct"] == 5
    edges = housing.execute(
        "select src_kind, dst_kind from registry.lineage_edges where (src_kind = 'run' and src_id = %s) "
        "or (dst_kind = 'run' and dst_id = %s) or (src_kind = 'model_version' and src_id = %s)",
        [str(run_id), str(run_id), str(r["model_id"])],
    ).fetchall()
    assert {("dataset", "run"), ("run", "model_version"), ("model_version", "deployment")} <= set(edges)
    status, exp = housing.execute(
        "select r.status, e.name from registry.runs r join registry.experiments e "
        "on e.id = r.experiment_id where r.id = %s",
        [run_id],
    ).fetchone()
    assert status == "FINISHED" and exp == "house_xgb"
    ov = housing.execute(
        "select deployed_model_id, algorithm, key_metric, score, rows from ml.projects_overview "
        "where project = 'house_xgb'"
    ).fetchone()
    assert ov[0] == r["model_id"] and ov[1] == "xgboost" and ov[2] == "r2" and abs(ov[3] - m["r2"]) < 1e-9
    assert ov[4] == 2064


def test_predict_forms_agree_and_match_training(housing):
    train(
        housing,
        "house_lin",
        task="regression",
        relation="housing_feats",
        target="median_house_value",
        algorithm="linear",
        preprocess=PRE,
    )
    row = housing.execute("select * from housing_feats limit 1").fetchone()
    by_row = housing.execute("select ml.predict('house_lin', h) from housing_feats h limit 1").fetchone()[0]
    names = [d.name for d in housing.execute("select * from housing_feats limit 0").description]
    obj = {k: v for k, v in zip(names, row) if k != "median_house_value"}
    by_json = housing.execute("select ml.predict('house_lin', %s::jsonb)", [json.dumps(obj)]).fetchone()[0]
    assert by_row == pytest.approx(by_json, rel=1e-12)
    # batch over the same view gives the same value for the first row
    batch = housing.execute(
        "select row_number, prediction from ml.predict_batch('house_lin', 'housing_feats') order by row_number limit 3"
    ).fetchall()
    assert batch[0][0] == 1 and batch[0][1] == pytest.approx(by_row, rel=1e-12)
    # every row: the batch (chunked, 50,000 rows per array) lines up with per-row predictions in scan order
    mism = housing.execute("""
        with b as (select row_number, prediction from ml.predict_batch('house_lin', 'housing_feats')),
             r as (select row_number() over () as rn, ml.predict('house_lin', h) as p from housing_feats h)
        select count(*), count(*) filter (where abs(b.prediction - r.p) > 1e-6 * abs(r.p))
        from b join r on r.rn = b.row_number""").fetchone()
    assert mism == (2064, 0)
    housing.execute("set indb.predict_batch_chunk = 300")  # 7 chunks: rows stay in scan order across chunks
    try:
        small = housing.execute(
            "select prediction from ml.predict_batch('house_lin', 'housing_feats') order by row_number"
        ).fetchall()
    finally:
        housing.execute("reset indb.predict_batch_chunk")
    full = housing.execute(
        "select prediction from ml.predict_batch('house_lin', 'housing_feats') order by row_number"
    ).fetchall()
    assert small == full
    # an unseen category falls back to all-zero one-hot and NULL total_bedrooms is imputed (median)
    obj2 = dict(obj, ocean_proximity="ON THE MOON", total_bedrooms=None)
    v = housing.execute("select ml.predict('house_lin', %s::jsonb)", [json.dumps(obj2)]).fetchone()[0]
    assert math.isfinite(v)


def test_predict_batch_is_exactly_per_row_predict_in_the_querys_order(housing):
    """predict_batch reads groups of rows in any order and places each prediction by its row number: for a
    SELECT with ORDER BY, NULL features (imputed), one-hot text and unseen categories, every chunk size gives
    exactly what ml.predict gives row by row, numbered in the query's order."""
    train(
        housing,
        "house_batch_xgb",
        task="regression",
        relation="housing_feats",
        target="median_house_value",
        preprocess=PRE,
        hyperparams=json.dumps({"n_estimators": 25, "max_depth": 4}),
    )
    q = (
        "select longitude, latitude, housing_median_age, total_rooms, "
        "case when longitude < -121 then null else total_bedrooms end as total_bedrooms, population, households, "
        "median_income, case when latitude > 38 then 'UNSEEN' else ocean_proximity end as ocean_proximity "
        "from housing_feats order by median_income desc, longitude, latitude"
    )
    check = f"""
        with b as (select row_number, prediction from ml.predict_batch('house_batch_xgb', %s)),
             r as (select row_number() over () as rn, ml.predict('house_batch_xgb', h) as p from ({q}) h)
        select count(*), count(*) filter (where b.prediction is distinct from r.p), min(b.row_number),
               max(b.row_number), count(distinct b.row_number)
        from b full join r on r.rn = b.row_number"""
    for chunk in ("50000", "257", "1"):
        housing.execute("select set_config('indb.predict_batch_chunk', %s, false)", [chunk])
        try:
            assert housing.execute(check, [q]).fetchone() == (2064, 0, 1, 2064, 2064), chunk
        finally:
            housing.execute("reset indb.predict_batch_chunk")
    # the profile NOTICE names every phase; the predictions do not change with it
    notices: list[str] = []
    housing.add_notice_handler(lambda d: notices.append(d.message_primary))
    housing.execute("set indb.predict_batch_profile = on")
    try:
        n = housing.execute("select count(*) from ml.predict_batch('house_batch_xgb', 'housing_feats')").fetchone()[0]
    finally:
        housing.execute("reset indb.predict_batch_profile")
    assert n == 2064
    prof = json.loads(next(m for m in notices if m.startswith("ml.predict_batch profile: ")).split(": ", 1)[1])
    assert prof["rows"] == 2064 and {"fetch", "transform", "inference", "to_list"} <= set(prof)
    # a NaN feature is refused (NULL is imputed, NaN is not a value)
    with pytest.raises(psycopg.errors.DataException, match='column "total_rooms" holds nan'):
        housing.execute(
            "select count(*) from ml.predict_batch('house_batch_xgb', "
            "'select longitude, latitude, housing_median_age, ''NaN''::float8 as total_rooms, total_bedrooms, "
            "population, households, median_income, ocean_proximity from housing_feats')"
        )


def test_predict_batch_over_a_table_reads_its_blocks_in_order_exactly(housing):
    """A plain table is read block range by block range (one cursor, one snapshot): after deletes and updates
    that leave holes and move rows to later blocks, with NULL features (imputed) and unseen categories, every
    chunk size gives exactly the per-row predictions, numbered in the table's block order. A table with an
    inheritance child (read through the general path) also includes the child's rows. A NaN is refused."""
    train(
        housing,
        "house_batch_blocks",
        task="regression",
        relation="housing_feats",
        target="median_house_value",
        preprocess=PRE,
        hyperparams=json.dumps({"n_estimators": 25, "max_depth": 4}),
    )
    housing.execute("drop table if exists batch_blocks cascade")
    housing.execute("create table batch_blocks as select * from housing_feats")
    housing.execute("delete from batch_blocks where mod(households::int, 3) = 0")
    housing.execute(
        "update batch_blocks set total_bedrooms = null, ocean_proximity = 'UNSEEN' where mod(population::int, 4) = 0"
    )
    check = """
        with b as (select row_number, prediction from ml.predict_batch('house_batch_blocks', 'batch_blocks')),
             r as (select row_number() over (order by ctid) as rn, ml.predict('house_batch_blocks', t) as p
                   from batch_blocks t)
        select count(*), count(*) filter (where b.prediction is distinct from r.p),
               (select count(*) from batch_blocks where total_bedrooms is null)
        from b full join r on r.rn = b.row_number"""
    rows = housing.execute("select count(*) from batch_blocks").fetchone()[0]
    assert 1000 < rows < 2064
    for chunk in ("50000", "257", "1"):
        housing.execute("select set_config('indb.predict_batch_chunk', %s, false)", [chunk])
        try:
            n, differ, nulls = housing.execute(check).fetchone()
        finally:
            housing.execute("reset indb.predict_batch_chunk")
        assert (n, differ) == (rows, 0), chunk
        assert nulls > 100
    # a NaN is not a value: the call is refused and says what
    housing.execute("update batch_blocks set total_rooms = 'NaN' where ctid = (select max(ctid) from batch_blocks)")
    with pytest.raises(psycopg.errors.DataException, match='column "total_rooms" holds NaN or Infinity in 1 row'):
        housing.execute("select count(*) from ml.predict_batch('house_batch_blocks', 'public.batch_blocks')")
    housing.execute("update batch_blocks set total_rooms = 1000 where total_rooms = 'NaN'")
    housing.execute(
        "update batch_blocks set population = '-Infinity' where ctid = (select min(ctid) from batch_blocks)"
    )
    with pytest.raises(psycopg.errors.DataException, match='column "population" holds NaN or Infinity in 1 row'):
        housing.execute("select count(*) from ml.predict_batch('house_batch_blocks', 'batch_blocks')")
    housing.execute("update batch_blocks set population = 1000 where population = '-Infinity'")
    # an inheritance child's rows are part of the table's rows
    housing.execute("create table batch_blocks_child () inherits (batch_blocks)")
    housing.execute("insert into batch_blocks_child select * from housing_feats limit 10")
    got = housing.execute(
        "select count(*), count(prediction) from ml.predict_batch('house_batch_blocks', 'batch_blocks')"
    ).fetchone()
    assert got == (rows + 10, rows + 10)
    housing.execute("drop table batch_blocks_child")
    housing.execute("drop table batch_blocks")


def test_predict_batch_reads_integer_and_boolean_columns_with_nulls_exactly(housing):
    """predict_batch over integer and boolean feature columns with NULLs (imputed) gives exactly what ml.predict
    gives row by row, in every chunk size."""
    rel = (
        "select median_house_value, housing_median_age::int as age, "
        "case when mod(households::int, 7) = 0 then null else median_income > 4 end as rich, "
        "case when mod(population::int, 5) = 0 then null else population::bigint end as people from housing_feats"
    )
    train(
        housing,
        "house_batch_types",
        task="regression",
        relation=rel,
        target="median_house_value",
        preprocess=json.dumps({"rich": {"impute": "mode"}, "people": {"impute": "mean"}}),
        hyperparams=json.dumps({"n_estimators": 15, "max_depth": 3}),
    )
    q = rel.replace("median_house_value, ", "")
    check = f"""
        with b as (select row_number, prediction from ml.predict_batch('house_batch_types', %s)),
             r as (select row_number() over () as rn, ml.predict('house_batch_types', h) as p from ({q}) h)
        select count(*), count(*) filter (where b.prediction is distinct from r.p),
               (select count(*) from ({q}) h where rich is null), (select count(*) from ({q}) h where people is null)
        from b full join r on r.rn = b.row_number"""
    for chunk in ("50000", "97", "1"):
        housing.execute("select set_config('indb.predict_batch_chunk', %s, false)", [chunk])
        try:
            n, differ, null_rich, null_people = housing.execute(check, [q]).fetchone()
        finally:
            housing.execute("reset indb.predict_batch_chunk")
        assert (n, differ) == (2064, 0), chunk
        assert null_rich > 0 and null_people > 0


def test_predict_batch_over_an_array_feature_keeps_scan_order_across_chunks(housing):
    """An array feature takes predict_batch's cursor path (chunks in scan order, the model beside the fetch):
    every chunk size gives exactly the per-row predictions, numbered in the query's order."""
    rel = (
        "select median_house_value, housing_median_age, "
        "array[longitude, latitude, median_income]::float8[] as place from housing_feats"
    )
    train(
        housing,
        "house_batch_array",
        task="regression",
        relation=rel,
        target="median_house_value",
        hyperparams=json.dumps({"n_estimators": 15, "max_depth": 3}),
    )
    q = "select housing_median_age, array[longitude, latitude, median_income]::float8[] as place from housing_feats "
    q += "order by median_income desc, longitude"
    check = f"""
        with b as (select row_number, prediction from ml.predict_batch('house_batch_array', %s)),
             r as (select row_number() over () as rn, ml.predict('house_batch_array', h) as p from ({q}) h)
        select count(*), count(*) filter (where b.prediction is distinct from r.p)
        from b full join r on r.rn = b.row_number"""
    for chunk in ("50000", "301"):
        housing.execute("select set_config('indb.predict_batch_chunk', %s, false)", [chunk])
        try:
            assert housing.execute(check, [q]).fetchone() == (2064, 0), chunk
        finally:
            housing.execute("reset indb.predict_batch_chunk")


def test_float8_array_path_matches_jsonb(housing):
    train(
        housing,
        "house_num",
        task="regression",
        target="median_house_value",
        algorithm="xgboost",
        relation="select median_income, housing_median_age, total_rooms, median_house_value from housing_small",
        hyperparams=json.dumps({"n_estimators": 30}),
    )
    a = housing.execute("select ml.predict('house_num', array[8.3, 41, 880]::float8[])").fetchone()[0]
    j = housing.execute("""select ml.predict('house_num', '{"median_income": 8.3, "housing_median_age": 41,
                           "total_rooms": 880}'::jsonb)""").fetchone()[0]
    assert a == pytest.approx(j) and 50000 < a < 600000
    # plain array literals (numeric[], int[]) resolve to the float8[] form, rows to the row form
    assert housing.execute("select ml.predict('house_num', array[8.3, 41, 880])").fetchone()[0] == pytest.approx(a)
    assert housing.execute("select ml.predict('house_num', array[8, 41, 880])").fetchone()[0] > 0
    assert housing.execute("select ml.predict('house_num', h) from housing_small h limit 1").fetchone()[0] > 0
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="takes 3 features but 2"):
        housing.execute("select ml.predict('house_num', array[8.3, 41]::float8[])")
    with pytest.raises(psycopg.errors.UndefinedColumn, match="missing feature.*total_rooms"):
        housing.execute("""select ml.predict('house_num', '{"median_income": 8.3, "housing_median_age": 41}'::jsonb)""")
    with pytest.raises(psycopg.errors.UndefinedColumn, match="unknown feature.*rooms"):
        housing.execute("""select ml.predict('house_num', '{"median_income": 8.3, "housing_median_age": 41,
                           "total_rooms": 880, "rooms": 1}'::jsonb)""")


REG_ALGOS = [
    "lightgbm",
    "random_forest",
    "extra_trees",
    "gradient_boosting",
    "hist_gradient_boosting",
    "ridge",
    "lasso",
    "elastic_net",
    "svm",
    "knn",
    "mlp",
]


@pytest.mark.parametrize("algorithm", REG_ALGOS)
def test_every_regression_algorithm_trains_and_predicts(housing, algorithm):
    hp = {"n_estimators": 30} if algorithm in ("lightgbm", "random_forest", "extra_trees", "gradient_boosting") else {}
    if algorithm == "mlp":
        hp = {"epochs": 30, "hidden_layers": [32, 32]}
    pre = {"ocean_proximity": {"encode": "one_hot"}, "total_bedrooms": {"impute": "median"}}
    if algorithm in ("svm", "knn", "ridge", "lasso", "elastic_net"):
        for c in (
            "longitude",
            "latitude",
            "housing_median_age",
            "total_rooms",
            "total_bedrooms",
            "population",
            "households",
            "median_income",
        ):
            pre.setdefault(c, {})["scale"] = "standard"
    r = train(
        housing,
        f"house_{algorithm}",
        task="regression",
        relation="housing_feats",
        target="median_house_value",
        algorithm=algorithm,
        hyperparams=json.dumps(hp),
        preprocess=json.dumps(pre),
    )
    floor = {"svm": -0.2, "elastic_net": 0.3}.get(algorithm, 0.45)
    assert r["metrics"]["r2"] > floor, r["metrics"]
    p = housing.execute("select ml.predict(%s, h) from housing_feats h limit 5", [f"house_{algorithm}"]).fetchall()
    assert len(p) == 5 and all(math.isfinite(x[0]) for x in p)


def test_titanic_classification_binary(sconn, data_dir):
    load_titanic(sconn, data_dir)
    rel = 'select "Pclass", "Sex", "Age", "SibSp", "Parch", "Fare", "Embarked", "Survived" from titanic'
    pre = {
        "Sex": {"encode": "one_hot"},
        "Embarked": {"encode": "one_hot", "impute": "mode"},
        "Age": {"impute": "median", "scale": "standard"},
        "Fare": {"scale": "robust"},
    }
    for alg in (
        "xgboost",
        "lightgbm",
        "random_forest",
        "logistic",
        "knn",
        "svm",
        "mlp",
        "ridge",
        "extra_trees",
        "gradient_boosting",
        "hist_gradient_boosting",
    ):
        hp = {"epochs": 20} if alg == "mlp" else {}
        r = train(
            sconn,
            f"titanic_{alg}",
            task="classification",
            relation=rel,
            target="Survived",
            algorithm=alg,
            preprocess=json.dumps(pre),
            hyperparams=json.dumps(hp),
            test_sampling="stratified",
        )
        m = r["metrics"]
        assert m["accuracy"] > 0.7, (alg, m)
        assert set(m) >= {"accuracy", "precision", "recall", "f1"}
        if alg in ("xgboost", "logistic", "random_forest"):
            assert m["roc_auc"] > 0.8
        if alg in ("xgboost", "logistic"):
            assert 0 < m["log_loss"] < 0.7
    p = sconn.execute("""select ml.predict('titanic_xgboost', '{"Pclass": 1, "Sex": "female", "Age": 30, "SibSp": 0,
                         "Parch": 0, "Fare": 80, "Embarked": "C"}'::jsonb),
                         ml.predict_proba('titanic_xgboost', '{"Pclass": 3, "Sex": "male", "Age": 30, "SibSp": 0,
                         "Parch": 0, "Fare": 8, "Embarked": "S"}'::jsonb)""").fetchone()
    assert p[0] == 1.0  # a first-class woman survives
    assert len(p[1]) == 2 and abs(sum(p[1]) - 1) < 1e-6 and p[1][0] > 0.7  # a third-class man most likely not


def test_multiclass_text_labels_and_clustering(housing):
    r = train(
        housing,
        "ocean_cls",
        task="classification",
        target="ocean_proximity",
        algorithm="xgboost",
        relation="select longitude, latitude, median_income, ocean_proximity from housing_small "
        "where ocean_proximity <> 'ISLAND'",
        hyperparams=json.dumps({"n_estimators": 40}),
        test_sampling="stratified",
    )
    assert r["metrics"]["accuracy"] > 0.7 and r["metrics"]["roc_auc"] > 0.85
    probs = housing.execute("select ml.predict_proba('ocean_cls', array[-122.23, 37.88, 8.3]::float8[])").fetchone()[0]
    assert len(probs) == 4 and abs(sum(probs) - 1) < 1e-6
    # text labels: predict returns the class index (labels listed in the model's output schema)
    classes = housing.execute(
        "select output_schema->'classes' from registry.model_versions where id = %s", [r["model_id"]]
    ).fetchone()[0]
    assert classes == ["<1H OCEAN", "INLAND", "NEAR BAY", "NEAR OCEAN"]
    label = housing.execute("select ml.predict('ocean_cls', array[-122.23, 37.88, 8.3]::float8[])").fetchone()[0]
    assert classes[int(label)] == "NEAR BAY"
    for alg in ("kmeans", "mini_batch_kmeans"):
        c = train(
            housing,
            f"geo_{alg}",
            task="clustering",
            algorithm=alg,
            hyperparams=json.dumps({"n_clusters": 4}),
            relation="select longitude, latitude from housing_small",
        )
        assert c["metrics"]["silhouette"] > 0.3 and c["metrics"]["clusters"] == 4
        lab = housing.execute(f"select ml.predict('geo_{alg}', array[-122.2, 37.8]::float8[])").fetchone()[0]
        assert lab in (0, 1, 2, 3)


def test_vector_and_array_features(housing):
    housing.execute(
        "create table if not exists vec_train as select ('[' || longitude || ',' || latitude || ']')::vector(2) as loc, "
        "array[median_income, housing_median_age] as arr, median_house_value from housing_small"
    )
    r = train(
        housing,
        "house_vec",
        task="regression",
        relation="vec_train",
        target="median_house_value",
        hyperparams=json.dumps({"n_estimators": 40}),
    )
    assert r["metrics"]["r2"] > 0.55
    a = housing.execute("select ml.predict('house_vec', v) from vec_train v limit 1").fetchone()[0]
    b = housing.execute(
        """select ml.predict('house_vec', '{"loc": "[-122.23,37.88]", "arr": [8.3252, 41]}'::jsonb)"""
    ).fetchone()[0]
    assert math.isfinite(a) and math.isfinite(b)
    imp = dict(housing.execute("select feature, importance from ml.feature_importance('house_vec')").fetchall())
    assert set(imp) == {"loc", "arr"} and abs(sum(imp.values()) - 1) < 1e-6


def test_search_records_every_trial(housing):
    r = train(
        housing,
        "house_search",
        task="regression",
        relation="housing_feats",
        target="median_house_value",
        preprocess=PRE,
        search="grid",
        search_params=json.dumps({"max_depth": [2, 6], "n_estimators": [20, 40], "cv": 2}),
    )
    run_id = housing.execute("select run_id from registry.model_versions where id = %s", [r["model_id"]]).fetchone()[0]
    trials = housing.execute(
        "select params, score from registry.training_trials where run_id = %s order by trial", [run_id]
    ).fetchall()
    assert len(trials) == 4 and all(t[1] is not None for t in trials)
    best = max(trials, key=lambda t: t[1])[0]
    hp = housing.execute("select hyperparams from registry.model_versions where id = %s", [r["model_id"]]).fetchone()[0]
    assert hp["max_depth"] == best["max_depth"] and hp["n_estimators"] == best["n_estimators"]
    rnd = train(
        housing,
        "house_search",
        search="random",
        algorithm="random_forest",
        preprocess=PRE,
        search_params=json.dumps({"max_depth": [4, 8, 12], "n_estimators": [10, 20], "n_iter": 3, "cv": 2}),
    )
    run2 = housing.execute("select run_id from registry.model_versions where id = %s", [rnd["model_id"]]).fetchone()[0]
    assert housing.execute("select count(*) from registry.training_trials where run_id = %s", [run2]).fetchone()[0] == 3


def test_retrain_without_relation_and_materialized_snapshot(housing):
    first = train(
        housing,
        "house_re",
        task="regression",
        relation="housing_feats",
        target="median_house_value",
        preprocess=PRE,
        hyperparams=json.dumps({"n_estimators": 20}),
        materialize=True,
    )
    second = train(housing, "house_re", preprocess=PRE, hyperparams=json.dumps({"n_estimators": 20}))
    assert second["model_id"] > first["model_id"]
    vers = housing.execute("select version from ml.models where project = 'house_re' order by version").fetchall()
    assert [v[0] for v in vers] == [1, 2]
    mat = housing.execute(
        "select d.materialized::text, d.row_count from registry.model_versions v join registry.run_inputs ri "
        "on ri.run_id = v.run_id join registry.datasets d on d.id = ri.dataset_id where v.id = %s",
        [first["model_id"]],
    ).fetchone()
    assert mat[0].startswith("registry.snapshot_")
    assert housing.execute(f"select count(*) from {mat[0]}").fetchone()[0] == mat[1] == 2064


def test_evaluate_on_other_data(housing):
    train(
        housing,
        "house_eval",
        task="regression",
        relation="housing_feats",
        target="median_house_value",
        preprocess=PRE,
        hyperparams=json.dumps({"n_estimators": 50}),
    )
    cur = housing.execute(
        "select * from ml.evaluate('house_eval', 'select * from housing where total_bedrooms is not null limit 1000')"
    )
    assert [d.name for d in cur.description] == ["model_id", "rows", "metrics"]
    model_id, rows, m = cur.fetchone()
    assert rows == 1000 and m["r2"] > 0.5 and m["rmse"] > 0 and set(m) == {"r2", "rmse", "mae"}
    assert model_id == housing.execute("select model_id from ml.models where project = 'house_eval'").fetchone()[0]


# ---- bad input ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw,exc,pattern",
    [
        (
            dict(task="regression", relation="housing_feats", target="nope"),
            psycopg.errors.UndefinedColumn,
            'target column "nope" does not exist',
        ),
        (
            dict(
                task="regression",
                relation="housing_feats",
                target="median_house_value",
                preprocess=json.dumps({"total_bedrooms": {"impute": "median"}}),
            ),
            psycopg.errors.InvalidParameterValue,
            'text column "ocean_proximity" needs an encoding',
        ),
        (
            dict(
                task="regression",
                relation="housing_feats",
                target="median_house_value",
                preprocess=json.dumps({"ocean_proximity": {"encode": "one_hot"}}),
            ),
            psycopg.errors.NullValueNotAllowed,
            'column "total_bedrooms" has \\d+ NULL',
        ),
        (
            dict(
                task="regression",
                relation="select median_income, null::float8 as empty, median_house_value from housing_small",
                target="median_house_value",
            ),
            psycopg.errors.NullValueNotAllowed,
            'column "empty" is NULL in every row',
        ),
        (
            dict(
                task="regression",
                relation="select case when median_income > 8 then 'NaN'::float8 else median_income end as mi, "
                "median_house_value from housing_small",
                target="median_house_value",
            ),
            psycopg.errors.DataException,
            'column "mi" holds nan',
        ),
        (
            dict(task="classification", relation="select median_income, 1 as label from housing_small", target="label"),
            psycopg.errors.InvalidParameterValue,
            "at least two classes",
        ),
        (
            dict(
                task="regression",
                relation="housing_feats",
                target="median_house_value",
                preprocess=PRE,
                hyperparams=json.dumps({"max_depth": "deep"}),
            ),
            psycopg.errors.InvalidParameterValue,
            'hyperparameter "max_depth" of xgboost must be int',
        ),
        (
            dict(
                task="regression",
                relation="housing_feats",
                target="median_house_value",
                preprocess=PRE,
                algorithm="random_forest",
                hyperparams=json.dumps({"n_trees": 5}),
            ),
            psycopg.errors.InvalidParameterValue,
            'unknown hyperparameter "n_trees"',
        ),
        (
            dict(task="regression", relation="housing_feats", target="median_house_value", algorithm="catboost"),
            psycopg.errors.InvalidParameterValue,
            "valid algorithms for regression: xgboost, lightgbm",
        ),
        (
            dict(task="regression", relation="no_such_table", target="y"),
            psycopg.errors.UndefinedTable,
            'relation "no_such_table" is not a table or view',
        ),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(housing, kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        train(housing, "house_bad", **kw)
    # nothing half-written: no project, no run, no model
    assert (
        housing.execute("select count(*) from registry.registered_models where name = 'house_bad'").fetchone()[0] == 0
    )
    assert housing.execute("select count(*) from registry.experiments where name = 'house_bad'").fetchone()[0] == 0


def test_values_beyond_float32_are_clear_errors_or_train_where_the_algorithm_allows(housing):
    """xgboost, lightgbm and the torch mlp compute in float32 (up to 3.4e38). A target or a feature of 6e200
    ended in xgboost's "Label contains NaN, infinity or a value too large" with a C++ stack trace and the hint
    "a bug in indb"; a prediction of 1e300 was answered as if the value were missing. Both are 22003 with what to
    do now. The mlp standardized its inputs in float32, so features of ~1e20 (squares above float32) failed
    with "Out of range float values are not JSON compliant"; it now trains on them, and a diverging mlp says so."""
    c = housing
    c.execute(
        "create table f32 as select (g % 7) * 1e200::float8 + g as big, (g % 7)::float8 as small, "
        "(g % 7) * 1e20::float8 as wide from generate_series(1, 200) g"
    )
    for algorithm, relation, what in (
        ("xgboost", "select big as y, small as x from f32", "the target"),
        ("lightgbm", "select small as y, big as x from f32", "a feature"),
    ):
        with pytest.raises(psycopg.errors.NumericValueOutOfRange) as e:
            train(c, f"f32_{algorithm}", task="regression", relation=relation, target="y", algorithm=algorithm)
        assert f"{algorithm} computes in float32" in str(e.value) and what in str(e.value), str(e.value)
        assert "scale that column" in e.value.diag.message_hint

    def mlp_on_wide_features(project: str, **hyperparams):
        return train(
            c,
            project,
            task="regression",
            relation="select small as y, wide as x from f32",
            target="y",
            algorithm="mlp",
            hyperparams=json.dumps({"epochs": 5, **hyperparams}),
        )

    r = mlp_on_wide_features("f32_mlp")
    assert r["algorithm"] == "mlp" and r["deployed"]
    with pytest.raises(psycopg.errors.DataException, match="mlp training diverged") as e:
        mlp_on_wide_features("f32_mlp_diverges", learning_rate=1e30)
    assert "lower learning_rate" in e.value.diag.message_hint
    train(c, "f32_xgb", task="regression", relation="select small as y, small as x from f32", target="y")
    with pytest.raises(psycopg.errors.NumericValueOutOfRange, match="computes in float32"):
        c.execute("""select ml.predict('f32_xgb', '{"x": 1e300}'::jsonb)""")
    with pytest.raises(psycopg.errors.NumericValueOutOfRange, match="computes in float32"):
        c.execute("select count(*) from ml.predict_batch('f32_xgb', 'select 1e300::float8 as x')")
    assert c.execute("""select ml.predict('f32_xgb', '{"x": 3}'::jsonb)""").fetchone()[0] == pytest.approx(3, abs=0.1)
    # float64 algorithms: a column of 1e300 overflows the fit's arithmetic (squares): a clear 22003, not "not JSON
    # compliant" with the hint "a bug in indb"
    with pytest.raises(psycopg.errors.NumericValueOutOfRange, match="too large to compute with") as e:
        train(
            c,
            "f32_linear",
            task="regression",
            relation="select small as y, case when small = 3 then 1e300 else small end as x from f32",
            target="y",
            algorithm="linear",
        )
    assert "scale the large columns" in e.value.diag.message_hint
    # values a float64 model takes but the deployed xgboost model cannot (1e100): the new model is kept, not
    # deployed, and the training does not fail on scoring the old one
    deployed, status = c.execute(
        "select deployed, status from ml.train('f32_xgb', algorithm => 'linear', "
        "relation => 'select small as y, case when small = 3 then 1e100 else small end as x from f32')"
    ).fetchone()
    assert not deployed and "cannot take their values" in status, status


def test_relation_names_resolve_with_the_callers_search_path(db_dsn, housing):
    housing.execute("create schema if not exists sales")
    housing.execute(
        "create table if not exists sales.houses as select median_income, housing_median_age, "
        "median_house_value from housing_small"
    )
    with psycopg.connect(db_dsn, autocommit=True) as c:
        c.execute("set search_path = sales, public")
        r = train(
            c,
            "house_schema",
            task="regression",
            relation="houses",
            target="median_house_value",
            hyperparams=json.dumps({"n_estimators": 10}),
        )
        assert r["metrics"]["r2"] > 0.3
        n = c.execute("select count(*) from ml.predict_batch('house_schema', 'select * from houses')").fetchone()[0]
        assert n == 2064
    with pytest.raises(psycopg.errors.UndefinedTable, match='relation "houses" is not a table or view'):
        housing.execute("select * from ml.evaluate('house_schema', 'houses')")  # not on this session's search_path


# ---- progress: another session sees every long call in ml.progress ----------------------------------------
def watch(db_dsn, conn, sql, params=None, setup=()) -> list[tuple]:
    """Run ``sql`` on its own connection while ``conn`` (another session) polls ml.progress for that backend;
    returns the distinct (command, target, phase, done, total, unit) rows seen, in order."""
    import threading
    import time

    worker = psycopg.connect(db_dsn, autocommit=True)
    try:
        for s in setup:
            worker.execute(s)
        pid = worker.info.backend_pid
        failure: list[BaseException] = []

        def go() -> None:
            try:
                worker.execute(sql, params)
            except BaseException as e:  # re-raised in the test thread
                failure.append(e)

        t = threading.Thread(target=go)
        t.start()
        seen: list[tuple] = []
        while t.is_alive():
            for r in conn.execute(
                "select command, target, phase, done, total, unit from ml.progress where pid = %s", [pid]
            ).fetchall():
                if not seen or seen[-1] != r:
                    seen.append(r)
            time.sleep(0.03)
        t.join()
        if failure:
            raise failure[0]
        assert conn.execute("select count(*) from ml.progress where pid = %s", [pid]).fetchone()[0] == 0
        return seen
    finally:
        worker.close()


@pytest.fixture(scope="module")
def housing_x3(housing):
    """61,920 rows: long enough for ml.progress to show rows done of all."""
    housing.execute("create table if not exists public.housing_x3 as select h.* from housing h, generate_series(1, 3)")
    return housing


def test_train_reports_reading_search_trials_and_fitting_in_ml_progress(housing_x3, db_dsn, conn):
    seen = watch(
        db_dsn,
        conn,
        "select * from ml.train('progress_train', task => 'regression', relation => 'housing_x3', "
        "target => 'median_house_value', preprocess => %s, search => 'grid', "
        'search_params => \'{"max_depth": [2, 3, 4], "n_estimators": [30], "cv": 2}\')',
        [PRE],
    )
    assert seen and all(r[:2] == ("ml.train", "progress_train") for r in seen)
    phases = [r[2] for r in seen]
    assert "reading" in phases and "fitting" in phases
    search = [r for r in seen if r[2].startswith("searching")]
    assert search and all(r[4] == 3 and r[5] == "trials" for r in search)  # trial i of n
    assert [r[3] for r in search] == sorted(r[3] for r in search)
    fitting = [r for r in seen if r[2] == "fitting"]
    assert all(r[4] == 30 and r[5] == "iterations" for r in fitting)
    order = [
        "starting",
        "reading",
        "preparing",
        "searching",
        "fitting",
        "explaining",
        "saving",
        "deciding the deployment",
    ]
    assert all(any(ph.startswith(p) for p in order) for ph in phases), phases
    ranks = [next(i for i, p in enumerate(order) if ph.startswith(p)) for ph in phases]
    assert ranks == sorted(ranks)  # phases move forward


def test_predict_batch_reports_rows_done_of_all_in_ml_progress(housing_x3, db_dsn, conn):
    train(
        housing_x3,
        "progress_batch",
        task="regression",
        relation="housing_feats",
        target="median_house_value",
        preprocess=PRE,
        hyperparams=json.dumps({"n_estimators": 20}),
    )
    seen = watch(
        db_dsn,
        conn,
        "select count(*) from ml.predict_batch('progress_batch', 'housing_x3')",
        setup=["set indb.predict_batch_chunk = 50"],
    )
    # the entry opens as "starting" (another session may catch it there) and moves to "predicting" at once
    assert seen and all(r[:2] == ("ml.predict_batch", "progress_batch") for r in seen)
    phases = [r[2] for r in seen]
    assert "predicting" in phases and set(phases) <= {"starting", "predicting"}, phases
    assert phases == sorted(phases, key=lambda ph: ph == "predicting")  # never back to "starting"
    counted = [r for r in seen if r[4] is not None]
    # the total is known from the first chunk on (the table's rows are counted first), and done only grows (the
    # call is too short here for the throttled updates of done, one every progress.EVERY_S, to be sure to come)
    assert counted and all(r[4] == 61920 and 0 <= r[3] <= 61920 and r[5] == "rows" for r in counted)
    assert [r[3] for r in counted] == sorted(r[3] for r in counted)


def test_evaluate_reports_in_ml_progress(housing_x3, db_dsn, conn):
    train(
        housing_x3,
        "progress_eval",
        task="regression",
        relation="housing_feats",
        target="median_house_value",
        preprocess=PRE,
        hyperparams=json.dumps({"n_estimators": 20}),
    )
    seen = watch(db_dsn, conn, "select * from ml.evaluate('progress_eval', 'housing_x3')")
    assert seen and all(r[:2] == ("ml.evaluate", "progress_eval") for r in seen)
    # (the entry opens as "starting", which the watching session may catch before "reading")
    assert {r[2] for r in seen} <= {"starting", "reading", "scoring"} and "reading" in {r[2] for r in seen}
