"""Evaluation protocols per family (issue 21): labels, dtype path, uint8 conversion, as each
official script has them.

- RAR (1d-tokenizer ``sample_imagenet_rar.py``): ``list(range(1000)) * 50`` labels, float32 (TF32
  allowed), ``clamp(x, 0, 1) * 255`` truncated to uint8.
- RandAR (``tools/search_cfg_weights.py``): ``torch.randint(0, num_classes, ...)`` labels, the model
  cast to bf16, ``r * 127.5 + 128`` clamped and cast (round half up).
- LPD (``engine.py evaluate``): ``np.arange(C).repeat(N // C)`` labels, ``torch.autocast(bfloat16)``
  around sampling and decoding, ``np.round(np.clip(x * 255, 0, 255))`` on ``x = (r + 1) / 2`` (bf16)
  cast to float32.

``anyorder sample --npz`` applies the model family's protocol unless ``--protocol`` names another,
records it in the JSON beside the file, and ``anyorder eval`` copies that record into its metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fixture_dir

import anyorder.sampling.batch as batch_lib
from anyorder.cli.main import main
from anyorder.evaluation.evaluate import sample_record
from anyorder.io.npz import read_samples
from anyorder.models import get_family
from anyorder.models.spec import EvalProtocol
from anyorder.sampling.batch import images_to_uint8
from anyorder.sampling.protocol import (
    balanced_labels,
    get_protocol,
    protocol_labels,
    random_labels,
    sorted_labels,
    with_dtype,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_label_layouts_are_the_official_scripts_lists() -> None:
    C, per = 1000, 50
    rar = list(range(C)) * per  # sample_imagenet_rar.py
    assert balanced_labels(C * per, range(C)).tolist() == rar
    assert protocol_labels(get_protocol("rar"), C * per, range(C), seed=0).tolist() == rar
    lpd = np.arange(0, C).repeat(C * per // C)  # LPD engine.py
    assert sorted_labels(C * per, range(C)).tolist() == lpd.tolist()
    # other N: the same counts as balanced (the first N % C classes one more), in class order
    assert sorted_labels(7, [4, 1, 9]).tolist() == [4, 4, 4, 1, 1, 9, 9]
    with pytest.raises(ValueError, match="num-samples"):
        sorted_labels(0, [1])


def test_random_labels_are_uniform_and_fixed_by_the_seed() -> None:
    C, N = 10, 20_000
    y = random_labels(N, range(C), seed=3)
    assert y.dtype == torch.int64 and torch.equal(y, random_labels(N, range(C), seed=3))
    assert not torch.equal(y, random_labels(N, range(C), seed=4))
    counts = torch.bincount(y, minlength=C).double()
    chi2 = float(((counts - N / C) ** 2 / (N / C)).sum())
    assert chi2 < 35.0  # 9 degrees of freedom: P(chi2 > 35) < 1e-4
    assert len(set(counts.tolist())) > 1  # not balanced
    assert set(random_labels(100, [7, 2], seed=0).tolist()) == {7, 2}
    assert get_protocol("randar").labels == "random"


def _lpd_uint8(x_bf16: torch.Tensor) -> np.ndarray:
    """LPD engine.py: ``sampled_images.to(torch.float32)``, then ``np.round(np.clip(img * 255, 0,
    255))`` and ``astype(np.uint8)``."""
    img = x_bf16.to(torch.float32).numpy()
    return np.round(np.clip(img * 255, 0, 255)).astype(np.uint8)


def _row(x: np.ndarray, mode: str) -> np.ndarray:
    """``images_to_uint8`` of a row of values (one channel)."""
    return images_to_uint8(torch.from_numpy(x).reshape(1, 1, 1, -1), mode)[0, 0, :, 0]


def test_uint8_round_half_even_is_lpds_conversion() -> None:
    # float32 values whose product with 255 is exactly k + 0.5 (numpy rounds those to even)
    ties = []
    for k in range(255):
        x = np.float32((k + 0.5) / 255)
        for cand in (x, np.nextafter(x, np.float32(0)), np.nextafter(x, np.float32(1))):
            if cand * np.float32(255) == np.float32(k + 0.5):
                ties.append(cand)
    ties = np.array(ties, dtype=np.float32)
    assert len(ties) > 20
    x = np.concatenate([ties, np.linspace(-0.1, 1.1, 2001, dtype=np.float32)])
    ours = _row(x, "round-half-even")
    lpd = np.round(np.clip(x * np.float32(255), 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(ours, lpd)
    # k even: half to even keeps k, round half up (RandAR's) gives k + 1
    even = ties[(np.floor(ties * np.float32(255)) % 2) == 0]
    assert len(even) and (_row(even, "round") != _row(even, "round-half-even")).all()
    # bf16 decoder outputs r in about [-1, 1]: x = (r + 1) / 2 computed in bf16, as under autocast
    r = torch.linspace(-1.05, 1.05, 4001).to(torch.bfloat16)
    x16 = (r + 1) / 2
    assert x16.dtype == torch.bfloat16
    got = images_to_uint8(x16.reshape(1, 1, 1, -1), "round-half-even")[0, 0, :, 0]
    np.testing.assert_array_equal(got, _lpd_uint8(x16))


def test_the_families_protocols_hold_the_official_values() -> None:
    rar, randar = get_family("rar").protocol, get_family("randar").protocol
    assert (rar.labels, rar.dtype, rar.uint8, rar.tf32) == ("balanced", "fp32", "truncate", True)
    assert rar.num_samples == 50_000
    assert rar.guidance is None  # README_RAR gives settings; there is no search script
    assert (randar.labels, randar.dtype, randar.uint8) == ("random", "bf16-weights", "round")
    assert randar.tf32
    g = randar.guidance
    np.testing.assert_allclose(g.scales, np.arange(2.0, 8.0 + 1e-4, 0.2), atol=1e-9)
    assert (g.num_samples, g.report_samples, g.metric) == (10_000, 50_000, "fid")
    assert get_protocol("anyorder").uint8 == "round"
    assert with_dtype(rar, "bf16-autocast").name == "rar+bf16-autocast"
    assert with_dtype(rar, "fp32") is rar
    with pytest.raises(ValueError, match="uint8 must be one of"):
        EvalProtocol("x", uint8="floor")
    with pytest.raises(ValueError, match="unknown evaluation protocol 'nope'"):
        get_protocol("nope")


# ------------------------------------------------------------------------- sample --npz, eval
def _rar(out: Path, n: int, *extra: str) -> list[str]:
    return ["sample", "--model", str(fixture_dir("rar")),
            "--tokenizer", str(fixture_dir("maskgit_vqgan") / "vqgan_checkpoint.bin"),
            "--num-samples", str(n), "--npz", str(out), "--batch-size", "4",
            "--guidance-scale", "2", "--device", "cpu", "--quiet", *extra]


def _randar(out: Path, n: int, *extra: str) -> list[str]:
    return ["sample", "--model", str(fixture_dir("randar")),
            "--tokenizer", str(fixture_dir("llamagen_vq") / "vq_checkpoint.pt"),
            "--num-samples", str(n), "--npz", str(out), "--batch-size", "4", "--steps", "6",
            "--guidance-scale", "3", "--device", "cpu", "--quiet", *extra]


def test_rar_samples_are_truncated_by_default_and_rounded_under_ours(tmp_path: Path) -> None:
    """The same codes (same labels, dtype and seed) converted two ways: ``floor(255 x)`` (RAR) and
    ``floor(255 x + 0.5)`` (ours) differ by 0 or 1 level everywhere, by 1 about half the time inside
    (0, 1)."""
    assert main(_rar(tmp_path / "rar.npz", 6)) == 0
    assert main(_rar(tmp_path / "ours.npz", 6, "--protocol", "anyorder")) == 0
    rec = json.loads((tmp_path / "rar.json").read_text())
    assert rec["protocol"] == {"name": "rar", "labels": "balanced", "dtype": "fp32",
                               "uint8": "truncate", "tf32": True}
    assert rec["uint8"] == "truncate"
    truncated, y1 = read_samples(tmp_path / "rar.npz")
    rounded, y2 = read_samples(tmp_path / "ours.npz")
    assert np.array_equal(y1, y2)
    diff = rounded.astype(int) - truncated.astype(int)
    assert set(np.unique(diff).tolist()) <= {0, 1}
    inside = (truncated > 0) & (truncated < 254)  # away from the clamped ends: half round up
    assert inside.sum() > 500 and 0.35 < diff[inside].mean() < 0.65


def test_randar_samples_random_labels_with_bf16_weights_by_default(tmp_path: Path,
                                                                    monkeypatch) -> None:
    seen = []
    real = batch_lib.sample_chunk

    def spy(model, labels, *a, **k):
        seen.append(next(model.parameters()).dtype)
        return real(model, labels, *a, **k)

    monkeypatch.setattr(batch_lib, "sample_chunk", spy)
    C = json.loads((fixture_dir("randar") / "config.json").read_text())["num_classes"]
    assert main(_randar(tmp_path / "r.npz", 8, "--seed", "5")) == 0
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["protocol"]["name"] == "randar" and rec["protocol"]["labels"] == "random"
    assert rec["dtype"] == "bf16-weights"
    labels = read_samples(tmp_path / "r.npz")[1]
    assert labels.tolist() == random_labels(8, range(C), seed=5).tolist()
    assert seen and set(seen) == {torch.bfloat16}
    seen.clear()
    # an explicit dtype replaces the protocol's path
    assert main(_randar(tmp_path / "f.npz", 8, "--dtype", "fp32")) == 0
    assert set(seen) == {torch.float32}
    assert json.loads((tmp_path / "f.json").read_text())["protocol"]["name"] == "randar+fp32"


def test_bf16_autocast_samples_and_decodes_under_autocast(tmp_path: Path, monkeypatch) -> None:
    """LPD's path (engine.py: sample_tokens and vqgan.decode_code inside torch.autocast(bfloat16))
    with fp32 weights; any family can be sampled so with --dtype bf16-autocast."""
    seen = []
    real = batch_lib.images_to_uint8

    def spy(images, mode="round"):
        seen.append((torch.is_autocast_enabled("cpu"), images.dtype))
        return real(images, mode)

    monkeypatch.setattr(batch_lib, "images_to_uint8", spy)
    assert main(_rar(tmp_path / "a.npz", 4, "--dtype", "bf16-autocast")) == 0
    assert seen == [(True, torch.bfloat16)]  # the tokenizer decoded under autocast
    rec = json.loads((tmp_path / "a.json").read_text())
    assert rec["protocol"]["name"] == "rar+bf16-autocast" and rec["protocol"]["uint8"] == "truncate"
    assert not torch.is_autocast_enabled("cpu")


def test_protocol_needs_npz_and_a_known_name(tmp_path: Path, capsys) -> None:
    grid = ["sample", "--model", str(fixture_dir("rar")), "--tokenizer",
            str(fixture_dir("maskgit_vqgan") / "vqgan_checkpoint.bin"), "--device", "cpu",
            "--out", str(tmp_path / "g.png"), "--protocol", "rar"]
    assert main(grid) == 2
    assert "--protocol says how an evaluation npz is made" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(_rar(tmp_path / "y.npz", 4, "--protocol", "nope"))
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_eval_records_the_protocol_of_the_samples(tmp_path: Path) -> None:
    assert main(_rar(tmp_path / "s.npz", 4)) == 0
    rec = sample_record(tmp_path / "s.npz")
    assert rec["protocol"]["name"] == "rar" and rec["samples_record"] == str(tmp_path / "s.json")
    assert rec["sampling"]["guidance_scale"] == 2.0
    (tmp_path / "s.json").unlink()
    assert sample_record(tmp_path / "s.npz")["protocol"] is None
    (tmp_path / "s.json").write_text("{not json")
    assert sample_record(tmp_path / "s.npz")["samples_record"].startswith("unreadable")
