"""``anyorder sample`` on the official fixture checkpoints and tokenizers (in-process, no subprocess)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import fixture_dir
from PIL import Image

from anyorder.cli.common import parse_classes as _parse_classes
from anyorder.cli.main import build_parser, main
from anyorder.cli.sample import _sampling_args
from anyorder.hub import from_pretrained
from anyorder.io import load_state_dict
from anyorder.tokenizers.official import MASKGIT_VQGAN, build_tokenizer, infer_config


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is faster than two contending ones on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
    code, stdout, err = run(["sample", *model, "--tokenizer", maskgit(), "--classes", "1", "2",
                             "--guidance-scale", "4", "--guidance-power", "2.75", "--out", str(out)], capsys)
    assert code == 0, err
    assert f"wrote {out}" in stdout
    # RAR fixture: 16 tokens = 4x4 codes; the MaskGIT fixture decoder upsamples x4 -> 16x16 images
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["classes"] == [1, 2] and meta["codes_shape"] == [2, 4, 4] and meta["image_shape"] == [3, 16, 16]
    assert meta["sampling"]["guidance_scale"] == 4.0 and meta["sampling"]["guidance_power"] == 2.75
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == grid_size(2, 16)


def test_sample_randar_fixture_with_llamagen_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "randar.png"
    code, _, err = run(["sample", "--model", str(fixture_dir("randar")), "--tokenizer", llamagen(),
                        "--classes", "1", "2", "--per-class", "2", "--steps", "6", "--guidance-scale", "4",
                        "--out", str(out)], capsys)
    assert code == 0, err
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["classes"] == [1, 1, 2, 2] and meta["codes_shape"] == [4, 4, 4]
    assert meta["sampling"]["steps"] == 6 and meta["sampling"]["guidance_start"] == 1.0
    assert meta["image_shape"] == [3, 8, 8]  # LlamaGen fixture downsamples x2
    with Image.open(out) as im:
        assert im.size == grid_size(4, 8, nrow=2)


def test_same_seed_same_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sample", "--model", str(fixture_dir("rar")), "--tokenizer", maskgit(), "--classes", "3", "--seed", "5"]
    assert run([*args, "--out", str(tmp_path / "a.png")], capsys)[0] == 0
    assert run([*args, "--out", str(tmp_path / "b.png")], capsys)[0] == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_class_out_of_range_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.png"
    code, _, err = run(["sample", "--model", str(fixture_dir("rar")), "--tokenizer", maskgit(),
                        "--classes", "1", "10", "--out", str(out)], capsys)
    assert code == 2
    assert "class id 10 out of range" in err and "0..9" in err
    assert not out.exists()
    code, _, err = run(["sample", "--model", str(fixture_dir("randar")), "--tokenizer", llamagen(),
                        "--classes", "-1", "--out", str(out)], capsys)
    assert code == 2 and "class id -1 out of range" in err


def test_class_names_need_an_imagenet_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["sample", "--model", str(fixture_dir("rar")), "--tokenizer", maskgit(),
                        "--classes", "golden retriever", "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "golden retriever" in err and "0..9" in err
    # a 1000-class model resolves names (what --classes does for the released checkpoints)
    assert _parse_classes(["golden retriever", "goldfish", "980"], 1000) == [207, 1, 980]


def test_codebook_mismatch_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sd = load_state_dict(maskgit())
    cfg = replace(infer_config(MASKGIT_VQGAN, sd), codebook_size=16)
    tok = tmp_path / "maskgit16.bin"
    torch.save(build_tokenizer(cfg).state_dict(), tok)
    code, _, err = run(["sample", "--model", str(fixture_dir("rar")), "--tokenizer", str(tok),
                        "--classes", "1", "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2
    assert "predicts 32 codes" in err and "codebook of 16" in err and str(tok) in err


def test_bad_options_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["sample", "--model", str(fixture_dir("rar")), "--tokenizer", maskgit(), "--out", str(tmp_path / "x.png")]
    code, _, err = run([*base, "--steps", "4", "--classes", "1"], capsys)
    assert code == 2 and "--steps is for RandAR" in err
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


@pytest.mark.parametrize("argv, expected", [
    (["--model", "rar_xl"], {"temperature": 1.02, "guidance_scale": 6.9, "guidance_power": 1.5}),
    (["--model", "yucornetto/RAR", "--checkpoint", "rar_b.bin"],
     {"temperature": 1.0, "guidance_scale": 16.0, "guidance_power": 2.75}),
    (["--model", "rar_l", "--guidance-scale", "3", "--temperature", "0.5"],
     {"temperature": 0.5, "guidance_scale": 3.0, "guidance_power": 2.5}),
])
def test_preset_sampling_defaults_reach_the_sampler(argv: list[str], expected: dict[str, float]) -> None:
    model = from_pretrained(fixture_dir("rar"))
    kw = _sampling_args(build_parser().parse_args(["sample", *argv]), model)
    assert {k: kw[k] for k in expected} == expected


def test_randar_preset_defaults_and_family_guard() -> None:
    randar = from_pretrained(fixture_dir("randar"))
    kw = _sampling_args(build_parser().parse_args(["sample", "--model", "randar_l"]), randar)
    assert (kw["guidance_start"], kw["guidance_scale"], kw["steps"], kw["top_k"]) == (1.0, 3.4, 88, 0)
    # a RAR preset's settings are not applied to a RandAR model
    kw = _sampling_args(build_parser().parse_args(["sample", "--model", "rar_b"]), randar)
    assert kw["guidance_scale"] == 1.0 and kw["steps"] is None
