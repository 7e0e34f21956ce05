"""Model families by name and :func:`build_model` (a randomly initialised model from a config or preset)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from anyorder.io.config import config_from_dict
from anyorder.models.base import AnyOrderModel
from anyorder.models.digit_judge import DigitClassifier
from anyorder.models.presets import get_preset
from anyorder.models.randar import RandAR
from anyorder.models.rar import RAR
from anyorder.tokenizers.demo_vq import DemoVQ

__all__ = ['FAMILIES', 'MODULE_TYPES', 'model_config', 'build_model']

FAMILIES: dict[str, type[AnyOrderModel]] = {"rar": RAR, "randar": RandAR}
# small modules saved in the same format (config.json records their ``model_type``)
MODULE_TYPES: dict[str, type[torch.nn.Module]] = {"demo_vq": DemoVQ, "digit_classifier": DigitClassifier}


def model_config(family: str, values: dict[str, Any], source: str = "config"):
    """Validate ``values`` into the family's config dataclass; unknown keys are errors."""
    if family not in FAMILIES:
        raise ValueError(f"{source}: unknown model family {family!r}; use one of {sorted(FAMILIES)}")
    cls = FAMILIES[family].config_class
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{source}: unknown {family} config key(s) {unknown}; valid keys: {sorted(names)}")
    return config_from_dict(cls, values, prefix=f"{source}: " if source else "")


def build_model(config: dict[str, Any] | str, device: torch.device | str | None = None,
                source: str = "config") -> AnyOrderModel:
    """A randomly initialised model from ``{"family": ..., **fields}`` (our ``config.json``; its
    ``extra`` metadata entry is ignored) or a preset name (whose sampling settings the model keeps as
    ``sampling_defaults``). ``source`` names the config in errors."""
    sampling: dict[str, Any] = {}
    if isinstance(config, str):
        p = get_preset(config)
        config, sampling = {"family": p.family, **p.model}, dict(p.sampling)
    config = dict(config)
    config.pop("extra", None)  # save_pretrained(..., extra=...) metadata, not a model field
    family = config.pop("family", None)
    if family is None:
        raise ValueError(f"{source}: model config needs a 'family' key ('rar' or 'randar')")
    cfg = model_config(family, config, source)  # validates the family and the keys first
    model = FAMILIES[family](cfg)
    model.sampling_defaults = sampling  # a preset's sampling settings (anyorder.sampling.model_sampling)
    return model.to(device) if device is not None else model
