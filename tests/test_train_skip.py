"""RandAR's step skip (``train.skip_grad_norm``), against the official trainer (ziqipang/RandAR
``train_c2i.py``):

    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    grad_norm = 0.0
    for p in model.parameters():
        grad_norm += p.grad.data.norm(2).item()
    if grad_norm < skip_grad_norm or train_steps < skip_grad_iter:
        optimizer.step()
    optimizer.zero_grad()

``train_steps`` counts the optimizer steps done before this one (0-based); a skipped step never
calls ``optimizer.step()``, so AdamW's moments and step count stay as they were, and the
learning-rate schedule and the data move on.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from anyorder.hub import build_model
from anyorder.training.config import TrainConfig
from anyorder.training.loop import LAST_CKPT, grad_norm_sum, skip_update, step_unless, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _params_with_grads(*grads: list) -> list[torch.nn.Parameter]:
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(torch.tensor(g).shape))
        p.grad = torch.tensor(g, dtype=torch.float32)
        params.append(p)
    return params


def test_the_sum_of_per_tensor_norms_after_clipping_crosses_the_threshold_as_official() -> None:
    """Grads [3, 4] and [0, 12]: per-tensor norms 5 and 12, total 13. Clipped to 1, each is scaled
    by 1 / (13 + 1e-6) (torch's clip_grad_norm_), so the official sum is 17 / (13 + 1e-6) ~
    1.3077."""
    params = _params_with_grads([3.0, 4.0], [[0.0], [12.0]])
    assert grad_norm_sum(params).item() == pytest.approx(17.0)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    official = 17.0 / (13.0 + 1e-6)
    assert grad_norm_sum(params).item() == pytest.approx(official, rel=1e-6)

    def rule(norm: float, iters: int, step: int):
        cfg = TrainConfig(skip_grad_norm=norm, skip_grad_iter=iters)
        run = SimpleNamespace(cfg=cfg, params=params)
        return skip_update(run, step)

    assert bool(rule(1.30, 100, 100))  # sum >= threshold, at skip_grad_iter: skipped
    assert not bool(rule(1.31, 100, 100))  # below: stepped
    assert bool(rule(official * (1 - 1e-6), 100, 500))
    assert rule(1.30, 100, 99) is None  # train_steps < skip_grad_iter: always steps
    assert rule(0.0, 0, 500) is None  # the rule off (the default)
    assert TrainConfig().skip_grad_norm == 0.0 and TrainConfig().skip_grad_iter == 100
    with pytest.raises(ValueError, match="skip_grad_norm"):
        TrainConfig(skip_grad_norm=-1.0)


def _adamw(seed: int = 0) -> tuple[list[torch.nn.Parameter], torch.optim.AdamW]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(4, 3, generator=g)),
              torch.nn.Parameter(torch.randn(3, generator=g))]
    opt = torch.optim.AdamW(params, lr=0.1, weight_decay=0.05, fused=True)
    for _ in range(2):  # some state to keep
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    return params, opt


def _snapshot(params, opt) -> list[torch.Tensor]:
    return [t.detach().clone() for p in params for t in (p, *opt.state[p].values())]


def test_a_skipped_step_leaves_parameters_and_adamw_state_untouched() -> None:
    params, opt = _adamw()
    before = _snapshot(params, opt)
    step_unless(opt, torch.tensor(True))
    after = _snapshot(params, opt)
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # the step count included
    # not skipped: exactly opt.step()
    params, opt = _adamw()
    step_unless(opt, torch.tensor(False))
    ref_params, ref_opt = _adamw()
    ref_opt.step()
    ref = _snapshot(ref_params, ref_opt)
    assert all(torch.equal(a, b) for a, b in zip(ref, _snapshot(params, opt)))
    assert float(opt.state[params[0]]["step"]) == 3.0
    with pytest.raises(RuntimeError, match="fused"):
        step_unless(torch.optim.AdamW(params, lr=0.1, fused=False), torch.tensor(True))


TINY = {"family": "randar", "dim": 32, "depth": 1, "n_head": 2, "seq_len": 16, "codebook_size": 16,
        "num_classes": 3, "multiple_of": 16}


def _train(tmp_path, name: str, steps: int, **kw) -> dict:
    """A tiny RandAR trained ``steps`` steps at a constant learning rate (the schedule does not
    depend on ``steps``); returns its last checkpoint."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (24,), generator=g)
    codes = (labels[:, None, None] * 5 + torch.randint(0, 2, (24, 4, 4), generator=g)) % 16
    torch.manual_seed(0)
    model = build_model(TINY)
    cfg = TrainConfig(steps=steps, batch_size=8, lr=3e-3, end_lr=3e-3, warmup_steps=0,
                      anneal_end=-1, ckpt_every=0, log_every=1, **kw)
    train(model, codes, labels, cfg, tmp_path / name, progress=False)
    return torch.load(tmp_path / name / "checkpoints" / LAST_CKPT, weights_only=True)


def _same_state(a: dict, b: dict) -> bool:
    same_model = all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    same_opt = sa.keys() == sb.keys() and all(torch.equal(sa[k][n], sb[k][n])
                                              for k in sa for n in sa[k])
    return same_model and same_opt


def test_training_with_every_step_past_skip_grad_iter_skipped_stops_where_it_was(tmp_path) -> None:
    """skip_grad_iter=2 and a threshold every step reaches: steps 0 and 1 update, steps 2 and 3 do
    not, so the model and AdamW's state after 4 steps are those of 2 steps without the rule, bit for
    bit (AdamW's step count is 2); the log counts the skipped steps. A threshold no step reaches
    changes nothing."""
    two = _train(tmp_path, "two", 2)
    skipped = _train(tmp_path, "skipped", 4, skip_grad_norm=1e-9, skip_grad_iter=2)
    assert skipped["step"] == 4 and _same_state(skipped, two)
    assert {float(s["step"]) for s in skipped["optimizer"]["state"].values()} == {2.0}
    assert [h.get("skipped_steps") for h in skipped["history"]] == [None, None, 1, 1]
    four = _train(tmp_path, "four", 4)
    assert not _same_state(four, two)
    assert _same_state(_train(tmp_path, "never", 4, skip_grad_norm=1e9, skip_grad_iter=0), four)
