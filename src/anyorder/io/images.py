"""Image I/O around the tokenizers: loading, ADM-style centre crop, and PNG grids (PIL + numpy only).

Every image read here goes through :func:`to_8bit` first: PIL's ``convert("RGB")`` clips 16-bit and 32-bit
pixels at 255 instead of scaling them (a 16-bit PNG came out 99.8% white), so deep images are scaled to 8
bits by their white level; a float image whose white level is unknown is refused (:class:`PixelRangeError`).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from anyorder.io.checkpoint import atomic_write_bytes

__all__ = ["load_image", "open_image", "to_8bit", "PixelRangeError", "center_crop_arr", "save_image_grid",
           "pil_to_tensor", "tensor_to_pil"]

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class PixelRangeError(ValueError):
    """An image whose pixel values have no known 8-bit scale; ``reason`` says why, without the file name."""

    def __init__(self, source: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.reason = reason


def to_8bit(image: Image.Image, source: str | os.PathLike = "image") -> Image.Image:
    """``image`` with 8-bit pixels, ready for ``convert("RGB")`` / ``convert("L")``.

    16-bit grayscale (``I;16``, ``I;16B``, ...) and 32-bit integer (``I``) images holding values in
    ``0..65535`` (what PIL makes of 16-bit PNG and TIFF files) are scaled by ``255 / 65535`` with rounding,
    so 65535 is white and ``v * 257`` comes back as ``v``. Float images (``F``) with every value in
    ``[0, 1]`` are scaled by 255. Anything else in these modes (negative values, integers above 65535,
    floats outside ``[0, 1]``, NaN) has no known white level and raises :class:`PixelRangeError` naming
    ``source`` rather than being guessed. Other modes come back unchanged (PIL converts them correctly).
    """
    if image.mode not in (*_SIXTEEN_BIT, "I", "F"):
        return image
    arr = np.asarray(image)
    if image.mode == "F":
        if arr.size and not (np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0):
            lo, hi = (float(np.nanmin(arr)), float(np.nanmax(arr))) if not np.isnan(arr).all() else (0.0, 0.0)
            nan = ", with NaN" if np.isnan(arr).any() else ""
            raise PixelRangeError(source, f"floating-point pixels in [{lo:g}, {hi:g}]{nan}, not [0, 1]: no known "
                                          "white level; convert it to an 8- or 16-bit image first")
        eight = np.rint(arr.astype(np.float64) * 255.0)
    else:
        wide = arr.astype(np.int64)
        if wide.size and (wide.min() < 0 or wide.max() > 65535):
            raise PixelRangeError(source, f"32-bit integer pixels in [{wide.min()}, {wide.max()}], outside the "
                                          "16-bit range 0..65535: no known white level; convert it first")
        eight = (wide * 255 + 32767) // 65535  # round(v * 255 / 65535)
    return Image.fromarray(eight.astype(np.uint8), "L")


def pil_to_tensor(image: Image.Image) -> Tensor:
    """PIL image -> float32 ``[3, H, W]`` in ``[0, 1]`` (scaled to 8 bits by :func:`to_8bit`, then RGB)."""
    arr = np.asarray(to_8bit(image).convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def tensor_to_pil(image: Tensor) -> Image.Image:
    """``[C, H, W]`` in ``[0, 1]`` (C = 1 or 3) -> 8-bit PIL image (``x * 255 + 0.5``, clamped, truncated)."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected an image [C, H, W] with C in (1, 3), got shape {tuple(image.shape)}")
    arr = image.detach().float().cpu().mul(255.0).add_(0.5).clamp_(0.0, 255.0).to(torch.uint8)
    arr = arr.permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(arr[:, :, 0] if arr.shape[2] == 1 else arr))


def open_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """Read an image file fully, scale it to 8 bits (:func:`to_8bit`) and convert it to ``mode``;
    :class:`ValueError` naming the file if it is missing, a directory, truncated, corrupt, not an image or of
    a pixel range with no known white level."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return to_8bit(img, path).convert(mode)
    except PixelRangeError:
        raise  # names the file and the range already
    except FileNotFoundError as e:
        raise ValueError(f"cannot load image {path}: file not found") from e
    except IsADirectoryError as e:
        raise ValueError(f"cannot load image {path}: it is a directory") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot load image {path}: unreadable or corrupt ({type(e).__name__}: {e})") from e


def load_image(path: str | os.PathLike, image_size: int | None = None) -> Tensor:
    """Read an image file as float32 RGB ``[3, H, W]`` in ``[0, 1]``.

    With ``image_size`` the image is first centre-cropped with :func:`center_crop_arr`.
    Raises :class:`ValueError` naming the file if it is missing, truncated, corrupt or not an image.
    """
    rgb = open_image(path, "RGB")
    if image_size is not None:
        rgb = center_crop_arr(rgb, image_size)
    return pil_to_tensor(rgb)


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """ADM centre crop (as in the LlamaGen / RandAR / RAR evaluation pipelines).

    Halve the image with BOX filtering while its short side is at least ``2 * image_size``, resize with
    BICUBIC so the short side equals ``image_size``, then cut the central ``image_size`` square.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    img = pil_image
    while min(img.size) >= 2 * image_size:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), resample=Image.BOX)
    ratio = image_size / min(img.size)
    img = img.resize((round(img.size[0] * ratio), round(img.size[1] * ratio)), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top : top + image_size, left : left + image_size])


def save_image_grid(
    images: Tensor, path: str | os.PathLike, nrow: int = 8, padding: int = 2, pad_value: float = 0.0
) -> Path:
    """Tile ``images [N, C, H, W]`` in ``[0, 1]`` into a grid with ``nrow`` images per row and write a PNG.

    Layout follows the common ``make_grid`` convention: ``padding`` pixels of ``pad_value`` around every
    tile. The file is written atomically. Returns the path.
    """
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[0] == 0 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, C, H, W] with N >= 1 and C in (1, 3), got {tuple(images.shape)}")
    if nrow <= 0 or padding < 0:
        raise ValueError(f"nrow must be positive and padding non-negative, got nrow={nrow}, padding={padding}")
    n, c, h, w = images.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    cell_h, cell_w = h + padding, w + padding
    grid = torch.full((c, rows * cell_h + padding, cols * cell_w + padding), float(pad_value))
    imgs = images.detach().float().cpu()
    for k in range(n):
        r, q = divmod(k, cols)
        y, x = r * cell_h + padding, q * cell_w + padding
        grid[:, y : y + h, x : x + w] = imgs[k]
    buf = io.BytesIO()
    tensor_to_pil(grid).save(buf, format="PNG")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
