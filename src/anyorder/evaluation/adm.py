"""The ADM evaluator's reference batches, and image folders turned into image arrays.

* **Sample batch** (what ``anyorder sample --npz`` writes and the ADM evaluator reads): ``arr_0`` uint8
  ``[N, H, W, 3]`` images, optionally ``arr_1`` int labels ``[N]`` — read and written by
  :mod:`anyorder.io.npz`.
* **Reference batch** (e.g. ``VIRTUAL_imagenet256_labeled.npz``): ``arr_0`` images as above plus the
  Gaussian statistics of their features: ``mu [F]``, ``sigma [F, F]`` (pool features, FID) and ``mu_s``,
  ``sigma_s`` (spatial features, sFID). References written by anyorder also carry ``features``
  (``"inception"`` or ``"judge"``) and, for the digit judge, ``judge_sha256`` (which judge computed them);
  a reference without ``features`` is an ADM file and holds Inception statistics. As in ADM's
  ``Evaluator.read_statistics``, a reference may also hold **only images** (``arr_0``, no ``mu``): its
  statistics are then computed from those images by the evaluating network (``allow_images_only``).

Every error names the file, the key, and the shape or dtype found.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from anyorder.evaluation.metrics import GaussianStats
from anyorder.io.images import center_crop_arr, to_8bit
from anyorder.io.npz import (
    IMAGE_KEY,
    LABEL_KEY,
    NpzImages,
    images_array,
    labels_array,
    npz_keys,
    open_images,
    write_npz,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "ReferenceBatch",
    "read_reference",
    "write_reference",
    "load_image_folder",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_STAT_KEYS = {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}


@dataclass
class ReferenceBatch:
    """A reference batch: its file, the feature kind its statistics belong to, and the statistics
    (``pool`` and ``spatial`` are None for a reference of images only: compute them from the images)."""

    path: Path
    features: str
    pool: GaussianStats | None
    spatial: GaussianStats | None
    images: NpzImages | None
    judge_sha256: str | None = None

    @property
    def has_statistics(self) -> bool:
        return self.pool is not None


def _read_str(f, key: str) -> str | None:
    if key not in f.files:
        return None
    value = np.asarray(f[key])
    return str(value.item()) if value.ndim == 0 else str(value)


def read_reference(path: str | os.PathLike, require_spatial: bool = True, require_images: bool = True,
                   features: str | None = None, allow_images_only: bool = False) -> ReferenceBatch:
    """Read a reference batch's statistics (and validate its images' header).

    Raises :class:`ValueError` naming the file and key when a statistic is missing or mis-shaped: the
    pool statistics ``mu`` / ``sigma`` are always needed, ``mu_s`` / ``sigma_s`` with ``require_spatial``,
    and ``arr_0`` (for precision / recall) with ``require_images``; and when ``features`` is given and
    the statistics are of another feature kind. With ``allow_images_only`` a file without ``mu`` that
    holds ``arr_0`` is a reference too (ADM computes its statistics from the images): it is returned
    with ``pool = spatial = None`` (any ``mu_s`` / ``sigma_s`` in it are ignored, as ADM does).
    """
    path = Path(path)
    members = set(npz_keys(path))
    with np.load(path, allow_pickle=False) as f:
        kind_found = _read_str(f, "features") or "inception"
        stats: dict[str, GaussianStats | None] = {}
        for kind, (mu_key, sigma_key) in _STAT_KEYS.items():
            present = [k for k in (mu_key, sigma_key) if k in members]
            if not present:
                stats[kind] = None
                continue
            if len(present) == 1:
                missing = sigma_key if present[0] == mu_key else mu_key
                raise ValueError(f"{path}: reference batch has {present[0]} but no {missing}")
            mu, sigma = np.asarray(f[mu_key]), np.asarray(f[sigma_key])
            if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
                raise ValueError(f"{path}: {mu_key} must be [F] and {sigma_key} [F, F], got {mu.shape} and "
                                 f"{sigma.shape}")
            stats[kind] = GaussianStats(mu, sigma)
        judge_sha = _read_str(f, "judge_sha256")
    how = "write one with `anyorder eval --make-ref SRC --out REF.npz`"
    if stats["pool"] is None and allow_images_only and IMAGE_KEY in members:
        return ReferenceBatch(path, features or kind_found, None, None, open_images(path), None)
    if stats["pool"] is None:
        also = f" and no images {IMAGE_KEY}" if allow_images_only else ""
        raise ValueError(f"{path}: not a reference batch: no statistics mu / sigma{also} (keys: {sorted(members)}); "
                         f"{how}")
    if features is not None and kind_found != features:
        raise ValueError(f"{path}: its statistics are of {kind_found} features, not {features}: write a reference "
                         f"with `anyorder eval --make-ref SRC --features {features} --out REF.npz`")
    if require_spatial and stats["spatial"] is None:
        raise ValueError(f"{path}: reference batch has no spatial statistics mu_s / sigma_s (needed for sFID); {how}")
    images = open_images(path) if (require_images or IMAGE_KEY in members) else None
    return ReferenceBatch(path, kind_found, stats["pool"], stats["spatial"], images, judge_sha)


def write_reference(path: str | os.PathLike, images: np.ndarray, pool: GaussianStats,
                    spatial: GaussianStats | None, features: str, labels: np.ndarray | None = None,
                    judge_sha256: str | None = None) -> Path:
    """Write a reference batch: images ``arr_0`` (+ ``arr_1``), ``mu``/``sigma`` (+ ``mu_s``/``sigma_s``)."""
    images = images_array(images, path)
    arrays: dict[str, np.ndarray] = {IMAGE_KEY: images, "mu": pool.mu, "sigma": pool.sigma,
                                     "features": np.asarray(features)}
    if spatial is not None:
        arrays.update(mu_s=spatial.mu, sigma_s=spatial.sigma)
    if labels is not None:
        arrays[LABEL_KEY] = labels_array(labels, len(images), path)
    if judge_sha256 is not None:
        arrays["judge_sha256"] = np.asarray(judge_sha256)
    return write_npz(path, **arrays)


def load_image_folder(folder: str | os.PathLike, image_size: int | None = None) -> np.ndarray:
    """Every image file of ``folder`` (sorted by name) as uint8 RGB ``[N, H, W, 3]``.

    With ``image_size`` each image is first centre-cropped the ADM way
    (:func:`anyorder.io.images.center_crop_arr`); without it all images must share one size.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    out = []
    for p in files:
        try:
            with Image.open(p) as img:
                rgb = to_8bit(img, p).convert("RGB")  # 16-bit: scaled, not clipped
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise ValueError(f"cannot read image {p}: {type(e).__name__}: {e}") from e
        if image_size is not None:
            rgb = center_crop_arr(rgb, image_size)
        arr = np.asarray(rgb, dtype=np.uint8)
        if out and arr.shape != out[0].shape:
            raise ValueError(f"{p}: size {arr.shape[1]}x{arr.shape[0]} differs from {files[0].name} "
                             f"({out[0].shape[1]}x{out[0].shape[0]}); pass --image-size to centre-crop all")
        out.append(arr)
    return np.stack(out)
