"""The ADM npz layout (anyorder.io.npz): one writer and reader for sample batches, chunks and references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anyorder.io.npz import (
    array_header,
    iter_image_batches,
    merge_sample_chunks,
    read_samples,
    write_npz,
    write_samples,
)


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 6, 5, 3), dtype=np.uint8)


def test_the_same_samples_give_the_same_bytes(tmp_path: Path) -> None:
    imgs, labels = _images(4, 0), np.array([3, 1, 0, 2])
    a, b = write_samples(tmp_path / "a.npz", imgs, labels), write_samples(tmp_path / "b.npz", imgs, labels)
    assert a.read_bytes() == b.read_bytes()
    got, got_labels = read_samples(a)
    np.testing.assert_array_equal(got, imgs)
    assert got_labels.dtype == np.int64 and got_labels.tolist() == [3, 1, 0, 2]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic: no temporary file left behind


def test_merged_chunks_equal_the_concatenated_batch(tmp_path: Path) -> None:
    parts = [(_images(n, n), np.arange(n) % 3) for n in (3, 5, 1)]
    chunks = [write_samples(tmp_path / f"c{i}.npz", x, y) for i, (x, y) in enumerate(parts)]
    merged = merge_sample_chunks(tmp_path / "all.npz", chunks)
    images, labels = read_samples(merged)
    np.testing.assert_array_equal(images, np.concatenate([x for x, _ in parts]))
    np.testing.assert_array_equal(labels, np.concatenate([y for _, y in parts]))
    assert array_header(merged, "arr_0")[0] == (9, 6, 5, 3)  # from the header alone
    assert sum(len(b) for b in iter_image_batches(merged, 4)) == 9
    again = merge_sample_chunks(tmp_path / "again.npz", chunks)
    assert again.read_bytes() == merged.read_bytes()


def test_bad_chunks_and_arrays_are_named(tmp_path: Path) -> None:
    write_samples(tmp_path / "nolabels.npz", _images(2, 0))
    write_samples(tmp_path / "other.npz", np.zeros((2, 4, 4, 3), np.uint8), [0, 1])
    ok = write_samples(tmp_path / "ok.npz", _images(2, 1), [0, 1])
    with pytest.raises(ValueError, match=r"nolabels\.npz: not a sample chunk"):
        merge_sample_chunks(tmp_path / "m.npz", [ok, tmp_path / "nolabels.npz"])
    with pytest.raises(ValueError, match="different shapes"):
        merge_sample_chunks(tmp_path / "m.npz", [ok, tmp_path / "other.npz"])
    assert not (tmp_path / "m.npz").exists()
    with pytest.raises(ValueError, match=r"arr_1 must hold 2 integer labels"):
        write_samples(tmp_path / "x.npz", _images(2, 0), [0.5, 1.0])
    with pytest.raises(ValueError, match=r"must end in \.npz"):
        write_npz(tmp_path / "x.npy", a=np.zeros(2))
    with pytest.raises(ValueError, match=r"no mu in the npz; keys: \['arr_0', 'arr_1'\]"):
        array_header(ok, "mu")


def test_object_arrays_are_refused_naming_the_file_and_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"x\.npz: meta is an object array"):
        write_npz(tmp_path / "x.npz", arr_0=_images(1, 0), meta=np.array([{"a": 1}], dtype=object))
    assert not (tmp_path / "x.npz").exists()
