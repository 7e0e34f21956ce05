"""``train.compile=true``: the compiled training step trains like the eager one (CPU, tiny model).

The step is captured by dynamo (forward and backward graphs, AOTAutograd) with the ``aot_eager`` backend: the
inductor backend's C++ code generation takes minutes on a small shared CPU machine; GPU runs use inductor."""

from __future__ import annotations

import functools

import pytest
import torch

from anyorder.hub import build_model
from anyorder.training import loop
from anyorder.training.config import TrainConfig
from anyorder.training.loop import train

TINY = {"family": "rar", "dim": 32, "depth": 1, "n_head": 2, "mlp_hidden": 64, "seq_len": 16, "codebook_size": 16,
        "num_classes": 3, "pos_extra": 2, "timestep_extra": 2}


def test_the_compiled_step_matches_the_eager_one(tmp_path, monkeypatch):
    monkeypatch.setattr(loop.torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (24,), generator=g)
    codes = (labels[:, None, None] * 5 + torch.randint(0, 2, (24, 4, 4), generator=g)) % 16
    cfg = dict(steps=3, batch_size=8, lr=3e-3, warmup_steps=1, ckpt_every=0, log_every=1)
    runs = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = build_model(TINY)
        runs[compiled] = (train(model, codes, labels, TrainConfig(**cfg, compile=compiled), tmp_path / str(compiled),
                                progress=False), model.state_dict())
    eager, comp = (runs[c][0]["history"] for c in (False, True))
    for a, b in zip(eager, comp):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
    assert all(torch.isfinite(torch.tensor([h["loss"] for h in comp])))
    for k, v in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][k], v, atol=1e-4, rtol=1e-4, msg=k)
