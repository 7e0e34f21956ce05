"""FID / sFID / IS / precision / recall as the ADM evaluator defines them, the ADM npz files, the Inception
network (random weights: nothing is downloaded) and ``anyorder eval`` end to end on the digit judge."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import in_ci
from scipy import linalg

from anyorder.cli.main import main
from anyorder.evaluation.adm import read_reference, write_reference
from anyorder.evaluation.evaluate import compute_features, evaluate, make_reference
from anyorder.evaluation.inception import (
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_URL,
    NUM_LOGITS,
    POOL_DIM,
    SPATIAL_DIM,
    InceptionV3,
    _fidelity_inception_module,
    load_inception,
)
from anyorder.evaluation.metrics import (
    GaussianStats,
    feature_statistics,
    frechet_distance,
    inception_score,
    manifold_radii,
    precision_recall,
)
from anyorder.hub import load_module, save_pretrained
from anyorder.io.checkpoint import CheckpointError
from anyorder.io.npz import iter_image_batches, open_images, read_labels, write_npz, write_samples
from anyorder.models.digit_judge import DigitClassifier, DigitClassifierConfig


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------ Fréchet distance
def _fid_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """Independent reference: scipy's general matrix square root of S1 S2, real part (ADM's recipe)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1 @ s2)
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def _stats(x: np.ndarray) -> GaussianStats:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return feature_statistics(x)


def test_frechet_distance_matches_scipy_sqrtm_on_random_gaussians() -> None:
    rng = _rng(0)
    for f in (1, 5, 24):
        a = rng.normal(size=(400, f)) @ rng.normal(size=(f, f))
        b = 0.7 * rng.normal(size=(300, f)) @ rng.normal(size=(f, f)) + rng.normal(size=f)
        ours = frechet_distance(_stats(a), _stats(b))
        assert ours == pytest.approx(_fid_scipy(a, b), rel=1e-8)
        assert ours == pytest.approx(frechet_distance(_stats(b), _stats(a)), rel=1e-10)  # symmetric
        scale = float(np.trace(np.atleast_2d(np.cov(a, rowvar=False))))
        assert frechet_distance(_stats(a), _stats(a)) == pytest.approx(0.0, abs=1e-8 * scale)


def test_frechet_distance_near_singular_covariances() -> None:
    """Rank-deficient and nearly rank-deficient covariances (fewer samples than dimensions, features that
    live on a subspace): still finite, real, and equal to scipy's sqrtm computation."""
    rng = _rng(1)
    f = 32
    basis = rng.normal(size=(4, f))
    low_a = rng.normal(size=(300, 4)) @ basis + 1e-7 * rng.normal(size=(300, f))  # eigenvalues down to ~1e-14
    low_b = rng.normal(size=(200, 4)) @ basis + 0.3 + 1e-7 * rng.normal(size=(200, f))
    few_a, few_b = rng.normal(size=(10, f)), rng.normal(size=(12, f)) + 0.5  # N < F: exactly singular
    for a, b in ((low_a, low_b), (few_a, few_b), (low_a, few_b)):
        ours = frechet_distance(_stats(a), _stats(b))
        assert math.isfinite(ours) and ours > 0
        assert ours == pytest.approx(_fid_scipy(a, b), rel=1e-5, abs=1e-6)


def test_frechet_distance_closed_form_for_diagonal_covariances() -> None:
    # commuting covariances: FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2, zeros included
    a_diag, b_diag = np.array([4.0, 1.0, 0.0, 2.5]), np.array([1.0, 0.0, 0.0, 9.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    want = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a_diag) - np.sqrt(b_diag)) ** 2).sum())
    got = frechet_distance(GaussianStats(mu1, np.diag(a_diag)), GaussianStats(mu2, np.diag(b_diag)))
    assert got == pytest.approx(want, rel=1e-12)


def test_feature_statistics_needs_enough_samples() -> None:
    with pytest.raises(ValueError, match="too few for a covariance"):
        feature_statistics(np.zeros((1, 4)), "samples.npz")
    with pytest.warns(UserWarning, match="covariance is singular"):
        feature_statistics(_rng().normal(size=(4, 8)))
    with pytest.raises(ValueError, match="feature dimensions differ"):
        frechet_distance(GaussianStats(np.zeros(3), np.eye(3)), GaussianStats(np.zeros(4), np.eye(4)))


