"""Which device models run on: CUDA when torch sees one, else CPU."""

from __future__ import annotations

import os


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
