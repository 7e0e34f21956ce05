"""``anyorder train``: an explicit data source, ``--model`` and ``--config`` that agree, the packaged ImageNet
recipes."""

from __future__ import annotations

import re

import pytest

from anyorder.cli.main import main
from anyorder.models import get_family
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
    """Each recipe cites its family's official config file and keeps the family's order schedule (RAR: random
    until 50% of training, raster from 75%, the paper's Sec. 4.1; RandAR: random orders throughout)."""
    text = run_config_path(name).read_text()
    cfg = load_run_config(name)
    spec = get_family(cfg.family)
    cited = re.escape(spec.official.repo) + r" (configs/\S+\.yaml|scripts/train/\S+\.sh)"  # LPD's recipes: scripts
    assert re.search(cited, text), f"{name} names no official config"
    assert cfg.data.source == ""  # given on the command line
    t = cfg.train
    ratio = [permutation_ratio(s, t, cfg.family) for s in range(0, t.steps, max(1, t.steps // 100))]
    if spec.order_schedule is None:
        assert set(ratio) == {1.0} and cfg.model_dict().get("order", "random") == "random"
    else:
        start, end = (int(f * t.steps) for f in spec.order_schedule)
        assert anneal_bounds(t, cfg.family) == (start, end)
        assert permutation_ratio(start - 1, t, cfg.family) == 1.0 and permutation_ratio(end, t, cfg.family) == 0.0
    if cfg.family == "randar":  # configs/randar/*.yaml: token_dropout_p 0.1; skip_grad_norm 10 from iteration 100
        assert cfg.model_dict()["token_dropout"] == 0.1
        assert (t.skip_grad_norm, t.skip_grad_iter) == (10.0, 100)
