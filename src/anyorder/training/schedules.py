"""Schedules over training steps: the probability of a random order (RAR's annealing) and the learning rate."""

from __future__ import annotations

import math

from anyorder.models.registry import get_family
from anyorder.training.config import TrainConfig

__all__ = ["anneal_ratio", "anneal_bounds", "permutation_ratio", "lr_at"]


def anneal_ratio(step: int, start: int, end: int) -> float:
    """RAR's permutation probability r: 1 before ``start``, 0 after ``end``, linear in between."""
    if step < start:
        return 1.0
    if step >= end:
        return 0.0
    return 1.0 - (step - start) / (end - start)


def anneal_bounds(cfg: TrainConfig, family: str) -> tuple[int, int]:
    """``(start, end)`` of the randomness annealing; ``end < 0``: random orders throughout. Unset in ``cfg``
    (None): the family's default order schedule (RAR's paper: r = 1 until 50% of ``cfg.steps``, 0 from 75%;
    RandAR and LPD: random throughout)."""
    start, end = cfg.anneal_start, cfg.anneal_end
    if start is None and end is None:
        default = get_family(family).order_schedule
        if default is None:
            return 0, -1
        return int(default[0] * cfg.steps), int(default[1] * cfg.steps)
    if end is None:
        raise ValueError(f"train.anneal_start={start} needs train.anneal_end (the step r reaches 0; -1: never)")
    start = 0 if start is None else start
    if end >= 0 and end < start:
        raise ValueError(f"train.anneal_end={end} is before train.anneal_start={start}")
    return start, end


def permutation_ratio(step: int, cfg: TrainConfig, family: str) -> float:
    """The probability ``r`` of a random order at ``step``."""
    start, end = anneal_bounds(cfg, family)
    if end < 0:
        return 1.0
    return anneal_ratio(step, start, end)


def lr_at(step: int, base_lr: float, warmup: int, total: int, end_lr: float = 0.0,
          decay_start: int | None = None) -> float:
    """Linear warm-up to ``base_lr`` over ``warmup`` steps, then cosine decay to ``end_lr`` at ``total``; with
    ``decay_start`` (LPD's "constant+cosine"), constant ``base_lr`` until that step and the cosine from there."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    begin = warmup if decay_start is None else max(warmup, decay_start)
    if step < begin:
        return base_lr
    progress = min(1.0, (step - begin) / max(1, total - begin))
    return end_lr + 0.5 * (base_lr - end_lr) * (1.0 + math.cos(math.pi * progress))
