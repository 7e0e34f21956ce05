"""The README's "Train on ImageNet" commands, end to end on the bundled digits written as an image folder.

ImageNet's ``train/`` is ``train/<wnid>/<file>.JPEG``; here ``digits/<0..9>/<i>.png`` (a few per class) plays
its part and a small demo tokenizer plays the official one. The same two commands run, each with 2 processes
under ``torchrun`` (gloo, CPU):

    torchrun --nproc_per_node 2 -m anyorder.cli tokenize --tokenizer TOK --data digits --out codes --aug adm ...
    torchrun --nproc_per_node 2 -m anyorder.cli train --model rar --out run data.source=codes ...
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anyorder.data.mnist import load_mnist
from anyorder.data.pretokenize import pretokenize
from anyorder.hub import from_pretrained, save_pretrained
from anyorder.tokenizers.demo_vq import DemoVQ, DemoVQConfig

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")

PER_CLASS = 3


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "anyorder.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tokenized_digits(tmp_path_factory):
    """``anyorder tokenize`` (2 processes) on an image folder of digit PNGs; returns paths and references."""
    root = tmp_path_factory.mktemp("imagenet_pipeline")
    images, labels, _, _ = load_mnist()
    picked: dict[int, list[np.ndarray]] = {}
    for img, lab in zip(images, labels.tolist()):
        if len(picked.setdefault(lab, [])) < PER_CLASS:
            picked[lab].append((img[0].numpy() * 255).round().astype(np.uint8))
    for lab, arrs in picked.items():
        (root / "digits" / str(lab)).mkdir(parents=True)
        for i, arr in enumerate(arrs):
            Image.fromarray(arr).save(root / "digits" / str(lab) / f"{i:04d}.png")
    torch.manual_seed(0)
    tok = DemoVQ(DemoVQConfig(in_channels=1, image_size=28, downsample=4, codebook_size=32, code_dim=4,
                              hidden=16)).eval()
    with torch.no_grad():  # codebook from encoder outputs of digits, so the codes vary
        z = tok.encoder(images[:8] * 2 - 1).permute(0, 2, 3, 1).reshape(-1, 4)
        tok.quantizer.embed.copy_(z[torch.randperm(z.shape[0])[: tok.codebook_size]])
    save_pretrained(tok, root / "tokenizer")
    done = _torchrun(["tokenize", "--tokenizer", str(root / "tokenizer"), "--data", str(root / "digits"),
                      "--out", str(root / "codes"), "--aug", "adm", "--resolution", "28", "--batch-size", "4",
                      "--part-size", "8", "--workers", "0", "--quiet"], root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, tok, picked


def test_tokenize_digits_folder_with_two_processes(tokenized_digits):
    root, tok, picked = tokenized_digits
    codes = np.load(root / "codes" / "codes.npy", mmap_mode="r")
    labels = np.load(root / "codes" / "labels.npy")
    meta = json.loads((root / "codes" / "meta.json").read_text())
    classes = sorted(str(c) for c in picked)
    assert json.loads((root / "codes" / "classes.json").read_text()) == classes
    order = [(arr, int(c)) for c in classes for arr in picked[int(c)]]  # ImageFolder order
    grid = 28 // tok.downsample
    assert codes.shape == (len(order), 2, grid, grid) and meta["N"] == len(order) and meta["num_skipped"] == 0
    assert labels.tolist() == [lab for _, lab in order]
    # a 28x28 digit at resolution 28: the ADM crop keeps it as is, so row 0 is the digit's own codes
    digits = torch.from_numpy(np.stack([a for a, _ in order])).float().div(255.0)[:, None]
    with torch.no_grad():
        assert np.array_equal(codes[:, 0], tok.encode(digits).numpy())
        assert np.array_equal(codes[:, 1], tok.encode(digits.flip(-1)).numpy())
    assert len(np.unique(codes)) > 4
    # one process writes the same files as the two
    pretokenize(root / "tokenizer", root / "digits", root / "codes_1", aug="adm", resolution=28, batch_size=4,
                part_size=8, workers=0, progress=False)
    for f in ("codes.npy", "labels.npy", "classes.json", "meta.json"):
        assert (root / "codes_1" / f).read_bytes() == (root / "codes" / f).read_bytes(), f


def test_train_on_tokenized_digits(tokenized_digits):
    root, tok, picked = tokenized_digits
    args = ["train", "--model", "rar", "--out", str(root / "run"), "--quiet", f"data.source={root / 'codes'}",
            f"model.codebook_size={tok.codebook_size}", f"model.num_classes={len(picked)}", "model.dim=32",
            "model.depth=1", "model.n_head=2", "model.mlp_hidden=64", "train.device=cpu", "train.batch_size=8",
            "train.steps=3", "train.ckpt_every=3", "train.log_every=1", "train.warmup_steps=1"]
    done = _torchrun(args, root)
    assert done.returncode == 0, done.stderr[-3000:]
    model = from_pretrained(root / "run" / "model")
    assert model.codebook_size == tok.codebook_size and model.seq_len == (28 // tok.downsample) ** 2
    log = json.loads((root / "run" / "train_log.json").read_text())
    assert log["steps"] == 3 and all(np.isfinite(h["loss"]) for h in log["history"])
