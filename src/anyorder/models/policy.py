"""Sampling policies: a family's sampling settings, its step plan, guidance schedule and decoding orders.

A policy is a frozen dataclass passed whole — to ``generate``, the editing tasks, the decode loop, the app
and the CLI — the way a diffusers scheduler is. Each family subclasses :class:`SamplingPolicy` in its own
folder and adds only what its paper adds (RAR: the pow-cosine power; RandAR: parallel steps and a linear
guidance start; LPD: group plans and its guidance schedules). Every field is declared with :func:`setting`,
whose help text and range the command line and the web app show, so a new option is its field and its use
in the decode step, nothing else.

A setting the family does not have is an error naming it (:meth:`SamplingPolicy.from_dict`), never dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from anyorder.io.config import config_from_dict, config_to_dict
from anyorder.nn import orders as orders_lib
from anyorder.nn.locality import locality_orders
from anyorder.nn.schedules import GuidanceSchedule, parallel_decoding_schedule

__all__ = ["setting", "SettingInfo", "SamplingPolicy", "ParallelSampling", "ORDER_POLICIES"]


def setting(default: Any, help: str, *, low: float | None = None, high: float | str | None = None,
            step: float | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A policy field with the help text and range the CLI and the app show. ``low`` / ``high`` are UI bounds,
    not rules (the rules are the policy's ``__post_init__``); ``high`` may name a model attribute
    (``"codebook_size"``, ``"seq_len"``)."""
    return field(default=default, metadata={"help": help, "low": low, "high": high, "step": step,
                                            "choices": choices})


@dataclass(frozen=True)
class SettingInfo:
    """What the CLI and the app need to know of one policy field."""

    name: str
    type: type
    default: Any
    help: str
    low: float | None = None
    high: float | str | None = None
    step: float | None = None
    choices: tuple[str, ...] | None = None


_TYPES = {"float": float, "int": int, "str": str, "bool": bool}


def _no_owners(family: str) -> dict[str, str]:
    return {}


# field -> the other family that declares it, for error messages; models.registry installs the lookup
# (the registry sits above this module: it is handed in, never imported from here)
_field_owners = _no_owners


def set_field_owners(lookup: Callable[[str], dict[str, str]]) -> None:
    global _field_owners
    _field_owners = lookup


@dataclass(frozen=True)
class SamplingPolicy:
    """Settings every family shares, and what decoding asks a policy. Families subclass it."""

    family: ClassVar[str] = ""
    guidance_scale: float = setting(1.0, "classifier-free guidance scale (1: off)", low=0.0, high=20.0, step=0.25)
    temperature: float = setting(1.0, "softmax temperature of the sampled logits", low=0.05, high=2.0, step=0.05)
    top_k: int = setting(0, "sample among the k most likely codes only (0: off)", low=0, high="codebook_size",
                         step=1)
    top_p: float = setting(1.0, "sample among the smallest set of codes holding this probability (1: off)",
                           low=0.05, high=1.0, step=0.05)

    def __post_init__(self) -> None:
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1: off), got {self.top_p}")

    # ---- what decoding asks ------------------------------------------------------------------------------
    def plan(self, total: int) -> list[int]:
        """How many tokens each decoding step produces (sums to ``total``): one per step unless the family
        decodes in parallel."""
        return [1] * total

    def plan_clamped(self, total: int) -> list[int]:
        """As :meth:`plan` for an edit that decodes fewer tokens than the model's grid."""
        return self.plan(total)

    def guidance(self) -> GuidanceSchedule:
        raise NotImplementedError(f"the {self.family or type(self).__name__} sampling policy defines no "
                                  "guidance schedule")

    def orders(self, model: Any, batch: int, generator: torch.Generator | None = None,
               grid: tuple[int, int] | None = None, unknown: Tensor | None = None) -> Tensor:
        """The generation orders ``[batch, T]`` to decode in: the model's own (its scan order; RandAR and LPD
        draw a random order per sample). ``grid``: the canvas (default: the model's); ``unknown [batch, T]``
        (editing: True = to generate) needs a family that decodes known tokens first, which this one does
        not."""
        if unknown is not None:
            raise ValueError(f"a {self.family} model decodes in its fixed scan order: it cannot put known tokens "
                             "first (editing needs a family with known-token decoding)")
        return model.sampling_orders(batch, generator)

    # ---- as data -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    def replace(self, **changes: Any) -> SamplingPolicy:
        """A copy with ``changes`` (validated: a field of another family is an error naming that family)."""
        return type(self).from_dict({**self.to_dict(), **changes}, "sampling", _field_owners(self.family))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def settings(cls) -> list[SettingInfo]:
        """Every field with its type, default, help text and UI range (the CLI's options, the app's widgets)."""
        out = []
        for f in dataclasses.fields(cls):
            kind = _TYPES[f.type] if isinstance(f.type, str) else f.type
            meta = dict(f.metadata)
            out.append(SettingInfo(f.name, kind, f.default, meta.get("help", ""), meta.get("low"), meta.get("high"),
                                   meta.get("step"), meta.get("choices")))
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "sampling", hint: dict[str, str] | None = None
                  ) -> SamplingPolicy:
        """The policy from ``values``; a key that is not a field is an error naming it and the family's fields
        (``hint``: key -> the family that has it, for the message). ``None`` values are ignored (unset CLI
        options)."""
        values = {k: v for k, v in values.items() if v is not None}
        own = cls.field_names()
        for key in values:
            if key not in own:
                why = f": it is a {hint[key]} setting" if hint and key in hint else ""
                raise ValueError(f"{source}: {key!r} does not apply to a {cls.family} model{why}; "
                                 f"{cls.family} sampling settings: {own}")
        return config_from_dict(cls, values, prefix=f"{source}." if source else "")


