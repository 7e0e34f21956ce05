"""One training step (``training.loop.train_step``) against closed forms (issue 24, item 4): class-label dropout
at the model's rate, measured over many draws; gradient-norm clipping and the AdamW update on the clipped
gradient, written out by hand.

The step's loss is replaced by a stand-in whose gradients are known exactly (``run.forward`` is what the step
calls for each micro-batch's loss), so the tests see what the step does around the model: the labels it feeds,
the clipping, the optimizer update.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from anyorder.models import build_model, family_names, get_family
from anyorder.training.config import TrainConfig
from anyorder.training.loop import TrainState, setup, train_step
from anyorder.training.optim import decay_names

WITH_DROPOUT = [f for f in family_names()
                if "class_dropout" in {x.name for x in dataclasses.fields(get_family(f).config_class)}]


def _run(family: str, tmp_path, class_dropout: float = 0.1, **train):
    model = build_model({"family": family, **get_family(family).debug, "class_dropout": class_dropout})
    (h, w), n = model.grid, 8
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, model.codebook_size, (n, h, w), generator=g)
    labels = torch.randint(0, model.num_classes, (n,), generator=g)
    cfg = TrainConfig(**{"steps": 100, "batch_size": 8, "warmup_steps": 0, "precision": "fp32", "device": "cpu",
                         "log_every": 1000, "ckpt_every": 0, **train})
    return model, setup(model, codes, labels, cfg, tmp_path)


def _hoeffding(n: int, fail_prob: float = 1e-12) -> float:
    """The deviation of a mean of ``n`` independent draws in [0, 1] from its expectation that is exceeded with
    probability below ``fail_prob`` (Hoeffding: P(|mean - p| >= t) <= 2 exp(-2 n t^2))."""
    return math.sqrt(math.log(2 / fail_prob) / (2 * n))


@pytest.mark.parametrize("family", WITH_DROPOUT)
@pytest.mark.parametrize("rate,accum", [(0.1, 1), (0.1, 2), (0.0, 1)])
def test_class_labels_are_dropped_at_the_models_rate(family, rate, accum, tmp_path, one_thread):
    model, run = _run(family, tmp_path, class_dropout=rate, batch_size=2000, grad_accum=accum)
    seen: list[torch.Tensor] = []

    def forward(x, y, orders, **extras):  # record the labels the step feeds; a loss with zero gradients
        seen.append(y.clone())
        return sum((p * 0).sum() for p in run.params)

    run.forward = forward
    state, steps = TrainState(), 10
    labels = torch.arange(2000) % model.num_classes
    for _ in range(steps):
        train_step(run, state, (torch.zeros(2000, model.seq_len, dtype=torch.long), labels))
    y = torch.cat(seen)
    assert y.numel() == steps * 2000
    dropped = y == model.null_class
    # labels not dropped are passed as they were
    assert torch.equal(y[~dropped], labels.repeat(steps)[~dropped])
    rate_seen = float(dropped.double().mean())
    assert abs(rate_seen - rate) < _hoeffding(y.numel()), (rate_seen, rate)
    if rate:  # and the draws differ from micro-batch to micro-batch and step to step (no mask reused)
        masks = [y == model.null_class for y in seen]
        assert all(not torch.equal(a, b) for i, a in enumerate(masks) for b in masks[i + 1 :])


def _adamw(params, grads, lr, betas, wd, decays, eps=1e-8):
    """AdamW (decoupled weight decay, bias-corrected moments) written out in float64 over a list of steps'
    gradients; returns the parameters after each step."""
    b1, b2 = betas
    p = [np.asarray(x, dtype=np.float64) for x in params]
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    out = []
    for t, step_grads in enumerate(grads, start=1):
        for i, g in enumerate(step_grads):
            if decays[i]:
                p[i] = p[i] * (1 - lr * wd)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat, v_hat = m[i] / (1 - b1**t), v[i] / (1 - b2**t)
            p[i] = p[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append([x.copy() for x in p])
    return out


@pytest.mark.parametrize("clip,accum", [(1.0, 1), (0.0, 1), (1.0, 2)])
def test_grad_norm_clipping_and_the_adamw_update_by_closed_form(clip, accum, tmp_path, one_thread):
    """The loss of step k is ``sum_p <A_k[p], p>``, so its gradient is exactly ``A_k``: norm 10 at the first step
    (clipped to 1 with ``grad_clip=1``: multiplied by ``1 / (10 + 1e-6)``, torch's epsilon), 0.5 at the second
    (under the limit: kept). The step returns the norm before clipping, and the parameters after each step are
    AdamW's on the clipped gradients (Adam's first step hardly depends on the gradient's scale; the second shows
    the clipping of the first). ``grad_clip=0`` clips nothing. With 2 accumulated micro-batches, each of the
    same loss, the step's gradient is their mean: the same ``A_k``."""
    family = family_names()[0]
    lr, wd, betas = 0.01, 0.05, (0.9, 0.96)
    model, run = _run(family, tmp_path, lr=lr, end_lr=lr, weight_decay=wd, betas=betas, grad_clip=clip,
                      grad_accum=accum)
    params = run.params
    rng = np.random.default_rng(0)
    grads = []
    for norm in (10.0, 0.5):
        a = [rng.standard_normal(tuple(p.shape)) for p in params]
        total = math.sqrt(sum(float((x * x).sum()) for x in a))
        grads.append([x * (norm / total) for x in a])
    step = {"k": 0}

    def forward(x, y, orders, **extras):
        A = grads[step["k"]]
        return sum((torch.as_tensor(g, dtype=p.dtype) * p).sum() for g, p in zip(A, params))

    run.forward = forward
    names = {id(p): n for n, p in model.named_parameters()}
    decays = [names[id(p)] in decay_names(model) for p in params]
    assert any(decays) and not all(decays)  # both groups are exercised
    start = [p.detach().double().numpy().copy() for p in params]
    state, got, norms = TrainState(), [], []
    batch = (torch.zeros(8, model.seq_len, dtype=torch.long), torch.zeros(8, dtype=torch.long))
    for k in range(2):
        step["k"] = k
        _, gn, stats = train_step(run, state, batch)
        assert stats["lr"] == lr
        norms.append(float(gn))
        got.append([p.detach().double().numpy().copy() for p in params])
    assert norms == pytest.approx([10.0, 0.5], rel=1e-5)  # the norm before clipping
    clipped = [[g * min(1.0, clip / (n + 1e-6)) if clip > 0 else g for g in step_grads]
               for step_grads, n in zip(grads, (10.0, 0.5))]
    want = _adamw(start, clipped, lr, betas, wd, decays)
    for k in range(2):
        for a, b in zip(got[k], want[k]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # the expectation has teeth: AdamW on the unclipped gradients ends elsewhere after the second step
    if clip > 0:
        other = _adamw(start, grads, lr, betas, wd, decays)[1]
        assert max(float(np.abs(a - b).max()) for a, b in zip(other, want[1])) > 1e-3
