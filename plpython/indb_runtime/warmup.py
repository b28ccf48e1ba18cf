"""ml.warmup(): pay the first-use import and model-load cost (~5 s) before the first real query."""

from __future__ import annotations

import time

from . import embedding


def warmup(plpy, model: str | None = embedding.DEFAULT_MODEL) -> dict:
    timings: dict[str, float | str] = {}
    t0 = time.time()
    import numpy  # noqa: F401
    import torch  # noqa: F401

    timings["import_torch_s"] = round(time.time() - t0, 3)
    t = time.time()
    import xgboost  # noqa: F401

    timings["import_xgboost_s"] = round(time.time() - t, 3)
    t = time.time()
    import sentence_transformers  # noqa: F401

    timings["import_sentence_transformers_s"] = round(time.time() - t, 3)
    if model:
        t = time.time()
        spec = embedding.resolve(plpy, model)
        embedding.encode(spec, ["warm-up"])
        timings["load_model_s"] = round(time.time() - t, 3)
        timings["model"] = model
    timings["total_s"] = round(time.time() - t0, 3)
    return timings
