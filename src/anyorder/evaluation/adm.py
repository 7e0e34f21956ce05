"""The ADM evaluator's ``.npz`` files: sample batches and reference batches.

* **Sample batch** (what ``anyorder sample --npz`` writes and the ADM evaluator reads): ``arr_0`` uint8
  ``[N, H, W, 3]`` images, optionally ``arr_1`` int labels ``[N]``.
* **Reference batch** (e.g. ``VIRTUAL_imagenet256_labeled.npz``): ``arr_0`` images as above plus the
  Gaussian statistics of their features: ``mu [F]``, ``sigma [F, F]`` (pool features, FID) and ``mu_s``,
  ``sigma_s`` (spatial features, sFID). References written by anyorder also carry ``features``
  (``"inception"`` or ``"judge"``) and, for the digit judge, ``judge_sha256`` (which judge computed them);
  a reference without ``features`` is an ADM file and holds Inception statistics.

Images are read in batches straight from the zip member (:func:`iter_image_batches`), so a 50,000-image
file is never held in memory twice. Every error names the file, the key, and the shape or dtype found.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from anyorder.evaluation.metrics import GaussianStats
from anyorder.io.images import center_crop_arr

__all__ = [
    "IMAGE_KEY",
    "LABEL_KEY",
    "IMAGE_SUFFIXES",
    "NpzImages",
    "ReferenceBatch",
    "open_images",
    "iter_image_batches",
    "read_images",
    "read_labels",
    "read_reference",
    "write_npz",
    "write_samples",
    "write_reference",
    "load_image_folder",
]

IMAGE_KEY = "arr_0"
LABEL_KEY = "arr_1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_STAT_KEYS = {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}


@dataclass(frozen=True)
class NpzImages:
    """Shape and dtype of ``arr_0`` in an npz, read from its header without loading the data."""

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool

    @property
    def count(self) -> int:
        return int(self.shape[0])


def _zip_members(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path}: not an .npz file (not a zip archive: {e})") from e


def _read_header(fp) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fp)
    raise ValueError(f"unsupported .npy format version {version}")


def _check_image_layout(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if len(shape) != 4 or shape[3] != 3:
        raise ValueError(f"{path}: {IMAGE_KEY} must be images [N, H, W, 3] (ADM format), got shape {tuple(shape)}")
    if dtype != np.uint8:
        raise ValueError(f"{path}: {IMAGE_KEY} must be uint8 in [0, 255] (ADM format), got dtype {dtype}")
    if shape[0] == 0 or shape[1] == 0 or shape[2] == 0:
        raise ValueError(f"{path}: {IMAGE_KEY} is empty (shape {tuple(shape)})")


def open_images(path: str | os.PathLike) -> NpzImages:
    """Validate ``arr_0`` of an npz from its header: uint8 ``[N, H, W, 3]`` with ``N >= 1``."""
    path = Path(path)
    members = _zip_members(path)
    if f"{IMAGE_KEY}.npy" not in members:
        keys = sorted(m.removesuffix(".npy") for m in members)
        raise ValueError(f"{path}: no {IMAGE_KEY} (the images) in the npz; keys: {keys}")
    with zipfile.ZipFile(path) as zf, zf.open(f"{IMAGE_KEY}.npy") as fp:
        try:
            shape, fortran, dtype = _read_header(fp)
        except ValueError as e:
            raise ValueError(f"{path}: {IMAGE_KEY} has an unreadable .npy header ({e})") from e
    _check_image_layout(path, shape, dtype)
    return NpzImages(path, tuple(int(s) for s in shape), dtype, bool(fortran))


def iter_image_batches(path: str | os.PathLike, batch_size: int) -> Iterator[np.ndarray]:
    """Yield ``arr_0`` in batches of uint8 ``[b, H, W, 3]``, streamed from the (possibly compressed) member."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    info = open_images(path)
    if info.fortran_order:  # rare; fall back to loading the array
        arr = read_images(path)
        for i in range(0, len(arr), batch_size):
            yield arr[i : i + batch_size]
        return
    per_image = int(np.prod(info.shape[1:]))
    with zipfile.ZipFile(info.path) as zf, zf.open(f"{IMAGE_KEY}.npy") as fp:
        _read_header(fp)
        for start in range(0, info.count, batch_size):
            n = min(batch_size, info.count - start)
            data = fp.read(n * per_image)
            if len(data) != n * per_image:
                raise ValueError(f"{info.path}: {IMAGE_KEY} is truncated: expected {info.count} images of "
                                 f"{info.shape[1:]}, the data ends after {start + len(data) // per_image}")
            yield np.frombuffer(data, dtype=np.uint8).reshape(n, *info.shape[1:])


