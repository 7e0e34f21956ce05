"""Fast tests of the demo's data split, VQ tokenizer and quality judge."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from anyorder.data import mnist as data_mod
from anyorder.data.mnist import load_mnist, stratified_split
from anyorder.evaluation.judge import class_accuracy, frechet_distance, judge
from anyorder.hub import load_module, save_pretrained
from anyorder.models.digit_judge import DigitClassifier, DigitClassifierConfig
from anyorder.tokenizers.base import ImageTokenizer
from anyorder.tokenizers.demo_vq import DemoVQ, DemoVQConfig, codebook_usage, reconstruction_error
from anyorder.training.config import config_from_dict
from anyorder.training.small_models import train_demo_vq, train_digit_classifier

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread beats two contending ones


@pytest.fixture(scope="module")
def mnist() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return load_mnist(test_fraction=0.1, seed=0)


@pytest.fixture(scope="module")
def small_vq(mnist) -> DemoVQ:
    cfg = DemoVQConfig(codebook_size=32, code_dim=8, hidden=16)
    model, stats = train_demo_vq(mnist[0][:256], cfg, steps=5, batch_size=32, lr=1e-3, seed=0, progress=False)
    assert 0.0 < stats["codebook_usage"] <= 1.0
    return model


# ----------------------------------------------------------------------------------------- data


def test_load_mnist_shapes_and_stratified(mnist) -> None:
    tr_x, tr_y, te_x, te_y = mnist
    assert tr_x.shape == (4500, 1, 28, 28) and te_x.shape == (500, 1, 28, 28)
    assert tr_x.dtype == torch.float32 and tr_y.dtype == torch.int64
    assert float(tr_x.min()) >= 0.0 and float(tr_x.max()) <= 1.0 and float(tr_x.max()) > 0.9
    assert torch.equal(te_y.bincount(minlength=10), torch.full((10,), 50))
    assert torch.equal(tr_y.bincount(minlength=10), torch.full((10,), 450))


def test_split_disjoint_and_deterministic(mnist) -> None:
    labels = torch.arange(1000) % 10
    tr, te = stratified_split(labels, 0.2, seed=3)
    assert len(set(tr.tolist()) & set(te.tolist())) == 0
    assert sorted(tr.tolist() + te.tolist()) == list(range(1000))
    assert torch.equal(labels[te].bincount(), torch.full((10,), 20))
    tr2, te2 = stratified_split(labels, 0.2, seed=3)
    assert torch.equal(tr, tr2) and torch.equal(te, te2)
    assert not torch.equal(te, stratified_split(labels, 0.2, seed=4)[1])
    # the same on the real data: same seed -> identical, test images never appear in train
    again = load_mnist(test_fraction=0.1, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(mnist, again))
    train_rows = {bytes(r.numpy().tobytes()) for r in mnist[0].flatten(1)}
    assert not any(bytes(r.numpy().tobytes()) in train_rows for r in mnist[2].flatten(1)[:100])


def test_missing_or_corrupt_file_errors(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(data_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="mnist_5k.csv.gz"):
        data_mod.mnist_path()
    monkeypatch.undo()
    bad = tmp_path / "mnist_5k.csv.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="mnist_5k.csv.gz"):
        data_mod._read_csv(bad)
    with gzip.open(bad, "wt") as f:
        f.write("1,2,3\n")
    with pytest.raises(ValueError, match="mnist_5k.csv.gz"):
        data_mod._read_csv(bad)


# ------------------------------------------------------------------------------------------- VQ


def test_vq_roundtrip_shapes(small_vq, mnist) -> None:
    assert isinstance(small_vq, ImageTokenizer)
    assert small_vq.downsample == 4 and small_vq.in_channels == 1 and small_vq.codebook_size == 32
    x = mnist[2][:6]
    codes = small_vq.encode(x)
    assert codes.shape == (6, 7, 7) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < 32
    out = small_vq.decode(codes)
    assert out.shape == (6, 1, 28, 28) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert small_vq.grid_size(28) == 7
    assert 0.0 < reconstruction_error(small_vq, x) < 1.0
    assert 0.0 < codebook_usage(small_vq, x) <= 1.0
    with pytest.raises(ValueError):
        small_vq.decode(torch.full((1, 7, 7), 32))


def test_vq_save_load_identical(small_vq, mnist, tmp_path) -> None:
    save_pretrained(small_vq, tmp_path / "vq")
    loaded = load_module(tmp_path / "vq", expected=DemoVQ)
    x = mnist[2][:16]
    assert torch.equal(small_vq.encode(x), loaded.encode(x))
    assert torch.equal(small_vq.decode(small_vq.encode(x)), loaded.decode(loaded.encode(x)))


def test_vq_unknown_config_key(small_vq, tmp_path) -> None:
    with pytest.raises(ValueError, match="bogus_key"):
        config_from_dict(DemoVQConfig, {"codebook_size": 64, "bogus_key": 1})
    save_pretrained(small_vq, tmp_path / "vq")
    cfg_path = tmp_path / "vq" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["bogus_key"] = 3
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="bogus_key"):
        load_module(tmp_path / "vq", expected=DemoVQ)


def test_vq_training_deterministic_and_leaves_global_rng(mnist) -> None:
    cfg = DemoVQConfig(codebook_size=16, code_dim=4, hidden=8)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    m1, _ = train_demo_vq(mnist[0][:64], cfg, steps=2, batch_size=16, seed=1, progress=False)
    assert torch.equal(torch.rand(3), expected)  # caller's RNG stream is untouched
    m2, _ = train_demo_vq(mnist[0][:64], cfg, steps=2, batch_size=16, seed=1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))

# -------------------------------------------------------------------------------------- metrics


def test_frechet_distance_properties() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 16, generator=g)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    d = [frechet_distance(a, a + s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert d == sorted(d) and d[-1] > d[1] > 0
    assert d[2] == pytest.approx(16.0, rel=1e-4)  # mean shift of 1 in 16 dims
    # singular covariances (rank-deficient features) still give a finite number
    low_rank = torch.randn(50, 2, generator=g) @ torch.randn(2, 16, generator=g)
    assert frechet_distance(low_rank, low_rank + 0.1) >= 0.0
    with pytest.raises(ValueError):
        frechet_distance(a[:, :4], a)


def test_classifier_learns_and_roundtrips(mnist, tmp_path) -> None:
    tr_x, tr_y, te_x, te_y = mnist
    cfg = DigitClassifierConfig(width=16, feature_dim=32)
    clf, stats = train_digit_classifier(
        tr_x[::3], tr_y[::3], steps=100, batch_size=64, lr=3e-3, seed=0, progress=False, config=cfg
    )
    acc = class_accuracy(clf, te_x, te_y)
    assert acc > 0.6, acc  # chance is 0.1
    assert clf.features(te_x[:5]).shape == (5, 32)
    save_pretrained(clf, tmp_path / "clf")
    loaded = load_module(tmp_path / "clf", expected=DigitClassifier)
    assert torch.equal(loaded(te_x[:8]), clf(te_x[:8]))
    res = judge(clf, te_x[:100], te_y[:100], tr_x[:300])
    assert set(res) >= {"accuracy", "frechet_distance"}
    assert 0.0 <= res["accuracy"] <= 1.0 and res["frechet_distance"] >= 0.0
    with pytest.raises(ValueError, match="nope"):
        config_from_dict(DigitClassifierConfig, {"nope": 1})
