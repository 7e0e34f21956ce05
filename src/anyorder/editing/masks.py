"""Token masks for editing: ``True`` where tokens are *regenerated*; pixel masks snapped to the token grid."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anyorder.editing.common import _pair
from anyorder.io.images import open_image

__all__ = ['SIDES', 'MASK_RULES', 'half_mask', 'box_mask', 'mask_from_image']

SIDES = ("left", "right", "top", "bottom")
MASK_RULES = ("any", "majority", "all")


# ---- masks --------------------------------------------------------------------------------------------
def half_mask(grid: int | Sequence[int], side: str = "left") -> Tensor:
    """Token mask ``[h, w]`` (``True`` = regenerate) covering one half of the grid.

    With an odd side length the half is rounded *up* (``ceil(n / 2)`` rows/columns), which is also
    what :func:`mask_from_image` with ``rule="any"`` gives for an exact half of the pixels.
    """
    h, w = _pair(grid)
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    m = torch.zeros(h, w, dtype=torch.bool)
    if side == "left":
        m[:, : math.ceil(w / 2)] = True
    elif side == "right":
        m[:, w - math.ceil(w / 2) :] = True
    elif side == "top":
        m[: math.ceil(h / 2)] = True
    else:
        m[h - math.ceil(h / 2) :] = True
    return m


def box_mask(grid: int | Sequence[int], top: int, left: int, height: int, width: int) -> Tensor:
    """Token mask ``[h, w]`` that is ``True`` (regenerate) inside the box; the box must lie in the grid."""
    h, w = _pair(grid)
    if height <= 0 or width <= 0 or top < 0 or left < 0 or top + height > h or left + width > w:
        raise ValueError(f"box top={top} left={left} height={height} width={width} does not fit the {h}x{w} grid")
    m = torch.zeros(h, w, dtype=torch.bool)
    m[top : top + height, left : left + width] = True
    return m


def _mask_array(mask: Any) -> Tensor:
    """Anything mask-like -> a tensor (PIL images and files are read as 8-bit grayscale)."""
    from PIL import Image

    if isinstance(mask, (str, os.PathLike)):
        try:
            mask = open_image(mask, "L")
        except ValueError as e:
            raise ValueError(f"mask: {e}") from e
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.array(mask, copy=True))
    if not isinstance(mask, Tensor):
        raise ValueError(f"mask must be an image, a file, a numpy array or a tensor, got {type(mask).__name__}")
    return mask


def mask_from_image(mask: Any, image_size: int | Sequence[int], grid: int | Sequence[int],
                    rule: str = "any") -> Tensor:
    """Snap a binary pixel mask to the token grid. ``True`` / white / 1 = regenerate.

    ``mask``: a PIL image or an image file (read as 8-bit grayscale), or an array / tensor
    ``[H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]`` with values in {0, 1} (bool allowed) or {0, 255}.
    ``rule`` decides when a token (a ``H/h x W/w`` pixel cell) is masked: ``"any"`` (default) if any
    of its pixels is — conservative: a token whose cell touches the masked region is regenerated, so
    no masked pixel survives — ``"majority"`` if more than half are, ``"all"`` if all are.

    Returns ``[h, w]`` (or ``[B, h, w]``) bool. Raises :class:`ValueError` naming the shape for a
    wrong size and the offending values for a non-binary mask.
    """
    if rule not in MASK_RULES:
        raise ValueError(f"mask rule must be one of {MASK_RULES}, got {rule!r}")
    H, W = _pair(image_size, "image_size")
    h, w = _pair(grid)
    if H % h or W % w:
        raise ValueError(f"image size {H}x{W} is not a multiple of the token grid {h}x{w}")
    m = _mask_array(mask)
    batched = True
    if m.dim() == 4 and m.shape[1] == 1:
        m = m[:, 0]
    elif m.dim() == 2:
        m, batched = m[None], False
    if m.dim() != 3 or tuple(m.shape[1:]) != (H, W):
        raise ValueError(f"mask has shape {tuple(_mask_array(mask).shape)}, expected {H}x{W} pixels "
                         f"([H, W], [B, H, W] or [B, 1, H, W]) to match the {H}x{W} image")
    if m.dtype != torch.bool:
        vals = torch.unique(m.float())
        if vals.numel() and set(vals.tolist()) <= {0.0, 1.0}:
            m = m != 0
        elif vals.numel() and set(vals.tolist()) <= {0.0, 255.0}:
            m = m != 0
        else:
            shown = ", ".join(f"{v:g}" for v in vals[:8].tolist()) + (" ..." if vals.numel() > 8 else "")
            raise ValueError(f"mask must be binary (0/1, or 0/255 for 8-bit images), found {vals.numel()} "
                             f"distinct values: {shown}")
    cells = m.reshape(m.shape[0], h, H // h, w, W // w)
    if rule == "any":
        out = cells.any(dim=4).any(dim=2)
    elif rule == "all":
        out = cells.all(dim=4).all(dim=2)
    else:
        out = cells.float().mean(dim=(2, 4)) > 0.5
    return out if batched else out[0]


def _token_mask(mask: Any, batch: int, grid: tuple[int, int], device: torch.device) -> Tensor:
    m = torch.as_tensor(mask, device=device)
    if m.dtype != torch.bool:
        if m.is_floating_point() or not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("token mask must be bool (or 0/1 integers); use mask_from_image for pixel masks")
        m = m.bool()
    if m.dim() == 2:
        m = m[None].expand(batch, -1, -1)
    if m.dim() != 3 or m.shape[0] != batch or tuple(m.shape[1:]) != grid:
        raise ValueError(f"token mask has shape {tuple(m.shape)}, expected [{grid[0]}, {grid[1]}] or "
                         f"[{batch}, {grid[0]}, {grid[1]}] for codes of shape [{batch}, {grid[0]}, {grid[1]}]")
    return m.reshape(batch, -1)