# ------------------------------------------------------------------------------------------ Inception Score
def test_inception_score_on_known_class_distributions() -> None:
    classes, split = 7, 20
    uniform = np.full((10 * split, classes), 1.0 / classes)
    assert inception_score(uniform, split) == pytest.approx((1.0, 0.0), abs=1e-12)
    # one-hot and balanced within every split: KL = log(C) for every sample, so IS = C exactly
    onehot = np.eye(classes)[np.arange(10 * classes * 3) % classes]
    mean, std = inception_score(onehot, classes * 3)
    assert mean == pytest.approx(classes, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)
    # all samples the same class: no diversity, IS = 1
    assert inception_score(np.eye(classes)[np.zeros(50, dtype=int)], split)[0] == pytest.approx(1.0)


def test_inception_score_splits_by_5000_samples_as_adm() -> None:
    """ADM's compute_inception_score slices preds[i : i + 5000] for i in range(0, N, 5000): 12,000 samples
    are three splits of 5,000 / 5,000 / 2,000. Rows 0-4999 are one-hot over 5 classes in turn (IS 5),
    rows 5000-9999 one-hot over 2 other classes (IS 2), rows 10000-11999 uniform (IS 1)."""
    classes = 8
    first = np.eye(classes)[np.arange(5000) % 5]
    second = np.eye(classes)[5 + np.arange(5000) % 2]
    third = np.full((2000, classes), 1.0 / classes)
    probs = np.concatenate([first, second, third])
    mean, std = inception_score(probs)  # the default split size is ADM's 5,000
    assert mean == pytest.approx((5 + 2 + 1) / 3, rel=1e-12)
    assert std == pytest.approx(np.std([5.0, 2.0, 1.0]), rel=1e-12)
    # fewer than 5,000 samples are one split: the 2,000 + 2,000 rows below score as one set
    assert inception_score(np.concatenate([second[:2000], third]))[0] == pytest.approx(
        math.exp(0.5 * math.log(2) + 0.5 * 0.0 + _entropy_gain(second[:2000], third)), rel=1e-12)
    with pytest.raises(ValueError, match="split size >= 1"):
        inception_score(probs, 0)


def _entropy_gain(a: np.ndarray, b: np.ndarray) -> float:
    """Extra KL from pooling two halves of equal size: the Jensen-Shannon divergence of their marginals."""
    pa, pb = a.mean(0), b.mean(0)
    m = (pa + pb) / 2

    def kl(p, q):
        nz = p > 0
        return float((p[nz] * np.log(p[nz] / q[nz])).sum())

    return 0.5 * kl(pa, m) + 0.5 * kl(pb, m)


def test_inception_score_matches_entropy_form() -> None:
    """IS of a split = exp(H(mean p) - mean H(p)), averaged over contiguous splits."""
    rng = _rng(2)
    logits = rng.normal(size=(1000, 12)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)

    def entropy(p: np.ndarray) -> np.ndarray:
        return -(p * np.log(p)).sum(-1)

    parts = np.split(probs, 10)
    want = [math.exp(entropy(p.mean(0)) - entropy(p).mean()) for p in parts]
    mean, std = inception_score(probs, 100)
    assert mean == pytest.approx(np.mean(want), rel=1e-10) and std == pytest.approx(np.std(want), rel=1e-8)


# ------------------------------------------------------------------------------------------ precision / recall
def _brute_force_pr(ref: np.ndarray, smp: np.ndarray, k: int) -> tuple[float, float]:
    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    r_ref = np.sort(dist(ref, ref), 1)[:, k]  # k-th neighbour, the point itself being the 0-th
    r_smp = np.sort(dist(smp, smp), 1)[:, k]
    precision = np.mean([(dist(s[None], ref)[0] <= r_ref).any() for s in smp])
    recall = np.mean([(dist(r[None], smp)[0] <= r_smp).any() for r in ref])
    return float(precision), float(recall)


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_match_brute_force_knn(k: int) -> None:
    """With exact float32 distances (fp16=False) the metric is the textbook k-NN one."""
    rng = _rng(3)
    ref = rng.normal(size=(150, 6)).astype(np.float32)
    smp = (rng.normal(size=(110, 6)) + 1.5).astype(np.float32)  # shifted: the manifolds overlap in part
    want = _brute_force_pr(ref.astype(np.float64), smp.astype(np.float64), k)
    assert 0.05 < want[0] < 0.95 and 0.05 < want[1] < 0.95  # a case where both can be wrong
    for rows, cols in ((10000, 10000), (17, 23)):  # one block, and many blocks of rows and columns
        got = precision_recall(ref, smp, k=k, row_batch_size=rows, col_batch_size=cols, fp16=False)
        assert got == pytest.approx(want, abs=1e-12)
    radii = manifold_radii(ref, k=k, row_batch_size=23, col_batch_size=11, fp16=False).double().sqrt().numpy()
    d = np.sqrt(((ref[:, None].astype(np.float64) - ref[None]) ** 2).sum(-1))
    np.testing.assert_allclose(radii, np.sort(d, 1)[:, k], rtol=1e-4)


