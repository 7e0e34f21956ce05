"""Schedules over decoding: classifier-free guidance (RAR's pow-cosine, RandAR's and LPD's linear, LPD's
constant) and the parallel-decoding step plans (RandAR's cosine schedule)."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "pow_cosine_guidance",
    "linear_guidance",
    "GuidanceSchedule",
    "parallel_decoding_schedule",
    "parallel_decoding_schedule_from",
]


def pow_cosine_guidance(decoded: int, total: int, scale: float, power: float) -> float:
    """RAR's guidance scale after ``decoded`` of ``total`` tokens:
    ``1 + (scale - 1) * (1 - cos(pi * (decoded/total) ** power)) / 2``. Power 0 is the constant
    full scale (``0 ** 0 == 1``, as in the official code)."""
    frac = (decoded / total) ** power
    return 1.0 + (scale - 1.0) * (1.0 - math.cos(math.pi * frac)) / 2.0


def linear_guidance(decoded: int, total: int, start: float, end: float) -> float:
    """RandAR's guidance scale: ``start + (end - start) * decoded / total``."""
    return start + (end - start) * decoded / total


@dataclass(frozen=True)
class GuidanceSchedule:
    """Classifier-free guidance as a function of how many tokens are decoded so far.

    ``kind="pow_cosine"`` (RAR): ``scale``, ``power``; on unless ``scale`` is 0 or 1.
    ``kind="linear"`` (RandAR, LPD): from ``start`` to ``scale``; on when ``scale > 1``.
    ``kind="constant"`` (LPD): ``scale`` for every token; on unless ``scale`` is 1.
    ``per_token``: the scale of each token decoded in a step follows the schedule at its own generation index
    (LPD: a step starting at ``j0`` uses ``j0, j0 + 1, ...``); otherwise every token of a step gets the scale at
    the step's start (RAR, RandAR). ``enabled`` (None: the kind's rule above) says whether guidance runs at all.
    """

    kind: str = "pow_cosine"
    scale: float = 1.0
    power: float = 0.0
    start: float = 1.0
    per_token: bool = False
    enabled: bool | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("pow_cosine", "linear", "constant"):
            raise ValueError(f"unknown guidance schedule kind {self.kind!r}; use 'pow_cosine', 'linear' or "
                             "'constant'")
        if self.scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {self.scale}")
        if self.enabled is None:
            rule = {"linear": self.scale > 1.0, "constant": self.scale != 1.0,
                    "pow_cosine": self.scale not in (0.0, 1.0)}
            object.__setattr__(self, "enabled", rule[self.kind])

    def __call__(self, decoded: int, total: int) -> float:
        if self.kind == "linear":
            return linear_guidance(decoded, total, self.start, self.scale)
        if self.kind == "constant":
            return self.scale
        return pow_cosine_guidance(decoded, total, self.scale, self.power)

    def scales(self, decoded: int, count: int, total: int) -> list[float]:
        """The scales of the ``count`` tokens a step decodes after ``decoded`` of ``total``."""
        if self.per_token:
            return [self(decoded + j, total) for j in range(count)]
        return [self(decoded, total)] * count


def parallel_decoding_schedule(steps: int, total: int) -> list[int]:
    """RandAR's cosine schedule: how many tokens each of ``steps`` steps decodes (sums to ``total``).

    After ``s`` completed steps the decoded count should reach
    ``min(int((1 - cos(pi/2 * (s+1)/steps)) * total + 1), total)``; the first step decodes one token,
    every step at least one, and the last step whatever remains (one step decodes everything).
    """
    if not 1 <= steps <= total:
        raise ValueError(f"steps must be in [1, {total}] for {total} tokens, got {steps}")
    if steps == 1:
        return [total]
    out = [1]
    done = 1
    for s in range(1, steps):
        if s == steps - 1:
            n = total - done
        else:
            target = min(int((1 - math.cos(math.pi / 2 * (s + 1) / steps)) * total + 1), total)
            n = target - done
        remaining_steps = steps - s - 1
        n = max(1, min(n, total - done - remaining_steps))
        out.append(n)
        done += n
    return out


def parallel_decoding_schedule_from(steps: int, total: int, done: int) -> list[int]:
    """RandAR's schedule when ``done`` of ``total`` tokens are already placed (resolution extrapolation, as
    ``RandAR/applications/resolution_extrapolation.py`` with ``calculate_num_query_tokens_for_parallel_decoding``):
    the cosine curve of ``steps`` steps runs over the *whole* ``total``, counted from ``done``. The first step
    decodes one token; after step ``s`` the next decodes ``target(s) - decoded`` (at least 1, at most what
    remains), ``target(s) = min(int((1 - cos(pi/2 * (s+1)/steps)) * total + 1), total)`` — so while the curve is
    still below the tokens already placed, every step decodes one token. Returns the tokens per step for the
    ``total - done`` remaining ones (the number of steps follows from the curve; the official loop stops one
    step early and leaves its last queries undecoded — here every token is decoded).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 <= done <= total:
        raise ValueError(f"done must be in [0, {total}], got {done}")
    out: list[int] = []
    idx, n, s = done, 1, 0
    while idx < total:
        n = min(n, total - idx)
        out.append(n)
        s += 1
        target = min(int((1 - math.cos(math.pi / 2 * (s + 1) / steps)) * total + 1), total)
        nxt = min(max(target - idx - n, 1), max(total - idx - n, 1))
        idx, n = idx + n, nxt
    return out
