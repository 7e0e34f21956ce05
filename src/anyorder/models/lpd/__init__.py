"""LPD (Zhang et al., arXiv 2507.01957): position-query tokens decoded jointly in groups, a KV cache of image
tokens only, locality-aware generation orders."""

from anyorder.models.lpd.model import LPD, LPDConfig, LPDState
from anyorder.models.lpd.plans import group_sizes
from anyorder.models.lpd.spec import SPEC, LPDSampling
from anyorder.models.registry import register_family

__all__ = ["LPD", "LPDConfig", "LPDState", "LPDSampling", "SPEC", "group_sizes"]

register_family(SPEC)