def read_images(path: str | os.PathLike) -> np.ndarray:
    """All of ``arr_0``: uint8 ``[N, H, W, 3]`` (validated)."""
    open_images(path)
    with np.load(path, allow_pickle=False) as f:
        return np.asarray(f[IMAGE_KEY])


def read_labels(path: str | os.PathLike, count: int | None = None) -> np.ndarray | None:
    """``arr_1`` as int64 ``[N]`` if the npz has it, else ``None``; ``count`` checks its length."""
    path = Path(path)
    if f"{LABEL_KEY}.npy" not in _zip_members(path):
        return None
    with np.load(path, allow_pickle=False) as f:
        labels = np.asarray(f[LABEL_KEY])
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: {LABEL_KEY} must be integer labels [N], got {labels.dtype} {labels.shape}")
    if count is not None and len(labels) != count:
        raise ValueError(f"{path}: {len(labels)} labels in {LABEL_KEY} for {count} images in {IMAGE_KEY}")
    return labels.astype(np.int64)


@dataclass
class ReferenceBatch:
    """A reference batch: its file, the feature kind its statistics belong to, and the statistics."""

    path: Path
    features: str
    pool: GaussianStats
    spatial: GaussianStats | None
    images: NpzImages | None
    judge_sha256: str | None = None


def _read_str(f, key: str) -> str | None:
    if key not in f.files:
        return None
    value = np.asarray(f[key])
    return str(value.item()) if value.ndim == 0 else str(value)


def read_reference(path: str | os.PathLike, require_spatial: bool = True, require_images: bool = True,
                   features: str | None = None) -> ReferenceBatch:
    """Read a reference batch's statistics (and validate its images' header).

    Raises :class:`ValueError` naming the file and key when a statistic is missing or mis-shaped: the
    pool statistics ``mu`` / ``sigma`` are always needed, ``mu_s`` / ``sigma_s`` with ``require_spatial``,
    and ``arr_0`` (for precision / recall) with ``require_images``; and when ``features`` is given and
    the statistics are of another feature kind.
    """
    path = Path(path)
    members = {m.removesuffix(".npy") for m in _zip_members(path)}
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
    if stats["pool"] is None:
        raise ValueError(f"{path}: not a reference batch: no statistics mu / sigma (keys: {sorted(members)}); {how}")
    if features is not None and kind_found != features:
        raise ValueError(f"{path}: its statistics are of {kind_found} features, not {features}: write a reference "
                         f"with `anyorder eval --make-ref SRC --features {features} --out REF.npz`")
    if require_spatial and stats["spatial"] is None:
        raise ValueError(f"{path}: reference batch has no spatial statistics mu_s / sigma_s (needed for sFID); {how}")
    images = open_images(path) if (require_images or IMAGE_KEY in members) else None
    return ReferenceBatch(path, kind_found, stats["pool"], stats["spatial"], images, judge_sha)


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """``np.savez`` to a temporary file beside ``path``, then rename (never half-written)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{path}: the output must end in .npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _check_images_array(images: np.ndarray, what: str) -> np.ndarray:
    images = np.asarray(images)
    _check_image_layout(Path(what), images.shape, images.dtype)
    return np.ascontiguousarray(images)


def write_samples(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None = None) -> Path:
    """Write a sample batch: ``arr_0`` uint8 ``[N, H, W, 3]`` and, if given, ``arr_1`` labels ``[N]``."""
    images = _check_images_array(images, str(path))
    arrays = {IMAGE_KEY: images}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(images),) or labels.dtype.kind not in "iu":
            raise ValueError(f"{path}: labels must be integers [{len(images)}], got {labels.dtype} {labels.shape}")
        arrays[LABEL_KEY] = labels.astype(np.int64)
    return write_npz(path, **arrays)


def write_reference(path: str | os.PathLike, images: np.ndarray, pool: GaussianStats,
                    spatial: GaussianStats | None, features: str, labels: np.ndarray | None = None,
                    judge_sha256: str | None = None) -> Path:
    """Write a reference batch: images ``arr_0`` (+ ``arr_1``), ``mu``/``sigma`` (+ ``mu_s``/``sigma_s``)."""
    images = _check_images_array(images, str(path))
    arrays: dict[str, np.ndarray] = {IMAGE_KEY: images, "mu": pool.mu, "sigma": pool.sigma,
                                     "features": np.asarray(features)}
    if spatial is not None:
        arrays.update(mu_s=spatial.mu, sigma_s=spatial.sigma)
    if labels is not None:
        arrays[LABEL_KEY] = np.asarray(labels, dtype=np.int64)
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
                rgb = img.convert("RGB")
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
