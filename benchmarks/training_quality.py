"""Quality: test RMSE on California housing (fixed 20% split, ocean_proximity one-hot, total_bedrooms
median-imputed, all in ml.train's preprocess) for xgboost, lightgbm, random_forest; accuracy and roc_auc on
Titanic. Reference: a tuned random forest reaches about 47,700 RMSE (Hands-On ML, 2nd ed.)."""

from __future__ import annotations

import time

from .training_common import PREPROCESS, connect, load_housing, load_titanic, save

HOUSING = {
    "xgboost": {"n_estimators": 600, "max_depth": 7, "learning_rate": 0.05, "subsample": 0.8, "colsample_bytree": 0.8},
    "lightgbm": {
        "n_estimators": 600,
        "num_leaves": 63,
        "learning_rate": 0.05,
        "subsample": 0.8,
        "subsample_freq": 1,
        "colsample_bytree": 0.8,
    },
    "random_forest": {"n_estimators": 150, "max_features": 0.5, "n_jobs": -1},
}
TITANIC = {
    "xgboost": {"n_estimators": 200, "max_depth": 4, "learning_rate": 0.05},
    "lightgbm": {"n_estimators": 200, "num_leaves": 15, "learning_rate": 0.05},
    "random_forest": {"n_estimators": 300, "max_depth": 7},
    "logistic": {},
}


def main() -> None:
    c = connect()
    n = load_housing(c.conn)
    housing = {}
    for alg, hp in HOUSING.items():
        t0 = time.time()
        r = c.train(
            f"bench_quality_{alg}",
            task="regression",
            relation="bench_housing",
            target="median_house_value",
            algorithm=alg,
            hyperparams=hp,
            preprocess=PREPROCESS,
            test_size=0.2,
            test_sampling="random",
        )
        m = r["metrics"]
        housing[alg] = {
            "rmse": round(m["rmse"], 1),
            "mae": round(m["mae"], 1),
            "r2": round(m["r2"], 4),
            "train_seconds": round(time.time() - t0, 2),
            "hyperparams": hp,
        }
        print(f"housing {alg:<14} RMSE {m['rmse']:>9,.0f}  MAE {m['mae']:>9,.0f}  r2 {m['r2']:.4f}")
    load_titanic(c.conn)
    rel = 'select "Pclass", "Sex", "Age", "SibSp", "Parch", "Fare", "Embarked", "Survived" from bench_titanic'
    pre = {
        "Sex": {"encode": "one_hot"},
        "Embarked": {"encode": "one_hot", "impute": "mode"},
        "Age": {"impute": "median", "scale": "standard"},
        "Fare": {"scale": "standard"},
    }
    titanic = {}
    for alg, hp in TITANIC.items():
        r = c.train(
            f"bench_titanic_{alg}",
            task="classification",
            relation=rel,
            target="Survived",
            algorithm=alg,
            hyperparams=hp,
            preprocess=pre,
            test_size=0.2,
            test_sampling="stratified",
        )
        m = r["metrics"]
        titanic[alg] = {k: round(m[k], 4) for k in ("accuracy", "roc_auc", "f1", "log_loss")}
        print(f"titanic {alg:<14} accuracy {m['accuracy']:.3f}  roc_auc {m['roc_auc']:.3f}")
    save(
        "quality",
        {
            "housing": {
                "rows": n,
                "split": "random 20% test (seed 42), same split for every algorithm",
                "reference_rmse_tuned_random_forest": 47700,
                "results": housing,
            },
            "titanic": {"rows": 891, "split": "stratified 20% test (seed 42)", "results": titanic},
        },
    )
    c.close()


if __name__ == "__main__":
    main()
