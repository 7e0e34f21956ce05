"""Pictures for the web app: partial token grids decoded to pixels, the order heat-map, image grids.

Pixels are float tensors ``[B, C, H, W]`` in ``[0, 1]`` (C = 1 or 3) until :func:`tile` makes one PIL image
of them (RGB, each pixel repeated ``scale`` x ``scale`` times, so small digits stay crisp and the native
pixels can be read back exactly with ``array[::scale, ::scale]``).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from anyorder.app.stream import Frame
from anyorder.io.images import to_8bit

__all__ = ["PENDING", "GIVEN", "decode_pixels", "cells", "frame_pixels", "order_map", "tile", "display_scale",
           "pil_to_pixels", "fit_square"]

PENDING = 0.5  # grey: a token not generated yet
GIVEN = 0.85  # light grey (order map): a known token, teacher-forced before any step


def display_scale(image_size: int, target: int = 160) -> int:
    """The integer upscaling that brings an ``image_size`` image to about ``target`` pixels (at least 1)."""
    return max(1, round(target / max(1, image_size)))


@torch.no_grad()
def decode_pixels(tok, codes: Tensor) -> Tensor:
    """Token grids ``[B, h, w]`` -> pixels ``[B, C, h*ds, w*ds]`` on the CPU, clamped to ``[0, 1]``."""
    dev = next(tok.parameters()).device
    return tok.decode(codes.to(dev)).float().clamp(0, 1).cpu()


def cells(token_mask: Tensor, ds: int) -> Tensor:
    """A token mask ``[B, h, w]`` as a pixel mask ``[B, 1, h*ds, w*ds]`` (each token is a ``ds x ds`` cell)."""
    return torch.nn.functional.interpolate(token_mask[:, None].float(), scale_factor=ds, mode="nearest").bool()


def frame_pixels(tok, frame: Frame, base: Tensor | None = None) -> Tensor:
    """The image of a :class:`Frame`: tokens placed so far decoded, the rest grey.

    The whole grid is decoded (unplaced tokens filled with id 0), then the cells of unplaced tokens are
    painted grey. ``base [B, C, H, W]`` (editing): the cells of known tokens (step 0) show these pixels
    instead, so what the user did not mask comes back exactly as given.
    """
    px = decode_pixels(tok, frame.codes)
    ds = px.shape[-1] // frame.codes.shape[-1]
    px = torch.where(cells(~frame.placed, ds), torch.full_like(px, PENDING), px)
    if base is not None:
        if base.shape[-2:] != px.shape[-2:] or base.shape[0] != px.shape[0]:
            raise ValueError(f"base image {tuple(base.shape)} does not match the decoded canvas {tuple(px.shape)}")
        if base.shape[1] != px.shape[1]:
            base = base.expand(-1, px.shape[1], -1, -1) if base.shape[1] == 1 else base.mean(1, keepdim=True)
        px = torch.where(cells(frame.step == 0, ds), base.to(px.dtype), px)
    return px


def order_map(frame: Frame, ds: int, cmap: str = "viridis") -> Tensor:
    """When each token was placed, as colour ``[B, 3, h*ds, w*ds]``: dark blue = first step, yellow = last;
    light grey = known (given) token, mid grey = not generated yet."""
    import matplotlib  # here, not at the top: drawing a map is the only use, and the CLI starts faster

    colors = torch.from_numpy(matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3]).float()
    step = frame.step
    frac = (step.clamp(min=1) - 1).float() / max(1, frame.steps - 1)
    rgb = colors[(frac * 255).round().long().clamp(0, 255)]  # [B, h, w, 3]
    rgb = torch.where((step == 0)[..., None], torch.full_like(rgb, GIVEN), rgb)
    rgb = torch.where((step < 0)[..., None], torch.full_like(rgb, PENDING), rgb)
    return torch.nn.functional.interpolate(rgb.permute(0, 3, 1, 2), scale_factor=ds, mode="nearest")


def tile(images: Tensor, scale: int = 1, cols: int | None = None, pad: int = 4) -> Image.Image:
    """``[B, C, H, W]`` in ``[0, 1]`` -> one RGB PIL image: ``cols`` per row (default: up to 4), upscaled
    ``scale`` x (nearest), white gaps of about ``pad`` pixels (a multiple of ``scale``) between them (none for a
    single image). Native pixel ``(y, x)`` of image ``i`` in row ``r``, column ``c`` is at
    ``((r * (H + g) + y) * scale, (c * (W + g) + x) * scale)`` with ``g = ceil(pad / scale)``."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, C, H, W] with C in (1, 3), got shape {tuple(images.shape)}")
    B, _, H, W = images.shape
    cols = max(1, min(cols or 4, B))
    rows = -(-B // cols)
    g = 0 if B == 1 else -(-pad // scale)
    arr = (images.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).expand(-1, 3, -1, -1)
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()
    out = np.full((rows * (H + g) - g, cols * (W + g) - g, 3), 255, dtype=np.uint8)
    for i in range(B):
        r, c = divmod(i, cols)
        out[r * (H + g) : r * (H + g) + H, c * (W + g) : c * (W + g) + W] = arr[i]
    img = Image.fromarray(out)
    return img if scale == 1 else img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)


def pil_to_pixels(image: Image.Image, channels: int) -> Tensor:
    """PIL image -> ``[1, channels, H, W]`` in ``[0, 1]`` (``channels`` 1: luma, 3: RGB; alpha dropped)."""
    if channels not in (1, 3):
        raise ValueError(f"tokenizer expects {channels} channels; only 1 (gray) and 3 (RGB) are supported")
    arr = np.asarray(to_8bit(image).convert("L" if channels == 1 else "RGB"), dtype=np.uint8)  # 16-bit: scaled
    t = torch.from_numpy(arr.copy()).float().div_(255.0)
    return (t[None] if channels == 1 else t.permute(2, 0, 1))[None]


def fit_square(image: Image.Image, size: int, resample: int = Image.Resampling.LANCZOS) -> tuple[Image.Image, bool]:
    """``image`` as ``size x size``: unchanged when it already is; an exact integer multiple of ``size``
    (an upscaled view) is box-filtered down; anything else is centre-cropped to a square and resized with
    ``resample``. Returns the image and whether it was resized (not just an exact downscale)."""
    w, h = image.size
    if (w, h) == (size, size):
        return image, False
    if w == h and w % size == 0:
        return image.resize((size, size), Image.Resampling.BOX), False
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return image.crop(box).resize((size, size), resample), True
