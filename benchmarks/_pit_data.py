"""The seeded data of the scaled point-in-time benchmark (benchmarks/features_pit.py): three feature views of
different ttl (one with a composite key), entity rows over users and (user, item) pairs, late and out-of-order
offline rows. Same seed, same rows; scale 100 = 10,000,000 feature rows and 1,000,000 entity rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

T0 = pd.Timestamp("2024-01-01", tz="UTC")
SPAN_S = 365 * 86400

# name, keys, ttl (None: no ttl), share of the feature rows, features (name, type)
VIEWS = [
    ("u_stats", ["user_id"], "30 days", 0.5, [("u_clicks", "float8"), ("u_spend", "float8"), ("u_days", "int")]),
    ("ui_aff", ["user_id", "item_id"], "7 days", 0.3, [("ui_score", "float8"), ("ui_seen", "int")]),
    ("i_pop", ["item_id"], None, 0.2, [("i_pop", "float8"), ("i_rank", "int")]),
]
# the columns whose sums and non-null counts every side must agree on
CHECK = ["u_clicks", "u_spend", "u_days", "ui_score", "ui_seen", "i_pop", "i_rank"]
TTL_S = {"30 days": 30 * 86400, "7 days": 7 * 86400, None: None}


def _late_delays(rng: np.random.Generator, n: int) -> np.ndarray:
    """written_at - event_ts in seconds: most rows within a minute, 8% hours late, 2% days late (backfills)."""
    d = rng.integers(0, 60, n)
    u = rng.random(n)
    d = np.where(u < 0.10, rng.integers(3600, 12 * 3600, n), d)
    return np.where(u < 0.02, rng.integers(86400, 20 * 86400, n), d)


def generate(scale: int, seed: int = 16) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """(entity rows, {view: offline rows}). Offline rows come in random order (out of order by event time) with
    written_at after event_ts (late rows: up to 20 days). (keys, event_ts) is unique per view, as in the store."""
    rng = np.random.default_rng(seed)
    n_feat, n_ent = 100_000 * scale, 10_000 * scale
    n_users, n_items = 2_000 * scale, 500 * scale
    n_pairs = n_ent // 2
    pair_u = rng.integers(1, n_users + 1, n_pairs)
    pair_i = rng.integers(1, n_items + 1, n_pairs)
    item = np.char.add("i", np.arange(n_items + 1).astype(str))  # text keys: 'i1', 'i2', ...
    views = {}
    for name, keys, _ttl, share, feats in VIEWS:
        n = int(n_feat * share)
        cols: dict[str, np.ndarray] = {}
        if keys == ["user_id"]:
            cols["user_id"] = rng.integers(1, n_users + 1, n)
        elif keys == ["item_id"]:
            cols["item_id"] = item[rng.integers(1, n_items + 1, n)]
        else:
            p = rng.integers(0, n_pairs, n)
            cols["user_id"], cols["item_id"] = pair_u[p], item[pair_i[p]]
        secs = rng.integers(0, SPAN_S, n)
        cols["event_ts"] = secs
        cols["written_at"] = secs + _late_delays(rng, n)
        for f, typ in feats:
            cols[f] = rng.integers(0, 1000, n) if typ == "int" else rng.random(n) * 100
        df = pd.DataFrame(cols).drop_duplicates(subset=keys + ["event_ts"], ignore_index=True)
        for c in ("event_ts", "written_at"):
            df[c] = T0 + pd.to_timedelta(df[c], unit="s")
        for f, typ in feats:
            if typ == "int":
                df[f] = df[f].astype("int32")
        views[name] = df
    p = rng.integers(0, n_pairs, n_ent)
    ent = pd.DataFrame(
        {
            "row_id": np.arange(1, n_ent + 1, dtype=np.int64),
            "user_id": pair_u[p],
            "item_id": item[pair_i[p]],
            # up to 10 days before the first feature row and 20 days after the last one
            "event_timestamp": T0 + pd.to_timedelta(rng.integers(-10 * 86400, SPAN_S + 20 * 86400, n_ent), unit="s"),
            "label": rng.integers(0, 2, n_ent).astype("int32"),
        }
    )
    return ent, views
