"""FID / sFID, Inception Score and precision / recall with the definitions of the ADM evaluator.

The ADM evaluator (openai/guided-diffusion ``evaluations/evaluator.py``) is what the RAR and RandAR papers
report. Its definitions, reproduced here on feature arrays (so the same code serves Inception features
and the digit judge's features):

* **Fréchet distance** between Gaussians ``(mu1, S1)`` and ``(mu2, S2)`` fitted to two feature sets
  (``np.cov`` with ``N - 1``): ``|mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2})``. FID uses the
  2048-d pool features, sFID the spatial features. ADM takes ``scipy.linalg.sqrtm(S1 S2)`` and, only when
  that is not finite, retries with ``eps * I`` (``eps = 1e-6``) added to both covariances. We compute the
  same trace from the symmetric matrix ``S1^{1/2} S2 S1^{1/2}`` (it has the eigenvalues of ``S1 S2``) with
  ``eigh``: no complex round-off, exact for singular and near-singular covariances (fewer samples than
  dimensions), and ``eps`` is only used when an eigen-decomposition fails to converge.
* **Inception Score**: ``exp(E_x KL(p(y|x) || p(y)))`` per split, averaged over splits. As ADM, the
  samples are sliced into consecutive chunks of 5,000 at any ``N`` (10 splits for 50,000 samples, 2 for
  10,000, and a shorter last chunk when ``N`` is not a multiple of 5,000).
* **Precision / recall** (Kynkäänniemi et al. 2019, as in ADM): each point of a set gets a radius, the
  distance to its ``k``-th nearest neighbour in its own set (``k = 3``; the point itself is neighbour 0).
  Precision is the fraction of samples that fall inside at least one reference ball, recall the fraction
  of reference points inside at least one sample ball (``distance <= radius``). As ADM's
  ``ManifoldEstimator`` / ``DistanceBlock``: squared distances ``(|u|^2 - 2 u.v) + |v|^2`` clamped at 0,
  in blocks of 10,000 x 10,000, each computed in **float16** (the features cast to float16) and recomputed
  in float32 only when some entry of that block is not finite; radii and comparisons in float32 on the
  float16 values; no radius clamping (ADM's ``clamp_to_percentile=None``). Float16 keeps about three
  significant digits of each term, and a distance is a difference of terms the size of ``|u|^2``, so
  near-ties at a radius are decided differently from exact arithmetic; ``fp16=False`` gives exact
  float32 distances (not ADM's numbers).
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "COL_BATCH_SIZE",
    "IS_SPLIT_SIZE",
    "ROW_BATCH_SIZE",
    "GaussianStats",
    "feature_statistics",
    "frechet_distance",
    "inception_score",
    "manifold_radii",
    "precision_recall",
]

ArrayLike = np.ndarray | Tensor
ROW_BATCH_SIZE = COL_BATCH_SIZE = 10000  # ADM's ManifoldEstimator defaults
IS_SPLIT_SIZE = 5000  # ADM's compute_inception_score(split_size=5000)


def _as_float64(x: ArrayLike, name: str) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return arr


@dataclass
class GaussianStats:
    """Mean ``mu [F]`` and covariance ``sigma [F, F]`` (float64) of a feature set of ``n`` samples."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int | None = None

    def __post_init__(self) -> None:
        self.mu = np.atleast_1d(np.asarray(self.mu, dtype=np.float64))
        self.sigma = np.atleast_2d(np.asarray(self.sigma, dtype=np.float64))
        f = self.mu.shape[0]
        if self.mu.ndim != 1 or self.sigma.shape != (f, f):
            raise ValueError(f"statistics need mu [F] and sigma [F, F], got mu {self.mu.shape} and sigma "
                             f"{self.sigma.shape}")

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])


def feature_statistics(features: ArrayLike, name: str = "features") -> GaussianStats:
    """Fit a Gaussian to ``features [N, F]``: ``mu`` and the unbiased covariance (``np.cov``, ``N - 1``).

    Raises :class:`ValueError` for fewer than 2 samples (no covariance); warns when ``N <= F`` (the
    covariance is singular and the Fréchet distance is dominated by estimation noise).
    """
    feats = _as_float64(features, name)
    if feats.ndim != 2:
        raise ValueError(f"{name}: expected a feature matrix [N, F], got shape {feats.shape}")
    n, f = feats.shape
    if n < 2:
        raise ValueError(f"{name}: {n} sample(s) are too few for a covariance estimate; at least 2 are needed "
                         f"(and more than the {f} feature dimensions for a non-singular one)")
    if n <= f:
        warnings.warn(f"{name}: {n} samples for {f} feature dimensions: the covariance is singular and the "
                      f"Fréchet distance is biased upwards (ADM scores 50,000 samples)",
                      stacklevel=2)
    return GaussianStats(feats.mean(0), np.cov(feats, rowvar=False), n)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    vals, vecs = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """``Tr((S1 S2)^{1/2})`` = sum of square roots of the eigenvalues of ``S1^{1/2} S2 S1^{1/2}``."""
    r1 = _psd_sqrt(s1)
    m = r1 @ s2 @ r1
    vals = np.linalg.eigvalsh((m + m.T) / 2.0)
    return float(np.sqrt(np.clip(vals, 0.0, None)).sum())


