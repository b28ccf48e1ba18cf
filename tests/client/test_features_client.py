"""client.features end to end: DataFrame in, DataFrame out; online dicts; a torch Dataset over a training set."""

from __future__ import annotations

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def fs(client):
    c = client
    c.call("create table cl_events (user_id bigint, ts timestamptz, score float8, tier text)")
    c.call("""insert into cl_events values
              (1, '2024-05-01 00:00+00', 1.5, 'gold'), (1, '2024-05-03 00:00+00', 2.5, 'gold'),
              (2, '2024-05-02 00:00+00', 7.0, 'free')""")
    fs = c.features
    fs.create_entity("cl_user", ["user_id"])
    assert (
        fs.create_feature_view(
            "cl_stats",
            "cl_user",
            "cl_events",
            "ts",
            [{"name": "score"}, {"name": "tier"}, {"name": "score_sq", "type": "float8", "expr": "score * score"}],
        )
        == "cl_stats@1"
    )
    r = fs.materialize("cl_stats", "2024-04-01", "2024-06-01")
    assert r["rows_written"] == 3
    return fs


def test_get_historical_from_a_dataframe(fs):
    entity_df = pd.DataFrame(
        {
            "user_id": [1, 1, 2, 3],
            "event_timestamp": pd.to_datetime(["2024-05-02", "2024-05-04", "2024-05-01", "2024-05-04"], utc=True),
            "label": [0, 1, 0, 1],
        }
    )
    df = fs.get_historical(entity_df, ["cl_stats:score", "cl_stats:tier"])
    assert list(df.columns) == ["user_id", "event_timestamp", "label", "score", "tier"]
    assert df["score"].tolist()[:3] == [1.5, 2.5, None] or df["score"].isna().tolist() == [False, False, True, True]
    assert df.loc[0, "score"] == 1.5 and df.loc[1, "score"] == 2.5 and df.loc[1, "tier"] == "gold"
    assert pd.isna(df.loc[2, "score"]) and pd.isna(df.loc[3, "score"])


def test_get_historical_from_sql(fs):
    df = fs.get_historical("select 2::bigint as user_id, '2024-05-05'::timestamptz as event_timestamp", ["cl_stats:*"])
    assert df.iloc[0][["score", "tier", "score_sq"]].tolist() == [7.0, "free", 49.0]


def test_get_online_returns_a_dict(fs):
    r = fs.get_online(["cl_stats:score", "cl_stats:tier"], {"user_id": 1})
    assert r["score"] == 2.5 and r["tier"] == "gold" and r["_status"] == {"score": "present", "tier": "present"}
    rows = fs.get_online_batch(["cl_stats:score"], [{"user_id": 2}, {"user_id": 5}])
    assert [x["score"] for x in rows] == [7.0, None]
    # one reference as a text is a list of one (not split into characters)
    assert fs.get_online("cl_stats:score", {"user_id": 1})["score"] == 2.5


def test_bad_feature_name_is_a_not_found_error(fs):
    from indb.errors import NotFound

    with pytest.raises(NotFound) as ei:
        fs.get_online(["cl_stats:nope"], {"user_id": 1})
    assert "no feature" in str(ei.value)


def test_torch_dataset_over_a_training_set(fs):
    import torch
    from torch.utils.data import DataLoader, Dataset

    entity = pd.DataFrame(
        {
            "user_id": [1, 2, 1],
            "event_timestamp": pd.to_datetime(["2024-05-01", "2024-05-02", "2024-05-03"], utc=True),
            "y": [0.5, 1.0, 1.5],
        }
    )
    info = fs.create_training_set(
        "cl_train", entity, ["cl_stats:score", "cl_stats:score_sq", "cl_stats:tier"], label="y"
    )
    assert info["rows"] == 3
    ds = fs.dataset("cl_train")
    assert isinstance(ds, Dataset) and len(ds) == 3 and ds.feature_names == ["score", "score_sq"]
    x, y = ds[2]
    assert x.dtype == torch.float32 and x.tolist() == [2.5, 6.25] and y.item() == 1.5
    xb, yb = next(iter(DataLoader(ds, batch_size=3)))
    assert xb.shape == (3, 2) and yb.tolist() == [0.5, 1.0, 1.5]
    info = fs.training_set("cl_train")
    assert info["label_column"] == "y" and info["feature_columns"] == ["score", "score_sq", "tier"]


