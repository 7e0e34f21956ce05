"""Bad input gets a clear error that names the problem, and nothing is half-written."""

from __future__ import annotations

import os

import pytest
import torch

from anyorder.hub import build_model, load_official, save_pretrained
from anyorder.io import CheckpointError, load_state_dict, save_state_dict
from anyorder.sampling.generate import generate
from anyorder.training.config import load_run_config

TINY = {"family": "rar", "dim": 32, "depth": 1, "n_head": 2, "mlp_hidden": 64, "seq_len": 16,
        "codebook_size": 16, "num_classes": 3, "pos_extra": 2, "timestep_extra": 2}


def test_unknown_config_keys_are_errors():
    with pytest.raises(ValueError, match="train.stepz"):
        load_run_config("demo_rar", ["train.stepz=3"])
    with pytest.raises(ValueError, match="depht"):
        load_run_config("demo_rar", ["model.depht=3"])
    with pytest.raises(ValueError, match="colour"):
        load_run_config("demo_randar", ["colour=red"])
    with pytest.raises(ValueError, match="must be an integer"):
        load_run_config("demo_rar", ["train.steps=many"])
    with pytest.raises(ValueError, match="key.path=value"):
        load_run_config("demo_rar", ["train.steps"])
    with pytest.raises(ValueError, match="unknown rar config key"):
        build_model({**TINY, "widht": 3})


def test_dotted_overrides_and_yaml_files(tmp_path):
    cfg = load_run_config("demo_randar", ["model.depth=2", "train.betas=[0.8, 0.9]", "sampling.steps=7"])
    assert cfg.model_dict()["depth"] == 2 and cfg.train.betas == (0.8, 0.9) and cfg.sampling_config().steps == 7
    with pytest.raises(ValueError, match="guidance_power.*does not apply to a randar model"):
        load_run_config("demo_randar", ["sampling.guidance_power=2"])
    assert cfg.family == "randar"
    y = tmp_path / "run.yaml"
    y.write_text("model_preset: rar_demo\ntrain: {steps: 5}\n")
    assert load_run_config(str(y)).train.steps == 5
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_run_config(str(tmp_path / "nope.yaml"))


def test_class_id_out_of_range():
    model = build_model(TINY)
    with pytest.raises(ValueError, match="class id 9 out of range"):
        generate(model, torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="class id -1 out of range"):
        model.logits(torch.zeros(1, 16, dtype=torch.long), torch.tensor([-1]))


def test_a_checkpoint_that_does_not_fit_names_keys_and_shapes(tmp_path):
    small = build_model(TINY)
    save_pretrained(small, tmp_path / "small")
    wide = {**TINY, "dim": 48}
    with pytest.raises(CheckpointError) as e:
        load_official(tmp_path / "small" / "model.safetensors", config=wide)
    msg = str(e.value)
    assert "model.safetensors" in msg and "shape mismatches" in msg
    assert "embeddings.weight: checkpoint (21, 32) vs model (21, 48)" in msg
    deep = {**TINY, "depth": 2}
    with pytest.raises(CheckpointError, match=r"missing keys: transformer\.blocks\.1\."):
        load_official(tmp_path / "small" / "model.safetensors", config=deep)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        load_state_dict(tmp_path / "nothing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_state_dict(bad)
    good = tmp_path / "w.bin"
    torch.save({"a": torch.ones(1000)}, good)
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated.bin"):
        load_state_dict(truncated)


def test_a_failed_save_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_state_dict(path, {"w": torch.zeros(3)})
    before = path.read_bytes()

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_state_dict(path, {"w": torch.ones(3)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left behind


def test_codes_out_of_range_are_named():
    model = build_model(TINY)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 16\)"):
        model.logits(torch.full((1, 16), 16), torch.tensor([0]))
