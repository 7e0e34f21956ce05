"""The ADM evaluator's ``.npz`` layout (openai/guided-diffusion), read and written in one place.

A **sample batch** holds ``arr_0``: uint8 images ``[N, H, W, 3]`` and optionally ``arr_1``: integer labels
``[N]``. Reference batches (:mod:`anyorder.evaluation.adm`) add named statistics arrays. Everything here

- validates from the ``.npy`` headers inside the zip without loading the data (:func:`open_images`);
- streams images in batches straight from the zip member (:func:`iter_image_batches`), so a 50,000-image
  file (9.8 GB at 256x256) is never held in memory twice, and merges sample chunks the same way
  (:func:`merge_sample_chunks`);
- writes atomically (a temporary file renamed over the target) with fixed zip timestamps, so the same
  arrays always give the same bytes;
- names the file, the key and the shape or dtype found in every error.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from anyorder.io.checkpoint import atomic_write

__all__ = [
    "IMAGE_KEY",
    "LABEL_KEY",
    "NpzImages",
    "npz_keys",
    "array_header",
    "check_images",
    "images_array",
    "labels_array",
    "open_images",
    "iter_image_batches",
    "read_images",
    "check_labels",
    "read_labels",
    "read_samples",
    "write_npz",
    "write_samples",
    "merge_sample_chunks",
]

IMAGE_KEY = "arr_0"
LABEL_KEY = "arr_1"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the same arrays give the same bytes


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


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path}: not an .npz file (not a zip archive: {e})") from e


def _members(path: Path) -> list[str]:
    with _open_zip(path) as zf:
        return zf.namelist()


def _keys(members: list[str]) -> list[str]:
    return sorted(m.removesuffix(".npy") for m in members)


def npz_keys(path: str | os.PathLike) -> list[str]:
    """The array names in an npz (``FileNotFoundError`` / ``ValueError`` naming the file if it is none)."""
    return _keys(_members(Path(path)))


def _read_header(fp: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fp)
    raise ValueError(f"unsupported .npy format version {version}")


def array_header(path: str | os.PathLike, name: str, what: str = "") -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of array ``name`` in an npz, from its header (the data stays on disk).
    ``what`` describes the array in the error when it is missing."""
    path = Path(path)
    with _open_zip(path) as zf:
        members = zf.namelist()
        if f"{name}.npy" not in members:
            raise ValueError(f"{path}: no {name}{what} in the npz; keys: {_keys(members)}")
        with zf.open(f"{name}.npy") as fp:
            try:
                shape, fortran, dtype = _read_header(fp)
            except ValueError as e:
                raise ValueError(f"{path}: {name} has an unreadable .npy header ({e})") from e
    return tuple(int(s) for s in shape), bool(fortran), dtype


