"""Layer 2: the generator families (RAR, RandAR) on the shared transformer, their registry and presets."""

from anyorder.models.base import AnyOrderModel, DecodeState
from anyorder.models.presets import PRESETS, Preset, get_preset
from anyorder.models.randar import RandAR, RandARConfig
from anyorder.models.rar import RAR, RARConfig
from anyorder.models.registry import FAMILIES, build_model

__all__ = ["AnyOrderModel", "DecodeState", "PRESETS", "Preset", "get_preset", "RAR", "RARConfig", "RandAR",
           "RandARConfig", "FAMILIES", "build_model"]
