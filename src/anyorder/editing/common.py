"""What every editing task shares: the RandAR check, argument checks, the step plan and guidance."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anyorder.sampling.policy import RandARSampling, sampling_config

__all__ = ['require_randar', 'known_first_orders']


# ---- helpers ------------------------------------------------------------------------------------------
def require_randar(model: Any, what: str = "zero-shot editing", random_orders: bool = True) -> None:
    """Raise a clear :class:`ValueError` unless ``model`` is a RandAR generator. With ``random_orders``
    (the caller runs the model in random orders), warn when it was trained to end in a scan order."""
    family = getattr(model, "family", None)
    if family != "randar":
        raise ValueError(
            f"{what} needs a RandAR model, got family {family!r}: RAR generates its tokens in one fixed scan order, "
            "so it cannot condition on known tokens at arbitrary positions (use a RandAR model)"
        )
    order = getattr(getattr(model, "config", None), "order", "random")
    if order != "random" and random_orders:
        warnings.warn(f"this RandAR was configured to anneal into the {order!r} scan order; {what} runs it in "
                      "random orders, which such a model may not have been trained on",
                      stacklevel=_outside_stacklevel())


def _outside_stacklevel() -> int:
    """``stacklevel`` of the first frame outside this package and torch (decorators add frames)."""
    inside = (os.path.dirname(__file__), os.path.dirname(torch.__file__))
    frame, level = sys._getframe(2), 2  # 1: the caller of warnings.warn
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


def _pair(x: int | Sequence[int], name: str = "grid") -> tuple[int, int]:
    if isinstance(x, (int, np.integer)):
        h = w = int(x)
    else:
        vals = [int(v) for v in x]
        if len(vals) != 2:
            raise ValueError(f"{name} must be an int or (height, width), got {x!r}")
        h, w = vals
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive, got {(h, w)}")
    return h, w


def _generator(model: Any, seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    if generator is None and seed is not None:
        generator = torch.Generator(device=model.device).manual_seed(int(seed))
    return generator


def _classes(model: Any, classes: Any, batch: int) -> Tensor:
    c = model.check_classes(torch.as_tensor(classes, device=model.device), allow_null=True)
    if c.numel() == 1 and batch > 1:
        c = c.expand(batch).clone()
    if c.numel() != batch:
        raise ValueError(f"got {c.numel()} classes for {batch} images (pass one class, or one per image)")
    return c


def _codes(model: Any, codes: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
    codes = torch.as_tensor(codes, device=model.device)
    if codes.dim() == 2:
        codes = codes[None]
    if codes.dim() != 3:
        raise ValueError(f"codes must be [B, h, w], got shape {tuple(codes.shape)}")
    if grid is not None and tuple(codes.shape[1:]) != tuple(grid):
        raise ValueError(f"codes have grid {tuple(codes.shape[1:])}, the model's grid is {tuple(grid)}")
    if codes.is_floating_point() or codes.dtype == torch.bool:
        raise ValueError(f"codes must be integer token ids, got dtype {codes.dtype}")
    codes = codes.long()
    V = model.codebook_size
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= V):
        raise ValueError(f"token ids must be in [0, {V}), got [{int(codes.min())}, {int(codes.max())}]")
    return codes


def _policy(guidance_scale: float = 1.0, guidance_start: float = 1.0, temperature: float = 1.0, top_k: int = 0,
            top_p: float = 1.0, steps: int | None = None) -> RandARSampling:
    """The editing tasks' sampling settings, validated by RandAR's sampling policy (steps ``None``: one token
    per step; more steps than tokens to generate are clamped)."""
    return sampling_config("randar", {"guidance_scale": float(guidance_scale), "guidance_start": float(guidance_start),
                                      "temperature": float(temperature), "top_k": int(top_k), "top_p": float(top_p),
                                      "steps": int(steps or 0)}, source="editing")


class _eval_mode:
    """Context manager: eval mode, restoring the previous training flag."""

    def __init__(self, model: Any) -> None:
        self.model, self.was = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was)


def known_first_orders(orders: Tensor, unknown: Tensor) -> Tensor:
    """Reorder each row of ``orders`` so the known positions (``unknown`` False, raster-indexed
    ``[B, T]``) come first; the relative order inside each group is kept (a stable partition)."""
    flag = unknown.gather(1, orders).to(torch.int8)
    idx = torch.sort(flag, dim=1, stable=True).indices
    return orders.gather(1, idx)
