"""``anyorder eval``: the sample npz's labels (``arr_1``) are checked from its header before any feature is
computed, every message names the file, and Inception features never read them (issue 22)."""

from __future__ import annotations

import numpy as np
import pytest

import anyorder.evaluation.evaluate as ev
from anyorder.evaluation.adm import write_reference
from anyorder.evaluation.metrics import GaussianStats
from anyorder.io.npz import check_labels, read_labels


class FeaturesComputed(Exception):
    """Raised by the stand-in feature pass: reaching it means the labels were not checked first."""


def _images(n: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


BAD_LABELS = {  # name: (arr_1, words the message must hold)
    "count": (np.arange(19), "19 labels in arr_1 for 20 images"),
    "float": (np.arange(20) * 1.0, "must be integer labels [N], got float64 [20]"),
    "2-d": (np.zeros((20, 1), np.int64), "must be integer labels [N], got int64 [20, 1]"),
    "object": (np.array([1, "a"] * 10, dtype=object), "arr_1 is an object array"),
}


def _samples(path, labels) -> str:
    np.savez(path, arr_0=_images(20), arr_1=labels)  # np.savez pickles an object array: what a user might have
    return str(path)


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_bad_labels_are_named_from_the_header(tmp_path, case):
    labels, words = BAD_LABELS[case]
    path = _samples(tmp_path / f"{case}.npz", labels)
    for check in (lambda: check_labels(path, 20), lambda: read_labels(path, 20)):
        with pytest.raises(ValueError) as info:
            check()
        assert str(info.value).startswith(f"{path}: ") and words in str(info.value)


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_judge_eval_fails_on_labels_before_any_feature(tmp_path, monkeypatch, case):
    def no_features(*args, **kwargs):
        raise FeaturesComputed

    monkeypatch.setattr(ev, "compute_features", no_features)
    monkeypatch.setattr(ev, "_load_network", lambda *a, **k: (None, {"judge_sha256": "j"}))
    ref = write_reference(tmp_path / "ref.npz", _images(8), GaussianStats(np.zeros(4), np.eye(4)), None,
                          "judge", judge_sha256="j")
    labels, words = BAD_LABELS[case]
    path = _samples(tmp_path / "s.npz", labels)
    with pytest.raises(ValueError) as info:
        ev.evaluate(path, ref, "judge", judge="unused", progress=False)
    assert str(info.value).startswith(f"{path}: ") and words in str(info.value)


def test_inception_eval_does_not_read_the_labels(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    dims = {"pool": 4, "spatial": 3, "probs": 5}

    def features(batches, network, total, device, desc="", progress=True):
        n = sum(len(b) for b in batches)
        out = {k: rng.normal(size=(n, d)) for k, d in dims.items()}
        out["probs"] = np.exp(out["probs"]) / np.exp(out["probs"]).sum(1, keepdims=True)
        return out

    monkeypatch.setattr(ev, "compute_features", features)
    monkeypatch.setattr(ev, "_load_network", lambda *a, **k: (None, {}))
    ref = write_reference(tmp_path / "ref.npz", _images(8), GaussianStats(np.zeros(4), np.eye(4)),
                          GaussianStats(np.zeros(3), np.eye(3)), "inception")
    path = _samples(tmp_path / "s.npz", BAD_LABELS["object"][0])
    metrics = ev.evaluate(path, ref, "inception", progress=False)
    assert metrics["num_samples"] == 20 and metrics["sfid"] is not None
