"""LPD's group plans: how many tokens each decoding step produces, for ``T`` tokens in ``S`` steps.

The official release lists its plans in ``orders/group_sizes_lookup.json`` (23 of them: 9 step counts for
256 tokens, 14 for 1024) and draws the training plan of every step uniformly from the same lists
(``orders/group_sizes_training/*.json``). No script in the repository makes them; they follow MaskGIT's cosine
schedule, step by step::

    g_k = round(T * (cos(pi/2 * k/S) - cos(pi/2 * (k+1)/S))),  at least 1,  g_0 = 1,

with the rounding surplus or deficit then repaired and the sizes sorted ascending. :func:`group_sizes` does
that (repair: the last group absorbs the difference, unless that would empty it — then the largest groups
give a token each). It reproduces 19 of the 23 official lists exactly (``benchmarks/lpd_group_sizes.py
--official DIR`` compares them all; ``tests/test_lpd.py`` checks the fixture's 20-step plan); of the step counts
the released models sample with, it reproduces 256 tokens / 20 steps and 1024 / 48, and :data:`RELEASE_PLANS`
holds the official 256 / 32 (where it differs by a few tokens moved between groups), so the presets sample
exactly as released.
"""

from __future__ import annotations

import math

__all__ = ["RELEASE_PLANS", "TRAINING_STEPS", "cosine_base", "group_sizes", "training_plans"]

# the official plans of the released sampling settings that the rule does not reproduce: (tokens, steps) -> sizes
RELEASE_PLANS: dict[tuple[int, int], list[int]] = {
    (256, 32): [1, 1, 2, 2, 3, 3, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 10, 11, 11, 11, 11, 12, 12, 12, 12, 12,
                12, 12, 12],
}

# the step counts of the official training plans (group_sizes_training/group_sizes_{256,512}.json)
TRAINING_STEPS: dict[int, tuple[int, ...]] = {
    256: (256, 128, 64, 32, 24, 20, 16, 12, 8),
    1024: (1024, 512, 256, 224, 192, 160, 128, 96, 80, 64, 56, 48, 40, 32),
}


def cosine_base(total: int, steps: int) -> list[int]:
    """The cosine schedule per step, rounded (Python's round), at least 1, the first step 1."""
    raw = [total * (math.cos(math.pi / 2 * k / steps) - math.cos(math.pi / 2 * (k + 1) / steps))
           for k in range(steps)]
    sizes = [max(1, round(x)) for x in raw]
    sizes[0] = 1
    return sizes


def group_sizes(total: int, steps: int) -> list[int]:
    """Tokens per step for ``total`` tokens in ``steps`` steps (first 1, non-decreasing, sum ``total``): the
    official list where the release's sampling settings use one the rule does not give, else the rule."""
    if not 1 <= steps <= total:
        raise ValueError(f"steps must be in [1, {total}] for {total} tokens, got {steps}")
    if (total, steps) in RELEASE_PLANS:
        return list(RELEASE_PLANS[(total, steps)])
    if steps == 1:
        return [total]
    sizes = cosine_base(total, steps)
    surplus = sum(sizes) - total
    if sizes[-1] - surplus >= 1:  # the last (largest) group absorbs the rounding difference
        sizes[-1] -= surplus
    else:  # shave one token off the largest group until the sum fits
        while sum(sizes) > total:
            sizes[sizes.index(max(sizes))] -= 1
    return sorted(sizes)


def training_plans(total: int, steps: list[int] | tuple[int, ...] = ()) -> list[list[int]]:
    """The plans training draws from: for the given step counts, or the official ones for 256 / 1024 tokens,
    or the same fractions of ``total`` for other grids (1, 1/2, 1/4, 1/8, 3/32, 5/64, 1/16, 3/64, 1/32 of it)."""
    if not steps:
        steps = TRAINING_STEPS.get(total) or tuple(
            sorted({max(1, round(total * f)) for f in (1, 1 / 2, 1 / 4, 1 / 8, 3 / 32, 5 / 64, 1 / 16, 3 / 64,
                                                     1 / 32)}, reverse=True))
    return [group_sizes(total, int(s)) for s in steps]
