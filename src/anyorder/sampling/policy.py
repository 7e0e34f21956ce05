"""One sampling policy per family: which settings apply, the step plan and the guidance schedule.

The papers sample differently, and only where they differ do the configs differ:

- :class:`RARSampling` — one token per step in the model's scan order; classifier-free guidance on RAR's
  pow-cosine schedule (``guidance_scale``, ``guidance_power``; power 0 is the constant full scale).
- :class:`RandARSampling` — ``steps`` parallel-decoding steps on RandAR's cosine schedule (0: one token per
  step); guidance linear from ``guidance_start`` to ``guidance_scale`` over the tokens decoded so far.

Both sample with ``temperature``, ``top_k`` and ``top_p``. A setting the family cannot use is an error
(:func:`sampling_config` names it and the family's settings), never silently dropped. Presets, run configs,
:func:`anyorder.sampling.generate`, the CLI, the demo and the editing tasks all go through here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from anyorder.io.config import config_from_dict, config_to_dict
from anyorder.sampling.schedules import GuidanceSchedule, parallel_decoding_schedule

__all__ = ["SamplingConfig", "RARSampling", "RandARSampling", "SAMPLING_CONFIGS", "sampling_config",
           "model_sampling"]


@dataclass(frozen=True)
class SamplingConfig:
    """Settings every family shares. Use a family's subclass (or :func:`sampling_config`)."""

    family: ClassVar[str] = ""
    guidance_scale: float = 1.0
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off

    def __post_init__(self) -> None:
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1: off), got {self.top_p}")

    def plan(self, total: int) -> list[int]:
        """How many tokens each decoding step produces (sums to ``total``)."""
        raise NotImplementedError

    def guidance(self) -> GuidanceSchedule:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    def replace(self, **changes: Any) -> SamplingConfig:
        """A copy with ``changes`` (validated: a field of another family is an error)."""
        return sampling_config(self.family, {**self.to_dict(), **changes})


@dataclass(frozen=True)
class RARSampling(SamplingConfig):
    """RAR: raster (scan-order) decoding, one token per step, pow-cosine guidance."""

    family: ClassVar[str] = "rar"
    guidance_power: float = 0.0

    def plan(self, total: int) -> list[int]:
        return [1] * total

    def guidance(self) -> GuidanceSchedule:
        return GuidanceSchedule("pow_cosine", self.guidance_scale, self.guidance_power)


@dataclass(frozen=True)
class RandARSampling(SamplingConfig):
    """RandAR: random orders, ``steps`` cosine parallel-decoding steps, linear guidance."""

    family: ClassVar[str] = "randar"
    guidance_start: float = 1.0
    steps: int = 0  # 0: one token per step

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0 (0: one token per step), got {self.steps}")
        if self.guidance_start != 1.0 and self.guidance_scale <= 1.0:
            raise ValueError(f"guidance_start={self.guidance_start} has no effect with guidance_scale="
                             f"{self.guidance_scale}: RandAR guides only when its final scale exceeds 1")

    def plan(self, total: int) -> list[int]:
        """``steps`` cosine steps over ``total`` tokens; more steps than tokens is an error here (editing tasks
        decode fewer tokens than the model's grid and clamp: :meth:`plan_clamped`)."""
        if total == 0:
            return []
        return parallel_decoding_schedule(self.steps or total, total)

    def plan_clamped(self, total: int) -> list[int]:
        """As :meth:`plan`, with ``steps`` clamped to ``total`` (inpainting a few tokens with 88 steps)."""
        if total == 0:
            return []
        return parallel_decoding_schedule(min(self.steps, total) if self.steps else total, total)

    def guidance(self) -> GuidanceSchedule:
        return GuidanceSchedule("linear", self.guidance_scale, start=self.guidance_start)


SAMPLING_CONFIGS: dict[str, type[SamplingConfig]] = {"rar": RARSampling, "randar": RandARSampling}


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def sampling_config(family: str, values: SamplingConfig | dict[str, Any] | None = None,
                    source: str = "sampling") -> SamplingConfig:
    """The family's :class:`SamplingConfig` from ``values`` (a dict or a config); unknown keys, and keys of
    the other family, are errors naming the key and the family's settings. ``None`` values are ignored
    (unset command-line options)."""
    if family not in SAMPLING_CONFIGS:
        raise ValueError(f"{source}: unknown model family {family!r}; use one of {sorted(SAMPLING_CONFIGS)}")
    cls = SAMPLING_CONFIGS[family]
    if isinstance(values, SamplingConfig):
        if values.family != family:
            raise ValueError(f"{source}: a {values.family} sampling config cannot drive a {family} model")
        return values
    values = {k: v for k, v in (values or {}).items() if v is not None}
    own = _fields(cls)
    for key in values:
        if key not in own:
            others = [f for f, c in SAMPLING_CONFIGS.items() if f != family and key in _fields(c)]
            why = (f": it is a {others[0]} setting ({cls.__doc__.splitlines()[0].rstrip('.')})" if others
                   else "")
            raise ValueError(f"{source}: {key!r} does not apply to a {family} model{why}; "
                             f"{family} sampling settings: {own}")
    return config_from_dict(cls, values, prefix=f"{source}." if source else "")


def model_sampling(model: Any, **overrides: Any) -> SamplingConfig:
    """The sampling settings a model was made with — those its run recorded (``config.json`` ``extra.sampling``,
    kept by :func:`anyorder.hub.from_pretrained` as ``model.sampling_defaults``) or its preset's — with
    ``overrides`` (``None`` = keep) applied. A model with no record gets the family's defaults."""
    recorded = dict(getattr(model, "sampling_defaults", None) or {})
    return sampling_config(model.family, {**recorded, **{k: v for k, v in overrides.items() if v is not None}})
