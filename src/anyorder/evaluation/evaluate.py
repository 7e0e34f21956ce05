"""Score a sample batch against a reference batch: FID, sFID, Inception Score, precision, recall.

``evaluate(samples.npz, ref.npz)`` follows the ADM evaluator (openai/guided-diffusion
``evaluations/evaluator.py``), the protocol behind the RAR and RandAR tables:

* features of every sample image (Inception pool / spatial / logits, batched, on CUDA when present);
* FID between the samples' pool statistics and the reference's stored ``mu`` / ``sigma``; sFID likewise
  with the spatial statistics ``mu_s`` / ``sigma_s``. A reference of images only (``arr_0``, no ``mu``)
  gets its statistics from its images' features, as ADM's ``read_statistics`` does;
* Inception Score from the samples' softmax (splits of 5,000 samples, as ADM);
* precision / recall between the reference images' and the samples' pool features (k = 3), with ADM's
  float16 distance blocks (``pr_fp16=False``: exact float32 distances, not the official numbers);
* the evaluation protocol that made the samples (labels, dtype path, uint8 conversion;
  :func:`sample_record`), copied from the JSON ``anyorder sample --npz`` writes beside them.

``features="judge"`` swaps Inception for the digit judge of the bundled digits
(:class:`anyorder.models.digit_judge.DigitClassifier`): its 32-d features stand in for the pool features
(FID, precision / recall), its class probabilities for the IS, and there is no sFID. Its numbers are
comparable only with other judge numbers from the same judge and reference (the reference records the
judge's hash and a mismatch is an error).

:func:`make_reference` writes a reference batch from an image folder, an npz, or a split of the bundled
digits (``digits:test`` / ``digits:train``, the demo's split: 10% test, seed 0).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from anyorder.data.datasets import dataset_names, split_source
from anyorder.evaluation.adm import ReferenceBatch, load_image_folder, read_reference, write_reference
from anyorder.evaluation.inception import InceptionV3, load_inception, resolve_inception_weights
from anyorder.evaluation.judge import class_probabilities, extract_features, images_from_uint8
from anyorder.evaluation.metrics import (
    COL_BATCH_SIZE,
    IS_SPLIT_SIZE,
    ROW_BATCH_SIZE,
    GaussianStats,
    feature_statistics,
    frechet_distance,
    inception_score,
    precision_recall,
)
from anyorder.hub import load_module
from anyorder.io.npz import IMAGE_KEY, iter_image_batches, open_images, read_images, read_labels
from anyorder.models.digit_judge import DigitClassifier
from anyorder.nn.device import resolve_device

__all__ = [
    "sample_record",
    "FEATURE_KINDS",
    "DIGIT_SOURCES",
    "resolve_device",
    "resolve_judge_dir",
    "judge_sha256",
    "compute_features",
    "evaluate",
    "make_reference",
]

FEATURE_KINDS = ("inception", "judge")
# bundled splits usable as a source: mnist:test, mnist:train (and their aliases: digits:test ...)
DIGIT_SOURCES = tuple(f"{name}:{part}" for name in dataset_names() for part in ("test", "train"))
DEFAULT_BATCH_SIZE = 64  # ADM's batch size for the Inception graph


def resolve_judge_dir(path: str | os.PathLike) -> Path:
    """The judge's directory: ``path`` itself or ``path/judge`` (a demo run)."""
    p = Path(path)
    for cand in (p, p / "judge"):
        if (cand / "config.json").is_file():
            return cand
    raise FileNotFoundError(f"no digit judge at {p}: expected a judge directory (config.json + model.safetensors) "
                            f"or a demo run holding judge/ (e.g. runs/demo_rar)")


def sample_record(samples_npz: str | os.PathLike) -> dict[str, Any]:
    """What made a sample file, from the JSON ``anyorder sample --npz`` writes beside it
    (``OUT.json``): its ``protocol`` (None: written before protocols, or not by anyorder) and
    ``sampling`` settings, and where that was read (``samples_record``: the JSON's path, or why there
    is none). A missing or unreadable JSON is no error: the samples are scored all the same."""
    path = Path(samples_npz).with_suffix(".json")
    if not path.is_file():
        return {"protocol": None, "samples_record": f"none ({path.name} not beside the samples)"}
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return {"protocol": None, "samples_record": f"unreadable ({path}: {type(e).__name__})"}
    if not isinstance(record, dict):
        return {"protocol": None, "samples_record": f"unreadable ({path}: not a JSON object)"}
    return {"protocol": record.get("protocol"), "sampling": record.get("sampling"),
            "samples_record": str(path)}


