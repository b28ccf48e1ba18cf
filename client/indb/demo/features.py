"""Demo step: a feature store on MovieLens - rolling user and movie features, a point-in-time training set,
a model trained on it with ml.train (when the training area is installed), and online serving."""

from __future__ import annotations

import json
import time
from pathlib import Path

TITLE = "feature store: MovieLens rolling features, a point-in-time training set, a model, online serving"

# statistics of the ratings strictly before each rating: a RANGE frame ending one second before it (ratings of
# the same second, which MovieLens has many of, are not "before" each other; a ROWS frame would count them)
ROLLING = (
    "select {key}, ts, count(*) over w as n_prior, avg(rating) over w as avg_prior, "
    "stddev_samp(rating) over w as std_prior, lag(rating) over (partition by {key} order by ts) as last_rating "
    "from public.demo_ml_ratings "
    "window w as (partition by {key} order by ts range between unbounded preceding and '1 second' preceding)"
)
TRAIN_SIGNATURE = "ml.train(text,text,text,text,text,jsonb,double precision,text,jsonb,text,jsonb,boolean,boolean)"


def load(client, data: Path) -> int:
    conn = client.conn
    if not conn.execute("select to_regclass('public.demo_ml_ratings')").fetchone()[0]:
        conn.execute("create table public.demo_ml_ratings (user_id int, movie_id int, rating float8, epoch bigint)")
        with conn.cursor().copy("copy public.demo_ml_ratings from stdin with (format csv, header true)") as cp:
            cp.write((data / "movielens_small" / "ratings.csv").read_bytes())
        conn.execute("alter table public.demo_ml_ratings add column ts timestamptz")
        conn.execute("update public.demo_ml_ratings set ts = to_timestamp(epoch)")
        conn.execute("analyze public.demo_ml_ratings")
    return conn.execute("select count(*) from public.demo_ml_ratings").fetchone()[0]


