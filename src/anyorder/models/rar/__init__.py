"""RAR (Yu et al., arXiv 2411.00776): a causal transformer over VQ tokens with target-aware positional
embeddings, trained on randomly permuted sequences annealed into raster order."""

from anyorder.models.rar.model import RAR, RARConfig, RARState
from anyorder.models.rar.spec import SPEC, RARSampling
from anyorder.models.registry import register_family

__all__ = ["RAR", "RARConfig", "RARState", "RARSampling", "SPEC"]

register_family(SPEC)
