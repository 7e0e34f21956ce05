"""The interface every image tokenizer implements (demo VQ, MaskGIT-VQGAN, LlamaGen VQ)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ImageTokenizer(nn.Module):
    """Maps images ``[B, C, H, W]`` with values in ``[0, 1]`` to codes ``[B, h, w]`` and back.

    Subclasses set ``codebook_size``, ``downsample`` (H / h) and ``in_channels`` and implement
    :meth:`encode` and :meth:`decode`. Tokenizers whose official code works in another value range
    (LlamaGen: [-1, 1]) convert inside, so callers always see [0, 1].
    """

    codebook_size: int
    downsample: int
    in_channels: int = 3

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Tensor:
        """``decode(encode(images))``, images in ``[0, 1]``."""
        return self.decode(self.encode(images))

    def forward(self, images: Tensor) -> Tensor:
        """Reconstruction (the demo VQ's ``forward`` returns its training outputs instead)."""
        return self.reconstruct(images)

    def grid_size(self, image_size: int) -> int:
        return image_size // self.downsample
