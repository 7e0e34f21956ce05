"""``anyorder train``: an explicit data source, ``--model`` and ``--config`` that agree, the packaged ImageNet
recipes."""

from __future__ import annotations

import re

import pytest

from anyorder.cli.main import main
from anyorder.training.config import list_run_presets, load_run_config, run_config_path
from anyorder.training.loop import anneal_bounds, permutation_ratio


def test_train_without_a_data_source_is_an_error_not_the_demo(capsys, tmp_path):
    assert main(["train", "--out", str(tmp_path), "--quiet"]) == 2
    assert "needs a data source: data.source=DIR" in capsys.readouterr().err
    assert main(["train", "--config", "rar_b_imagenet", "--out", str(tmp_path)]) == 2
    assert "names no data source" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing ran


def test_model_and_config_must_agree(capsys, tmp_path):
    assert main(["train", "--model", "randar", "--config", "rar_b_imagenet", "--out", str(tmp_path),
                 f"data.source={tmp_path}"]) == 2
    assert "--model randar but --config rar_b_imagenet trains a rar" in capsys.readouterr().err
    assert main(["demo", "--model", "rar", "--config", "demo_randar", "--out", str(tmp_path)]) == 2
    assert "--model rar but --config demo_randar trains a randar" in capsys.readouterr().err


IMAGENET = [n for n in list_run_presets() if n.endswith("_imagenet")]


def test_the_papers_recipes_are_packaged():
    assert {"rar_b_imagenet", "rar_l_imagenet", "rar_xl_imagenet", "rar_xxl_imagenet", "randar_l_imagenet",
            "randar_xl_imagenet"} <= set(IMAGENET)


@pytest.mark.parametrize("name", IMAGENET)
def test_each_recipe_names_its_official_file_and_needs_data(name):
    text = run_config_path(name).read_text()
    official = {"rar": r"bytedance/1d-tokenizer configs/training/generator/rar\.yaml",
                "randar": r"ziqipang/RandAR configs/randar/randar_[\w.]+\.yaml"}
    cfg = load_run_config(name)
    assert re.search(official[cfg.family], text), f"{name} names no official config file"
    assert cfg.data.source == ""  # given on the command line
    t = cfg.train
    if cfg.family == "rar":  # RAR: random until 50% of training, raster from 75% (paper, Sec. 4.1)
        assert anneal_bounds(t, "rar") == (t.steps // 2, 3 * t.steps // 4)
        assert permutation_ratio(t.steps // 2 - 1, t, "rar") == 1.0
        assert permutation_ratio(3 * t.steps // 4, t, "rar") == 0.0
    else:  # RandAR: random orders throughout
        assert {permutation_ratio(s, t, "randar") for s in (0, t.steps // 2, t.steps - 1)} == {1.0}
        assert cfg.model_dict()["order"] == "random"
        # configs/randar/*.yaml: token_dropout_p 0.1; optimizer.skip_grad_norm 10 from skip_grad_iter 100
        assert cfg.model_dict()["token_dropout"] == 0.1
        assert (t.skip_grad_norm, t.skip_grad_iter) == (10.0, 100)
