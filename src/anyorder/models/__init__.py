"""Layer 2: the generator families on the shared transformer — one folder each — and their registry.

A family folder holds its model (``model.py``) and its :class:`~anyorder.models.spec.FamilySpec`
(``spec.py``: sampling policy, official format, presets, capabilities); importing it registers the spec.
"""

from anyorder.models.base import AnyOrderModel, DecodeState, StepInputs

# the built-in families, one line each: importing a family's package registers its spec
from anyorder.models.lpd import LPD, LPDConfig, LPDSampling
from anyorder.models.policy import ParallelSampling, SamplingPolicy, SettingInfo, setting
from anyorder.models.randar import RandAR, RandARConfig, RandARSampling
from anyorder.models.rar import RAR, RARConfig, RARSampling
from anyorder.models.registry import (
    FAMILIES,
    MODULE_TYPES,
    PRESETS,
    build_model,
    families_with,
    family_names,
    family_of,
    get_family,
    get_preset,
    model_config,
    register_family,
    sampling_config,
    unregister_family,
)
from anyorder.models.spec import Capabilities, FamilySpec, KeyMap, OfficialFormat, Preset

__all__ = ["AnyOrderModel", "DecodeState", "StepInputs", "SamplingPolicy", "ParallelSampling", "SettingInfo", "setting",
           "FamilySpec", "Capabilities", "KeyMap", "OfficialFormat", "Preset", "FAMILIES", "PRESETS",
           "MODULE_TYPES", "register_family", "unregister_family", "get_family", "family_of", "family_names",
           "families_with", "get_preset", "model_config", "build_model", "sampling_config", "RAR", "RARConfig",
           "RARSampling", "RandAR", "RandARConfig", "RandARSampling", "LPD", "LPDConfig", "LPDSampling"]
