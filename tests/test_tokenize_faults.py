"""``anyorder tokenize`` on trees and files that went wrong when tried (issue 22): symbolic link loops and
second paths to one image, 16-bit and float images, broken webdataset shards, an unwritable ``--out``."""

from __future__ import annotations

import io
import json
import os
import tarfile

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


# ------------------------------------------------------------------------------- 16-bit and float images


def _gray(seed: int = 5, h: int = 12, w: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _deep_files(arr: np.ndarray) -> dict[str, bytes]:
    """``arr`` (8-bit gray) as files PIL opens in 16-bit / 32-bit / float modes, each ``arr`` at full scale:
    ``v * 257`` is 16-bit ``v`` (what a 16-bit export of an 8-bit picture holds), ``v / 255`` float ``v``."""
    out = {}
    for name, img, fmt in (
        ("i16.png", Image.fromarray(arr.astype(np.uint16) * 257), "PNG"),  # opens as I;16
        ("i16b.tif", Image.frombytes("I;16B", arr.shape[::-1], (arr.astype(">u2") * 257).tobytes()), "TIFF"),
        ("i32.tif", Image.fromarray(arr.astype(np.int32) * 257), "TIFF"),  # opens as I
        ("float.tif", Image.fromarray(arr.astype(np.float32) / 255), "TIFF"),  # opens as F
    ):
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        out[name] = buf.getvalue()
    return out


def test_deep_images_are_scaled_not_clipped_white(tmp_path):
    arr = _gray()
    files = _deep_files(arr)
    modes = {n: Image.open(io.BytesIO(b)).mode for n, b in files.items()}
    assert modes == {"i16.png": "I;16", "i16b.tif": "I;16B", "i32.tif": "I", "float.tif": "F"}
    (tmp_path / "deep/a").mkdir(parents=True)
    (tmp_path / "flat/a").mkdir(parents=True)
    for i, (name, data) in enumerate(sorted(files.items())):
        (tmp_path / "deep/a" / f"{i}-{name}").write_bytes(data)
        (tmp_path / "flat/a" / f"{i}.png").write_bytes(_png(arr))  # the same picture in 8 bits
    _demo_tokenizer(tmp_path / "tok")
    kw = dict(aug="adm", resolution=8, workers=0, progress=False)
    meta = pretokenize(tmp_path / "tok", tmp_path / "deep", tmp_path / "out_deep", **kw)
    pretokenize(tmp_path / "tok", tmp_path / "flat", tmp_path / "out_flat", **kw)
    assert meta["N"] == 4 and meta["skipped"] == []
    deep, flat = (np.load(tmp_path / d / "codes.npy") for d in ("out_deep", "out_flat"))
    assert np.array_equal(deep, flat)


def test_floats_outside_0_1_and_ints_beyond_16_bits_are_skipped_and_listed(tmp_path):
    (tmp_path / "src/a").mkdir(parents=True)
    (tmp_path / "src/a/ok.png").write_bytes(_png(_gray()))
    for name, arr in (("hdr.tif", np.full((12, 12), 3.5, np.float32)), ("big.tif", np.full((12, 12), 70000, np.int32))):
        Image.fromarray(arr).save(tmp_path / "src/a" / name)
    _demo_tokenizer(tmp_path / "tok")
    meta = pretokenize(tmp_path / "tok", tmp_path / "src", tmp_path / "out", aug="none", resolution=8, workers=0,
                       progress=False)
    skipped = {s["file"]: s["reason"] for s in meta["skipped"]}
    assert meta["N"] == 1 and set(skipped) == {"a/hdr.tif", "a/big.tif"}
    assert "[3.5, 3.5]" in skipped["a/hdr.tif"] and "not [0, 1]" in skipped["a/hdr.tif"]
    assert "70000" in skipped["a/big.tif"] and "0..65535" in skipped["a/big.tif"]


# ----------------------------------------------------------------------------------- webdataset shards


def _shard(samples: list[tuple[str, dict[str, bytes]]]) -> tuple[bytes, dict[str, int]]:
    """A tar of webdataset samples ``(key, {ext: data})`` and the byte offset of each member's header."""
    buf, offsets = io.BytesIO(), {}
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key, fields in samples:
            for ext, data in fields.items():
                offsets[f"{key}.{ext}"] = buf.tell()
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), offsets


CUTS = {  # where the shard is cut: (member, bytes past its header's start)
    "at a member boundary": ("s2.png", 0),
    "inside a header": ("s2.png", 200),
    "inside the data": ("s2.png", 600),
}


@pytest.mark.parametrize("where", sorted(CUTS))
def test_a_truncated_shard_keeps_what_came_before_and_says_it_was_cut(tmp_path, where):
    images = [_rgb(i) for i in range(4)]
    data, offsets = _shard([(f"s{i}", {"png": _png(a), "cls": str(i).encode()}) for i, a in enumerate(images)])
    member, past = CUTS[where]
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards/a-0000.tar").write_bytes(data[: offsets[member] + past])
    _demo_tokenizer(tmp_path / "tok")
    meta = pretokenize(tmp_path / "tok", tmp_path / "shards", tmp_path / "out", aug="none", resolution=8,
                       workers=0, progress=False)
    assert meta["N"] == 2 and np.load(tmp_path / "out/labels.npy").tolist() == [0, 1]
    skipped = {s["file"]: s["reason"] for s in meta["skipped"]}
    assert "truncated tar" in skipped.pop("a-0000.tar#truncated")
    assert all("unexpected end of data" in why for why in skipped.values()), skipped  # tarfile's own word


def test_whole_shards_with_odd_members(tmp_path):
    good = _rgb(0)
    data, _ = _shard([("ok", {"png": _png(good), "cls": b"3"}), ("text", {"txt": b"hello", "cls": b"1"}),
                      ("fake", {"jpg": b"\xff\xd8 not a jpeg", "cls": b"1"}), ("nolabel", {"png": _png(good)}),
                      ("badlabel", {"png": _png(good), "cls": b"three"}), ("neg", {"png": _png(good), "cls": b"-1"})])
    (tmp_path / "one.tar").write_bytes(data)
    _demo_tokenizer(tmp_path / "tok")
    meta = pretokenize(tmp_path / "tok", tmp_path / "one.tar", tmp_path / "out", aug="none", resolution=8,
                       workers=0, progress=False)
    assert meta["N"] == 1 and np.load(tmp_path / "out/labels.npy").tolist() == [3]
    skipped = {s["file"]: s["reason"] for s in meta["skipped"]}
    assert set(skipped) == {f"one.tar/{k}" for k in ("text", "fake", "nolabel", "badlabel", "neg")}
    assert "no image field" in skipped["one.tar/text"] and "not an image" in skipped["one.tar/fake"]
    assert "no cls field" in skipped["one.tar/nolabel"] and "bad cls field" in skipped["one.tar/badlabel"]
    assert "negative class id" in skipped["one.tar/neg"]