def test_typed_results_come_back_as_dicts_of_their_columns(fs):
    r = fs.push(
        "cl_stats", [{"user_id": 2, "ts": "2024-05-10T00:00:00Z", "score": 8.0, "tier": "free", "score_sq": 64}]
    )
    assert r["kind"] == "push" and r["feature_view"] == "cl_stats@1" and r["rows_written"] == 1
    assert r["online_updated"] == 1 and r["window_start"] is None
    inc = fs.materialize_incremental("cl_stats", statistics=False)
    assert inc["kind"] == "incremental" and inc["rows_read"] == 0 and str(inc["window_start"]).startswith("2024-06-01")
    d = fs.drift("cl_stats", "score", "[2024-05-01,2024-05-03)", "[2024-05-01,2024-05-11)")
    assert set(d) >= {"psi", "ks", "ks_pvalue", "drifted", "baseline_n", "current_n", "baseline_mean"}
    assert d["baseline_n"] == 2 and d["current_n"] == 4 and isinstance(d["drifted"], bool)
    s = fs.check_skew("cl_stats", 10)
    assert s["sampled"] == 2 and s["mismatches"] == 0 and s["not_in_source"] == 1 and s["examples"] == []


def test_an_unknown_training_set_is_not_found(fs):
    from indb.errors import NotFound

    with pytest.raises(NotFound) as ei:
        fs.training_set("cl_nosuch")
    assert "cl_nosuch" in str(ei.value) and ei.value.hint and "None" not in str(ei.value)


def test_cli_prints_tables_and_exits_non_zero_on_errors(fs, db_dsn, capsys, monkeypatch):
    from indb import cli

    monkeypatch.setenv("COLUMNS", "200")  # rich's width when stdout is not a terminal

    assert cli.main(["features", "materialize", "cl_stats", "2024-04-01", "2024-06-01", "--dsn", db_dsn]) == 0
    out = capsys.readouterr().out
    assert "rows_written" in out and "cl_stats@1" in out and "materialize" in out
    assert cli.main(["features", "freshness", "cl_stats", "--dsn", db_dsn]) == 0
    assert "cl_stats@1" in capsys.readouterr().out
    assert cli.main(["features", "skew", "cl_stats", "--sample", "5", "--dsn", db_dsn]) == 0
    assert "not_in_source" in capsys.readouterr().out
    args = ["features", "drift", "cl_stats", "score", "[2024-05-01,2024-05-03)", "[2024-05-01,2024-05-11)"]
    assert cli.main([*args, "--dsn", db_dsn]) == 0
    assert "drifted" in capsys.readouterr().out
    assert cli.main(["features", "materialize", "cl_nosuch", "2024-04-01", "2024-06-01", "--dsn", db_dsn]) == 1
    assert 'feature view "cl_nosuch" does not exist' in capsys.readouterr().err
    assert cli.main(["features", "freshness", "cl_nosuch", "--dsn", db_dsn]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["features", "incremental", "cl_stats", "--dsn", db_dsn]) == 0
    assert "incremental" in capsys.readouterr().out


def test_a_nan_in_pushed_rows_is_refused_by_name_and_none_is_a_missing_value(fs):
    import numpy as np

    from indb.errors import InvalidInput

    df = pd.DataFrame(
        {
            "user_id": [21, 22],
            "ts": pd.to_datetime(["2024-05-20", "2024-05-20"], utc=True),
            "score": [1.5, np.nan],
            "tier": ["gold", "free"],
            "score_sq": [2.25, np.nan],
        }
    )
    # pandas' missing float is NaN, which JSON cannot hold: named, and nothing is written (the first row neither)
    with pytest.raises(InvalidInput, match=r"rows\[1\]\['score'\] is nan") as e:
        fs.push("cl_stats", df.to_dict("records"))
    assert e.value.sqlstate == "22023" and "None" in (e.value.hint or "")
    assert fs.get_online(["cl_stats:score"], {"user_id": 21})["_status"] == {"score": "not_found"}
    # None is a missing value; the string 'NaN' stores a float NaN, served back as "NaN"
    r = fs.push("cl_stats", df.astype(object).where(df.notna(), None).to_dict("records"))
    assert r["rows_written"] == 2
    fs.push("cl_stats", [{"user_id": 23, "ts": "2024-05-20T00:00:00Z", "score": "NaN", "tier": "x", "score_sq": 1}])
    rows = fs.get_online_batch(["cl_stats:score"], [{"user_id": np.int64(k)} for k in (21, 22, 23)])
    assert [x["score"] for x in rows] == [1.5, None, "NaN"]
    assert [x["_status"]["score"] for x in rows] == ["present", "null_value", "present"]
