"""Image tokenizers: images in [0, 1] <-> code grids [B, h, w]."""

from anyorder.tokenizers.base import ImageTokenizer

__all__ = ["ImageTokenizer"]