def frechet_distance(stats1: GaussianStats, stats2: GaussianStats, eps: float = 1e-6) -> float:
    """Fréchet distance between two Gaussians (the FID formula; see the module docstring).

    The result is clipped at 0 (round-off can make identical statistics give ``-1e-12``).
    """
    if stats1.mu.shape != stats2.mu.shape:
        raise ValueError(f"feature dimensions differ: {stats1.dim} vs {stats2.dim} (statistics of different "
                         f"feature extractors?)")
    for name, st in (("first", stats1), ("second", stats2)):
        if not (np.isfinite(st.mu).all() and np.isfinite(st.sigma).all()):
            raise ValueError(f"the {name} statistics hold NaN or infinite values")
    diff = stats1.mu - stats2.mu
    try:
        tr_covmean = _trace_sqrt_product(stats1.sigma, stats2.sigma)
    except np.linalg.LinAlgError:
        warnings.warn(f"frechet_distance: eigen-decomposition did not converge; adding {eps} to the diagonal of "
                      f"both covariances (as ADM does for a singular product)", stacklevel=2)
        offset = np.eye(stats1.dim) * eps
        tr_covmean = _trace_sqrt_product(stats1.sigma + offset, stats2.sigma + offset)
    value = float(diff @ diff + np.trace(stats1.sigma) + np.trace(stats2.sigma) - 2.0 * tr_covmean)
    return max(value, 0.0)


def inception_score(probs: ArrayLike, split_size: int = IS_SPLIT_SIZE) -> tuple[float, float]:
    """Inception Score of class probabilities ``probs [N, C]``: ``(mean, std)`` over the splits.

    As ADM's ``compute_inception_score``: the splits are ``probs[i : i + split_size]`` for ``i`` in
    ``range(0, N, split_size)`` (5,000 rows each, the last one shorter when ``N`` is not a multiple:
    12,000 samples are split 5,000 / 5,000 / 2,000; fewer than 5,000 are one split). A split's score is
    ``exp(mean_i sum_c p_ic (log p_ic - log mean_j p_jc))``, with ``0 log 0 = 0`` (ADM would give NaN).
    """
    p = _as_float64(probs, "class probabilities")
    if p.ndim != 2:
        raise ValueError(f"class probabilities must be [N, C], got shape {p.shape}")
    if split_size < 1 or len(p) < 1:
        raise ValueError(f"the Inception Score needs a split size >= 1 and samples, got split_size={split_size} "
                         f"and {len(p)} samples")
    if (p < 0).any() or not np.allclose(p.sum(1), 1.0, atol=1e-4):
        raise ValueError("class probabilities must be non-negative rows summing to 1 (pass softmax outputs)")
    scores = []
    for start in range(0, len(p), split_size):
        part = p[start : start + split_size]
        marginal = part.mean(0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0.0)
        scores.append(math.exp(float(kl.sum(1).mean())))
    return float(np.mean(scores)), float(np.std(scores))


def _as_tensor(x: ArrayLike, device: torch.device, name: str) -> Tensor:
    """Features as float32 on ``device`` (ADM feeds float32 features to its distance graph)."""
    t = x if isinstance(x, Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim != 2:
        raise ValueError(f"{name}: expected a feature matrix [N, F], got shape {tuple(t.shape)}")
    t = t.detach().to(device=device, dtype=torch.float32)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} hold NaN or infinite values")
    return t


@contextmanager
def _no_tf32():
    """Full float32 matrix products on CUDA (TF32 would round the float32 fallback's inputs)."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _sq_distances(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances ``[len(a), len(b)]`` (``(|a|^2 - 2ab) + |b|^2``, clamped at 0)."""
    d = (a * a).sum(1, keepdim=True) - 2.0 * (a @ b.T) + (b * b).sum(1)[None, :]
    return d.clamp_min_(0.0)


