"""``anyorder tokenize`` on trees and files that went wrong when tried (issue 22): symbolic link loops and
second paths to one image, 16-bit and float images, broken webdataset shards, an unwritable ``--out``."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from test_tokenize import _demo_tokenizer

from anyorder.data.images import ImageFolderSource
from anyorder.data.pretokenize import pretokenize

pytestmark = pytest.mark.usefixtures("one_thread")


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr) if mode is None else Image.fromarray(arr, mode)).save(buf, format="PNG")
    return buf.getvalue()


def _rgb(seed: int, h: int = 12, w: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------- symbolic links


def test_a_link_back_up_is_not_followed_round_and_round(tmp_path):
    # the reproduction of the issue: one PNG and `ln -s .. D/a/loop` listed 41 images
    (tmp_path / "D/a").mkdir(parents=True)
    (tmp_path / "D/a/x.png").write_bytes(_png(_rgb(0)))
    os.symlink("..", tmp_path / "D/a/loop")
    src = ImageFolderSource(tmp_path / "D")
    assert src.items == [("a/x.png", 0)]
    skipped = {s["file"]: s["reason"] for s in src.listing_skipped}
    assert list(skipped) == ["a/loop"] and "loop" in skipped["a/loop"]


def test_second_paths_to_a_folder_or_a_file_are_listed_once_and_named_in_meta(tmp_path):
    d = tmp_path / "D"
    for c in ("a", "b"):
        (d / c / "sub").mkdir(parents=True)
    arrays = {rel: _rgb(i) for i, rel in enumerate(["a/0.png", "a/sub/1.png", "b/2.png"])}
    for rel, arr in arrays.items():
        (d / rel).write_bytes(_png(arr))
    os.symlink("..", d / "a/sub/up")  # a loop two levels deep
    os.symlink("../b", d / "a/to_b")  # class b reached from inside class a: stays class b's
    os.symlink("0.png", d / "a/same.png")  # a second name for one file
    os.symlink("a", d / "c")  # a class folder that is another class folder
    _demo_tokenizer(tmp_path / "tok")
    meta = pretokenize(tmp_path / "tok", d, tmp_path / "out", aug="none", resolution=8, workers=0,
                       progress=False)
    labels = np.load(tmp_path / "out" / "labels.npy").tolist()
    assert meta["N"] == 3 and labels == [0, 0, 1]  # a/0.png, a/sub/1.png, b/2.png: each real file once
    skipped = {s["file"]: s["reason"] for s in json.loads((tmp_path / "out/meta.json").read_text())["skipped"]}
    assert set(skipped) == {"a/sub/up", "a/to_b", "a/same.png", "c/"}
    assert "loop" in skipped["a/sub/up"] and "b" in skipped["a/to_b"] and "a/0.png" in skipped["a/same.png"]
    assert meta["source"]["empty_classes"] == ["c"]