def check_images(source: str | os.PathLike, shape: Sequence[int], dtype: np.dtype) -> None:
    """Raise ``ValueError`` naming ``source`` unless ``shape``/``dtype`` are uint8 images ``[N >= 1, H, W, 3]``."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or shape[3] != 3:
        raise ValueError(f"{source}: {IMAGE_KEY} must be images [N, H, W, 3] (ADM format), got shape {shape}")
    if dtype != np.uint8:
        raise ValueError(f"{source}: {IMAGE_KEY} must be uint8 in [0, 255] (ADM format), got dtype {dtype}")
    if 0 in shape:
        raise ValueError(f"{source}: {IMAGE_KEY} is empty (shape {shape})")


def images_array(images: np.ndarray, source: str | os.PathLike) -> np.ndarray:
    """``images`` checked as uint8 ``[N, H, W, 3]`` (``ValueError`` naming ``source``), in C order (readers
    stream it in batches)."""
    images = np.asarray(images)
    check_images(source, images.shape, images.dtype)
    return np.ascontiguousarray(images)


def labels_array(labels: np.ndarray, count: int, source: str | os.PathLike) -> np.ndarray:
    """``labels`` as int64 ``[count]`` (``ValueError`` naming ``source`` otherwise)."""
    labels = np.asarray(labels)
    if labels.shape != (count,) or labels.dtype.kind not in "iu":
        raise ValueError(f"{source}: {LABEL_KEY} must hold {count} integer labels [N], got {labels.dtype} "
                         f"{list(labels.shape)}")
    return labels.astype(np.int64)


def open_images(path: str | os.PathLike) -> NpzImages:
    """Validate ``arr_0`` of an npz from its header: uint8 ``[N, H, W, 3]`` with ``N >= 1``."""
    path = Path(path)
    shape, fortran, dtype = array_header(path, IMAGE_KEY, " (the images)")
    check_images(path, shape, dtype)
    return NpzImages(path, shape, dtype, fortran)


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
    """All of ``arr_0``: uint8 ``[N, H, W, 3]`` (validated before loading)."""
    open_images(path)
    with np.load(path, allow_pickle=False) as f:
        return np.asarray(f[IMAGE_KEY])


def check_labels(path: str | os.PathLike, count: int | None = None) -> tuple[int, ...] | None:
    """Validate ``arr_1`` from its header, the data left on disk: integer labels ``[N]`` (``N == count`` when
    given). Returns its shape, or ``None`` when the npz has no labels; ``ValueError`` naming the file, the key
    and what was found otherwise (an object array is refused without being unpickled)."""
    path = Path(path)
    if f"{LABEL_KEY}.npy" not in _members(path):
        return None
    shape, _, dtype = array_header(path, LABEL_KEY, " (the labels)")
    if dtype.hasobject:
        raise ValueError(f"{path}: {LABEL_KEY} is an object array ({dtype}); labels must be integers [N] "
                         f"(object arrays are never unpickled)")
    if len(shape) != 1 or dtype.kind not in "iu":
        raise ValueError(f"{path}: {LABEL_KEY} must be integer labels [N], got {dtype} {list(shape)}")
    if count is not None and shape[0] != count:
        raise ValueError(f"{path}: {shape[0]} labels in {LABEL_KEY} for {count} images in {IMAGE_KEY}")
    return shape


def read_labels(path: str | os.PathLike, count: int | None = None) -> np.ndarray | None:
    """``arr_1`` as int64 ``[N]`` if the npz has it, else ``None``; checked from its header first
    (:func:`check_labels`), ``count`` checks its length."""
    path = Path(path)
    if check_labels(path, count) is None:
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            labels = np.asarray(f[LABEL_KEY])
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # e.g. data cut short after the header
        raise ValueError(f"{path}: {LABEL_KEY} cannot be read ({type(e).__name__}: {e})") from e
    return labels.astype(np.int64)


def read_samples(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """``(images uint8 [N, H, W, 3], labels int64 [N] or None)`` of a sample batch, checked."""
    images = read_images(path)
    return images, read_labels(path, len(images))


def _write_member(zf: zipfile.ZipFile, name: str, arr: np.ndarray, source: str | os.PathLike) -> None:
    if arr.dtype.hasobject:
        raise ValueError(f"{source}: {name} is an object array ({arr.dtype}); npz files here hold plain arrays only")
    with zf.open(zipfile.ZipInfo(f"{name}.npy", _ZIP_TIME), "w", force_zip64=True) as f:  # as np.savez
        np.lib.format.write_array(f, arr, allow_pickle=False)  # (ascontiguousarray would make a 0-d array 1-d)


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Write named arrays as an uncompressed npz (what ``np.load`` and the ADM evaluator read), atomically and
    with fixed timestamps. Object arrays are refused (nothing here is ever pickled)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{path}: the output must end in .npz")

    def write(f: IO[bytes]) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in arrays.items():
                _write_member(zf, name, np.asarray(arr), path)

    atomic_write(path, write)
    return path


def write_samples(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None = None) -> Path:
    """Write a sample batch: ``arr_0`` uint8 ``[N, H, W, 3]`` and, if given, ``arr_1`` int64 labels ``[N]``."""
    images = images_array(images, path)
    arrays = {IMAGE_KEY: images}
    if labels is not None:
        arrays[LABEL_KEY] = labels_array(labels, len(images), path)
    return write_npz(path, **arrays)


def merge_sample_chunks(path: str | os.PathLike, chunks: Sequence[str | os.PathLike]) -> Path:
    """One sample batch from chunk files (each a sample batch with labels), in order, streamed: one chunk's
    images in memory at a time. Atomic, and byte-for-byte the same for the same chunks."""
    path = Path(path)
    if not chunks:
        raise ValueError(f"{path}: no sample chunks to merge")
    shapes, labels = [], []
    for c in chunks:  # headers and labels only
        info = open_images(c)
        chunk_labels = read_labels(c, info.count)
        if chunk_labels is None:
            raise ValueError(f"{c}: not a sample chunk (no {LABEL_KEY} labels); delete it and rerun to sample it again")
        shapes.append(info.shape)
        labels.append(chunk_labels)
    if len({s[1:] for s in shapes}) > 1:
        raise ValueError(f"{path}: the chunks hold images of different shapes {sorted({s[1:] for s in shapes})}")
    shape = (sum(s[0] for s in shapes), *shapes[0][1:])

    def write(f: IO[bytes]) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open(zipfile.ZipInfo(f"{IMAGE_KEY}.npy", _ZIP_TIME), "w", force_zip64=True) as out:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                          "shape": shape}
                np.lib.format.write_array_header_2_0(out, header)
                for c in chunks:
                    for batch in iter_image_batches(c, 1024):
                        out.write(batch.tobytes())
            _write_member(zf, LABEL_KEY, np.concatenate(labels), path)

    atomic_write(path, write)
    return path