def test_precision_recall_of_a_set_with_itself_is_one() -> None:
    x = _rng(4).normal(size=(40, 5))
    assert precision_recall(x, x) == (1.0, 1.0)  # float16 distances: each point is still in its own ball
    assert precision_recall(x, x, fp16=False) == (1.0, 1.0)
    with pytest.raises(ValueError, match="more than 3 points"):
        precision_recall(x[:3], x)
    with pytest.raises(ValueError, match="sample features hold NaN"):
        precision_recall(x, np.where(x > 1.5, np.nan, x))


def _adm_distance_block(u: np.ndarray, v: np.ndarray, fp16: bool = True) -> np.ndarray:
    """ADM's ``DistanceBlock`` re-derived in numpy from evaluations/evaluator.py: features cast to float16,
    ``max(|u|^2 - 2 u v^T + |v|^2, 0)`` with float16 results (squares, sums and the product accumulate in
    float32 and round once, as on the GPU), cast to float32; the whole block in float32 if any entry is not
    finite."""
    u32, v32 = u.astype(np.float32), v.astype(np.float32)
    if fp16:
        u16, v16 = u32.astype(np.float16), v32.astype(np.float16)
        with np.errstate(over="ignore", invalid="ignore"):
            sq_u = (u16.astype(np.float32) ** 2).astype(np.float16).astype(np.float32)
            sq_v = (v16.astype(np.float32) ** 2).astype(np.float16).astype(np.float32)
            norm_u = sq_u.sum(1).astype(np.float16).reshape(-1, 1)
            norm_v = sq_v.sum(1).astype(np.float16).reshape(1, -1)
            uv = (u16.astype(np.float32) @ v16.astype(np.float32).T).astype(np.float16)
            block = np.maximum(norm_u - np.float16(2) * uv + norm_v, np.float16(0))
        assert block.dtype == np.float16
        if np.isfinite(block).all():
            return block.astype(np.float32)
    norm_u, norm_v = (u32**2).sum(1).reshape(-1, 1), (v32**2).sum(1).reshape(1, -1)
    return np.maximum(norm_u - 2 * (u32 @ v32.T) + norm_v, np.float32(0))


def _adm_precision_recall(ref: np.ndarray, smp: np.ndarray, rows: int, cols: int, fp16: bool = True):
    """ADM's ``ManifoldEstimator`` (nhood_sizes=(3,), no clamp_to_percentile): radii = entry 3 of each
    row's partition (the row holds the point itself), then ``evaluate_pr``'s blockwise ``<=`` tests."""

    def radii(x: np.ndarray) -> np.ndarray:
        out = np.zeros(len(x), np.float32)
        for b1 in range(0, len(x), rows):
            e1 = min(b1 + rows, len(x))
            dist = np.zeros((e1 - b1, len(x)), np.float32)
            for b2 in range(0, len(x), cols):
                e2 = min(b2 + cols, len(x))
                dist[:, b2:e2] = _adm_distance_block(x[b1:e1], x[b2:e2], fp16)
            out[b1:e1] = np.partition(dist, np.arange(4), axis=1)[:, 3]
        return out

    r_ref, r_smp = radii(ref), radii(smp)
    ref_status, smp_status = np.zeros(len(ref), bool), np.zeros(len(smp), bool)
    for b1 in range(0, len(ref), rows):
        for b2 in range(0, len(smp), cols):
            dist = _adm_distance_block(ref[b1 : b1 + rows], smp[b2 : b2 + cols], fp16)
            ref_status[b1 : b1 + rows] |= (dist <= r_smp[None, b2 : b2 + cols]).any(1)
            smp_status[b2 : b2 + cols] |= (dist <= r_ref[b1 : b1 + rows, None]).any(0)
    return float(smp_status.mean()), float(ref_status.mean()), r_ref


def _near_tie_features(n: int, seed: int, offset: float = 6.0) -> np.ndarray:
    """Points on a 0.25 grid around (6, 6, 6, 6): |x|^2 ~ 144 and 2 u.v ~ 288, where float16 steps by 0.125
    and 0.25, while the radii (squared) are 0.6-2.6. Float32 is exact on this grid, so float16 rounding
    alone moves distances across radii (here by one precision decision)."""
    return offset + _rng(seed).integers(-6, 7, size=(n, 4)) / 4.0


