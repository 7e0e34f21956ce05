"""The digit judge: a small CNN classifier whose penultimate features score samples of the bundled digits.

Training lives in :mod:`anyorder.training.small_models`; scoring in :mod:`anyorder.evaluation.judge`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['DigitClassifierConfig', 'DigitClassifier']


@dataclass
class DigitClassifierConfig:
    """Hyper-parameters of :class:`DigitClassifier`."""

    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    width: int = 32
    feature_dim: int = 32

    def __post_init__(self) -> None:
        if self.image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {self.image_size}")
        if min(self.in_channels, self.num_classes, self.width, self.feature_dim) < 1:
            raise ValueError(f"invalid sizes in {self}")


class DigitClassifier(nn.Module):
    """Small CNN: 3 conv blocks -> ``feature_dim`` embedding -> class logits.

    :meth:`features` returns the penultimate embedding (pre-activation, so no dead ReLU dimensions
    in the covariance); :meth:`forward` returns logits.
    """

    model_type = "digit_classifier"
    config_class = DigitClassifierConfig

    def __init__(self, config: DigitClassifierConfig | None = None) -> None:
        super().__init__()
        cfg = config or DigitClassifierConfig()
        self.config = cfg
        w = cfg.width
        self.trunk = nn.Sequential(
            nn.Conv2d(cfg.in_channels, w // 2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w // 2, w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        side = cfg.image_size // 4
        self.embed = nn.Linear(2 * w * side * side, cfg.feature_dim)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes)

    def _check(self, images: Tensor) -> None:
        c, s = self.config.in_channels, self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (c, s, s):
            raise ValueError(f"expected images [B, {c}, {s}, {s}] in [0, 1], got {tuple(images.shape)}")

    def features(self, images: Tensor) -> Tensor:
        """Penultimate embedding ``[B, feature_dim]`` of images ``[B, C, H, W]`` in ``[0, 1]``."""
        self._check(images)
        return self.embed(self.trunk(images * 2.0 - 1.0))

    def forward(self, images: Tensor) -> Tensor:
        """Class logits ``[B, num_classes]``."""
        return self.head(self.dropout(F.relu(self.features(images))))
