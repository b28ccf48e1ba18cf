"""Which device models run on: CUDA when torch sees one, else CPU."""

from __future__ import annotations

import os

# A model call on less text than this (characters, all texts of the call) runs on one torch thread on a CPU:
# splitting a few dozen tokens over several threads costs more in synchronisation than it saves. Measured here
# (MiniLM, OpenMP threads PASSIVE as everywhere in indb, one process, medians): one 85-character sentence
# 11.5-14.5 ms on 1 thread, 16.3-18.5 ms on 2 (and 40-70% more CPU); two sentences (170) 16-21 ms against
# 20-22 ms; three (255) 21-26 against 21-22; 300 characters 24-27 against 24-26; a 1,900-character abstract
# 85 against 64 ms. Used by the in-backend path (embedding.encode) and the runtime service (service.Batcher).
SMALL_CALL_CHARS = 256


def is_small_call(texts) -> bool:
    """True when a model call on ``texts`` is best made on one CPU thread (SMALL_CALL_CHARS)."""
    return sum(len(t) for t in texts) < SMALL_CALL_CHARS


def set_torch_threads(n: int) -> int:
    """Set torch's intra-op threads to ``n`` (nothing when it has that many); returns the number before."""
    import torch

    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    return before


def torch_device() -> str:
    forced = os.environ.get("INDB_DEVICE")
    if forced:
        return forced
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def describe() -> dict:
    import torch

    dev = torch_device()
    out = {"device": dev, "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if dev.startswith("cuda"):
        out["cuda_device"] = torch.cuda.get_device_name(0)
    return out