def _sq_distances_fp16(a: Tensor, b: Tensor) -> Tensor:
    """ADM's float16 distance graph: the same formula with float16 inputs and a float16 result per op.

    Squares are rounded to float16; the row sums and the matrix product accumulate in float32 (as the
    GPU kernels do) and are rounded to float16 once; ``-``, ``2 *``, ``+`` and the clamp are float16 ops
    (an overflow gives ``inf`` / ``nan``, which makes the caller fall back to float32).
    """
    a16, b16 = a.half().float(), b.half().float()
    norm_a = a16.square().half().float().sum(1).half()
    norm_b = b16.square().half().float().sum(1).half()
    prod = (a16 @ b16.T).half()
    return (norm_a[:, None] - 2 * prod + norm_b[None, :]).clamp_min(0.0)


def _distance_block(a: Tensor, b: Tensor, fp16: bool) -> Tensor:
    """One block of squared distances, float32, as ADM's ``DistanceBlock``: computed in float16 and
    kept when every entry of the block is finite, else the whole block recomputed in float32."""
    if fp16:
        d16 = _sq_distances_fp16(a, b)
        if torch.isfinite(d16).all():
            return d16.float()
    return _sq_distances(a, b)


def manifold_radii(
    features: ArrayLike, k: int = 3, row_batch_size: int = ROW_BATCH_SIZE, col_batch_size: int = COL_BATCH_SIZE,
    device: str | torch.device = "cpu", fp16: bool = True,
) -> Tensor:
    """Squared distance (float32) of every point of ``features [N, F]`` to its ``k``-th neighbour in the set.

    ADM's ``ManifoldEstimator.manifold_radii``: the distances of a block of ``row_batch_size`` points to
    every point (in blocks of ``col_batch_size`` columns, each a :func:`_distance_block`), and the
    ``k + 1``-th smallest of each row; the point itself is among them (its distance is 0 in exact
    arithmetic), so ``k = 3`` is the third other point.
    """
    device = torch.device(device)
    x = _as_tensor(features, device, "features")
    n = len(x)
    if n <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} points per set, got {n}")
    if row_batch_size < 1 or col_batch_size < 1:
        raise ValueError(f"batch sizes must be >= 1, got rows {row_batch_size} and columns {col_batch_size}")
    radii = torch.empty(n, dtype=torch.float32, device=device)
    with _no_tf32():
        for r0 in range(0, n, row_batch_size):
            rows = x[r0 : r0 + row_batch_size]
            best = rows.new_empty(len(rows), 0)  # the k + 1 smallest distances seen so far, per row
            for c0 in range(0, n, col_batch_size):
                cand = torch.cat([best, _distance_block(rows, x[c0 : c0 + col_batch_size], fp16)], 1)
                best = cand.topk(min(k + 1, cand.shape[1]), dim=1, largest=False).values
            radii[r0 : r0 + len(rows)] = best.max(1).values  # n > k, so best holds k + 1 columns
    return radii


def precision_recall(
    ref_features: ArrayLike, sample_features: ArrayLike, k: int = 3, row_batch_size: int = ROW_BATCH_SIZE,
    col_batch_size: int = COL_BATCH_SIZE, device: str | torch.device = "cpu", fp16: bool = True,
) -> tuple[float, float]:
    """ADM's improved precision and recall with ``k``-nearest-neighbour manifolds: ``(precision, recall)``.

    Precision: fraction of samples inside the reference manifold; recall: fraction of reference points
    inside the sample manifold. As ADM's ``ManifoldEstimator.evaluate_pr``, one distance block per
    (``row_batch_size`` reference points, ``col_batch_size`` samples) serves both, float16 unless
    ``fp16=False`` (exact float32 distances, not ADM's numbers).
    """
    device = torch.device(device)
    ref = _as_tensor(ref_features, device, "reference features")
    smp = _as_tensor(sample_features, device, "sample features")
    if ref.shape[1] != smp.shape[1]:
        raise ValueError(f"feature dimensions differ: reference {ref.shape[1]} vs samples {smp.shape[1]}")
    ref_radii = manifold_radii(ref, k, row_batch_size, col_batch_size, device, fp16)
    smp_radii = manifold_radii(smp, k, row_batch_size, col_batch_size, device, fp16)
    ref_in = torch.zeros(len(ref), dtype=torch.bool, device=device)  # inside a sample ball: recall
    smp_in = torch.zeros(len(smp), dtype=torch.bool, device=device)  # inside a reference ball: precision
    with _no_tf32():
        for r0 in range(0, len(ref), row_batch_size):
            r1 = r0 + row_batch_size
            for c0 in range(0, len(smp), col_batch_size):
                c1 = c0 + col_batch_size
                d = _distance_block(ref[r0:r1], smp[c0:c1], fp16)  # rows: reference, columns: samples
                ref_in[r0:r1] |= (d <= smp_radii[None, c0:c1]).any(1)
                smp_in[c0:c1] |= (d <= ref_radii[r0:r1, None]).any(0)
    return float(smp_in.double().mean().item()), float(ref_in.double().mean().item())
