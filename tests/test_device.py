"""Every sampling and editing path runs on every device present (CPU always, CUDA when available): random
orders are drawn on the generator's device, seeded runs repeat, and the CLI takes ``--device``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import GENERATOR_FIXTURES, fixture_dir, fixture_geometry

from anyorder import editing as E
from anyorder.cli.main import main
from anyorder.hub import from_pretrained
from anyorder.models import family_names, get_family
from anyorder.nn import orders as orders_lib
from anyorder.sampling import generate

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _model(family: str, device: str):
    return from_pretrained(fixture_dir(family), device=device).eval()


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
@pytest.mark.parametrize("family", GENERATOR_FIXTURES)
def test_seeded_generate_repeats_on_the_device(family, device):
    model = _model(family, device)
    geo = fixture_geometry(family)
    classes = [0, geo["num_classes"] - 1]
    kw = {"guidance_scale": 2.0, "top_k": 4}
    if get_family(family).can("parallel"):
        kw["steps"] = max(1, geo["seq_len"] // 3)
    a = generate(model, classes, seed=3, **kw)
    b = generate(model, classes, seed=3, **kw)
    assert a.device.type == device and tuple(a.shape) == (2, geo["side"], geo["side"])
    assert torch.equal(a, b)
    assert 0 <= int(a.min()) and int(a.max()) < geo["codebook_size"]


EDITING = ("known_tokens", "canvas", "extrapolation", "features")  # inpaint, outpaint, extrapolate, features


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", [f for f in GENERATOR_FIXTURES if all(get_family(f).can(c) for c in EDITING)])
def test_every_editing_task_runs_on_the_device(family, device):
    model = _model(family, device)
    geo = fixture_geometry(family)
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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", family_names())
def test_train_and_resume_on_the_device(family: str, device: str, tmp_path: Path) -> None:
    """A run interrupted after 2 steps and resumed on the same device ends where an uninterrupted run ends
    (checkpoints and RNG states are loaded on the CPU first, then moved)."""
    from anyorder.models import build_model
    from anyorder.training.config import TrainConfig
    from anyorder.training.loop import train

    tiny = {"family": family, **get_family(family).debug, "depth": 1}
    side = math.isqrt(tiny["seq_len"])
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, tiny["codebook_size"], (24, side, side), generator=g)
    labels = torch.randint(0, tiny["num_classes"], (24,), generator=g)

    class Crash(Exception):
        pass

    def crash(step: int, stats: dict) -> None:
        if step == 2:
            raise Crash

    def run(out: Path, callback=None):
        torch.manual_seed(0)
        model = build_model(tiny, device=device)
        cfg = TrainConfig(steps=4, batch_size=8, lr=3e-3, warmup_steps=1, ckpt_every=2, log_every=1,
                          device=device, precision="fp32")
        train(model, codes, labels, cfg, out, progress=False, step_callback=callback)
        return model

    with pytest.raises(Crash):
        run(tmp_path / "resumed", crash)
    resumed = run(tmp_path / "resumed")
    straight = run(tmp_path / "straight")
    assert next(resumed.parameters()).device.type == device
    for (k, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6 if device == "cuda" else 0, msg=k)


@pytest.mark.parametrize("device,backend,gpu", [("cpu", "gloo", None), ("auto", "nccl", 1), ("cuda", "nccl", 1),
                                                ("cuda:0", "nccl", 0)])
def test_the_process_group_backend_follows_the_run_device_not_the_host(monkeypatch, device, backend, gpu):
    """Under torchrun on a GPU host (rank 1 of 2), a ``train.device=cpu`` run gets gloo (NCCL cannot carry CPU
    tensors); a CUDA run binds LOCAL_RANK's GPU unless the device names one."""
    from anyorder.training import distributed

    calls: dict[str, object] = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("cuda_device", d))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda b, **_: calls.setdefault("backend", b))
    distributed.init_distributed(device)
    assert calls["backend"] == backend
    assert calls.get("cuda_device") == gpu
