"""Reading the images a command wrote: the tiles of its PNG grid, and ids' decodings as a PNG stores them.

The CLI writes images, not ids; a test that knows candidate ids checks that their decoding *is* the PNG's
tile (every pixel within one grey level of float round-off), which pins the ids down (two id grids decoding
to the same pixels do not happen with a random-weight decoder).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def png_tiles(path, side: int, n: int, padding: int = 2, width: int | None = None) -> np.ndarray:
    """The first ``n`` tiles (``side`` pixels high, ``width`` wide, default square) of a one-row image grid
    PNG with ``padding`` pixels around each tile, as ``[n, side, width, 3]`` uint8."""
    width = side if width is None else width
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return np.stack([arr[padding : padding + side, padding + k * (width + padding) :][:, :width] for k in range(n)])


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[N, C, H, W]`` in [0, 1] as a PNG stores them: ``[N, H, W, 3]`` uint8, rounded half up."""
    arr = (images.detach().float().cpu().clamp(0, 1) * 255 + 0.5).floor().to(torch.uint8)
    return arr.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()


def max_level_diff(a: np.ndarray, b: np.ndarray) -> int:
    """The largest difference between two uint8 images, in grey levels."""
    return int(np.abs(a.astype(int) - b.astype(int)).max())
