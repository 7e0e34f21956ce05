"""The main job end to end on a tiny configuration, through the command line."""

from __future__ import annotations

import json

import pytest

from anyorder.cli import main
from anyorder.models import family_names, get_family
from anyorder.sampling.generate import generate
from anyorder.training.config import list_run_presets

TINY = ["data.max_per_class=20", "tokenizer.hidden=16", "tokenizer.steps=20", "judge.steps=20", "train.steps=6",
        "train.batch_size=8", "train.ckpt_every=3", "train.warmup_steps=1", "sample.per_class=1"]
DATA_SHAPED = ("seq_len", "codebook_size", "num_classes")  # set by the digits and their tokenizer


def tiny_model(family: str) -> list[str]:
    """Overrides that make the family's demo model its debug model (one block), on the demo's data."""
    debug = {**get_family(family).debug, "depth": 1}
    return [f"model.{k}={v}" for k, v in debug.items() if k not in DATA_SHAPED]


@pytest.mark.parametrize("family", [f for f in family_names() if f"demo_{f}" in list_run_presets()])
def test_demo_smoke(family, tmp_path):
    assert main(["demo", "--model", family, "--out", str(tmp_path), "--quiet", *TINY, *tiny_model(family)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (tmp_path / "samples.png").stat().st_size > 0
    assert metrics["family"] == family and metrics["train"]["steps"] == 6
    for key in ("accuracy", "frechet_distance"):
        assert key in metrics["samples"]["guided"] and key in metrics["samples"]["unguided"]
    assert "frechet_train_vs_test" in metrics["floor"]
    assert (tmp_path / "model" / "model.safetensors").is_file()
    if get_family(family).can("parallel"):  # the sweep over decoding steps, from one token per step down
        assert (tmp_path / "steps.png").is_file()
        assert [r["steps"] for r in metrics["steps_sweep"]][0] == 49
    # the run's model and tokenizer work with `anyorder sample`
    out = tmp_path / "grid.png"
    assert main(["sample", "--model", str(tmp_path), "--classes", "3", "4", "--out", str(out)]) == 0
    assert out.is_file() and json.loads(out.with_suffix(".json").read_text())["classes"] == [3, 4]
    # ... with the sampling settings the run was made with (guided), not the family's unguided defaults
    recorded = json.loads((tmp_path / "model" / "config.json").read_text())["extra"]["sampling"]
    assert recorded["guidance_scale"] == metrics["samples"]["guided"]["guidance_scale"] > 1
    assert json.loads(out.with_suffix(".json").read_text())["sampling"]["guidance_scale"] == recorded["guidance_scale"]
    assert main(["sample", "--model", str(tmp_path), "--classes", "12", "--out", str(out)]) == 2


def test_a_raster_trained_counterpart_reuses_a_runs_tokenizer(tmp_path, monkeypatch):
    """The probe benchmark's baseline: a RandAR trained in raster order only, on another run's tokenizer
    (given as a relative path), loadable from any working directory and by `anyorder sample`."""
    import torch

    from anyorder.demo.run import load_demo_model

    monkeypatch.chdir(tmp_path)
    base = ["--model", "randar", "--quiet", *TINY, *tiny_model("randar")]
    assert main(["demo", "--out", "a", *base]) == 0
    assert main(["demo", "--out", "b", *base, "model.order=raster", "train.anneal_start=0", "train.anneal_end=0",
                 "tokenizer.path=a/tokenizer"]) == 0
    assert not (tmp_path / "b" / "tokenizer").exists()
    monkeypatch.chdir(tmp_path / "b")
    model, tok = load_demo_model(tmp_path / "b")
    _, tok_a = load_demo_model(tmp_path / "a")
    assert all(torch.equal(x, y) for x, y in zip(tok.state_dict().values(), tok_a.state_dict().values()))
    log = json.loads((tmp_path / "b" / "train_log.json").read_text())
    assert {h["r"] for h in log["history"]} == {0.0}
    _, orders = generate(model, torch.tensor([0, 1]), seed=0, return_orders=True)
    assert torch.equal(orders, torch.arange(model.seq_len).expand(2, -1))
    assert main(["sample", "--model", str(tmp_path / "b"), "--classes", "1", "--out", str(tmp_path / "g.png")]) == 0


def test_demo_rejects_unknown_override(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "train.stepz=3"]) == 2
    assert "train.stepz" in capsys.readouterr().err


def test_train_on_a_codes_file_and_resume(tmp_path):
    import torch
    from safetensors.torch import save_file

    codes = torch.randint(0, 16, (20, 4, 4))
    save_file({"codes": codes, "labels": torch.randint(0, 3, (20,))}, str(tmp_path / "codes.safetensors"))
    args = ["train", "--model", "randar", "--out", str(tmp_path / "run"), "--quiet",
            f"data.source={tmp_path / 'codes.safetensors'}", "model.codebook_size=16", "model.num_classes=3",
            "model.dim=32", "model.depth=1", "model.n_head=2", "model.multiple_of=16", "train.steps=4",
            "train.batch_size=4", "train.ckpt_every=2"]
    assert main(args) == 0
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    assert main([*args[:-2], "train.steps=6", "train.batch_size=4"]) == 0  # resumes from step 4
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert log["steps"] == 6
