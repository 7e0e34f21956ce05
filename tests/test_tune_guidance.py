"""``anyorder tune-guidance`` on the bundled digits with the digit judge (tiny: 4 grid points, 20
samples each).

RandAR's ``tools/search_cfg_weights.py``: sample at each scale of a grid, score with the ADM
evaluator, keep the lowest FID. Here each point must be what ``anyorder sample --npz`` and
``anyorder eval`` give for that setting (the same bytes, the same FID), the table's best must be the
lowest FID of the points' own metrics files, a rerun must redo nothing, and ``sample --sampling-file
best.json`` must sample at the best setting. Nothing is downloaded: a random tiny RAR and demo
tokenizer for 28x28 digits, an untrained judge.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import anyorder.cli.tune as tune_cli
from anyorder.cli.main import main
from anyorder.hub import build_model, save_pretrained
from anyorder.models.digit_judge import DigitClassifier, DigitClassifierConfig
from anyorder.tokenizers.demo_vq import DemoVQ, DemoVQConfig

pytestmark = pytest.mark.usefixtures("one_thread")

N, BATCH = 20, 10
DIGITS = {"seq_len": 49, "codebook_size": 16, "num_classes": 10}  # 28x28 digits, 7x7 codes


def _run_dir(root: Path, family: str) -> Path:
    """A run folder as the demo writes it: model/, tokenizer/, judge/ (random weights; the
    generator's weights perturbed so that the class, and so the guidance, changes the logits)."""
    torch.manual_seed(0)
    fields = {"rar": {"dim": 32, "depth": 1, "n_head": 2, "mlp_hidden": 64, "pos_extra": 2,
                      "timestep_extra": 2},
              "randar": {"dim": 32, "depth": 1, "n_head": 2, "multiple_of": 16}}[family]
    model = build_model({"family": family, **fields, **DIGITS})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    run = root / family
    save_pretrained(model, run / "model")
    tok = DemoVQ(DemoVQConfig(codebook_size=16, code_dim=4, hidden=16))
    save_pretrained(tok, run / "tokenizer")
    judge = DigitClassifier(DigitClassifierConfig(width=4, feature_dim=8))
    with torch.no_grad():  # larger weights: features that spread (an untrained judge's barely do)
        for p in judge.parameters():
            p.mul_(4.0)
    save_pretrained(judge, run / "judge")
    return run


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    run = _run_dir(root, "rar")
    ref = root / "ref.npz"
    assert main(["eval", "--make-ref", "digits:test", "--features", "judge", "--judge", str(run),
                 "--out", str(ref), "--batch-size", "500", "--quiet"]) == 0
    return root, run, ref


def _tune(run: Path, ref: Path, out: Path, *extra: str) -> list[str]:
    return ["tune-guidance", "--model", str(run), "--ref", str(ref), "--out", str(out),
            "--num-samples", str(N), "--batch-size", str(BATCH), "--features", "judge",
            "--judge", str(run), "--device", "cpu", "--quiet", "--temperature", "1.0", *extra]


GRID = ["--scales", "2", "4", "--powers", "0", "2"]


@pytest.fixture(scope="module")
def searched(digits):
    root, run, ref = digits
    out = root / "search"
    assert main(_tune(run, ref, out, *GRID)) == 0
    return root, run, ref, out


def test_each_point_is_sample_npz_and_eval_and_the_best_is_the_lowest_fid(searched, tmp_path):
    root, run, ref, out = searched
    results = json.loads((out / "results.json").read_text())
    grid = [(r["guidance_scale"], r["guidance_power"]) for r in results["points"]]
    assert grid == [(2.0, 0.0), (2.0, 2.0), (4.0, 0.0), (4.0, 2.0)]  # scales outer, powers inner
    fids = {}
    for r in results["points"]:
        metrics = json.loads(Path(r["metrics"]).read_text())
        assert metrics["num_samples"] == N and metrics["features"] == "judge"
        assert metrics["protocol"]["name"] == "rar" and metrics["protocol"]["uint8"] == "truncate"
        assert r["fid"] == metrics["fid"] and r["inception_score"] == metrics["inception_score"]
        fids[(r["guidance_scale"], r["guidance_power"])] = metrics["fid"]
    assert len(set(fids.values())) == 4  # the guidance changes the samples
    best = min(fids, key=fids.get)
    record = json.loads((out / "best.json").read_text())
    assert (record["sampling"]["guidance_scale"], record["sampling"]["guidance_power"]) == best
    assert record["fid"] == fids[best] and record["family"] == "rar"
    assert record["sampling"]["temperature"] == 1.0  # the fixed settings too
    # one point through the CLI's own commands: the same file, the same FID
    scale, power = best
    npz = tmp_path / "same.npz"
    assert main(["sample", "--model", str(run), "--npz", str(npz), "--num-samples", str(N),
                 "--batch-size", str(BATCH), "--guidance-scale", str(scale), "--guidance-power",
                 str(power), "--temperature", "1.0", "--device", "cpu", "--quiet"]) == 0
    point = next(r for r in results["points"] if (r["guidance_scale"], r["guidance_power"]) == best)
    with np.load(npz) as a, np.load(point["samples"]) as b:
        assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])
    assert main(["eval", str(npz), "--ref", str(ref), "--features", "judge", "--judge", str(run),
                 "--quiet"]) == 0
    same = json.loads((tmp_path / "same_metrics.json").read_text())
    assert same["fid"] == pytest.approx(fids[best], rel=1e-12)
    # the table and the plot
    md = (out / "results.md").read_text()
    assert md.count("\n| ") == 5  # header + 4 rows
    assert md.count("**") == 2 * (7 + 1)  # the best row's 8 cells in bold
    with Image.open(out / "results.png") as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 100