def judge_sha256(judge_dir: str | os.PathLike) -> str:
    """SHA-256 of the judge's weights file: which judge computed a reference's statistics."""
    weights = Path(judge_dir) / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"judge weights not found: {weights}")
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def _exact_float32():
    """No TF32 inside the feature network (TensorFlow's graph ran in full float32)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@torch.no_grad()
def compute_features(
    batches: Iterable[np.ndarray], network: InceptionV3 | DigitClassifier, total: int, device: torch.device,
    desc: str = "features", progress: bool = True,
) -> dict[str, np.ndarray]:
    """Features of uint8 ``[b, H, W, 3]`` batches.

    Inception: ``pool [N, 2048]``, ``spatial [N, 2023]``, ``probs [N, 1008]`` (softmax of the unbiased
    logits). Judge: ``pool [N, feature_dim]`` (its penultimate features), ``probs [N, num_classes]``.
    """
    parts: dict[str, list[np.ndarray]] = {}
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
    with _exact_float32():
        for batch in batches:
            if isinstance(network, DigitClassifier):
                x = images_from_uint8(batch, network)
                out = {"pool": extract_features(network, x, len(x)),
                       "probs": class_probabilities(network, x, len(x))}
            else:
                x = torch.from_numpy(np.array(batch)).to(device).permute(0, 3, 1, 2)  # a writable copy
                res = network(x)
                out = {"pool": res["pool"], "spatial": res["spatial"], "probs": torch.softmax(res["logits"], 1)}
            for key, value in out.items():
                parts.setdefault(key, []).append(value.float().cpu().numpy())
            bar.update(len(batch))
    bar.close()
    return {key: np.concatenate(value) for key, value in parts.items()}


def _load_network(features: str, judge: str | os.PathLike | None, inception_weights: str | os.PathLike | None,
                  device: torch.device) -> tuple[InceptionV3 | DigitClassifier, dict[str, Any]]:
    if features not in FEATURE_KINDS:
        raise ValueError(f"features must be one of {FEATURE_KINDS}, got {features!r}")
    if features == "judge":
        if judge is None:
            raise ValueError("--features judge needs the digit judge: pass --judge RUN_OR_DIR (e.g. runs/demo_rar)")
        judge_dir = resolve_judge_dir(judge)
        net = load_module(judge_dir, device=device, expected=DigitClassifier)
        return net, {"judge": str(judge_dir), "judge_sha256": judge_sha256(judge_dir)}
    weights = resolve_inception_weights(inception_weights)
    return load_inception(weights, device), {"inception_weights": str(weights)}


def evaluate(
    samples_npz: str | os.PathLike, ref_npz: str | os.PathLike, features: str = "inception", *,
    judge: str | os.PathLike | None = None, inception_weights: str | os.PathLike | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE, device: str | torch.device = "auto",
    is_split_size: int = IS_SPLIT_SIZE, k: int = 3, pr_fp16: bool = True, progress: bool = True,
) -> dict[str, Any]:
    """FID, sFID, IS, precision and recall of ``samples_npz`` against the reference batch ``ref_npz``.

    Returns a JSON-ready dict of every number and setting. Sample npz: ``arr_0`` uint8 ``[N, H, W, 3]``
    (+ ``arr_1`` labels, used only for the judge's class accuracy: checked before any feature is computed,
    and not read at all for Inception features). Reference: ``mu``, ``sigma`` (and ``mu_s``, ``sigma_s`` for
    Inception) plus ``arr_0``, or ``arr_0`` alone (statistics computed from its images).
    """
    t0 = time.perf_counter()
    if features not in FEATURE_KINDS:
        raise ValueError(f"features must be one of {FEATURE_KINDS}, got {features!r}")
    dev = resolve_device(device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    samples_npz, ref_npz = Path(samples_npz), Path(ref_npz)
    info = open_images(samples_npz)  # validate both files before loading any network
    # the labels only serve the judge's class accuracy: read (and checked) now, before any feature is
    # computed; Inception never looks at them
    labels = read_labels(samples_npz, info.count) if features == "judge" else None
    ref = read_reference(ref_npz, require_spatial=features == "inception", features=features,
                         allow_images_only=True)
    if is_split_size < 1:
        raise ValueError(f"is_split_size must be >= 1, got {is_split_size}")
    need = max(2, k + 1)
    if info.count < need:
        raise ValueError(f"{samples_npz}: {info.count} sample(s) are too few for a covariance (2) and k={k} "
                         f"neighbours: give at least {need}")
    assert ref.images is not None
    if ref.images.count <= k:
        raise ValueError(f"{ref_npz}: {ref.images.count} reference images; precision / recall with k={k} need "
                         f"more than {k}")
    net, meta = _load_network(features, judge, inception_weights, dev)
    if features == "judge" and ref.has_statistics and ref.judge_sha256 != meta["judge_sha256"]:
        raise ValueError(f"{ref_npz}: its statistics were computed by another digit judge (sha256 "
                         f"{ref.judge_sha256}); rewrite it with `anyorder eval --make-ref digits:test --features "
                         f"judge --judge {judge} --out REF.npz`")
    smp = compute_features(iter_image_batches(samples_npz, batch_size), net, info.count, dev, "sample features",
                           progress)
    desc = "reference features" if ref.has_statistics else "reference features and statistics"
    ref_feats = compute_features(iter_image_batches(ref_npz, batch_size), net, ref.images.count, dev, desc,
                                 progress)
    ref_pool, ref_spatial = _reference_statistics(ref, ref_feats, features)
    smp_pool = feature_statistics(smp["pool"], f"{samples_npz}: {features} features")
    if smp_pool.dim != ref_pool.dim:
        raise ValueError(f"{ref_npz}: mu has {ref_pool.dim} dimensions but the {features} features have "
                         f"{smp_pool.dim}")
    is_mean, is_std = inception_score(smp["probs"], is_split_size)
    precision, recall = precision_recall(ref_feats["pool"], smp["pool"], k=k, device=dev, fp16=pr_fp16)
    result: dict[str, Any] = {
        "features": features,
        "fid": frechet_distance(smp_pool, ref_pool),
        "sfid": None,
        "inception_score": is_mean,
        "inception_score_std": is_std,
        "precision": precision,
        "recall": recall,
    }
    if features == "inception":
        assert ref_spatial is not None
        smp_spatial = feature_statistics(smp["spatial"], f"{samples_npz}: spatial features")
        result["sfid"] = frechet_distance(smp_spatial, ref_spatial)
    if labels is not None:
        result["judge_accuracy"] = float((smp["probs"].argmax(1) == labels).mean())
    result.update({
        "num_samples": info.count,
        "num_reference": ref.images.count,
        "sample_image_size": list(info.shape[1:3]),
        "samples": str(samples_npz),
        "reference": str(ref_npz),
        "reference_statistics": "stored" if ref.has_statistics else "computed from the reference images",
        "is_split_size": is_split_size,
        "is_splits": math.ceil(info.count / is_split_size),
        "pr_k": k,
        "pr_distances": "float16" if pr_fp16 else "float32",
        "pr_row_batch_size": ROW_BATCH_SIZE,
        "pr_col_batch_size": COL_BATCH_SIZE,
        **sample_record(samples_npz),
        **meta,
        "device": str(dev),
        "seconds": round(time.perf_counter() - t0, 2),
    })
    return result


def _reference_statistics(ref: ReferenceBatch, feats: dict[str, np.ndarray], features: str
                          ) -> tuple[GaussianStats, GaussianStats | None]:
    """The reference's stored statistics, or (a reference of images only) those of its images' features."""
    if ref.pool is not None:
        return ref.pool, ref.spatial
    pool = feature_statistics(feats["pool"], f"{ref.path}: {features} features of its images")
    spatial = feature_statistics(feats["spatial"], f"{ref.path}: spatial features of its images") \
        if features == "inception" else None
    return pool, spatial


def _bundled_split(source: str) -> tuple[np.ndarray, np.ndarray]:
    """A bundled dataset's split (the demo's: 10% test, seed 0) as uint8 RGB ``[N, H, W, 3]`` and labels."""
    dataset, which = split_source(source)
    x, y = dataset.split(which)
    pixels = (x.permute(0, 2, 3, 1).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    return np.repeat(pixels, 3 // pixels.shape[-1], axis=3), y.numpy().astype(np.int64)


def _source_images(source: str | os.PathLike, image_size: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    src = str(source)
    if split_source(src) is not None:
        return _bundled_split(src)
    p = Path(src)
    if p.is_dir():
        return load_image_folder(p, image_size), None
    if p.suffix == ".npz":
        images = read_images(p)
        if image_size is not None and images.shape[1:3] != (image_size, image_size):
            raise ValueError(f"{p}: {IMAGE_KEY} holds {images.shape[2]}x{images.shape[1]} images, not "
                             f"{image_size}x{image_size}; crop them first or drop --image-size")
        return images, read_labels(p, len(images))
    raise FileNotFoundError(f"reference source not found: {src} (an image folder, an .npz with {IMAGE_KEY}, "
                            f"or one of {', '.join(DIGIT_SOURCES)})")


def _array_batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(images), batch_size):
        yield images[i : i + batch_size]


def make_reference(
    source: str | os.PathLike, out: str | os.PathLike, features: str = "inception", *,
    judge: str | os.PathLike | None = None, inception_weights: str | os.PathLike | None = None,
    image_size: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE, device: str | torch.device = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Write a reference batch ``out`` (ADM layout) from an image folder, an npz, or ``digits:test|train``.

    Stores the images (``arr_0``, and labels ``arr_1`` when known), the pool statistics ``mu`` / ``sigma``
    and, for Inception, the spatial ones ``mu_s`` / ``sigma_s``. Returns a summary dict.
    """
    dev = resolve_device(device)
    images, labels = _source_images(source, image_size)
    if len(images) < 2:
        raise ValueError(f"{source}: {len(images)} image(s): a reference batch needs at least 2 for a covariance")
    net, meta = _load_network(features, judge, inception_weights, dev)
    feats = compute_features(_array_batches(images, batch_size), net, len(images), dev, "reference features",
                             progress)
    pool = feature_statistics(feats["pool"], f"{source}: {features} features")
    spatial = feature_statistics(feats["spatial"], f"{source}: spatial features") if "spatial" in feats else None
    path = write_reference(out, images, pool, spatial, features, labels, meta.get("judge_sha256"))
    return {"reference": str(path), "source": str(source), "features": features, "num_images": len(images),
            "image_size": list(images.shape[1:3]), "feature_dim": pool.dim,
            "spatial_dim": spatial.dim if spatial is not None else None, **meta}
