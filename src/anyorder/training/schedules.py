"""Schedules over training steps: RAR's randomness annealing and the learning rate."""

from __future__ import annotations

import math

__all__ = ['anneal_ratio', 'lr_at']


def anneal_ratio(step: int, start: int, end: int) -> float:
    """RAR's permutation probability r: 1 before ``start``, 0 after ``end``, linear in between."""
    if step < start:
        return 1.0
    if step >= end:
        return 0.0
    return 1.0 - (step - start) / (end - start)


def lr_at(step: int, base_lr: float, warmup: int, total: int, end_lr: float = 0.0) -> float:
    """Linear warm-up to ``base_lr`` over ``warmup`` steps, then cosine decay to ``end_lr`` at ``total``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return end_lr + 0.5 * (base_lr - end_lr) * (1.0 + math.cos(math.pi * progress))
