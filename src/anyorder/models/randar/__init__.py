"""RandAR (Pang et al., arXiv 2412.01827): position-instruction tokens, random-order training, parallel
decoding and zero-shot editing."""

from anyorder.models.randar.model import RandAR, RandARConfig, RandARState, deinterleave, interleave
from anyorder.models.randar.spec import SPEC, RandARSampling
from anyorder.models.registry import register_family

__all__ = ["RandAR", "RandARConfig", "RandARState", "RandARSampling", "SPEC", "interleave", "deinterleave"]

register_family(SPEC)
