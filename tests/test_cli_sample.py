"""``anyorder sample`` on the official fixture checkpoints and tokenizers (in-process, no subprocess)."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import GENERATOR_FIXTURES, fixture_dir, fixture_geometry, fixture_tokenizer
from PIL import Image

from anyorder.cli.common import parse_classes as _parse_classes
from anyorder.cli.main import build_parser, main
from anyorder.cli.sample import _sampling_args
from anyorder.hub import from_pretrained, load_official
from anyorder.io import load_state_dict
from anyorder.models import PRESETS
from anyorder.tokenizers.official import MASKGIT_VQGAN, build_tokenizer, infer_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread beats two contending ones


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def maskgit() -> str:
    return str(fixture_dir("maskgit_vqgan") / "vqgan_checkpoint.bin")


def llamagen() -> str:
    return str(fixture_dir("llamagen_vq") / "vq_checkpoint.pt")


def grid_size(n: int, side: int, nrow: int = 8, pad: int = 2) -> tuple[int, int]:
    """(width, height) of save_image_grid's PNG for ``n`` square images of ``side`` pixels."""
    cols = min(nrow, n)
    rows = -(-n // cols)
    return cols * (side + pad) + pad, rows * (side + pad) + pad


@pytest.mark.parametrize("how", ["dir", "file"])
def test_sample_rar_fixture_with_maskgit_tokenizer(how: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    d = fixture_dir("rar")
    model = ["--model", str(d)] if how == "dir" else ["--model", "rar", "--checkpoint", str(d / "checkpoint.bin")]
    out = tmp_path / "tmp" / "grid.png"
    gen, tok = fixture_geometry("rar"), fixture_geometry("maskgit_vqgan")
    classes = [gen["num_classes"] - 1, 0]
    code, stdout, err = run(["sample", *model, "--tokenizer", maskgit(), "--classes", *map(str, classes),
                             "--guidance-scale", "4", "--guidance-power", "2.75", "--out", str(out)], capsys)
    assert code == 0, err
    assert f"wrote {out}" in stdout
    # the RAR fixture's T tokens = a sqrt(T) x sqrt(T) grid; the MaskGIT decoder upsamples it by its downsampling
    side, px = gen["side"], gen["side"] * tok["downsample"]
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["classes"] == classes and meta["codes_shape"] == [2, side, side] and meta["image_shape"] == [3, px, px]
    assert meta["sampling"]["guidance_scale"] == 4.0 and meta["sampling"]["guidance_power"] == 2.75
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == grid_size(2, px)


def test_sample_randar_fixture_with_llamagen_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "randar.png"
    gen, tok = fixture_geometry("randar"), fixture_geometry("llamagen_vq")
    a, b = gen["num_classes"] - 1, 0
    code, _, err = run(["sample", "--model", str(fixture_dir("randar")), "--tokenizer", llamagen(),
                        "--classes", str(a), str(b), "--per-class", "2", "--steps", "6", "--guidance-scale", "4",
                        "--out", str(out)], capsys)
    assert code == 0, err
    side, px = gen["side"], gen["side"] * tok["downsample"]
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["classes"] == [a, a, b, b] and meta["codes_shape"] == [4, side, side]
    assert meta["sampling"]["steps"] == 6 and meta["sampling"]["guidance_start"] == 1.0
    assert meta["image_shape"] == [3, px, px]  # the LlamaGen fixture's downsampling
    with Image.open(out) as im:
        assert im.size == grid_size(4, px, nrow=2)


def test_same_seed_same_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sample", "--model", str(fixture_dir("rar")), "--tokenizer", maskgit(), "--classes", "0", "--seed", "5"]
    assert run([*args, "--out", str(tmp_path / "a.png")], capsys)[0] == 0
    assert run([*args, "--out", str(tmp_path / "b.png")], capsys)[0] == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_class_out_of_range_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.png"
    C = fixture_geometry("rar")["num_classes"]
    code, _, err = run(["sample", "--model", str(fixture_dir("rar")), "--tokenizer", maskgit(),
                        "--classes", "0", str(C), "--out", str(out)], capsys)
    assert code == 2
    assert f"class id {C} out of range" in err and f"0..{C - 1}" in err
    assert not out.exists()
    code, _, err = run(["sample", "--model", str(fixture_dir("randar")), "--tokenizer", llamagen(),
                        "--classes", "-1", "--out", str(out)], capsys)
    assert code == 2 and "class id -1 out of range" in err


def test_class_names_need_an_imagenet_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["sample", "--model", str(fixture_dir("rar")), "--tokenizer", maskgit(),
                        "--classes", "golden retriever", "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "golden retriever" in err and f"0..{fixture_geometry('rar')['num_classes'] - 1}" in err
    # a 1000-class model resolves names (what --classes does for the released checkpoints)
    assert _parse_classes(["golden retriever", "goldfish", "980"], 1000) == [207, 1, 980]


def test_codebook_mismatch_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    V = fixture_geometry("rar")["codebook_size"]
    sd = load_state_dict(maskgit())
    cfg = replace(infer_config(MASKGIT_VQGAN, sd), codebook_size=V + 3)
    tok = tmp_path / "maskgit_other_codebook.bin"
    torch.save(build_tokenizer(cfg).state_dict(), tok)
    code, _, err = run(["sample", "--model", str(fixture_dir("rar")), "--tokenizer", str(tok),
                        "--classes", "0", "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2
    assert f"predicts {V} codes" in err and f"codebook of {V + 3}" in err and str(tok) in err


def test_bad_options_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["sample", "--model", str(fixture_dir("rar")), "--tokenizer", maskgit(), "--out", str(tmp_path / "x.png")]
    code, _, err = run([*base, "--steps", "4", "--classes", "1"], capsys)
    assert code == 2 and "'steps' does not apply to a rar model" in err
    code, _, err = run([*base, "--per-class", "0", "--classes", "1"], capsys)
    assert code == 2 and "--per-class" in err
    code, _, err = run(["sample", "--model", str(fixture_dir("rar")), "--tokenizer", str(tmp_path / "missing.bin"),
                        "--classes", "1", "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "missing.bin" in err
    code, _, err = run(["sample", "--model", str(tmp_path / "nothing"), "--tokenizer", maskgit()], capsys)
    assert code == 2 and "nothing" in err


def test_hub_id_offline_via_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # never touches the network
    code, _, err = run(["sample", "--model", "yucornetto/RAR", "--checkpoint", "rar_b.bin", "--tokenizer", maskgit(),
                        "--classes", "207", "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2
    assert "rar_b.bin" in err and "https://huggingface.co/yucornetto/RAR/resolve/main/rar_b.bin" in err
    code, _, err = run(["sample", "--model", "rar_b", "--tokenizer", maskgit()], capsys)
    assert code == 2 and "--checkpoint" in err


@pytest.mark.parametrize("preset, argv, overrides", [
    ("rar_xl", [], {}),
    ("rar_b", [], {}),
    ("rar_l", ["--guidance-scale", "3", "--temperature", "0.5"], {"guidance_scale": 3.0, "temperature": 0.5}),
])
def test_recorded_sampling_settings_reach_the_sampler(tmp_path: Path, preset: str, argv: list[str],
                                                      overrides: dict[str, float]) -> None:
    """A checkpoint named like a release (rar_xl.bin) samples with that release's settings unless told otherwise."""
    shutil.copy(fixture_dir("rar") / "checkpoint.bin", tmp_path / f"{preset}.bin")
    shutil.copy(fixture_dir("rar") / "config.json", tmp_path / "config.json")
    model = load_official(tmp_path / f"{preset}.bin")
    assert model.sampling_defaults == PRESETS[preset].sampling
    kw = _sampling_args(build_parser().parse_args(["sample", "--model", str(tmp_path), *argv]), model)
    expected = {**PRESETS[preset].sampling, **overrides}
    assert {k: kw[k] for k in expected} == expected


def test_randar_recorded_defaults_and_family_guard() -> None:
    randar = from_pretrained(fixture_dir("randar"))
    assert randar.sampling_defaults == {}  # an official file with no release name: the family's defaults
    kw = _sampling_args(build_parser().parse_args(["sample", "--model", "m"]), randar)
    assert (kw["guidance_start"], kw["guidance_scale"], kw["steps"], kw["top_k"]) == (1.0, 1.0, 0, 0)
    randar.sampling_defaults = dict(PRESETS["randar_l"].sampling)
    kw = _sampling_args(build_parser().parse_args(["sample", "--model", "m", "--steps", "8"]), randar)
    assert (kw["guidance_scale"], kw["steps"]) == (PRESETS["randar_l"].sampling["guidance_scale"], 8)
    # a setting RandAR does not have is an error, never silently dropped
    with pytest.raises(ValueError, match="guidance_power.*does not apply to a randar model"):
        _sampling_args(build_parser().parse_args(["sample", "--model", "m", "--guidance-power", "2"]), randar)
    rar = from_pretrained(fixture_dir("rar"))
    with pytest.raises(ValueError, match="steps.*does not apply to a rar model"):
        _sampling_args(build_parser().parse_args(["sample", "--model", "m", "--steps", "8"]), rar)


def test_png_batches_do_not_repeat_each_other(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One class over two batches: each batch draws from its own stream, so the second is no copy of the first."""
    out = tmp_path / "rep.png"
    code, _, err = run(["sample", "--model", str(fixture_dir("rar")), "--tokenizer", maskgit(), "--classes", "0",
                        "--per-class", "4", "--batch-size", "2", "--out", str(out)], capsys)
    assert code == 0, err
    side = json.loads(out.with_suffix(".json").read_text())["image_shape"][-1]
    grid = np.asarray(Image.open(out))

    def tile(k: int) -> np.ndarray:  # save_image_grid: 2-pixel padding, one row of 4 here
        x0 = 2 + k * (side + 2)
        return grid[2 : 2 + side, x0 : x0 + side]

    assert not np.array_equal(np.stack([tile(0), tile(1)]), np.stack([tile(2), tile(3)]))


@pytest.mark.parametrize("family", GENERATOR_FIXTURES)
def test_compiled_and_bf16_sampling_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  family: str) -> None:
    """``--compile`` (here dynamo's light ``eager`` backend; inductor takes minutes on a CPU) gives the eager
    greedy image; ``--dtype bf16`` samples with bf16 weights."""
    tokenizer = str(fixture_tokenizer(family))
    c = fixture_geometry(family)["num_classes"] - 1
    base = ["sample", "--model", str(fixture_dir(family)), "--tokenizer", tokenizer, "--classes", str(c), "0",
            "--top-k", "1", "--device", "cpu"]
    assert run([*base, "--out", str(tmp_path / "eager.png")], capsys)[0] == 0
    assert run([*base, "--compile", "eager", "--out", str(tmp_path / "compiled.png")], capsys)[0] == 0
    assert (tmp_path / "eager.png").read_bytes() == (tmp_path / "compiled.png").read_bytes()
    assert json.loads((tmp_path / "compiled.json").read_text())["sampling"]["compile"] == "eager"
    code, _, err = run([*base, "--dtype", "bf16", "--out", str(tmp_path / "bf16.png")], capsys)
    assert code == 0, err
    with Image.open(tmp_path / "bf16.png") as im, Image.open(tmp_path / "eager.png") as ref:
        assert im.size == ref.size


def test_an_official_yaml_gives_the_checkpoints_hyper_parameters_on_the_cli(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """``--config rar.yaml`` (1d-tokenizer's layout: codebook size under model.vq_model) for a checkpoint with no
    config.json beside it; the YAML's sampling settings become the defaults."""
    import yaml

    cfg = json.loads((fixture_dir("rar") / "config.json").read_text())
    shutil.copy(fixture_dir("rar") / "checkpoint.bin", tmp_path / "weights.bin")
    doc = {"model": {"vq_model": {"codebook_size": cfg["codebook_size"]},
                     "generator": {k: cfg[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                       "intermediate_size", "image_seq_len", "condition_num_classes")}
                     | {"randomize_temperature": 1.02, "guidance_scale": 6.9, "guidance_scale_pow": 1.5}}}
    (tmp_path / "rar.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "y.png"
    code, _, err = run(["sample", "--model", "x", "--checkpoint", str(tmp_path / "weights.bin"), "--config",
                        str(tmp_path / "rar.yaml"), "--tokenizer", maskgit(), "--classes", "0", "--out", str(out)],
                       capsys)
    assert code == 0, err
    settings = json.loads(out.with_suffix(".json").read_text())["sampling"]
    assert (settings["temperature"], settings["guidance_scale"], settings["guidance_power"]) == (1.02, 6.9, 1.5)