def run(client, data: Path) -> None:
    fs = client.features
    n = load(client, data)
    print(f"public.demo_ml_ratings: {n:,} MovieLens ratings (1996-2018)")
    fs.create_entity("ml_user", ["user_id"], "a MovieLens user")
    fs.create_entity("ml_movie", ["movie_id"], "a MovieLens movie")
    for view, ent, key, p in (
        ("ml_user_rolling", "ml_user", "user_id", "u"),
        ("ml_movie_rolling", "ml_movie", "movie_id", "m"),
    ):
        feats = [
            {"name": f"{p}_n_prior", "type": "float8", "expr": "n_prior", "expect": {"min": 0}},
            {"name": f"{p}_avg_prior", "type": "float8", "expr": "avg_prior", "expect": {"min": 0.5, "max": 5}},
            {"name": f"{p}_std_prior", "type": "float8", "expr": "std_prior"},
            {"name": f"{p}_last_rating", "type": "float8", "expr": "last_rating"},
        ]
        ref = fs.create_feature_view(
            view,
            ent,
            ROLLING.format(key=key),
            "ts",
            feats,
            description=f"rolling {ent} statistics from strictly earlier ratings",
        )
        t0 = time.time()
        r = fs.materialize(view, "1990-01-01", "2030-01-01", progress=True)  # a bar from ml.progress on a terminal
        print(
            f"features.materialize('{ref}'): {r['rows_written']:,} offline rows, "
            f"{r['online_updated']:,} entities online, "
            f"{r['rows_quarantined']} quarantined, {time.time() - t0:.1f} s"
        )
    st = client.call(
        "select feature, stats->>'mean' as mean, stats->'quantiles'->>'p50' as p50, stats->>'nulls' as nulls "
        "from features.statistics s join features.feature_views v on v.id = s.view_id "
        "where v.name = 'ml_user_rolling' and s.run_id = (select max(run_id) from features.statistics x "
        "where x.view_id = v.id) order by feature"
    )
    print(
        "statistics of the last run:",
        ", ".join(
            f"{r['feature']} mean {float(r['mean']):.2f} p50 {float(r['p50']):.2f} nulls {r['nulls']}" for r in st
        ),
    )

    # point-in-time training set: each rating with the features as they were just before it
    name = "demo_ml_train"
    feats = ["ml_user_rolling:*", "ml_movie_rolling:*"]
    from ..errors import NotFound

    try:
        info = fs.training_set(name)
    except NotFound:
        t0 = time.time()
        info = fs.create_training_set(
            name,
            "select user_id, movie_id, ts as event_timestamp, rating as label from public.demo_ml_ratings",
            feats,
            label="label",
        )
        print(
            f"features.create_training_set('{name}'): {info['rows']:,} rows in {time.time() - t0:.1f} s "
            f"-> {info['relation']} (registry.datasets id {info['dataset_id']}, lineage from {info['feature_views']})"
        )
    else:
        print(f"training set {name} exists: {info['rows']:,} rows in {info['relation']}")
    df = fs.get_historical(
        "select user_id, movie_id, ts as event_timestamp from public.demo_ml_ratings "
        "where user_id = 1 order by ts limit 3",
        feats,
    )
    print("client.features.get_historical (user 1's first ratings, features as of each rating's time):")
    print(
        df[
            ["user_id", "movie_id", "event_timestamp", "u_n_prior", "u_avg_prior", "m_n_prior", "m_avg_prior"]
        ].to_string(index=False)
    )

    # train on it, when ml.train (issue 5) is installed
    has_train = client.scalar("select to_regprocedure(%s) is not null", [TRAIN_SIGNATURE])
    project = "demo_movielens_rating"
    if has_train:
        cols = "u_n_prior, u_avg_prior, u_std_prior, u_last_rating, m_n_prior, m_avg_prior, m_std_prior, m_last_rating"
        r = client.call(
            "select * from ml.train(%s, task => 'regression', relation => %s, target => 'label', "
            "algorithm => 'xgboost', hyperparams => %s::jsonb, preprocess => %s::jsonb)",
            [
                project,
                f"select {cols}, label from {info['relation']}",
                json.dumps({"n_estimators": 200, "max_depth": 6, "learning_rate": 0.1}),
                json.dumps({c.strip(): {"impute": "median"} for c in cols.split(",")}),
            ],
        )[0]
        m = r["metrics"]
        base = client.scalar(
            f"select sqrt(avg((label - (select avg(label) from {info['relation']}))^2)) from {info['relation']}"
        )
        print(
            f"ml.train('{project}', relation => <training set>): model {r['model_id']}, test RMSE "
            f"{m.get('rmse', float('nan')):.3f} (predicting the mean: {base:.3f}), deployed: {r['deployed']}"
        )
    else:
        print(
            "ml.train is not installed in this database (to_regprocedure found no "
            + TRAIN_SIGNATURE
            + "): skipping training"
        )

    # online serving: the latest features of a user and a movie, with their status and event time
    online = fs.get_online(
        ["ml_user_rolling:u_n_prior", "ml_user_rolling:u_avg_prior", "ml_user_rolling:u_last_rating"], {"user_id": 414}
    )
    print("client.features.get_online(user 414):", json.dumps(online))
    t0 = time.perf_counter()
    for _ in range(200):
        both = fs.get_online(["ml_user_rolling:*", "ml_movie_rolling:*"], {"user_id": 414, "movie_id": 356})
    print(
        f"200 x get_online(user 414 + movie 356, 8 features): {(time.perf_counter() - t0) / 200 * 1000:.2f} ms "
        "per call from Python"
    )
    if has_train and client.scalar("select to_regprocedure('ml.predict(text,jsonb)') is not null"):
        row = {k: v for k, v in both.items() if not k.startswith("_") and k not in ("user_id", "movie_id")}
        pred = client.scalar("select ml.predict(%s, %s::jsonb)", [project, json.dumps(row)])
        print(f"ml.predict('{project}', <online features of user 414 and movie 356>) = {pred:.2f} stars")
    skew = fs.check_skew("ml_user_rolling", 50)
    print(f"features.check_skew('ml_user_rolling', 50): {skew['mismatches']} mismatches of {skew['sampled']} sampled")
    fresh = client.call(
        "select view, entities, last_event_ts, last_status from features.freshness where name like 'ml_%' order by view"
    )
    for f in fresh:
        print(
            f"features.freshness: {f['view']}: {f['entities']:,} entities, last event {f['last_event_ts']}, "
            f"last run {f['last_status']}"
        )
    try:
        job = client.scalar("select features.schedule('ml_user_rolling', '*/30 * * * *')")
        client.scalar("select cron.unschedule(%s)", [job])
        print(
            f"features.schedule('ml_user_rolling', '*/30 * * * *') -> pg_cron job {job} (unscheduled again by the demo)"
        )
    except Exception as e:  # pg_cron lives only in the database named by cron.database_name
        print(f"features.schedule: {str(e).splitlines()[0]}")
