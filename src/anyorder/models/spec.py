"""A family's spec: everything the rest of the package needs to know of a model family, in one object.

torchtitan's ``ModelSpec``, for any-order generators. Each family folder (``models/rar``, ``models/randar``,
``models/lpd``) defines its config and model (``model.py``) and a :class:`FamilySpec` (``spec.py``): its
sampling policy, its official format (state-dict key map used in both directions, YAML sections, release
sampling keys, release file names), its default order schedule, capabilities, presets, display name and
default tokenizer, and its evaluation protocol (:class:`EvalProtocol`: how its paper's FID
samples were made). :func:`anyorder.models.registry.register_family` makes it known by name; every
other layer asks the spec or a capability, never the family's name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import Tensor

from anyorder.io.config import MISSING, Rule, at_least, official_value
from anyorder.models.policy import SamplingPolicy

__all__ = ["Capabilities", "CAPABILITY_HELP", "KeyMap", "OfficialFormat", "Preset", "FamilySpec", "REQUIRED",
           "POSITIVE", "NONNEGATIVE", "PROBABILITY", "official_fields", "EvalProtocol",
           "GuidanceSearch", "LABEL_LAYOUTS", "DTYPE_PATHS", "UINT8_CONVERSIONS", "DEFAULT_PROTOCOL",
           "scale_range"]


@dataclass(frozen=True)
class Capabilities:
    """What a family can do beyond class-conditional sampling. Code asks these, not the family's name."""

    parallel: bool = False  # several tokens per step, in any order: ``steps`` and order policies apply
    known_tokens: bool = False  # decodes known tokens first at any positions: inpainting, outpainting
    canvas: bool = False  # positions beyond the trained grid (a RoPE table per canvas): larger outpainting
    extrapolation: bool = False  # zero-shot resolution extrapolation, with spatial guidance
    features: bool = False  # bidirectional per-position features (the image fed twice)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


CAPABILITY_HELP = {
    "parallel": "decodes several tokens per step, in any order",
    "known_tokens": "decodes known tokens first at any positions",
    "canvas": "has positions beyond its trained grid",
    "extrapolation": "extrapolates to a larger resolution zero-shot",
    "features": "gives bidirectional per-position features",
}