ORDER_POLICIES = ("random", "locality")


@dataclass(frozen=True)
class ParallelSampling(SamplingPolicy):
    """A family that decodes several tokens per step, in any order (RandAR, LPD): ``steps`` and the order
    policy — a random permutation per image, or LPD's locality-aware orders (:mod:`anyorder.nn.locality`), zero-shot
    for any such family. Subclasses give the plan rule (:meth:`plan_for`)."""

    steps: int = setting(0, "decoding steps (0, or the token count: one token per step); below the token "
                            "count several tokens are decoded per step", low=1, high="seq_len", step=1)
    order: str = setting("random", "generation order: random (a permutation per image) or locality (each step "
                                   "near what is decoded, its tokens far apart: LPD's orders)",
                         choices=ORDER_POLICIES)
    proximity: float = setting(1.0, "locality orders: a cell whose decoded neighbours give it at least this score "
                                    "(1 per edge, 0.71 per diagonal neighbour) is taken first", low=0.0, high=4.0,
                               step=0.25)
    repulsion: int = setting(1, "locality orders: cells decoded in one step stay more than this many cells apart "
                                "(Chebyshev) where they can", low=0, high=4, step=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0 (0: one token per step), got {self.steps}")
        if self.order not in ORDER_POLICIES:
            raise ValueError(f"order must be one of {ORDER_POLICIES}, got {self.order!r}")
        if self.repulsion < 0 or self.proximity < 0:
            raise ValueError(f"proximity and repulsion must be >= 0, got {self.proximity} and {self.repulsion}")

    def plan_for(self, steps: int, total: int) -> list[int]:
        """Tokens per step for ``steps`` steps over ``total`` tokens (1 <= steps <= total)."""
        return parallel_decoding_schedule(steps, total)

    def plan(self, total: int) -> list[int]:
        """``steps`` steps over ``total`` tokens; more steps than tokens is an error here (editing tasks
        decode fewer tokens than the model's grid and clamp: :meth:`plan_clamped`)."""
        if total == 0:
            return []
        return self.plan_for(self.steps or total, total)

    def plan_clamped(self, total: int) -> list[int]:
        """As :meth:`plan`, with ``steps`` clamped to ``total`` (inpainting a few tokens with 88 steps)."""
        if total == 0:
            return []
        return self.plan_for(min(self.steps, total) if self.steps else total, total)

    def orders(self, model: Any, batch: int, generator: torch.Generator | None = None,
               grid: tuple[int, int] | None = None, unknown: Tensor | None = None) -> Tensor:
        """Orders ``[batch, T]`` over ``grid`` (default: the model's). ``random``: a random order per image (the
        model's :meth:`sampling_orders` for plain sampling); ``locality``: LPD's locality-aware orders for this
        policy's step plan. For an edit (``unknown [batch, T]``, True = to generate) the known tokens come
        first and count as decoded."""
        grid = tuple(grid or model.grid)
        T = grid[0] * grid[1]
        if self.order == "locality":
            if unknown is None:
                return locality_orders(grid, self.plan(T), batch, proximity=self.proximity,
                                       repulsion=self.repulsion, generator=generator, device=model.device)
            out = torch.empty(batch, T, dtype=torch.long, device=unknown.device)
            counts = unknown.sum(1)
            for m in sorted(set(counts.tolist())):  # images with the same number of tokens to generate
                rows = (counts == m).nonzero().flatten()
                out[rows] = locality_orders(grid, self.plan_clamped(m), len(rows), proximity=self.proximity,
                                            repulsion=self.repulsion, known=~unknown[rows], generator=generator,
                                            device=unknown.device)
            return out
        if unknown is None:
            if grid == tuple(model.grid):
                return model.sampling_orders(batch, generator)
            return orders_lib.random_orders(batch, T, generator=generator, device=model.device)
        rand = orders_lib.random_orders(batch, unknown.shape[1], generator=generator, device=unknown.device)
        return orders_lib.known_first(rand, unknown)