def test_precision_recall_follow_adm_float16_distance_blocks() -> None:
    ref, smp = _near_tie_features(64, 10), _near_tie_features(48, 11) + 0.25
    adm = _adm_precision_recall(ref, smp, 10000, 10000)
    exact = _adm_precision_recall(ref, smp, 10000, 10000, fp16=False)
    assert adm[:2] != exact[:2]  # the case decides differently in float16 and float32
    assert exact[:2] == _brute_force_pr(ref, smp, 3)  # the float32 path is exact on this grid
    for rows, cols in ((10000, 10000), (16, 20), (7, 64)):
        want = _adm_precision_recall(ref, smp, rows, cols)
        assert precision_recall(ref, smp, row_batch_size=rows, col_batch_size=cols) == want[:2]
        np.testing.assert_array_equal(manifold_radii(ref, row_batch_size=rows, col_batch_size=cols).numpy(),
                                      want[2])
    assert precision_recall(ref, smp, fp16=False) == exact[:2]


def test_precision_recall_recompute_only_non_finite_blocks_in_float32() -> None:
    """A point whose float16 square overflows (|x| > 256) makes its blocks non-finite: those blocks, and only
    those, are recomputed in float32, so the result depends on the block sizes exactly as ADM's."""
    ref, smp = _near_tie_features(40, 12, offset=12.0), _near_tie_features(30, 13, offset=12.0)
    ref[5, 0] = smp[3, 1] = 300.0  # 300^2 = 90,000 > 65,504 (float16's largest)
    got = {}
    for rows, cols in ((10000, 10000), (8, 8), (16, 5)):
        want = _adm_precision_recall(ref, smp, rows, cols)
        got[rows, cols] = precision_recall(ref, smp, row_batch_size=rows, col_batch_size=cols)
        assert got[rows, cols] == want[:2]
        np.testing.assert_array_equal(manifold_radii(ref, row_batch_size=rows, col_batch_size=cols).numpy(),
                                      want[2])
    # one block: everything in float32 (exact on this grid); smaller blocks keep float16 where finite
    assert got[10000, 10000] == _brute_force_pr(ref, smp, 3)
    assert got[8, 8] != got[10000, 10000]


# ------------------------------------------------------------------------------------------ ADM npz files
def _images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return _rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_sample_and_reference_npz_round_trip(tmp_path) -> None:
    imgs, labels = _images(11), np.arange(11) % 4
    path = write_samples(tmp_path / "s.npz", imgs, labels)
    info = open_images(path)
    assert info.shape == imgs.shape and info.count == 11
    batches = list(iter_image_batches(path, 4))
    assert [len(b) for b in batches] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(batches), imgs)
    np.testing.assert_array_equal(read_labels(path, 11), labels)
    # a compressed npz streams too
    np.savez_compressed(tmp_path / "c.npz", arr_0=imgs)
    np.testing.assert_array_equal(np.concatenate(list(iter_image_batches(tmp_path / "c.npz", 5))), imgs)
    assert read_labels(tmp_path / "c.npz") is None

    pool, spatial = _stats(_rng(1).normal(size=(11, 3))), _stats(_rng(2).normal(size=(11, 5)))
    ref_path = write_reference(tmp_path / "ref.npz", imgs, pool, spatial, "inception", labels)
    ref = read_reference(ref_path)
    np.testing.assert_array_equal(ref.pool.sigma, pool.sigma)
    np.testing.assert_array_equal(ref.spatial.mu, spatial.mu)
    assert ref.features == "inception" and ref.images.count == 11
    # an ADM reference batch (no "features" key) holds Inception statistics
    write_npz(tmp_path / "adm.npz", arr_0=imgs, mu=pool.mu, sigma=pool.sigma, mu_s=spatial.mu, sigma_s=spatial.sigma)
    assert read_reference(tmp_path / "adm.npz").features == "inception"


