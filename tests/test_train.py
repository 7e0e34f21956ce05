"""The shared training loop: permuted objective, optimizer, checkpoints and resume."""

from __future__ import annotations

import math

import pytest
import torch

from anyorder.hub import build_model
from anyorder.io import CheckpointError
from anyorder.training.config import TrainConfig
from anyorder.training.loop import LAST_CKPT, make_optimizer, train

TINY = {
    "rar": {"family": "rar", "dim": 32, "depth": 1, "n_head": 2, "mlp_hidden": 64, "seq_len": 16,
            "codebook_size": 16, "num_classes": 3, "pos_extra": 2, "timestep_extra": 2},
    "randar": {"family": "randar", "dim": 32, "depth": 1, "n_head": 2, "seq_len": 16, "codebook_size": 16,
               "num_classes": 3, "multiple_of": 16, "order": "raster"},  # annealed into raster, like RAR
}


def _data(n=40):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (n,), generator=g)
    codes = (labels[:, None, None] * 5 + torch.randint(0, 2, (n, 4, 4), generator=g)) % 16
    return codes, labels


def _cfg(**kw):
    base = dict(steps=6, batch_size=8, lr=3e-3, warmup_steps=2, ckpt_every=2, anneal_start=2, anneal_end=4,
                log_every=1)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("family", ["rar", "randar"])
def test_training_reduces_the_loss(family, tmp_path):
    torch.manual_seed(0)
    model = build_model(TINY[family])
    codes, labels = _data()
    summary = train(model, codes, labels, _cfg(steps=60, ckpt_every=0, anneal_start=20, anneal_end=40),
                    tmp_path, progress=False)
    first, last = summary["history"][0]["loss"], summary["history"][-1]["loss"]
    assert last < first - 0.5
    rs = [h["r"] for h in summary["history"]]
    assert rs[0] == 1.0 and rs[-1] == 0.0


@pytest.mark.parametrize("family", ["rar", "randar"])
def test_a_crash_mid_training_resumes_from_the_last_checkpoint(family, tmp_path):
    codes, labels = _data()
    torch.manual_seed(0)
    straight = build_model(TINY[family])
    train(straight, codes, labels, _cfg(), tmp_path / "a", progress=False)

    torch.manual_seed(0)
    crashed = build_model(TINY[family])

    def crash(step, _stats):
        if step == 5:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        train(crashed, codes, labels, _cfg(), tmp_path / "b", progress=False, step_callback=crash)
    ckpt = tmp_path / "b" / "checkpoints" / LAST_CKPT
    assert torch.load(ckpt, weights_only=True)["step"] == 4
    torch.manual_seed(123)  # a fresh process: different global RNG, fresh weights
    resumed = build_model(TINY[family])
    summary = train(resumed, codes, labels, _cfg(), tmp_path / "b", progress=False)
    assert summary["steps"] == 6
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=k)


def test_resuming_a_finished_run_reports_its_last_loss(tmp_path):
    codes, labels = _data()
    torch.manual_seed(0)
    done = train(build_model(TINY["randar"]), codes, labels, _cfg(), tmp_path, progress=False)
    again = train(build_model(TINY["randar"]), codes, labels, _cfg(), tmp_path, progress=False)
    assert again["steps"] == 6 and again["final_loss"] == done["final_loss"] == done["history"][-1]["loss"]


def test_resume_with_a_checkpoint_of_another_config_is_a_clear_error(tmp_path):
    codes, labels = _data()
    train(build_model(TINY["rar"]), codes, labels, _cfg(steps=2), tmp_path, progress=False)
    other = build_model({**TINY["rar"], "dim": 48})
    with pytest.raises(CheckpointError, match="does not fit"):
        train(other, codes, labels, _cfg(steps=4), tmp_path, progress=False)


def test_weight_decay_on_matrices_and_embeddings_only():
    model = build_model(TINY["rar"])
    opt = make_optimizer(model, TrainConfig())
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.03 and no_decay["weight_decay"] == 0.0
    assert opt.defaults["betas"] == (0.9, 0.96)
    ids = {id(p) for p in decay["params"]}
    assert id(model.embeddings.weight) in ids and id(model.pos_embed) in ids
    assert id(model.transformer.blocks[0].attn.qkv.weight) in ids
    assert id(model.transformer.blocks[0].attn.qkv.bias) not in ids
    assert id(model.transformer.blocks[0].norm1.weight) not in ids


def test_bad_training_inputs_are_named(tmp_path):
    model = build_model(TINY["rar"])
    codes, labels = _data()
    with pytest.raises(ValueError, match="class id 7"):
        train(model, codes, torch.full_like(labels, 7), _cfg(), tmp_path, progress=False)
    with pytest.raises(ValueError, match="token ids"):
        train(model, codes + 100, labels, _cfg(), tmp_path, progress=False)
    with pytest.raises(ValueError, match="tokens per image"):
        train(model, codes[:, :2], labels, _cfg(), tmp_path, progress=False)


def test_a_randar_order_must_agree_with_the_annealing(tmp_path):
    """model.order records the order training ends in (and decoding starts from)."""
    codes, labels = _data()
    scan = build_model(TINY["randar"])
    with pytest.raises(ValueError, match="model.order='raster'.*anneal_end=-1 keeps every order random"):
        train(scan, codes, labels, _cfg(anneal_end=-1), tmp_path / "a", progress=False)
    random_order = build_model({**TINY["randar"], "order": "random"})
    with pytest.warns(UserWarning, match="anneals this RandAR into raster order.*set model.order=raster"):
        train(random_order, codes, labels, _cfg(steps=1), tmp_path / "b", progress=False)


def test_resuming_reports_no_stale_loss(tmp_path):
    """A checkpoint between two logged steps (saved at 3, last logged at 2) resumed with nothing left to
    train reports a NaN final loss, not step 2's loss."""
    codes, labels = _data()

    def crash(step, _stats):
        if step == 4:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        train(build_model(TINY["rar"]), codes, labels, _cfg(ckpt_every=3, log_every=2), tmp_path, progress=False,
              step_callback=crash)
    again = train(build_model(TINY["rar"]), codes, labels, _cfg(steps=3, ckpt_every=3, log_every=2), tmp_path,
                  progress=False)
    assert again["steps"] == 3 and again["history"][-1]["step"] == 2
    assert math.isnan(again["final_loss"])
