"""Which device a command runs on."""

from __future__ import annotations

import os

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when present — ``cuda:LOCAL_RANK`` under torchrun (modulo the visible GPUs), ``cuda:0``
    otherwise — else the CPU. Anything else is taken as a ``torch.device`` spec (``"cpu"``, ``"cuda:1"``)."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")
