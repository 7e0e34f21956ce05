"""Training codes: a pretokenized folder (memory-mapped), a ``.safetensors`` file, or tensors in memory,
and the seeded epoch stream that every rank reads its share of.

A folder written by ``anyorder tokenize`` holds

- ``codes.npy`` ``[N, A, h, w]`` (uint16 or int32): the codes of ``A`` augmented views of each of ``N`` images;
- ``labels.npy`` ``[N]``: class ids;
- ``meta.json``: at least the tokenizer's codebook size (``codebook_size`` or ``tokenizer.codebook_size``),
  ``grid`` ``[h, w]``, the number of views (``augmentations`` or ``A``) and of images (``num_images`` or ``N``).

``codes.npy`` is opened with ``np.load(mmap_mode="r")``: a batch reads only its own rows, so a 1.28M-image
ImageNet folder costs no RAM beyond the labels. The data are validated once when opened / checked against the
model (:meth:`CodeSource.check_model`): the files' headers against their sizes (a truncated file is named as
such), meta.json against the arrays, and the code ids of a spread of images against the codebook; each batch's
code ids are bounded again when read (a comparison, nothing next to a step).

The stream (:class:`EpochStream`): epoch ``e`` visits every image once, in a permutation seeded by
``(seed, e)``, each visit with one of its ``A`` views drawn with the same seed. Epochs count images, not rows.
The global batches are consecutive slices of the concatenated epochs; a batch that crosses an epoch's end takes
the rest of that epoch and the start of the next (nothing dropped, nothing padded, nothing repeated within an
epoch). Every rank computes the same global batch and reads its own contiguous slice, so position ``p`` of the
stream is a pure function of ``(seed, p)``: resume restores the position inside the epoch exactly, on any
number of ranks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anyorder.io import load_state_dict

__all__ = ["CodeSource", "TensorCodes", "PretokenizedCodes", "EpochStream", "open_codes"]


class CodeSource:
    """``N`` images with ``A`` views of ``h x w`` codes each, and a class label per image."""

    name: str = "codes"
    num_images: int
    augmentations: int
    grid: tuple[int, int]
    codebook_size: int | None  # the tokenizer's codebook, when the source records it
    labels: np.ndarray  # [N] int64

    def __len__(self) -> int:
        return self.num_images

    def gather(self, images: np.ndarray, views: np.ndarray) -> Tensor:
        """Codes ``[n, h * w]`` (int64) of ``views[i]`` of ``images[i]``."""
        raise NotImplementedError

    def max_code(self) -> int:
        """The largest code id (only sources held in memory scan for it)."""
        raise NotImplementedError

    def check_model(self, codebook_size: int, num_classes: int, seq_len: int) -> None:
        """Refuse codes or labels the model cannot take, naming both numbers (once, at load)."""
        h, w = self.grid
        if h * w != seq_len:
            raise ValueError(f"{self.name}: codes on a {h}x{w} grid ({h * w} tokens) but the model takes {seq_len} "
                             "tokens per image")
        if self.codebook_size is not None and self.codebook_size != codebook_size:
            raise ValueError(f"{self.name}: the codes come from a tokenizer with a codebook of {self.codebook_size} "
                             f"but the model predicts {codebook_size} codes (model.codebook_size)")
        if self.codebook_size is None:
            top = self.max_code()
            if top >= codebook_size:
                raise ValueError(f"{self.name}: code id {top} but the model predicts {codebook_size} codes "
                                 "(model.codebook_size)")
        if len(self.labels):
            lo, hi = int(self.labels.min()), int(self.labels.max())
            if lo < 0 or hi >= num_classes:
                bad = hi if hi >= num_classes else lo
                raise ValueError(f"{self.name}: label {bad} but the model has {num_classes} classes "
                                 f"(0..{num_classes - 1}; model.num_classes)")


def _check_codes_array(codes: Any, name: str) -> None:
    if codes.ndim not in (3, 4):
        raise ValueError(f"{name}: codes must be [N, h, w] or [N, A, h, w], got shape {tuple(codes.shape)}")


class TensorCodes(CodeSource):
    """Codes held in memory: ``[N, h, w]`` (one view) or ``[N, A, h, w]``, labels ``[N]``."""

    def __init__(self, codes: Tensor | np.ndarray, labels: Tensor | np.ndarray, name: str = "codes",
                 codebook_size: int | None = None) -> None:
        codes = torch.as_tensor(codes)
        _check_codes_array(codes, name)
        if codes.is_floating_point():
            raise ValueError(f"{name}: codes must be integer ids, got {codes.dtype}")
        if codes.ndim == 3:
            codes = codes[:, None]
        labels = torch.as_tensor(labels).reshape(-1)
        if labels.shape[0] != codes.shape[0]:
            raise ValueError(f"{name}: {codes.shape[0]} code grids but {labels.shape[0]} labels")
        if codes.numel() and int(codes.min()) < 0:
            raise ValueError(f"{name}: negative code id {int(codes.min())}")
        self.name = name
        self.codes = codes.long().cpu().flatten(2)  # [N, A, h*w]
        self.labels = labels.long().cpu().numpy()
        self.num_images, self.augmentations = codes.shape[0], codes.shape[1]
        self.grid = (int(codes.shape[2]), int(codes.shape[3]))
        self.codebook_size = codebook_size

    def gather(self, images: np.ndarray, views: np.ndarray) -> Tensor:
        return self.codes[torch.from_numpy(images), torch.from_numpy(views)]

    def max_code(self) -> int:
        return int(self.codes.max()) if self.codes.numel() else -1


def _meta_int(meta: dict[str, Any], keys: tuple[str, ...], where: Path) -> int | None:
    """The first of ``keys`` (dotted paths) present in ``meta``; a value that is not an integer is an error
    naming the file and the key (a number written as text, ``"6"``, is not taken on trust)."""
    for key in keys:
        node: Any = meta
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            continue
        if isinstance(node, bool) or not isinstance(node, int):
            raise ValueError(f"{where}: {key} must be an integer, got {node!r}")
        return node
    return None


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` file from its header; ``ValueError`` naming the file when the header is
    unreadable or the data after it is shorter than the header says (a file cut short)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            start = f.tell()
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npy file ({type(e).__name__}: {e}; {size} bytes)") from e
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size - start < need:
        raise ValueError(f"{path}: truncated: its header says {dtype} {list(shape)} ({need} bytes of data), the file "
                         f"holds {size - start}; write it again (anyorder tokenize)")
    return tuple(int(s) for s in shape), dtype


_SPOT_ROWS = 1024  # images whose codes are checked against the codebook when a folder is opened


class PretokenizedCodes(CodeSource):
    """A folder written by ``anyorder tokenize``, memory-mapped (see the module docstring)."""

    def __init__(self, directory: str | Path) -> None:
        d = Path(directory)
        self.name = str(d)
        for f in ("codes.npy", "labels.npy", "meta.json"):
            if not (d / f).is_file():
                raise FileNotFoundError(f"{d}: no {f} (a folder written by `anyorder tokenize` has codes.npy, "
                                        "labels.npy and meta.json)")
        meta_file = d / "meta.json"
        try:
            meta = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{meta_file}: invalid JSON ({e})") from e
        if not isinstance(meta, dict):
            raise ValueError(f"{meta_file}: must be a JSON object, got a {type(meta).__name__}")
        _npy_header(d / "codes.npy")  # a truncated file is named as such before numpy maps it
        try:
            codes = np.load(d / "codes.npy", mmap_mode="r")
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"{d / 'codes.npy'}: unreadable ({e})") from e
        _check_codes_array(codes, str(d / "codes.npy"))
        if codes.ndim == 3:
            codes = codes[:, None]
        if codes.dtype not in (np.uint8, np.uint16, np.int16, np.int32, np.int64):
            raise ValueError(f"{d / 'codes.npy'}: codes must be integers (uint16 / int32), got {codes.dtype}")
        _npy_header(d / "labels.npy")
        try:
            labels = np.load(d / "labels.npy", allow_pickle=False)  # [N]: small (8 bytes per image)
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"{d / 'labels.npy'}: unreadable ({e})") from e
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{d / 'labels.npy'}: must be integer class ids [N], got {labels.dtype} "
                             f"{tuple(labels.shape)}")
        n, a, h, w = codes.shape
        if labels.shape[0] != n:
            raise ValueError(f"{d}: codes.npy has {n} images but labels.npy {labels.shape[0]} labels")
        expect = {"images": (_meta_int(meta, ("num_images", "N"), meta_file), n),
                  "augmentations": (_meta_int(meta, ("augmentations", "A"), meta_file), a)}
        for what, (said, found) in expect.items():
            if said is not None and said != found:
                raise ValueError(f"{meta_file} says {said} {what} but codes.npy {tuple(codes.shape)} has "
                                 f"{found}")
        grid = meta.get("grid")
        if grid is not None and grid != [h, w]:
            raise ValueError(f"{meta_file} says grid {grid} but codes.npy is {tuple(codes.shape)} ([N, A, h, w])")
        said_dtype = meta.get("codes", {}).get("dtype") if isinstance(meta.get("codes"), dict) else None
        if said_dtype is not None and said_dtype != codes.dtype.name:
            raise ValueError(f"{meta_file} says codes.dtype {said_dtype} but codes.npy holds {codes.dtype.name}")
        said_labels = meta.get("labels")
        if isinstance(said_labels, dict) and n:
            found = {"min": int(labels.min()), "max": int(labels.max())}
            if any(k in said_labels and said_labels[k] != v for k, v in found.items()):
                raise ValueError(f"{meta_file} says labels {said_labels} but labels.npy holds {found}")
        self.codebook_size = _meta_int(meta, ("codebook_size", "tokenizer.codebook_size"), meta_file)
        if self.codebook_size is None:
            raise ValueError(f"{meta_file}: no codebook_size (the tokenizer's codebook the codes come from)")
        self.codes, self.labels, self.meta = codes, labels.astype(np.int64), meta
        self.num_images, self.augmentations, self.grid = n, a, (h, w)
        # the codebook meta.json names must hold the codes: a spread of images is read now (the whole file
        # would cost a full pass over a 1.28M-image folder), and every batch is bounded in gather()
        self._check_codes(np.unique(np.linspace(0, n - 1, min(n, _SPOT_ROWS)).astype(np.int64)) if n else None)

    def _check_codes(self, images: np.ndarray | None, rows: np.ndarray | None = None) -> None:
        """Code ids of ``images`` (all their views) or of the already-read ``rows`` within the codebook."""
        if rows is None:
            if images is None:
                return
            rows = np.asarray(self.codes[images])
        if rows.size and (int(rows.max()) >= self.codebook_size or int(rows.min()) < 0):
            bad = int(rows.max()) if int(rows.max()) >= self.codebook_size else int(rows.min())
            raise ValueError(f"{self.name}/codes.npy: code id {bad}, outside the codebook of {self.codebook_size} "
                             f"that meta.json names (codebook_size): the codes and meta.json disagree")

    def gather(self, images: np.ndarray, views: np.ndarray) -> Tensor:
        # read rows in file order (faster on disk), then put them back in batch order
        order = np.argsort(images, kind="stable")
        rows = np.asarray(self.codes[images[order], views[order]])  # reads only these rows
        self._check_codes(None, rows)  # a bound check of the batch: nothing next to a training step
        out = np.empty_like(rows)
        out[order] = rows
        return torch.from_numpy(out.reshape(len(images), -1).astype(np.int64))


def open_codes(source: str | Path) -> CodeSource:
    """A pretokenized folder or a ``.safetensors`` file with ``codes [N, h, w]`` / ``[N, A, h, w]`` and
    ``labels [N]`` (the bundled digits, ``mnist``, need the demo's tokenizer: see ``anyorder train``)."""
    p = Path(source)
    if p.is_dir():
        return PretokenizedCodes(p)
    if p.suffix == ".safetensors":
        data = load_state_dict(p)
        for key in ("codes", "labels"):
            if key not in data:
                raise ValueError(f"{p}: missing tensor {key!r} (need codes [N, h, w] and labels [N])")
        return TensorCodes(data["codes"], data["labels"], name=str(p))
    if not p.exists():
        raise FileNotFoundError(f"data.source {str(source)!r}: no such folder or file (a folder written by "
                                "`anyorder tokenize`, a .safetensors file with codes + labels, or mnist)")
    raise ValueError(f"data.source {str(source)!r}: expected a folder written by `anyorder tokenize` or a "
                     ".safetensors file with codes + labels")


class EpochStream:
    """The seeded stream of (image, view) visits: epoch ``e`` is a permutation of the ``N`` images seeded by
    ``(seed, e)``, each visit with a view drawn from the same seed. :meth:`take` reads positions of the
    concatenated epochs (see the module docstring)."""

    def __init__(self, num_images: int, augmentations: int = 1, seed: int = 0) -> None:
        if num_images < 1:
            raise ValueError("the training data holds no images")
        self.n, self.a, self.seed = num_images, augmentations, seed
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """Images ``[N]`` in epoch ``e``'s order and the view of each visit."""
        if e not in self._cache:
            rng = np.random.default_rng([self.seed, e])
            perm = rng.permutation(self.n)
            views = rng.integers(0, self.a, self.n) if self.a > 1 else np.zeros(self.n, dtype=np.int64)
            self._cache = {k: v for k, v in self._cache.items() if k >= e - 1}  # keep at most two epochs
            self._cache[e] = (perm, views)
        return self._cache[e]

    def take(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Images and views at stream positions ``start .. start + count - 1``."""
        images, views = [], []
        pos, left = start, count
        while left > 0:
            e, off = divmod(pos, self.n)
            perm, view = self.epoch(e)
            k = min(left, self.n - off)
            images.append(perm[off : off + k])
            views.append(view[off : off + k])
            pos, left = pos + k, left - k
        if not images:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(images), np.concatenate(views)
