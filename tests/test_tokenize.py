"""``anyorder tokenize``: image folders / webdataset shards -> ``codes.npy [N, A, h, w]`` + labels + meta.

What the official pretokenization scripts do (1d-tokenizer ``scripts/pretokenization.py``, LlamaGen
``extract_codes_c2i.py``): every image is ADM-centre-cropped, then either kept with its horizontal flip
(``adm``, 2 rows) or enlarged 1.1x and cut into torchvision's ten crops (``ten-crop``, 10 rows); each view
is encoded by the tokenizer. The references below rebuild the views with numpy slicing and encode them with
the tokenizer directly. Shapes of the official tokenizers come from the fixture's config JSON.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import adm_center_crop, fixture_dir
from PIL import Image

import anyorder.data.pretokenize as pt
from anyorder.cli.main import main
from anyorder.data.pretokenize import codes_dtype, pretokenize
from anyorder.hub import save_pretrained
from anyorder.tokenizers.demo_vq import DemoVQ, DemoVQConfig
from anyorder.tokenizers.official import load_official_tokenizer

OFFICIAL = {  # folder, checkpoint, config
    "maskgit_vqgan": ("maskgit_vqgan", "vqgan_checkpoint.bin", "vqgan_config.json"),
    "llamagen_vq": ("llamagen_vq", "vq_checkpoint.pt", "vq_config.json"),
}
CLASSES = ["zebra", "Ant", "bee"]  # ImageFolder ids: sorted names, case-sensitive -> Ant=0, bee=1, zebra=2
SIZES = [(23, 31), (40, 27), (19, 19)]  # (h, w): wide, tall, square -> the crop resizes and cuts differently
BAD = {"zebra/broken.png": "truncated", "bee/fake.jpg": "not an image", "Ant/readme.txt": "not an image file"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread beats two contending ones


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _folder(root: Path, per_class: int = 2, seed: int = 0, bad: bool = True) -> dict[str, tuple[np.ndarray, str]]:
    """``root/<class>/<i>.png`` random RGB images of several shapes, plus (``bad``) one truncated PNG, one
    garbage ``.jpg`` and one text file. Returns ``{relative path: (pixels, class name)}`` of the good ones."""
    rng = np.random.default_rng(seed)
    good = {}
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = SIZES[(c + i) % len(SIZES)]
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            (root / name / f"{i}.png").write_bytes(_png(arr))
            good[f"{name}/{i}.png"] = (arr, name)
    if bad:
        whole = _png(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8))
        (root / "zebra/broken.png").write_bytes(whole[: len(whole) // 2])
        (root / "bee/fake.jpg").write_bytes(b"this is not a jpeg")
        (root / "Ant/readme.txt").write_text("notes")
    return good


def _demo_tokenizer(path: Path, codebook_size: int = 64, channels: int = 3, seed: int = 0) -> DemoVQ:
    torch.manual_seed(seed)
    tok = DemoVQ(DemoVQConfig(in_channels=channels, image_size=16, downsample=4, codebook_size=codebook_size,
                              code_dim=4, hidden=16)).eval()
    with torch.no_grad():  # codebook entries drawn from encoder outputs (as its k-means init does): codes vary
        z = tok.encoder(torch.rand(16, channels, 16, 16) * 2 - 1).permute(0, 2, 3, 1).reshape(-1, 4)
        n = min(codebook_size, z.shape[0])
        tok.quantizer.embed[:n] = z[torch.randperm(z.shape[0])[:n]]
    save_pretrained(tok, path)
    return tok


def _encode(tok, views: list[np.ndarray]) -> np.ndarray:
    """Reference: the tokenizer on ``[V, H, W, 3]`` uint8 views, as ToTensor would feed them ([0, 1])."""
    x = torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        return tok.encode(x).numpy()


def _adm_views(arr: np.ndarray, r: int) -> list[np.ndarray]:
    crop = adm_center_crop(Image.fromarray(arr), r)
    return [crop, crop[:, ::-1]]


def _ten_crop_views(arr: np.ndarray, r: int) -> list[np.ndarray]:
    """torchvision TenCrop(r) of the 1.1x ADM crop: corners + centre, then the same of the mirrored image."""
    big = adm_center_crop(Image.fromarray(arr), int(r * 1.1))
    views = []
    for img in (big, big[:, ::-1]):
        h, w = img.shape[:2]
        cy, cx = int(round((h - r) / 2)), int(round((w - r) / 2))
        for y, x in ((0, 0), (0, w - r), (h - r, 0), (h - r, w - r), (cy, cx)):
            views.append(img[y : y + r, x : x + r])
    return views


def _sorted_good(good: dict) -> list[tuple[str, np.ndarray, int]]:
    """The ImageFolder order: classes sorted by name, files sorted inside each."""
    classes = sorted(CLASSES)
    return sorted(((k, a, classes.index(n)) for k, (a, n) in good.items()), key=lambda t: (t[2], t[0]))


def _files(out: Path) -> dict[str, bytes]:
    return {f: (out / f).read_bytes() for f in ("codes.npy", "labels.npy", "meta.json", "classes.json")}


# ------------------------------------------------------------------------------------------- the two recipes


def test_adm_rows_are_the_centre_crop_and_its_flip_and_bad_files_are_listed(tmp_path):
    good = _folder(tmp_path / "src")
    tok = _demo_tokenizer(tmp_path / "tok")
    r = 16
    rc = main(["tokenize", "--tokenizer", str(tmp_path / "tok"), "--data", str(tmp_path / "src"), "--out",
               str(tmp_path / "out"), "--aug", "adm", "--resolution", str(r), "--batch-size", "2", "--workers", "2",
               "--part-size", "3", "--quiet"])
    assert rc == 0
    out = tmp_path / "out"
    codes = np.load(out / "codes.npy", mmap_mode="r")  # what training memory-maps
    labels = np.load(out / "labels.npy")
    meta = json.loads((out / "meta.json").read_text())
    order = _sorted_good(good)
    h = r // tok.downsample
    assert codes.shape == (len(order), 2, h, h) and codes.dtype == np.uint16
    assert json.loads((out / "classes.json").read_text()) == sorted(CLASSES) == ["Ant", "bee", "zebra"]
    assert labels.tolist() == [lab for _, _, lab in order]
    for i, (_, arr, _) in enumerate(order):
        crop, flipped = _adm_views(arr, r)
        assert np.array_equal(codes[i, 0], _encode(tok, [crop])[0])
        assert np.array_equal(codes[i, 1], _encode(tok, [flipped])[0])  # the flip row = encoding the flip
    assert not np.array_equal(codes[:, 0], codes[:, 1]) and len(np.unique(codes)) > 8
    assert meta["N"] == len(order) and meta["A"] == 2 and meta["grid"] == [h, h] and meta["augmentation"] == "adm"
    assert meta["tokenizer"]["sha256"] == hashlib.sha256((tmp_path / "tok/model.safetensors").read_bytes()).hexdigest()
    skipped = {s["file"]: s["reason"] for s in meta["skipped"]}
    assert set(skipped) == set(BAD) and meta["num_skipped"] == len(BAD)
    for f, why in BAD.items():
        assert why in skipped[f], (f, skipped[f])
    assert not (out / "parts").exists()


def test_ten_crop_rows_are_torchvision_tencrop_of_the_1p1x_crop(tmp_path):
    good = _folder(tmp_path / "src", per_class=1, bad=False)
    tok = _demo_tokenizer(tmp_path / "tok")
    r = 5 * tok.downsample  # int(1.1 r) - r = 2: the centre crop sits 1 pixel in from each corner
    meta = pretokenize(tmp_path / "tok", tmp_path / "src", tmp_path / "out", aug="ten-crop", resolution=r,
                       batch_size=2, workers=0, progress=False)
    codes = np.load(tmp_path / "out" / "codes.npy")
    order = _sorted_good(good)
    assert codes.shape == (len(order), 10, r // tok.downsample, r // tok.downsample) and meta["A"] == 10
    assert meta["views"][:5] == ["top_left", "top_right", "bottom_left", "bottom_right", "center"]
    for i, (_, arr, _) in enumerate(order):
        assert np.array_equal(codes[i], _encode(tok, _ten_crop_views(arr, r)))
    assert meta["skipped"] == []


@pytest.mark.parametrize("kind", sorted(OFFICIAL))
def test_official_tokenizer_files(tmp_path, kind):
    folder, ckpt_name, cfg_name = OFFICIAL[kind]
    root = fixture_dir(folder)
    cfg = json.loads((root / cfg_name).read_text())
    r, grid = int(cfg["image_size"]), [int(v) for v in cfg["token_grid"]]
    good = _folder(tmp_path / "src", per_class=1, bad=False)
    meta = pretokenize(root / ckpt_name, tmp_path / "src", tmp_path / "out", aug="adm", resolution=r,
                       batch_size=4, workers=1, tokenizer_config=root / cfg_name, progress=False)
    codes = np.load(tmp_path / "out" / "codes.npy")
    assert codes.shape == (len(good), 2, *grid) and meta["grid"] == grid
    assert codes.dtype == codes_dtype(cfg["codebook_size"]) and codes.max() < cfg["codebook_size"]
    assert meta["tokenizer"]["codebook_size"] == cfg["codebook_size"]
    assert meta["tokenizer"]["sha256"] == hashlib.sha256((root / ckpt_name).read_bytes()).hexdigest()
    tok = load_official_tokenizer(root / ckpt_name, root / cfg_name)
    for i, (_, arr, _) in enumerate(_sorted_good(good)):
        assert np.array_equal(codes[i], _encode(tok, _adm_views(arr, r)))


@pytest.mark.parametrize(("kind", "want", "rows"), [("maskgit_vqgan", "ten-crop", 10), ("llamagen_vq", "adm", 2)])
def test_default_augmentation_follows_the_tokenizer(tmp_path, capsys, kind, want, rows):
    """Without --aug: ten-crop for the MaskGIT-VQGAN (RAR's pretokenization.py --ten_crop), adm for the LlamaGen
    VQ (RandAR's released checkpoints: imagenet-llamagen-adm-256_codes); printed and recorded in meta.json."""
    folder, ckpt_name, cfg_name = OFFICIAL[kind]
    root = fixture_dir(folder)
    r = int(json.loads((root / cfg_name).read_text())["image_size"])
    good = _folder(tmp_path / "src", per_class=1, bad=False)
    args = ["tokenize", "--tokenizer", str(root / ckpt_name), "--tokenizer-config", str(root / cfg_name),
            "--data", str(tmp_path / "src"), "--batch-size", "4", "--workers", "0"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    assert f"augmentation {want} (default for the" in capsys.readouterr().err
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["augmentation"] == want and meta["A"] == rows and meta["augmentation_source"].startswith("default")
    codes = np.load(tmp_path / "out" / "codes.npy")
    tok = load_official_tokenizer(root / ckpt_name, root / cfg_name)
    views = _ten_crop_views if want == "ten-crop" else _adm_views
    arr = _sorted_good(good)[0][1]
    assert codes.shape[1] == rows and np.array_equal(codes[0], _encode(tok, views(arr, r)))
    # --aug still overrides, and says so
    other = "adm" if want == "ten-crop" else "ten-crop"
    assert main([*args, "--out", str(tmp_path / "given"), "--aug", other, "--quiet"]) == 0
    meta = json.loads((tmp_path / "given" / "meta.json").read_text())
    assert meta["augmentation"] == other and meta["augmentation_source"] == "given (--aug)"


def test_dtype_is_uint16_while_the_codebook_fits_else_int32(tmp_path):
    assert codes_dtype(2**16) == np.uint16 and codes_dtype(2**16 + 1) == np.int32 and codes_dtype(16) == np.uint16
    good = _folder(tmp_path / "src", per_class=1, bad=False)
    tok = _demo_tokenizer(tmp_path / "tok", codebook_size=2**16 + 1)
    pretokenize(tmp_path / "tok", tmp_path / "src", tmp_path / "out", aug="none", resolution=8, workers=0,
                progress=False)
    codes = np.load(tmp_path / "out" / "codes.npy")
    assert codes.dtype == np.int32 and codes.shape[1] == 1
    for i, (_, arr, _) in enumerate(_sorted_good(good)):
        assert np.array_equal(codes[i, 0], _encode(tok, [adm_center_crop(Image.fromarray(arr), 8)])[0])


# ------------------------------------------------------------------------- webdataset, resume, two processes


def test_webdataset_shards(tmp_path):
    tok = _demo_tokenizer(tmp_path / "tok")
    rng = np.random.default_rng(3)
    expected = []
    (tmp_path / "shards").mkdir()
    for s in range(2):
        with tarfile.open(tmp_path / "shards" / f"train-{s:04d}.tar", "w") as tar:
            def add(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

            for i in range(3):
                arr = rng.integers(0, 256, (*SIZES[i], 3), dtype=np.uint8)
                label = int(rng.integers(0, 1000))
                add(f"s{s}-{i:03d}.png", _png(arr))
                add(f"s{s}-{i:03d}.cls", str(label).encode())
                expected.append((arr, label))
            add(f"s{s}-bad.jpg", b"\xff\xd8 not really a jpeg")
            add(f"s{s}-bad.cls", b"1")
            add(f"s{s}-nolabel.png", _png(arr))
    meta = pretokenize(tok_dir := tmp_path / "tok", tmp_path / "shards", tmp_path / "out", aug="adm", resolution=16,
                       workers=0, progress=False)
    assert tok_dir.is_dir() and meta["source"]["kind"] == "webdataset" and meta["N"] == len(expected)
    codes, labels = np.load(tmp_path / "out" / "codes.npy"), np.load(tmp_path / "out" / "labels.npy")
    assert labels.tolist() == [lab for _, lab in expected]
    for i, (arr, _) in enumerate(expected):
        assert np.array_equal(codes[i], _encode(tok, _adm_views(arr, 16)))
    skipped = {s["file"]: s["reason"] for s in meta["skipped"]}
    assert set(skipped) == {f"train-{s:04d}.tar/s{s}-{k}" for s in range(2) for k in ("bad", "nolabel")}
    assert all("cls" in skipped[f"train-{s:04d}.tar/s{s}-nolabel"] for s in range(2))
    assert not (tmp_path / "out" / "classes.json").exists()


def test_rerun_after_a_kill_resumes_and_gives_identical_files(tmp_path, monkeypatch):
    _folder(tmp_path / "src", per_class=3)
    _demo_tokenizer(tmp_path / "tok")
    kw = dict(aug="adm", resolution=16, batch_size=2, part_size=2, workers=0, progress=False)
    calls = {"n": 0, "kill_at": None}
    real = pt._Encoder.encode_views

    class Killed(Exception):
        pass

    def counting(self, views):
        calls["n"] += 1
        if calls["n"] == calls["kill_at"]:
            raise Killed
        return real(self, views)

    monkeypatch.setattr(pt._Encoder, "encode_views", counting)
    pretokenize(tmp_path / "tok", tmp_path / "src", tmp_path / "whole", **kw)
    uninterrupted = calls["n"]
    assert uninterrupted >= 4

    calls.update(n=0, kill_at=3)  # dies inside the third batch: two parts are on disk, nothing else
    with pytest.raises(Killed):
        pretokenize(tmp_path / "tok", tmp_path / "src", tmp_path / "cut", **kw)
    assert len(list((tmp_path / "cut" / "parts").glob("part-*.npz"))) == 2
    assert not (tmp_path / "cut" / "meta.json").exists() and not (tmp_path / "cut" / "codes.npy").exists()
    (tmp_path / "cut" / "parts" / ".part-00002.npz.x.tmp").write_bytes(b"half-written")  # debris of the kill

    calls.update(n=0, kill_at=None)
    pretokenize(tmp_path / "tok", tmp_path / "src", tmp_path / "cut", **kw)
    assert calls["n"] == uninterrupted - 2  # the finished parts were not encoded again
    assert _files(tmp_path / "cut") == _files(tmp_path / "whole")

    calls.update(n=0)  # a rerun of a finished output does nothing
    pretokenize(tmp_path / "tok", tmp_path / "src", tmp_path / "cut", **kw)
    assert calls["n"] == 0 and _files(tmp_path / "cut") == _files(tmp_path / "whole")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_processes_under_torchrun_equal_one_process(tmp_path):
    _folder(tmp_path / "src", per_class=3)
    _demo_tokenizer(tmp_path / "tok")
    args = ["tokenize", "--tokenizer", str(tmp_path / "tok"), "--data", str(tmp_path / "src"), "--aug", "adm",
            "--resolution", "16", "--batch-size", "2", "--part-size", "2", "--workers", "0", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "anyorder.cli", *args, "--out", str(tmp_path / "two")]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _files(tmp_path / "two") == _files(tmp_path / "one")


# ----------------------------------------------------------------------------------------------- bad input


def test_clear_errors_before_any_work(tmp_path, capsys):
    _folder(tmp_path / "src", per_class=1)
    tok = _demo_tokenizer(tmp_path / "tok")
    src, out = tmp_path / "src", tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="tokenizer not found.*nope.bin"):
        pretokenize(tmp_path / "nope.bin", src, out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        pretokenize(tmp_path / "tok", tmp_path / "empty", out)
    (tmp_path / "texts" / "a").mkdir(parents=True)
    (tmp_path / "texts" / "a" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        pretokenize(tmp_path / "tok", tmp_path / "texts", out)
    (tmp_path / "imagenet" / "train" / "n01").mkdir(parents=True)  # the dataset root instead of its train/
    (tmp_path / "imagenet" / "train" / "n01" / "a.png").write_bytes(_png(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(ValueError, match="look like dataset splits.*imagenet/train"):
        pretokenize(tmp_path / "tok", tmp_path / "imagenet", out)
    with pytest.raises(FileNotFoundError, match="data not found"):
        pretokenize(tmp_path / "tok", tmp_path / "missing", out)
    bad_r = 3 * tok.downsample + 1
    with pytest.raises(ValueError, match=f"resolution {bad_r} is not a multiple of .* {tok.downsample}"):
        pretokenize(tmp_path / "tok", src, out, resolution=bad_r)
    assert not out.exists()  # nothing was started
    rc = main(["tokenize", "--tokenizer", str(tmp_path / "tok"), "--data", str(src), "--out", str(out),
               "--resolution", str(bad_r)])
    err = capsys.readouterr().err
    assert rc == 2 and f"not a multiple of the tokenizer's downsampling factor {tok.downsample}" in err

    pretokenize(tmp_path / "tok", src, out, aug="adm", resolution=16, workers=0, progress=False)
    with pytest.raises(ValueError, match="another run.*augmentation"):
        pretokenize(tmp_path / "tok", src, out, aug="ten-crop", resolution=16, workers=0, progress=False)