def test_sample_picks_the_best_setting_from_the_file(searched, tmp_path, capsys):
    root, run, ref, out = searched
    best = json.loads((out / "best.json").read_text())["sampling"]
    base = ["sample", "--model", str(run), "--num-samples", "4", "--batch-size", "4", "--device",
            "cpu", "--quiet", "--sampling-file", str(out / "best.json")]
    assert main([*base, "--npz", str(tmp_path / "a.npz")]) == 0
    used = json.loads((tmp_path / "a.json").read_text())["sampling"]
    assert used["guidance_scale"] == best["guidance_scale"]
    assert used["guidance_power"] == best["guidance_power"]
    assert main([*base, "--npz", str(tmp_path / "b.npz"), "--guidance-scale", "7"]) == 0  # wins
    assert json.loads((tmp_path / "b.json").read_text())["sampling"]["guidance_scale"] == 7.0
    (tmp_path / "bad.json").write_text(json.dumps({"sampling": {"steps": 4}}))
    assert main([*base[:-1], str(tmp_path / "bad.json"), "--npz", str(tmp_path / "c.npz")]) == 2
    assert "steps" in capsys.readouterr().err


def test_a_rerun_redoes_nothing_and_resumes_what_is_missing(searched, monkeypatch, capsys):
    root, run, ref, out = searched
    before = (out / "results.json").read_text()
    calls = {"sample": 0, "eval": 0}
    real_sample, real_eval = tune_cli.write_sample_npz, tune_cli.evaluate

    def counted(name, fn):
        def wrapper(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapper

    monkeypatch.setattr(tune_cli, "write_sample_npz", counted("sample", real_sample))
    monkeypatch.setattr(tune_cli, "evaluate", counted("eval", real_eval))
    assert main(_tune(run, ref, out, *GRID)) == 0
    assert calls == {"sample": 0, "eval": 0} and (out / "results.json").read_text() == before
    # a point's metrics lost: scored again from its samples, not resampled
    (out / "points" / "scale4.000_power2.000_metrics.json").unlink()
    assert main(_tune(run, ref, out, *GRID)) == 0
    assert calls == {"sample": 0, "eval": 1} and (out / "results.json").read_text() == before
    # other settings than the grid: refused, naming them
    assert main(_tune(run, ref, out, *GRID, "--seed", "5")) == 2
    assert "differs in seed" in capsys.readouterr().err
    assert main(_tune(run, ref, out, *GRID, "--guidance-scale", "2")) == 2
    assert "the grid sets these" in capsys.readouterr().err


def test_grid_errors_and_the_official_grid(digits, tmp_path, capsys, monkeypatch):
    root, run, ref = digits

    def no_sampling(*a, **k):
        raise AssertionError("sampled before the scoring's inputs were checked")

    monkeypatch.setattr(tune_cli, "write_sample_npz", no_sampling)
    argv = _tune(run, ref, tmp_path / "z", "--scales", "2")
    i = argv.index("--judge")
    assert main(argv[:i] + argv[i + 2:]) == 2 and "needs the digit judge" in capsys.readouterr().err
    monkeypatch.delenv("ANYORDER_INCEPTION_WEIGHTS", raising=False)
    inception = _tune(run, ref, tmp_path / "z", "--scales", "2", "--features", "inception")
    assert main(inception) == 2  # the judge's reference has no Inception statistics
    assert str(ref) in capsys.readouterr().err
    assert main(_tune(run, ref, tmp_path / "x")) == 2  # RAR: no official search, no grid given
    assert "has no official guidance search" in capsys.readouterr().err
    randar = _run_dir(root, "randar")
    assert main(_tune(randar, ref, tmp_path / "y", "--scales", "2", "--powers", "1")) == 2
    assert "no guidance_power" in capsys.readouterr().err
    # RandAR's own search: np.arange(2.0, 8.0 + 1e-4, 0.2), 10,000 samples per point
    args = argparse.Namespace(scales=None, scale_range=None, powers=None)
    from anyorder.hub import from_pretrained
    from anyorder.sampling.protocol import model_protocol

    model = from_pretrained(randar / "model")
    scales, powers = tune_cli._grid(args, model_protocol(model), model)
    np.testing.assert_allclose(scales, np.arange(2.0, 8.0 + 1e-4, 0.2), atol=1e-9)
    assert powers == () and model_protocol(model).guidance.num_samples == 10_000
