"""Demo step: train a California-housing model in SQL, deploy it, predict, explain."""

from __future__ import annotations

from pathlib import Path

TITLE = "train, deploy, predict and explain a housing model inside PostgreSQL"

COLUMNS = (
    "longitude float8, latitude float8, housing_median_age float8, total_rooms float8, "
    "total_bedrooms float8, population float8, households float8, median_income float8, "
    "median_house_value float8, ocean_proximity text"
)
PREPROCESS = {"ocean_proximity": {"encode": "one_hot"}, "total_bedrooms": {"impute": "median"}}
DISTRICT = {
    "longitude": -122.23,
    "latitude": 37.88,
    "housing_median_age": 41,
    "total_rooms": 880,
    "total_bedrooms": None,
    "population": 322,
    "households": 126,
    "median_income": 8.3252,
    "ocean_proximity": "NEAR BAY",
}


def load(client, data: Path) -> int:
    """public.demo_housing from housing.csv (once; the demo is idempotent)."""
    conn = client.conn
    if not conn.execute("select to_regclass('public.demo_housing')").fetchone()[0]:
        conn.execute(f"create table public.demo_housing ({COLUMNS})")
        with conn.cursor().copy("copy public.demo_housing from stdin with (format csv, header true)") as cp:
            cp.write((data / "california_housing" / "housing.csv").read_bytes())
    return conn.execute("select count(*) from public.demo_housing").fetchone()[0]


def run(client, data: Path) -> None:
    n = load(client, data)
    print(f"public.demo_housing: {n:,} California block groups (1990 census)")
    print(
        "select * from ml.train('demo_housing', task => 'regression', relation => 'demo_housing',\n"
        "    target => 'median_house_value', algorithm => 'xgboost', test_size => 0.2,\n"
        '    preprocess => \'{"ocean_proximity": {"encode": "one_hot"}, "total_bedrooms": {"impute": "median"}}\');'
    )
    r = client.train(
        "demo_housing",
        task="regression",
        relation="demo_housing",
        target="median_house_value",
        algorithm="xgboost",
        test_size=0.2,
        preprocess=PREPROCESS,
        hyperparams={"n_estimators": 400, "max_depth": 7, "learning_rate": 0.08, "subsample": 0.8},
        progress=lambda line: print("  " + line),
    )
    m = r["metrics"]
    print(
        f"model {r['model_id']}: test RMSE {m['rmse']:,.0f}, MAE {m['mae']:,.0f}, r2 {m['r2']:.3f}, "
        f"deployed: {r['deployed']}"
    )
    d = client.deploy("demo_housing", "best_score")
    print(f"ml.deploy('demo_housing', 'best_score') -> model {d['model_id']} ({d['status']})")
    v = client.predict("demo_housing", DISTRICT)
    print(f"ml.predict('demo_housing', <a district near the bay, total_bedrooms NULL (imputed)>) = ${v:,.0f}")
    e = client.explain("demo_housing", DISTRICT)
    print(f"ml.explain: base ${e['base_value']:,.0f}, contributions:")
    for k, c in sorted(e["contributions"].items(), key=lambda kv: -abs(kv[1]))[:5]:
        print(f"  {k:<20} {c:+12,.0f}")
    print(f"  base + contributions = ${e['base_value'] + sum(e['contributions'].values()):,.0f}")
    imp = client.feature_importance("demo_housing", detail=True)
    print(
        f"ml.feature_importance: {imp[0]['kind']} on the test rows (agrees with ml.explain); "
        f"the model's own {imp[0]['model_kind']} in brackets:"
    )
    for r in imp[:4]:
        print(f"  {r['feature']:<20} {r['importance']:.3f}  ({r['model_importance']:.3f})")
    rows = client.call(
        "select p.prediction, h.median_house_value from ml.predict_batch('demo_housing', "
        "'select * from demo_housing limit 5') p join (select row_number() over () as rn, "
        "median_house_value from (select * from demo_housing limit 5) s) h on h.rn = p.row_number "
        "order by p.row_number"
    )
    print(
        "ml.predict_batch (first 5 rows): "
        + ", ".join(f"${r['prediction']:,.0f} (actual ${r['median_house_value']:,.0f})" for r in rows)
    )
    ov = client.call(
        "select project, algorithm, key_metric, round(score::numeric, 3) as score, rows "
        "from ml.projects_overview where project = 'demo_housing'"
    )
    print("ml.projects_overview:", ov[0])
