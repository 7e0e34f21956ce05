"""The demo's quality judge: a small digit classifier and a Fréchet distance in its feature space.

The numbers produced here are the **feature-space Fréchet distance of a small digit classifier**
trained on the demo's MNIST split, *not* Inception FID: they are only comparable with each other
(same classifier, same reference set, same sample count). The feature dimension is kept small
(32 by default) because the demo judges only ~100 samples and the Fréchet distance needs a covariance
estimate. With few samples the distance is biased upwards, so compare generated samples against a
real subset of the *same size* (see ``benchmarks/demo_parts.py``), not only against the full train set.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anyorder.fitting import fit, seeded
from anyorder.io import PretrainedMixin

__all__ = [
    "DigitClassifierConfig",
    "DigitClassifier",
    "train_digit_classifier",
    "class_accuracy",
    "extract_features",
    "frechet_distance",
    "judge",
]


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


class DigitClassifier(PretrainedMixin, nn.Module):
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


def _random_shift(x: Tensor, max_shift: int, gen: torch.Generator) -> Tensor:
    """Translate each image by an integer offset in ``[-max_shift, max_shift]`` (zero fill)."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    offs = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=gen)
    rows = (offs[:, 0, None] + torch.arange(h)[None, :]).to(x.device)  # [B, H]
    cols = (offs[:, 1, None] + torch.arange(w)[None, :]).to(x.device)  # [B, W]
    bidx = torch.arange(b, device=x.device)[:, None, None]
    out = padded[:, 0][bidx, rows[:, :, None], cols[:, None, :]]  # single-channel fast path
    if x.shape[1] == 1:
        return out[:, None]
    return torch.stack([padded[:, c][bidx, rows[:, :, None], cols[:, None, :]] for c in range(x.shape[1])], 1)


def train_digit_classifier(
    images: Tensor,
    labels: Tensor,
    steps: int = 800,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    config: DigitClassifierConfig | None = None,
    max_shift: int = 2,
) -> tuple[DigitClassifier, dict[str, float]]:
    """Train a :class:`DigitClassifier` with Adam (cosine decay) and random ±``max_shift`` px shifts.

    Returns the classifier in eval mode and stats (final loss, train accuracy, seconds).
    """
    cfg = config or DigitClassifierConfig(in_channels=images.shape[1], image_size=images.shape[-1])
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= cfg.num_classes):
        raise ValueError(f"labels must lie in [0, {cfg.num_classes})")
    device = torch.device(device)
    with seeded(seed, device):
        gen = torch.Generator().manual_seed(seed)
        model = DigitClassifier(cfg).to(device).train()
        data, targets = images.float().to(device), labels.long().to(device)

        def step_loss(idx: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
            loss = F.cross_entropy(model(_random_shift(data[idx], max_shift, gen)), targets[idx])
            return loss, {"loss": loss}

        shown, seconds = fit(model, step_loss, data.shape[0], steps, batch_size, lr, gen, device,
                             "train classifier", progress)
    model.eval()
    stats = {
        "steps": float(steps),
        "seconds": seconds,
        "final_loss": float(shown["loss"]),
        "train_accuracy": class_accuracy(model, data[:2000], targets[:2000]),
    }
    return model, stats


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _batched(model: DigitClassifier, images: Tensor, fn: str, batch_size: int) -> Tensor:
    was_training = model.training
    model.eval()
    device = _device_of(model)
    outs = [
        getattr(model, fn)(images[i : i + batch_size].float().to(device))
        for i in range(0, len(images), batch_size)
    ]
    model.train(was_training)
    if not outs:
        return torch.zeros(0, model.config.feature_dim if fn == "features" else model.config.num_classes)
    return torch.cat(outs).cpu()


def extract_features(classifier: DigitClassifier, images: Tensor, batch_size: int = 500) -> Tensor:
    """Penultimate features ``[N, feature_dim]`` (CPU, float32) of images in ``[0, 1]``."""
    return _batched(classifier, images, "features", batch_size)


def class_accuracy(classifier: DigitClassifier, images: Tensor, labels: Tensor, batch_size: int = 500) -> float:
    """Fraction of ``images`` whose predicted class equals ``labels``."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise ValueError("class_accuracy needs at least one image")
    pred = _batched(classifier, images, "forward", batch_size).argmax(1)
    return float((pred == labels.cpu().long()).float().mean())


def frechet_distance(feats_a: Tensor | np.ndarray, feats_b: Tensor | np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, F]`` (the FID formula).

    ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` in float64 with ``scipy.linalg.sqrtm``;
    ``eps * I`` is added to both covariances when the product is singular, and a numerically tiny
    imaginary part of the square root is dropped.
    """
    from scipy import linalg

    a = feats_a.detach().cpu().double().numpy() if isinstance(feats_a, Tensor) else np.asarray(feats_a, np.float64)
    b = feats_b.detach().cpu().double().numpy() if isinstance(feats_b, Tensor) else np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected feature matrices [N, F] with equal F, got {a.shape} and {b.shape}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("frechet_distance needs at least 2 samples per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    sig_a, sig_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    diff = mu_a - mu_b
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(sig_a @ sig_b)
    if isinstance(covmean, tuple):  # older scipy with disp=False semantics
        covmean = covmean[0]
    if not np.isfinite(covmean).all():
        offset = np.eye(sig_a.shape[0]) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            covmean = linalg.sqrtm((sig_a + offset) @ (sig_b + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(covmean.imag))
        scale = max(1.0, float(np.max(np.abs(covmean.real))))
        if imag > 1e-3 * scale:
            warnings.warn(f"frechet_distance: sqrtm has a large imaginary component ({imag:.3g})", stacklevel=2)
        covmean = covmean.real
    value = float(diff @ diff + np.trace(sig_a) + np.trace(sig_b) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def judge(
    classifier: DigitClassifier,
    samples: Tensor,
    sample_labels: Tensor,
    reference_images: Tensor,
    batch_size: int = 500,
) -> dict[str, float]:
    """Score generated ``samples`` (images in ``[0, 1]``) against their conditioning labels.

    Returns ``accuracy`` (classifier agrees with the conditioning class) and ``frechet_distance``
    (feature-space Fréchet distance of the small digit classifier to ``reference_images``; not
    Inception FID), plus the sample counts.
    """
    acc = class_accuracy(classifier, samples, sample_labels, batch_size)
    fd = frechet_distance(
        extract_features(classifier, samples, batch_size), extract_features(classifier, reference_images, batch_size)
    )
    return {
        "accuracy": acc,
        "frechet_distance": fd,
        "num_samples": float(len(samples)),
        "num_reference": float(len(reference_images)),
    }
