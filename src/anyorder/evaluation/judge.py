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

from anyorder.models.digit_judge import DigitClassifier

__all__ = [
    "class_accuracy",
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
