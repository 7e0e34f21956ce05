"""Inpainting is conditioned on the known tokens (issue 24, item 3), for every family that decodes known tokens.

The known tokens are copied back into the result whatever the decoder saw, so a decode that teacher-forced zeros
(or anything else) instead of them would leave them looking right; only the generated tokens show it. Two
checks, each with expected values from the model's teacher-forced logits (one full forward pass, no cache, no
decode loop):

- greedy, one token per step: every generated token is the argmax of the teacher-forced logits given the known
  tokens and the tokens generated before it;
- sampled: the first generated token's empirical distribution over many draws is the teacher-forced softmax
  given the known tokens, for two sets of known tokens whose distributions differ a lot, so the regenerated
  tokens' distribution changes with the known tokens (the bound cannot flake: see :func:`_tv_bound`).
"""

from __future__ import annotations

import math

import pytest
import torch

from anyorder import editing as E
from anyorder.models import build_model, families_with, get_family, sampling_config

KNOWN = families_with("known_tokens")


def _tiny(family: str, sharpen: float = 1.0):
    """The family's debug model with noise on every weight (official inits zero some layers); ``sharpen``
    scales the output head so that the next-token distributions are peaked."""
    torch.manual_seed(0)
    model = build_model({"family": family, **get_family(family).debug})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        model.transformer.final.head.weight.mul_(sharpen)
    return model.eval()


def _policy(family: str, m: int, **fields):
    """The family's policy decoding one token per step over ``m`` tokens, no guidance."""
    policy = sampling_config(family, {"guidance_scale": 1.0, **fields})
    return policy.replace(steps=m) if "steps" in policy.field_names() else policy


def _known_first(order: torch.Tensor, unknown: torch.Tensor) -> torch.Tensor:
    """``order`` with the known raster positions first, each group in its own order (written out here)."""
    known = [int(i) for i in order if not unknown[int(i)]]
    return torch.tensor(known + [int(i) for i in order if unknown[int(i)]])


def _setup(model, batch: int, seed: int):
    T, (h, w) = model.seq_len, model.grid
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(1, model.codebook_size, (batch, h, w), generator=g)  # no zeros: a zero prefix differs
    mask = torch.zeros(T, dtype=torch.bool)
    mask[torch.randperm(T, generator=g)[: T // 2]] = True  # half the tokens to generate, scattered
    orders = torch.stack([_known_first(torch.randperm(T, generator=g), mask) for _ in range(batch)])
    classes = torch.randint(0, model.num_classes, (batch,), generator=g)
    return codes, mask.view(h, w), orders, classes


@torch.no_grad()
@pytest.mark.parametrize("family", KNOWN)
def test_greedy_inpainting_is_the_teacher_forced_argmax_given_the_known_tokens(family, one_thread):
    model = _tiny(family)
    T = model.seq_len
    codes, mask, orders, classes = _setup(model, batch=6, seed=1)
    m, P = int(mask.sum()), T - int(mask.sum())
    out, used = E.inpaint(model, codes, mask, classes, _policy(family, m, top_k=1), orders=orders,
                          return_orders=True)
    assert torch.equal(used, orders)  # already known-first: kept as given
    assert torch.equal(out[:, ~mask], codes[:, ~mask])
    flat = out.flatten(1)
    logits = model.logits(flat, classes, orders)  # [B, T, V]: entry j predicts orders[:, j] given orders[:, :j]
    picked = flat.gather(1, orders)[:, P:]
    gen = logits[:, P:]
    chosen = gen.gather(2, picked[..., None])[..., 0]
    # each generated token is the argmax (up to the cached / full-pass round-off between near-ties)
    gap = gen.max(-1).values - chosen
    assert float(gap.max()) < 1e-4, f"generated tokens are not the argmax given the known tokens (gap {gap})"
    # and the check has teeth: given zeros instead of the known tokens, the argmax differs somewhere
    zeros = flat.clone()
    zeros[:, ~mask.flatten()] = 0
    assert not torch.equal(model.logits(zeros, classes, orders)[:, P:].argmax(-1), picked)


def _tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * float((p - q).abs().sum())


def _tv_bound(n: int, vocab: int, fail_prob: float = 1e-12) -> float:
    """A bound the empirical total variation distance of ``n`` draws from their distribution exceeds with
    probability below ``fail_prob``: E[TV] <= sqrt(V / n) / 2 (Cauchy-Schwarz), and TV moves by at most 1/n
    per draw, so McDiarmid gives P(TV > E[TV] + t) <= exp(-2 n t^2)."""
    return 0.5 * math.sqrt(vocab / n) + math.sqrt(math.log(1 / fail_prob) / (2 * n))


@torch.no_grad()
@pytest.mark.parametrize("family", KNOWN)
def test_the_regenerated_tokens_distribution_follows_the_known_tokens(family, one_thread):
    """The first generated token, drawn many times, has the teacher-forced distribution given the known tokens;
    with other known tokens (chosen so that the two distributions are far apart) it has the other one."""
    model = _tiny(family, sharpen=8.0)
    T, V, n = model.seq_len, model.codebook_size, 3000
    codes, mask, orders, classes = _setup(model, batch=9, seed=2)
    P = T - int(mask.sum())
    cls, order = classes[:1], orders[:1]
    probs = model.logits(codes.flatten(1), cls.expand(9), order.expand(9, -1))[:, P].softmax(-1)  # [9, V]
    tv = torch.tensor([[_tv(a, b) for b in probs] for a in probs])
    i, j = divmod(int(tv.argmax()), 9)  # the two known-token sets whose next-token laws differ most
    bound = _tv_bound(n, V)
    assert float(tv[i, j]) > 2 * bound, f"the debug model's laws are too close ({float(tv[i, j]):.3f})"
    policy = _policy(family, int(mask.sum()), temperature=1.0)
    for k, seed in ((i, 5), (j, 5)):  # the same seed: only the known tokens differ
        out = E.inpaint(model, codes[k].expand(n, -1, -1), mask, cls, policy, orders=order[0], seed=seed)
        first = out.flatten(1)[:, int(order[0, P])]
        emp = torch.bincount(first, minlength=V).double() / n
        assert _tv(emp, probs[k].double()) < bound, (k, _tv(emp, probs[k].double()), bound)