class KeyMap:
    """Official parameter names <-> ours, one table used in both directions.

    Each entry is ``(official, ours)``: name prefixes, where ``{i}`` stands for a block index. The first entry
    whose pattern matches the start of a name rewrites it; names that match none are the same in both."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs
        self._fwd = [self._compile(a, b) for a, b in pairs]
        self._back = [self._compile(b, a) for a, b in pairs]

    @staticmethod
    def _compile(src: str, dst: str) -> tuple[re.Pattern[str], str]:
        pattern = "^" + re.escape(src).replace(re.escape("{i}"), r"(\d+)")
        return re.compile(pattern), dst.replace("{i}", r"\1")

    @staticmethod
    def _apply(rules: list[tuple[re.Pattern[str], str]], name: str) -> str:
        for pattern, repl in rules:
            if pattern.match(name):
                return pattern.sub(repl, name, count=1)
        return name

    def to_ours(self, name: str) -> str:
        return self._apply(self._fwd, name)

    def to_official(self, name: str) -> str:
        return self._apply(self._back, name)


class OfficialFormat:
    """How a family's official release is written. Subclasses fill in the class attributes and methods.

    ``keys``: the state-dict :class:`KeyMap`; ``markers``: keys whose presence marks an official state dict of
    this family; ``ignored``: official keys that hold no parameter of ours (RandAR's ``freqs_cis``);
    ``release_files``: the released checkpoints' file stems and the preset of each; ``repo``: where the code is.
    """

    repo: str = ""
    keys: KeyMap = KeyMap([])
    markers: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    release_files: dict[str, str] = {}

    def is_state_dict(self, sd: dict[str, Any]) -> bool:
        return bool(self.markers) and all(k in sd for k in self.markers)

    def convert_state_dict(self, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """An official state dict with our names (the ``ignored`` keys dropped)."""
        return {self.keys.to_ours(k): v for k, v in sd.items() if k not in self.ignored}

    def section(self, cfg: dict[str, Any]) -> dict[str, Any] | None:
        """The part of an official config (a flat ``config.json`` or the official YAML) holding this family's
        hyper-parameters, or None when ``cfg`` is not this family's."""
        return None

    def config(self, section: dict[str, Any], source: str) -> Any:
        """Our config dataclass from :meth:`section`; every bad value is an error naming ``source``, the key,
        the value and the rule."""
        raise NotImplementedError

    def sampling(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """The sampling settings an official config records, as our policy's fields."""
        return {}

    def fit(self, sd: dict[str, Tensor], model: Any) -> dict[str, Tensor]:
        """An official state dict (our names) fitted to ``model`` where the official loader adapts it (LPD:
        a position table of another grid resized); by default unchanged."""
        return sd


@dataclass(frozen=True)
class Preset:
    """A named model: its family, config fields, sampling settings (the release's), tokenizer, image size."""

    family: str
    model: dict[str, Any]
    sampling: dict[str, Any] = field(default_factory=dict)
    tokenizer: str = ""
    image_size: int = 256
    description: str = ""


# the vocabulary of an evaluation protocol
LABEL_LAYOUTS = {
    "balanced": "N // C per class, the first N % C classes one more, interleaved: sample i has "
                "class i % C",
    "sorted": "the same counts in class order: all of class 0, then class 1, ...",
    "random": "uniform random classes, drawn once from the seed (whatever the process count)",
}
DTYPE_PATHS = {
    "fp32": "float32 weights and compute",
    "bf16-weights": "the model cast to bfloat16 (RoPE tables, logits, guidance and sampling in "
                    "float32); the tokenizer in float32",
    "bf16-autocast": "float32 weights, sampling and the tokenizer's decoding under "
                     "torch.autocast(bfloat16)",
}
UINT8_CONVERSIONS = {
    "round": "x * 255 + 0.5, clamped to [0, 255], truncated (round half up)",
    "truncate": "x clamped to [0, 1], * 255, truncated",
    "round-half-even": "x * 255 in float32, clipped to [0, 255], rounded half to even (numpy's)",
}


def scale_range(start: float, stop: float, step: float) -> tuple[float, ...]:
    """``start, start + step, ...`` up to ``stop`` inclusive (numpy's ``arange(start, stop + 1e-4,
    step)``, as RandAR's search), each rounded to 6 decimals."""
    if step <= 0 or stop < start:
        raise ValueError(f"a scale range needs start <= stop and step > 0, got {start}, {stop}, "
                         f"{step}")
    n = int((stop + 1e-4 - start) / step) + 1
    return tuple(round(float(start) + i * step, 6) for i in range(n)
                 if start + i * step < stop + 1e-4)


@dataclass(frozen=True)
class GuidanceSearch:
    """An official guidance search: the grid (``powers``: the pow-cosine powers too; empty: the
    policy's own), the samples per grid point, the criterion (lowest ``metric``), the samples of the
    final run at the best."""

    scales: tuple[float, ...]
    powers: tuple[float, ...] = ()
    num_samples: int = 10_000
    report_samples: int = 50_000
    metric: str = "fid"
    source: str = ""

    def __post_init__(self) -> None:
        if not self.scales:
            raise ValueError("a guidance search needs at least one scale")
        if self.metric != "fid":
            raise ValueError(f"guidance searches pick the lowest FID; metric {self.metric!r} is not "
                             "supported")


@dataclass(frozen=True)
class EvalProtocol:
    """How a family's paper made its FID samples: ``anyorder sample --npz --protocol NAME``.

    ``labels``: :data:`LABEL_LAYOUTS`; ``dtype``: :data:`DTYPE_PATHS`; ``uint8``: how decoded images
    in [0, 1] become levels (:data:`UINT8_CONVERSIONS`); ``tf32``: TF32 matrix products allowed on
    CUDA while sampling (the official scripts set ``torch.backends.cuda.matmul.allow_tf32``);
    ``num_samples``: the paper's N; ``guidance``: the official guidance search, if any; ``source``:
    the official files these come from."""

    name: str
    labels: str = "balanced"
    dtype: str = "fp32"
    uint8: str = "round"
    tf32: bool = False
    num_samples: int = 50_000
    guidance: GuidanceSearch | None = None
    source: str = ""

    def __post_init__(self) -> None:
        vocab = (("labels", LABEL_LAYOUTS), ("dtype", DTYPE_PATHS), ("uint8", UINT8_CONVERSIONS))
        for key, allowed in vocab:
            if getattr(self, key) not in allowed:
                raise ValueError(f"evaluation protocol {self.name!r}: {key} must be one of "
                                 f"{sorted(allowed)}, got {getattr(self, key)!r}")

    def to_dict(self) -> dict[str, Any]:
        """What a sample file records: the name and the settings that make the samples."""
        return {"name": self.name, "labels": self.labels, "dtype": self.dtype, "uint8": self.uint8,
                "tf32": self.tf32}


# ours before the families' own protocols (issue 21): balanced labels, float32, rounded
DEFAULT_PROTOCOL = EvalProtocol("anyorder",
                                source="anyorder's own: class-balanced, float32, round half up")


@dataclass(frozen=True)
class FamilySpec:
    """One model family: registered by ``name`` (:func:`anyorder.models.registry.register_family`).

    ``order_schedule``: the default training schedule of random orders, as fractions of the training steps
    ``(start, end)`` of RAR's annealing (r = 1 before ``start``, 0 from ``end``), or None for random orders
    throughout. ``run_configs``: a folder of packaged run configs (YAML) for ``anyorder train --config``.
    ``debug``: the config fields of a tiny model (tests, docs and the first-run checks build it).
    ``protocol``: how the family's paper made its FID samples (``anyorder sample --npz`` uses it by
    default; None: :data:`DEFAULT_PROTOCOL`)."""

    name: str
    display_name: str
    description: str
    model_class: type
    config_class: type
    policy_class: type[SamplingPolicy]
    capabilities: Capabilities = Capabilities()
    official: OfficialFormat | None = None
    order_schedule: tuple[float, float] | None = None
    default_tokenizer: str = ""
    presets: dict[str, Preset] = field(default_factory=dict)
    run_configs: Path | None = None
    debug: dict[str, Any] = field(default_factory=dict)
    protocol: EvalProtocol | None = None

    def __post_init__(self) -> None:
        if self.policy_class.family != self.name:
            raise ValueError(f"family {self.name!r}: its sampling policy {self.policy_class.__name__} says family "
                             f"{self.policy_class.family!r} (set the policy's `family` ClassVar)")
        for pname, p in self.presets.items():
            if p.family != self.name:
                raise ValueError(f"family {self.name!r}: preset {pname!r} belongs to family {p.family!r}")

    def can(self, capability: str) -> bool:
        if capability not in Capabilities.names():
            raise ValueError(f"unknown capability {capability!r}; known: {Capabilities.names()}")
        return bool(getattr(self.capabilities, capability))


REQUIRED = MISSING  # an official key without a default
POSITIVE, NONNEGATIVE = at_least(1), at_least(0)
PROBABILITY = Rule("in [0, 1)", lambda v: 0.0 <= v < 1.0)


def official_fields(section: dict[str, Any], table: list[tuple[str, str, type, Any, Rule | None]],
                    source: str) -> dict[str, Any]:
    """Our config fields from an official config ``section``: ``table`` rows ``(official key, our field, kind,
    default or REQUIRED, rule)`` read with :func:`anyorder.io.config.official_value` — as strictly as our own
    files (``"64"`` is not an integer, nor is ``2.5``), every error naming ``source``, the key, the value and the
    rule. A default of None leaves our field's own default."""
    out: dict[str, Any] = {}
    for key, name, kind, default, rule in table:
        value = official_value(section, key, kind, source, rule, default)
        if value is not None:
            out[name] = value
    return out