def test_bad_npz_files_give_clear_errors(tmp_path) -> None:
    imgs = _images(6)
    np.savez(tmp_path / "float.npz", arr_0=imgs.astype(np.float32))
    np.savez(tmp_path / "gray.npz", arr_0=imgs[..., 0])
    np.savez(tmp_path / "nokey.npz", images=imgs)
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match=r"float\.npz: arr_0 must be uint8.*float32"):
        open_images(tmp_path / "float.npz")
    with pytest.raises(ValueError, match=r"gray\.npz: arr_0 must be images \[N, H, W, 3\].*\(6, 8, 8\)"):
        open_images(tmp_path / "gray.npz")
    with pytest.raises(ValueError, match=r"no arr_0.*\['images'\]"):
        open_images(tmp_path / "nokey.npz")
    with pytest.raises(ValueError, match="not an .npz file"):
        open_images(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        open_images(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="arr_0 must be uint8"):
        write_samples(tmp_path / "out.npz", imgs.astype(np.int16))
    # references: no statistics at all, half a pair, no spatial statistics (sFID), a samples file as --ref
    write_samples(tmp_path / "samples.npz", imgs)
    with pytest.raises(ValueError, match="not a reference batch: no statistics mu / sigma"):
        read_reference(tmp_path / "samples.npz")
    np.savez(tmp_path / "half.npz", arr_0=imgs, mu=np.zeros(3))
    with pytest.raises(ValueError, match="has mu but no sigma"):
        read_reference(tmp_path / "half.npz")
    np.savez(tmp_path / "pool_only.npz", arr_0=imgs, mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(ValueError, match="no spatial statistics mu_s / sigma_s"):
        read_reference(tmp_path / "pool_only.npz")
    assert read_reference(tmp_path / "pool_only.npz", require_spatial=False).spatial is None
    np.savez(tmp_path / "shape.npz", arr_0=imgs, mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(ValueError, match=r"mu must be \[F\] and sigma \[F, F\]"):
        read_reference(tmp_path / "shape.npz", require_spatial=False)


# ------------------------------------------------------------------------------------------ Inception network
def test_inception_builds_loads_library_weights_and_gives_documented_shapes(tmp_path, monkeypatch) -> None:
    """A state dict in torch-fidelity's weight format (random values; the published file has no
    num_batches_tracked buffers) loads strictly; the outputs have the documented shapes and the pool
    features / unbiased logits equal the library's own extractor."""
    try:
        _fidelity_inception_module()
    except ImportError as e:  # setup.sh installs it; only a bare checkout without it skips
        (pytest.fail if in_ci() else pytest.skip)(f"torch-fidelity not installed: {e}")
    torch.manual_seed(0)
    net = InceptionV3()
    state = {k: (torch.randn_like(v) * 0.1 if v.is_floating_point() else v) for k, v in net.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    state = {k: (v.abs() + 0.5 if k.endswith("running_var") else v) for k, v in state.items()}
    weights = tmp_path / "weights-inception-random.pth"
    torch.save(state, weights)

    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(weights))
    model = load_inception()  # from the environment variable
    assert torch.equal(model.fc.weight, state["fc.weight"])
    assert torch.equal(model.Mixed_6d.branch1x1.conv.weight, state["Mixed_6d.branch1x1.conv.weight"])

    images = _images(1, size=40, seed=5)
    feats = compute_features([images], model, 1, torch.device("cpu"), progress=False)
    assert feats["pool"].shape == (1, POOL_DIM) and feats["spatial"].shape == (1, SPATIAL_DIM)
    assert feats["probs"].shape == (1, NUM_LOGITS) and feats["probs"].sum() == pytest.approx(1.0, abs=1e-5)

    lib, _ = _fidelity_inception_module()
    reference = lib.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                feature_extractor_weights_path=str(weights))
    pool, logits = reference(torch.from_numpy(images).permute(0, 3, 1, 2))
    np.testing.assert_allclose(feats["pool"], pool.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats["probs"], torch.softmax(logits, 1).numpy(), rtol=1e-4, atol=1e-7)

    # a file of another network, and a missing file, are clear errors
    del state["Mixed_7c.branch_pool.conv.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"(?s)broken\.pth.*missing keys.*Mixed_7c\.branch_pool\.conv\.weight"):
        load_inception(tmp_path / "broken.pth")
    with pytest.raises(FileNotFoundError, match=r"nope\.pth.*" + INCEPTION_WEIGHTS_URL.replace(".", r"\.")):
        load_inception(tmp_path / "nope.pth")
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV)
    with pytest.raises(FileNotFoundError, match=f"no Inception weights given.*{INCEPTION_WEIGHTS_ENV}"):
        load_inception()


def _he_inception_weights(path) -> None:
    """A weight file for :class:`InceptionV3` in torch-fidelity's format: He-initialised convolutions and
    identity batch norms, so the features (unlike with small random weights) still vary with the image."""
    torch.manual_seed(0)
    state = {k: v for k, v in InceptionV3().state_dict().items() if not k.endswith("num_batches_tracked")}
    for v in state.values():
        if v.ndim == 4:  # conv weights [out, in, kh, kw]
            v.normal_(0.0, math.sqrt(2.0 / v[0].numel()))
    torch.save(state, path)


def _adm_spatial_features(weights, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent feature path: torch-fidelity's own extractor; the spatial features are read as ADM's
    evaluator reads ``mixed_6/conv:0`` (the 1x1 branch of the fourth 17x17 block, TF's NHWC layout): the
    first 7 channels, flattened per image. Returns (pool [N, 2048], spatial [N, 7 * 17 * 17])."""
    lib, _ = _fidelity_inception_module()
    net = lib.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
    seen = []
    hook = net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        (pool,) = net(torch.from_numpy(images).permute(0, 3, 1, 2))
    hook.remove()
    nhwc = seen[0].permute(0, 2, 3, 1)
    return pool.double().numpy(), nhwc[..., :7].reshape(len(images), -1).double().numpy()


def _frechet_low_rank(a: np.ndarray, b: np.ndarray) -> float:
    """ADM's Fréchet distance of the two sets' Gaussians (np.cov, N - 1), exact when N << F: with centred
    A = X - mean, S = A^T A / (n - 1), the eigenvalues of S1 S2 are the squared singular values of
    A1 A2^T / sqrt((n1 - 1)(n2 - 1)), so Tr((S1 S2)^{1/2}) is that matrix's nuclear norm."""
    a1, a2 = a - a.mean(0), b - b.mean(0)
    c1, c2 = len(a) - 1, len(b) - 1
    diff = a.mean(0) - b.mean(0)
    cross = np.linalg.svd(a1 @ a2.T / math.sqrt(c1 * c2), compute_uv=False).sum()
    return float(diff @ diff + (a1**2).sum() / c1 + (a2**2).sum() / c2 - 2.0 * cross)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.filterwarnings("ignore:.*covariance is singular")
def test_cli_eval_inception_end_to_end_fid_and_sfid_match_the_adm_definitions(tmp_path, capsys) -> None:
    """``anyorder eval --make-ref`` then ``anyorder eval`` with Inception features (He-initialised random
    weights, nothing downloaded): the reference's stored spatial statistics and the sFID / FID equal ADM's
    definitions computed on features from torch-fidelity's own network (see :func:`_adm_spatial_features`)."""
    try:
        _fidelity_inception_module()
    except ImportError as e:  # setup.sh installs it; only a bare checkout without it skips
        (pytest.fail if in_ci() else pytest.skip)(f"torch-fidelity not installed: {e}")
    weights = tmp_path / "weights-inception-he.pth"
    _he_inception_weights(weights)
    gen = _rng(7)
    ref_images = gen.integers(0, 256, (4, 24, 24, 3), dtype=np.uint8)
    smp_images = np.clip(ref_images.astype(int) + gen.integers(-90, 90, ref_images.shape), 0, 255).astype(np.uint8)
    source, samples = write_samples(tmp_path / "src.npz", ref_images), write_samples(tmp_path / "s.npz", smp_images)
    common = ["--inception-weights", str(weights), "--batch-size", "4", "--device", "cpu", "--quiet"]
    ref = tmp_path / "ref.npz"
    assert main(["eval", "--make-ref", str(source), "--out", str(ref), *common]) == 0
    assert main(["eval", str(samples), "--ref", str(ref), *common]) == 0
    assert "sfid=" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "s_metrics.json").read_text())

    ref_pool, ref_spatial = _adm_spatial_features(weights, ref_images)
    smp_pool, smp_spatial = _adm_spatial_features(weights, smp_images)
    assert ref_spatial.shape == (4, SPATIAL_DIM) and ref_spatial.std(0).mean() > 1e-3  # features vary
    stored = read_reference(ref)
    np.testing.assert_allclose(stored.spatial.mu, ref_spatial.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stored.spatial.sigma, np.cov(ref_spatial, rowvar=False), rtol=1e-3, atol=1e-6)
    sfid, fid = _frechet_low_rank(smp_spatial, ref_spatial), _frechet_low_rank(smp_pool, ref_pool)
    assert sfid > 1.0 and fid > 0.01  # far from zero: a scaled feature would show
    assert metrics["sfid"] == pytest.approx(sfid, rel=1e-4)
    assert metrics["fid"] == pytest.approx(fid, rel=1e-4)


# ------------------------------------------------------------------------------------------ judge features, CLI
@pytest.fixture(scope="module")
def judge_ref(tmp_path_factory):
    """A tiny untrained judge saved as a demo run's judge/ directory, and the CLI's judge reference batch
    of the digits' test split."""
    tmp = tmp_path_factory.mktemp("judge")
    torch.manual_seed(0)
    judge = DigitClassifier(DigitClassifierConfig(width=4, feature_dim=8))
    save_pretrained(judge, tmp / "run" / "judge")
    ref = tmp / "ref.npz"
    assert main(["eval", "--make-ref", "digits:test", "--features", "judge", "--judge", str(tmp / "run"),
                 "--out", str(ref), "--batch-size", "500", "--quiet"]) == 0
    return tmp / "run", judge.config, ref


def _judge_features(run, images: np.ndarray) -> np.ndarray:
    """Independent feature path: grey = mean of the channels, scaled to [0, 1], the judge's embedding."""
    judge = load_module(run / "judge", expected=DigitClassifier)
    with torch.no_grad():
        x = torch.tensor(images, dtype=torch.float32).div(255).mean(3, keepdim=True).permute(0, 3, 1, 2)
        return judge.features(x).double().numpy()


def test_cli_eval_end_to_end_with_the_digit_judge(tmp_path, judge_ref, capsys) -> None:
    run, cfg, ref = judge_ref
    s = cfg.image_size
    reference = read_reference(ref, require_spatial=False)
    assert reference.features == "judge" and reference.pool.dim == cfg.feature_dim
    assert reference.images.shape[1:] == (s, s, 3)
    with np.load(ref) as f:
        ref_feats = _judge_features(run, f["arr_0"])
        assert len(f["arr_1"]) == reference.images.count
    np.testing.assert_allclose(reference.pool.mu, ref_feats.mean(0), rtol=1e-4, atol=1e-7)

    gen = _rng(6)
    images = gen.integers(0, 256, (40, s, s, 3), dtype=np.uint8)
    samples = write_samples(tmp_path / "samples.npz", images, np.arange(40) % cfg.num_classes)
    assert main(["eval", str(samples), "--ref", str(ref), "--features", "judge", "--judge", str(run),
                 "--batch-size", "16", "--quiet"]) == 0
    metrics = json.loads((tmp_path / "samples_metrics.json").read_text())
    assert "fid=" in capsys.readouterr().out
    assert metrics["num_samples"] == 40 and metrics["num_reference"] == reference.images.count
    assert metrics["sfid"] is None and metrics["features"] == "judge"
    assert 1.0 <= metrics["inception_score"] <= cfg.num_classes
    assert 0.0 <= metrics["precision"] <= 1.0 and 0.0 <= metrics["recall"] <= 1.0
    assert metrics["pr_distances"] == "float16" and metrics["pr_row_batch_size"] == 10000  # ADM's protocol
    assert metrics["is_split_size"] == 5000 and metrics["is_splits"] == 1  # 40 samples: one split
    assert 0.0 <= metrics["judge_accuracy"] <= 1.0
    # the FID equals an independent computation on the judge's features
    assert metrics["fid"] == pytest.approx(_fid_scipy(_judge_features(run, images), ref_feats), rel=1e-4)
    # a set against a reference of itself: FID 0, every point inside its own ball
    own = make_reference(samples, tmp_path / "own.npz", "judge", judge=run, progress=False)
    self_metrics = evaluate(samples, own["reference"], "judge", judge=run, progress=False)
    assert self_metrics["fid"] == pytest.approx(0.0, abs=1e-9)
    assert self_metrics["precision"] == 1.0 and self_metrics["recall"] == 1.0


def test_eval_errors(tmp_path, judge_ref, capsys) -> None:
    run, cfg, ref = judge_ref
    s = cfg.image_size
    one = write_samples(tmp_path / "one.npz", _images(1, s))
    with pytest.raises(ValueError, match="too few for a covariance"):
        evaluate(one, ref, "judge", judge=run, progress=False)
    with pytest.raises(ValueError, match="needs at least 2 for a covariance"):
        make_reference(one, tmp_path / "r1.npz", "judge", judge=run, progress=False)
    with pytest.raises(ValueError, match="scores 28x28 images"):
        evaluate(write_samples(tmp_path / "big.npz", _images(12, 32)), ref, "judge", judge=run, progress=False)
    # another judge than the one that wrote the reference
    save_pretrained(DigitClassifier(DigitClassifierConfig(width=4, feature_dim=8)), tmp_path / "other")
    many = write_samples(tmp_path / "many.npz", _images(20, s))
    with pytest.raises(ValueError, match="computed by another digit judge"):
        evaluate(many, ref, "judge", judge=tmp_path / "other", progress=False)
    # a judge reference used for Inception features, and Inception without weights (CLI: exit 2, message)
    with pytest.raises(ValueError, match="statistics are of judge features, not inception"):
        evaluate(many, ref, "inception", progress=False)
    np.savez(tmp_path / "labels_only.npz", arr_1=np.arange(20))  # neither statistics nor images
    assert main(["eval", str(many), "--ref", str(tmp_path / "labels_only.npz"), "--features", "judge", "--judge",
                 str(run)]) == 2
    assert "no statistics mu / sigma and no images arr_0" in capsys.readouterr().err
    assert main(["eval", "--make-ref", str(many), "--out", str(tmp_path / "r.npz"),
                 "--inception-weights", str(tmp_path / "absent.pth"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "absent.pth" in err and INCEPTION_WEIGHTS_URL in err
    assert main(["eval", str(many)]) == 2


# ------------------------------------------------------------------------------------------ images-only references
def test_a_reference_of_images_only_gets_its_statistics_from_its_images(tmp_path, judge_ref, capsys) -> None:
    """ADM's read_statistics: no ``mu`` in the reference -> statistics of its images' features. The same
    images as a reference with stored statistics give the same numbers; the FID equals scipy's on the
    judge's features computed here."""
    run, cfg, _ = judge_ref
    s = cfg.image_size
    ref_images, images = _images(30, s, seed=7), _images(25, s, seed=8)
    images_only = write_samples(tmp_path / "ref_images.npz", ref_images)  # arr_0 (+ no statistics)
    samples = write_samples(tmp_path / "samples.npz", images, np.arange(25) % cfg.num_classes)
    with pytest.raises(ValueError, match="not a reference batch"):
        read_reference(images_only)  # a reader that needs statistics still says so
    assert main(["eval", str(samples), "--ref", str(images_only), "--features", "judge", "--judge", str(run),
                 "--out", str(tmp_path / "m.json"), "--quiet"]) == 0
    assert "reference statistics computed from the reference images" in capsys.readouterr().out
    got = json.loads((tmp_path / "m.json").read_text())
    assert got["reference_statistics"] == "computed from the reference images" and got["num_reference"] == 30
    assert got["fid"] == pytest.approx(_fid_scipy(_judge_features(run, images), _judge_features(run, ref_images)),
                                       rel=1e-4)
    stored = make_reference(images_only, tmp_path / "ref_stats.npz", "judge", judge=run, progress=False)
    want = evaluate(samples, stored["reference"], "judge", judge=run, progress=False)
    assert want["reference_statistics"] == "stored"
    for key in ("fid", "inception_score", "precision", "recall"):
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key


class _TinyInception(torch.nn.Module):
    """A random-init stand-in for the Inception network (pool, spatial, logits of fixed random projections)."""

    def __init__(self, pixels: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.ParameterDict({k: torch.nn.Parameter(torch.randn(pixels, d, generator=g) / pixels**0.5)
                                         for k, d in (("pool", 6), ("spatial", 5), ("logits", 4))})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        flat = x.float().flatten(1) / 255.0
        return {k: flat @ w for k, w in self.w.items()}


def test_an_images_only_reference_gets_spatial_statistics_too(tmp_path, monkeypatch) -> None:
    """With Inception features an images-only reference also yields sFID (its spatial statistics computed)."""
    import anyorder.evaluation.evaluate as ev

    net = _TinyInception(8 * 8 * 3)
    monkeypatch.setattr(ev, "_load_network", lambda *a, **k: (net, {"inception_weights": "random"}))
    ref_images, images = _images(30, 8, seed=9), _images(20, 8, seed=10)
    ref = write_samples(tmp_path / "ref.npz", ref_images)
    samples = write_samples(tmp_path / "s.npz", images)
    got = evaluate(samples, ref, "inception", device="cpu", progress=False)
    with torch.no_grad():
        f_ref, f_smp = (net(torch.from_numpy(a).permute(0, 3, 1, 2)) for a in (ref_images, images))
    for key, name in (("fid", "pool"), ("sfid", "spatial")):
        assert got[key] == pytest.approx(_fid_scipy(f_smp[name].double().numpy(), f_ref[name].double().numpy()),
                                         rel=1e-5), key
    assert got["reference_statistics"] == "computed from the reference images"
