"""The one registry of model families: name -> :class:`~anyorder.models.spec.FamilySpec`.

Each family folder registers its spec when imported (``models/__init__.py`` imports the built-in ones); a
family defined elsewhere — a user's, or a test's — calls :func:`register_family` the same way, and then
builds, trains, saves, loads, samples and appears in the CLI like the built-in ones. Lookups of an unknown
family, preset or setting are errors that name it and what is registered.
"""

from __future__ import annotations

import contextlib
import dataclasses
from types import MappingProxyType
from typing import Any

import torch

from anyorder.io.config import config_from_dict
from anyorder.models.base import AnyOrderModel
from anyorder.models.digit_judge import DigitClassifier
from anyorder.models.policy import SamplingPolicy, set_field_owners
from anyorder.models.spec import FamilySpec, Preset
from anyorder.tokenizers.demo_vq import DemoVQ

__all__ = ["FAMILIES", "PRESETS", "MODULE_TYPES", "register_family", "unregister_family", "get_family",
           "family_of", "family_names", "families_with", "get_preset", "model_config", "build_model",
           "sampling_config"]

_FAMILIES: dict[str, FamilySpec] = {}
_PRESETS: dict[str, Preset] = {}
FAMILIES = MappingProxyType(_FAMILIES)  # name -> FamilySpec (read-only view; register_family adds)
PRESETS = MappingProxyType(_PRESETS)  # every registered family's presets by name
# small modules saved in the same format (config.json records their ``model_type``)
MODULE_TYPES: dict[str, type[torch.nn.Module]] = {"demo_vq": DemoVQ, "digit_classifier": DigitClassifier}


def register_family(spec: FamilySpec, replace: bool = False) -> FamilySpec:
    """Make ``spec`` known by ``spec.name`` (with its presets). Registering another spec under a name already
    taken is an error unless ``replace``; registering the same spec again does nothing."""
    if _FAMILIES.get(spec.name) is spec:
        return spec
    if spec.name in _FAMILIES and not replace:
        raise ValueError(f"model family {spec.name!r} is already registered")
    if getattr(spec.model_class, "family", None) != spec.name:
        raise ValueError(f"family {spec.name!r}: {spec.model_class.__name__}.family is "
                         f"{getattr(spec.model_class, 'family', None)!r}; set it to {spec.name!r}")
    for name in spec.presets:
        owner = _PRESETS.get(name)
        if owner is not None and owner.family != spec.name:
            raise ValueError(f"family {spec.name!r}: preset {name!r} is already a {owner.family} preset")
    if spec.name in _FAMILIES:
        unregister_family(spec.name)
    _FAMILIES[spec.name] = spec
    _PRESETS.update(spec.presets)
    return spec


def unregister_family(name: str) -> None:
    """Forget family ``name`` and its presets."""
    spec = _FAMILIES.pop(name)
    for p in spec.presets:
        _PRESETS.pop(p, None)


def family_names() -> list[str]:
    return sorted(_FAMILIES)


def get_family(name: str, source: str = "") -> FamilySpec:
    if name not in _FAMILIES:
        where = f"{source}: " if source else ""
        raise ValueError(f"{where}unknown model family {name!r}; registered families: {family_names()}")
    return _FAMILIES[name]


def family_of(model: Any) -> FamilySpec:
    """The spec of a model (its ``family``)."""
    return get_family(getattr(model, "family", None) or type(model).__name__)


def families_with(capability: str) -> list[str]:
    """The registered families that have ``capability`` (a :class:`~anyorder.models.spec.Capabilities` field)."""
    return [n for n in family_names() if _FAMILIES[n].can(capability)]


def get_preset(name: str) -> Preset:
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(sorted(_PRESETS))}")
    return _PRESETS[name]


def model_config(family: str, values: dict[str, Any], source: str = "config") -> Any:
    """Validate ``values`` into the family's config dataclass; unknown keys are errors naming the key."""
    cls = get_family(family, source).config_class
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{source}: unknown {family} config key(s) {unknown}; valid keys: {sorted(names)}")
    try:
        return config_from_dict(cls, values)
    except ValueError as e:  # a type or a value rule: name the file
        raise ValueError(f"{source}: {e}" if source else str(e)) from e


def build_model(config: dict[str, Any] | str, device: torch.device | str | None = None,
                source: str = "config") -> AnyOrderModel:
    """A randomly initialised model from ``{"family": ..., **fields}`` (our ``config.json``; its ``extra``
    metadata entry is ignored) or a preset name (whose sampling settings the model keeps as
    ``sampling_defaults``). ``source`` names the config in errors. ``device``: the model is built and
    initialised there (no CPU copy first; on CUDA the initial weights come from the CUDA generator, so they
    differ from a CPU build's for the same seed)."""
    sampling: dict[str, Any] = {}
    if isinstance(config, str):
        p = get_preset(config)
        config, sampling = {"family": p.family, **p.model}, dict(p.sampling)
    config = dict(config)
    config.pop("extra", None)  # save_pretrained(..., extra=...) metadata, not a model field
    family = config.pop("family", None)
    if family is None:
        raise ValueError(f"{source}: model config needs a 'family' key (one of {family_names()})")
    spec = get_family(family, source)
    cfg = model_config(family, config, source)
    # built and initialised on ``device`` itself: no CPU copy of every parameter per process first
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = spec.model_class(cfg)
    model.sampling_defaults = sampling  # a preset's sampling settings (anyorder.sampling.model_sampling)
    return model


def sampling_config(family: str, values: SamplingPolicy | dict[str, Any] | None = None,
                    source: str = "sampling") -> SamplingPolicy:
    """The family's sampling policy from ``values`` (a dict, or a policy, returned as is); unknown keys, and
    keys of other families, are errors naming the key, the family that has it and the family's settings.
    ``None`` values are ignored (unset command-line options)."""
    cls = get_family(family, source).policy_class
    if isinstance(values, SamplingPolicy):
        if values.family != family:
            raise ValueError(f"{source}: a {values.family} sampling policy cannot drive a {family} model")
        return values
    return cls.from_dict(dict(values or {}), source, field_owners(family))


def field_owners(family: str) -> dict[str, str]:
    """Each sampling field of the other families -> the first of them (in name order) that declares it."""
    owners: dict[str, str] = {}
    for other in family_names():
        if other != family:
            for key in _FAMILIES[other].policy_class.field_names():
                owners.setdefault(key, other)
    return owners


set_field_owners(field_owners)  # SamplingPolicy.replace names the family a foreign field belongs to
