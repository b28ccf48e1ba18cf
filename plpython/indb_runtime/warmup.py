"""ml.warmup(): pay the first-use cost before the first real query.

With the shared runtime service (indb.runtime auto or shared, the service answering) the model is loaded once in
the service and nothing heavy is imported in this backend: warming up means one embedding through the service.
In this backend (indb.runtime = backend, or no service) it imports torch, xgboost and sentence-transformers and
loads the model (~5 s)."""

from __future__ import annotations

import time

from . import embedding


def warmup(plpy, model: str | None = embedding.DEFAULT_MODEL) -> dict:
    timings: dict[str, float | str | None] = {}
    t0 = time.time()
    if model and embedding.runtime_mode(plpy) != "backend":
        spec = embedding.resolve(plpy, model)
        embedding.embed_texts(plpy, spec, ["warm-up"])
        if embedding.last_ran_in() == "service":
            took = round(time.time() - t0, 3)
            return {
                "import_torch_s": 0.0,
                "import_xgboost_s": 0.0,
                "import_sentence_transformers_s": 0.0,
                "load_model_s": took,
                "model": model,
                "total_s": took,
            }
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
