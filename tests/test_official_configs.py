"""The official YAML configs load as hyper-parameters of official checkpoints.

1d-tokenizer's ``configs/training/generator/rar.yaml`` keeps the generator under ``model.generator`` and the
codebook size under ``model.vq_model`` (with RAR's sampling settings in the generator section); RandAR's
``configs/randar/*.yaml`` keeps its model under ``ar_model.params``. The YAML files here are written in those
layouts from the fixtures' own ``config.json`` (every value from the fixture).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import GENERATOR_FIXTURES, fixture_checkpoint, fixture_dir

from anyorder.hub import from_pretrained, load_official
from anyorder.sampling import model_sampling


def _rar_yaml(cfg: dict) -> dict:
    return {
        "experiment": {"project": "rar_generation", "name": "rar-fixture"},
        "model": {
            "vq_model": {"codebook_size": cfg["codebook_size"], "token_size": 256,
                         "pretrained_tokenizer_weight": "maskgit-vqgan-imagenet-f16-256.bin"},
            "generator": {"hidden_size": cfg["hidden_size"], "num_hidden_layers": cfg["num_hidden_layers"],
                          "num_attention_heads": cfg["num_attention_heads"],
                          "intermediate_size": cfg["intermediate_size"], "dropout": 0.1, "attn_drop": 0.1,
                          "class_label_dropout": 0.1, "image_seq_len": cfg["image_seq_len"],
                          "condition_num_classes": cfg["condition_num_classes"], "randomize_temperature": 1.02,
                          "guidance_scale": 6.9, "guidance_scale_pow": 1.5, "use_checkpoint": False,
                          "randomness_anneal_start": 125000, "randomness_anneal_end": 187500},
        },
        "optimizer": {"name": "adamw", "params": {"learning_rate": 4e-4, "beta1": 0.9, "beta2": 0.96}},
        "lr_scheduler": {"params": {"learning_rate": "${optimizer.params.learning_rate}"}},
    }


def _steps(cfg: dict) -> int:
    return int(cfg.get("parallel_steps", cfg["runs"]["par_nocfg"]["steps"]))


def _randar_yaml(cfg: dict) -> dict:
    return {
        "ar_model": {"target": "RandAR.model.randar_gpt.RandARTransformer", "params": {
            "n_layer": cfg["n_layer"], "n_head": cfg["n_head"], "dim": cfg["dim"], "model_type": "c2i",
            "vocab_size": cfg["vocab_size"], "block_size": cfg["block_size"], "num_classes": cfg["num_classes"],
            "cls_token_num": 1, "multiple_of": cfg["multiple_of"], "resid_dropout_p": 0.1, "ffn_dropout_p": 0.1,
            "token_dropout_p": 0.1, "position_order": "random", "grad_checkpointing": True,
            "num_inference_steps": _steps(cfg)}},
        "optimizer": {"lr": 0.0004, "weight_decay": 0.05, "beta1": 0.9, "beta2": 0.95},
        "global_batch_size": 1024,
    }


# per generator fixture: its official YAML layout, and the sampling settings that YAML records (as ours)
OFFICIAL_YAML = {
    "rar": (_rar_yaml, lambda cfg: {"temperature": 1.02, "guidance_scale": 6.9, "guidance_power": 1.5}),
    "randar": (_randar_yaml, lambda cfg: {"steps": _steps(cfg)}),
}
# official releases whose hyper-parameters are not a YAML file, and why
NO_OFFICIAL_YAML = {"lpd": "mit-han-lab/lpd takes its hyper-parameters as main.py arguments (--model, --img_size)"}


def test_every_generator_fixture_has_a_yaml_layout_or_a_reason():
    assert set(GENERATOR_FIXTURES) <= set(OFFICIAL_YAML) | set(NO_OFFICIAL_YAML)


@pytest.mark.parametrize("family", [f for f in GENERATOR_FIXTURES if f in OFFICIAL_YAML])
def test_official_yaml_loads_like_the_config_json(tmp_path: Path, family: str) -> None:
    make, recorded = OFFICIAL_YAML[family]
    src = fixture_dir(family)
    cfg = json.loads((src / "config.json").read_text())
    ckpt = fixture_checkpoint(family)
    shutil.copy(ckpt, tmp_path / ckpt.name)
    (tmp_path / f"{family}.yaml").write_text(yaml.safe_dump(make(cfg)))
    from_yaml = from_pretrained(tmp_path / ckpt.name, config=tmp_path / f"{family}.yaml")
    from_json = from_pretrained(ckpt)
    assert from_yaml.family == family and not from_yaml.training
    assert (from_yaml.seq_len, from_yaml.codebook_size, from_yaml.num_classes) == (
        from_json.seq_len, from_json.codebook_size, from_json.num_classes)
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, from_json.codebook_size, (2, from_json.seq_len), generator=g)
    classes = torch.randint(0, from_json.num_classes, (2,), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(from_yaml.logits(codes, classes), from_json.logits(codes, classes))
    # the sampling settings the YAML records are the model's defaults
    settings = model_sampling(from_yaml).to_dict()
    expected = recorded(cfg)
    assert {k: settings[k] for k in expected} == expected


def test_a_rar_yaml_without_a_codebook_size_is_a_clear_error(tmp_path: Path) -> None:
    cfg = json.loads((fixture_dir("rar") / "config.json").read_text())
    doc = _rar_yaml(cfg)
    del doc["model"]["vq_model"]["codebook_size"]
    (tmp_path / "rar.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match="codebook_size"):
        load_official(fixture_dir("rar") / "checkpoint.bin", config=tmp_path / "rar.yaml")
