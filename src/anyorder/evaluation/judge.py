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

import numpy as np
import torch
from torch import Tensor, nn

from anyorder.evaluation.metrics import feature_statistics
from anyorder.evaluation.metrics import frechet_distance as metrics_frechet_distance
from anyorder.models.digit_judge import DigitClassifier

__all__ = [
    "class_accuracy",
    "class_probabilities",
    "images_from_uint8",
    "extract_features",
    "frechet_distance",
    "judge",
]


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

    ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` in float64, computed by
    :func:`anyorder.evaluation.metrics.frechet_distance` (exact for singular covariances; ``eps * I`` is
    added to both covariances only if an eigen-decomposition fails).
    """
    a = feats_a.detach().cpu().double().numpy() if isinstance(feats_a, Tensor) else np.asarray(feats_a, np.float64)
    b = feats_b.detach().cpu().double().numpy() if isinstance(feats_b, Tensor) else np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected feature matrices [N, F] with equal F, got {a.shape} and {b.shape}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("frechet_distance needs at least 2 samples per set")
    with warnings.catch_warnings():  # the demo's ~100-sample sets are knowingly small
        warnings.simplefilter("ignore")
        stats_a, stats_b = feature_statistics(a, "first feature set"), feature_statistics(b, "second feature set")
    return metrics_frechet_distance(stats_a, stats_b, eps=eps)


def class_probabilities(classifier: DigitClassifier, images: Tensor, batch_size: int = 500) -> Tensor:
    """Softmax class probabilities ``[N, num_classes]`` (CPU, float32) of images in ``[0, 1]`` (for the IS)."""
    return torch.softmax(_batched(classifier, images, "forward", batch_size).float(), dim=1)


def images_from_uint8(images: np.ndarray | Tensor, classifier: DigitClassifier) -> Tensor:
    """ADM-format uint8 ``[N, H, W, 3]`` (or ``[N, H, W, C]``) -> the judge's input ``[N, C_in, H, W]`` in ``[0, 1]``.

    For a one-channel judge the colour channels are averaged (the bundled digits are grey, stored as
    three equal channels). Raises :class:`ValueError` when the size is not the judge's.
    """
    x = images if isinstance(images, Tensor) else torch.from_numpy(np.array(images))  # a writable copy
    cfg = classifier.config
    if x.ndim != 4 or tuple(x.shape[1:3]) != (cfg.image_size, cfg.image_size):
        raise ValueError(f"the digit judge scores {cfg.image_size}x{cfg.image_size} images, got images of shape "
                         f"{tuple(x.shape)} ([N, H, W, C])")
    x = x.float().div(255.0).permute(0, 3, 1, 2)
    if cfg.in_channels == 1:
        return x.mean(1, keepdim=True)
    if x.shape[1] != cfg.in_channels:
        raise ValueError(f"the digit judge takes {cfg.in_channels} channels, the images have {x.shape[1]}")
    return x


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
