"""The official pretokenization augmentations: every image becomes ``A`` fixed views ("rows"), each encoded once.

Training later picks one row per image per visit, so these views are the only augmentation a
pretokenized model ever sees. Two recipes, as the official scripts do them:

``adm`` (2 rows) — the ADM / guided-diffusion centre crop (:func:`anyorder.io.images.center_crop_arr`) to
    ``R x R`` and its horizontal flip: ``[crop, flip(crop)]``. This is bytedance/1d-tokenizer
    ``scripts/pretokenization.py`` without ``--ten_crop`` (RAR; it concatenates the batch with its flip) and
    ziqipang/RandAR ``tools/extracr_latent_codes.py`` with ``--aug-mode adm`` (one image's two rows kept
    together, original first), i.e. also LlamaGen ``autoregressive/train/extract_codes_c2i.py`` without
    ``--ten-crop``.

``ten-crop`` (10 rows) — the ADM centre crop to ``int(R * crop_range)`` (``crop_range`` 1.1), then
    torchvision's ``TenCrop(R)``: the four corner crops and the centre crop (``FiveCrop``), followed by the
    same five crops of the horizontally flipped image. This is LlamaGen
    ``autoregressive/train/extract_codes_c2i.py --ten-crop --crop-range 1.1`` (also RandAR
    ``tools/extracr_latent_codes.py --aug-mode ten-crop``, its argument default) and 1d-tokenizer
    ``scripts/pretokenization.py --ten_crop`` ("augmentation following LlamaGen"), the commands LlamaGen and
    RAR document for ImageNet (the example command of 1d-tokenizer's script). RandAR's ``documentation.md`` says its
    released checkpoints were trained on ``adm`` codes instead (better FID in their re-implementation).

``none`` (1 row) — the centre crop alone (evaluation / debugging).

torchvision is not a dependency: the crops are re-implemented here with PIL and numpy, with torchvision's
conventions (corner offsets ``W - R`` / ``H - R``; centre offset ``int(round((H - R) / 2))`` with Python's
round-half-to-even; the flipped five are crops *of the flipped image*, so flipped "top-left" is the mirror
image of the original top-right crop).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from anyorder.io.images import center_crop_arr, to_8bit

__all__ = [
    "AUGMENTATIONS",
    "CROP_RANGE",
    "num_views",
    "view_names",
    "hflip",
    "five_crop",
    "ten_crop",
    "augment_views",
    "augment_array",
]

AUGMENTATIONS = ("adm", "ten-crop", "none")
CROP_RANGE = 1.1  # LlamaGen's --crop-range default, hard-coded as 1.1 in 1d-tokenizer

_FIVE = ("top_left", "top_right", "bottom_left", "bottom_right", "center")
_VIEW_NAMES = {
    "adm": ("center", "center_flip"),
    "ten-crop": _FIVE + tuple(f"flip_{n}" for n in _FIVE),
    "none": ("center",),
}


def _check_aug(aug: str) -> str:
    if aug not in _VIEW_NAMES:
        raise ValueError(f"unknown augmentation {aug!r}; expected one of {list(AUGMENTATIONS)}")
    return aug


def num_views(aug: str) -> int:
    """Rows per image ``A``: 2 for ``adm``, 10 for ``ten-crop``, 1 for ``none``."""
    return len(_VIEW_NAMES[_check_aug(aug)])


def view_names(aug: str) -> list[str]:
    """What each row holds, in row order (``flip_X`` = crop ``X`` of the horizontally flipped image)."""
    return list(_VIEW_NAMES[_check_aug(aug)])


def hflip(image: Image.Image) -> Image.Image:
    """Mirror left-right."""
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def five_crop(image: Image.Image, size: int) -> list[Image.Image]:
    """``size x size`` crops: top-left, top-right, bottom-left, bottom-right, centre (torchvision ``FiveCrop``)."""
    w, h = image.size
    if size > w or size > h:
        raise ValueError(f"crop size {size} is larger than the image ({w}x{h})")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    boxes = [(0, 0), (w - size, 0), (0, h - size), (w - size, h - size), (left, top)]
    return [image.crop((x, y, x + size, y + size)) for x, y in boxes]


def ten_crop(image: Image.Image, size: int) -> list[Image.Image]:
    """:func:`five_crop` of the image, then of its horizontal flip (torchvision ``TenCrop``, no vertical flip)."""
    return five_crop(image, size) + five_crop(hflip(image), size)


def augment_views(image: Image.Image, aug: str, resolution: int, crop_range: float = CROP_RANGE) -> list[Image.Image]:
    """The ``num_views(aug)`` views of one decoded image, each ``resolution x resolution``, in row order."""
    _check_aug(aug)
    if aug == "ten-crop":
        big = center_crop_arr(image, int(resolution * crop_range))
        return ten_crop(big, resolution)
    crop = center_crop_arr(image, resolution)
    return [crop, hflip(crop)] if aug == "adm" else [crop]


def augment_array(image: Image.Image, aug: str, resolution: int, channels: int = 3,
                  crop_range: float = CROP_RANGE) -> np.ndarray:
    """The views as one uint8 array ``[A, C, R, R]`` (``channels`` 3: RGB, 1: grayscale "L"); 16-bit and
    float images are scaled to 8 bits first (:func:`anyorder.io.images.to_8bit`, which may refuse one)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    image = to_8bit(image).convert("RGB" if channels == 3 else "L")
    views = augment_views(image, aug, resolution, crop_range)
    arr = np.stack([np.asarray(v, dtype=np.uint8) for v in views])  # [A, R, R] or [A, R, R, 3]
    return arr[:, None] if channels == 1 else np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
