"""What every editing task shares: the capability check, argument checks, eval mode."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from anyorder.models.registry import family_of
from anyorder.nn.orders import known_first
from anyorder.sampling.job import require

__all__ = ["require_capability", "known_first_orders"]

known_first_orders = known_first  # known positions first, a stable partition (anyorder.nn.orders.known_first)


# ---- helpers ------------------------------------------------------------------------------------------
def require_capability(model: Any, capability: str, what: str, random_orders: bool = True) -> None:
    """A clear :class:`ValueError` unless the model's family has ``capability`` (e.g. ``known_tokens``). With
    ``random_orders`` (the caller runs the model in random orders), warn when it was trained to end in a scan
    order."""
    require(model, capability, what)
    order = getattr(getattr(model, "config", None), "order", "random")
    if order != "random" and random_orders:
        warnings.warn(f"this {family_of(model).display_name} was configured to anneal into the {order!r} scan "
                      f"order; {what} runs it in random orders, which such a model may not have been trained on",
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


class _eval_mode:
    """Context manager: eval mode, restoring the previous training flag."""

    def __init__(self, model: Any) -> None:
        self.model, self.was = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was)
