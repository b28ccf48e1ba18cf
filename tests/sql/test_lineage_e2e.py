"""Lineage across areas: feature view version -> training set -> snapshot -> run -> model version ->
deployment, answered in both directions by registry.lineage()."""

from __future__ import annotations


def test_model_trained_on_a_training_set_traces_back_to_feature_views(conn):
    conn.execute("""
        create table lin_events (cust int, ts timestamptz, amount float8, churned int);
        insert into lin_events
        select i % 20, timestamptz '2024-01-01' + (i || ' hours')::interval, (i * 7 % 50)::float8, (i % 3 = 0)::int
        from generate_series(1, 400) i;
    """)
    conn.execute("select features.create_entity('lin_cust', array['cust'])")
    conn.execute("""select features.create_feature_view('lin_stats', 'lin_cust', 'select cust, ts, amount from lin_events',
                    'ts', '[{"name": "amount", "type": "float8"}]')""")
    conn.execute("select features.materialize('lin_stats', '2023-12-01', '2024-03-01')")
    ts = conn.execute("""select dataset_id from features.create_training_set('lin_train',
                         'select cust, ts + interval ''1 minute'' as event_timestamp, churned from lin_events',
                         array['lin_stats:amount'], 'churned')""").fetchone()[0]
    trained = conn.execute(
        "select model_id, deployed from ml.train('lin_proj', 'regression', 'select amount, churned from lin_train', "
        "'churned', 'linear')"
    ).fetchone()
    model_version = trained[0]
    up = conn.execute(
        "select src_kind, relation, dst_kind from registry.lineage('model_version', %s, 'up')", [str(model_version)]
    ).fetchall()
    kinds = {r[0] for r in up}
    assert {"feature_view_version", "training_set", "dataset", "run"} <= kinds, up
    down = conn.execute(
        "select dst_kind, dst_id from registry.lineage('training_set', %s, 'down')", [str(ts)]
    ).fetchall()
    assert ("model_version", str(model_version)) in down, down
