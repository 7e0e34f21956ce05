"""Which device a command runs on, and the TF32 setting it runs with."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

__all__ = ["resolve_device", "describe_device", "tf32_mode"]


def resolve_device(device: str | torch.device = "auto", what: str = "device") -> torch.device:
    """``"auto"``: CUDA when present — ``cuda:LOCAL_RANK`` under torchrun (modulo the visible GPUs), ``cuda:0``
    otherwise — else the CPU. Anything else is taken as a ``torch.device`` spec (``"cpu"``, ``"cuda:1"``).

    A CUDA device this machine does not have (no GPU, a torch built without CUDA, an index past the last GPU),
    or a spec that names no device, is a ``ValueError`` of one line naming ``what`` (the option: ``--device``,
    ``train.device``)."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{what} {device!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"{what} {device}: {why} (torch {torch.__version__}); use {what} cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{what} {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                             f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    return dev


def describe_device(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3, 79.1 GiB)`` or ``cpu (N threads)``: what a command says it runs on."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{device} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
    return f"{device} ({torch.get_num_threads()} threads)" if device.type == "cpu" else str(device)


@contextlib.contextmanager
def tf32_mode(enabled: bool, device: torch.device) -> Iterator[bool]:
    """TF32 for fp32 matmuls and convolutions on a CUDA ``device`` while the block runs (``enabled``), or full
    fp32 (not ``enabled``); the previous flags are restored after. Yields whether TF32 is in effect (never on
    a CPU, which has none). The official samplers turn it on (``allow_tf32 = True`` for both)."""
    if device.type != "cuda":
        yield False
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(enabled)
    try:
        yield bool(enabled)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
