"""The sampling policies, as the sampling layer offers them: each family's policy class, the registry's
``sampling_config`` and :func:`model_sampling` (the settings a model was made with).

The policies themselves live with their families (``anyorder/models/<family>/spec.py``) on the base class
:class:`~anyorder.models.policy.SamplingPolicy`.
"""

from __future__ import annotations

from typing import Any

from anyorder.models.policy import ParallelSampling, SamplingPolicy
from anyorder.models.randar import RandARSampling
from anyorder.models.rar import RARSampling
from anyorder.models.registry import sampling_config

__all__ = ["SamplingPolicy", "SamplingConfig", "ParallelSampling", "RARSampling", "RandARSampling",
           "sampling_config", "model_sampling"]

SamplingConfig = SamplingPolicy  # the name earlier releases used


def model_sampling(model: Any, **overrides: Any) -> SamplingPolicy:
    """The sampling settings a model was made with — those its run recorded (``config.json`` ``extra.sampling``,
    kept by :func:`anyorder.hub.from_pretrained` as ``model.sampling_defaults``) or its preset's — with
    ``overrides`` (``None`` = keep) applied. A model with no record gets the family's defaults."""
    recorded = dict(getattr(model, "sampling_defaults", None) or {})
    return sampling_config(model.family, {**recorded, **{k: v for k, v in overrides.items() if v is not None}})
