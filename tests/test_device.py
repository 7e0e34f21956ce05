"""Every sampling and editing path runs on every device present (CPU always, CUDA when available): random
orders are drawn on the generator's device, seeded runs repeat, and the CLI takes ``--device``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import fixture_dir, fixture_geometry

from anyorder import editing as E
from anyorder.cli.main import main
from anyorder.hub import load_official
from anyorder.nn import orders as orders_lib
from anyorder.sampling import generate

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _model(family: str, device: str):
    d = fixture_dir(family)
    return load_official(d / ("checkpoint.bin" if family == "rar" else "checkpoint.safetensors"),
                         d / "config.json", device=device).eval()


@pytest.mark.parametrize("device", DEVICES)
def test_random_orders_are_drawn_on_the_generators_device(device):
    g = torch.Generator(device=device).manual_seed(0)
    orders = orders_lib.random_orders(4, 9, generator=g, device=device)
    assert orders.device.type == device and orders_lib.is_permutation(orders)
    # a CPU generator gives the same orders whichever device they are put on
    cpu = orders_lib.random_orders(4, 9, generator=torch.Generator().manual_seed(0))
    put = orders_lib.random_orders(4, 9, generator=torch.Generator().manual_seed(0), device=device)
    assert torch.equal(cpu, put.cpu())
    base = orders_lib.raster(3, 3).to(device)
    mixed = orders_lib.training_orders(16, base, 0.5, generator=torch.Generator(device=device).manual_seed(1))
    assert mixed.device.type == device and orders_lib.is_permutation(mixed)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", ["rar", "randar"])
def test_seeded_generate_repeats_on_the_device(family, device):
    model = _model(family, device)
    geo = fixture_geometry(family)
    classes = [0, geo["num_classes"] - 1]
    kw = {"guidance_scale": 2.0, "top_k": 4} | ({"steps": max(1, geo["seq_len"] // 3)} if family == "randar" else {})
    a = generate(model, classes, seed=3, **kw)
    b = generate(model, classes, seed=3, **kw)
    assert a.device.type == device and tuple(a.shape) == (2, geo["side"], geo["side"])
    assert torch.equal(a, b)
    assert 0 <= int(a.min()) and int(a.max()) < geo["codebook_size"]


@pytest.mark.parametrize("device", DEVICES)
def test_every_editing_task_runs_on_the_device(device):
    model = _model("randar", device)
    geo = fixture_geometry("randar")
    side, V = geo["side"], geo["codebook_size"]
    codes = torch.randint(0, V, (2, side, side), generator=torch.Generator().manual_seed(0)).to(device)
    mask = E.half_mask(side, "left").to(device)
    a = E.inpaint(model, codes, mask, [0, 1], guidance_scale=2.0, seed=0, steps=3)
    assert a.device.type == device and torch.equal(a[:, ~mask], codes[:, ~mask])
    assert torch.equal(a, E.inpaint(model, codes, mask, [0, 1], guidance_scale=2.0, seed=0, steps=3))
    out = E.outpaint(model, codes, 0, right=2, seed=1, steps=3)
    assert out.device.type == device and torch.equal(out[:, :, :side], codes)
    big = E.extrapolate(model, [0], factor=2, guidance_scale=2.0, spatial_guidance_scale=2.0, seed=2, steps=3)
    assert big.device.type == device and tuple(big.shape) == (1, 2 * side, 2 * side)
    per_token, pooled = E.features(model, codes, seed=0)
    assert per_token.device.type == device and tuple(pooled.shape) == (2, model.config.dim)


@pytest.mark.parametrize("device", DEVICES)
def test_sample_cli_takes_device(device, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    tok = fixture_dir("maskgit_vqgan") / "vqgan_checkpoint.bin"
    args = ["sample", "--model", str(fixture_dir("rar")), "--tokenizer", str(tok), "--classes", "0", "--seed", "1",
            "--device", device]
    assert main([*args, "--out", str(tmp_path / "a.png")]) == 0, capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
