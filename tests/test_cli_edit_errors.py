"""The error paths of ``anyorder inpaint / outpaint / extrapolate / features`` (issue 22): each bad input must
end with exit status 2 and one line that names the problem (the option, the file or the values), never a
traceback and never a silent success. A bad option value (a seed out of range) is refused by argparse while the
line is parsed, before any work: its usage line, then one error line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anyorder.cli import main
from anyorder.hub import build_model, save_pretrained
from anyorder.tokenizers.demo_vq import DemoVQ, DemoVQConfig

pytestmark = pytest.mark.usefixtures("one_thread")

RANDAR = {"family": "randar", "dim": 32, "depth": 2, "n_head": 2, "seq_len": 16, "codebook_size": 16,
          "num_classes": 3, "multiple_of": 16}
RAR = {"family": "rar", "dim": 32, "depth": 1, "n_head": 2, "mlp_hidden": 64, "seq_len": 16, "codebook_size": 16,
       "num_classes": 3}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Runs ``randar/`` and ``rar/`` (4x4 tokens, 16x16 pixels) and the inputs the cases name."""
    d = tmp_path_factory.mktemp("edit")
    for name, cfg in (("randar", RANDAR), ("rar", RAR)):
        torch.manual_seed(0)
        save_pretrained(build_model(cfg).eval(), d / name / "model")
        save_pretrained(DemoVQ(DemoVQConfig(codebook_size=16, image_size=16, code_dim=8, hidden=16)),
                        d / name / "tokenizer")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(d / "img.png")
    Image.fromarray((rng.random((40, 24, 3)) * 255).astype(np.uint8)).save(d / "wide.png")
    half = np.zeros((16, 16), np.uint8)
    half[:, :8] = 255
    Image.fromarray(half).save(d / "mask.png")
    Image.fromarray(half.astype(np.uint16) * 257).save(d / "mask16.png")  # 16-bit: 65535 = white
    Image.fromarray(np.full((16, 16), 128, np.uint8)).save(d / "grey.png")
    Image.fromarray(np.zeros((40, 24), np.uint8)).save(d / "mask_wide.png")
    Image.fromarray(np.full((16, 16), 2.0, np.float32)).save(d / "mask_float.tif")
    (d / "text.png").write_text("not an image")
    return d


def _run(files: Path, capsys, argv: list[str]) -> tuple[int, str]:
    out = files / ("out.safetensors" if argv[0] == "features" else "out.png")
    full = [str(a).replace("@", str(files) + "/") for a in argv]
    if "--out" not in full:
        full += ["--out", str(out)]
    rc = main(full)
    return rc, capsys.readouterr().err.strip()


def _img(*more: str) -> list[str]:
    return ["--image", "@img.png", *more]


ERRORS = {  # name: (argv; '@' is the fixture folder, words the one-line message must hold)
    "inpaint with RAR": (["inpaint", "--model", "@rar", *_img("--side", "left")],
                         ["needs a model family with the 'known_tokens' capability", "RAR"]),
    "outpaint with RAR": (["outpaint", "--model", "@rar", *_img("--side", "left")], ["'known_tokens' capability"]),
    "extrapolate with RAR": (["extrapolate", "--model", "@rar"], ["'extrapolation' capability"]),
    "features with RAR": (["features", "--model", "@rar", *_img()], ["'features' capability"]),
    "inpaint no samples": (["inpaint", "--model", "@randar", *_img("--side", "left", "--samples", "0")],
                           ["--samples must be >= 1"]),
    "inpaint negative samples": (["inpaint", "--model", "@randar", *_img("--side", "left", "--samples", "-1")],
                                 ["--samples must be >= 1"]),
    "extrapolate no images": (["extrapolate", "--model", "@randar", "--per-class", "0"], ["--per-class must be >= 1"]),
    "features layer 0": (["features", "--model", "@randar", *_img("--layer", "0")], ["layer must be in 1..2", "got 0"]),
    "mask not binary": (["inpaint", "--model", "@randar", *_img("--mask", "@grey.png")], ["binary", "128"]),
    "mask float out of [0, 1]": (["inpaint", "--model", "@randar", *_img("--mask", "@mask_float.tif")],
                                 ["mask_float.tif", "not [0, 1]"]),
    "mask of another size": (["inpaint", "--model", "@randar", "--image", "@wide.png", "--mask", "@mask_wide.png"],
                             ["mask has shape (40, 24)", "16x16"]),
    "mask missing": (["inpaint", "--model", "@randar", *_img("--mask", "@nope.png")], ["nope.png", "not found"]),
    "image missing": (["inpaint", "--model", "@randar", "--image", "@nope.png", "--side", "left"], ["nope.png"]),
    "image not an image": (["features", "--model", "@randar", "--image", "@text.png"], ["text.png", "unreadable"]),
    "no mask and no side": (["inpaint", "--model", "@randar", *_img()], ["exactly one of --mask"]),
    "class out of range": (["inpaint", "--model", "@randar", *_img("--side", "left", "--class", "99")],
                           ["class id 99", "0..2"]),
    "inpaint output not PNG": (["inpaint", "--model", "@randar", *_img("--side", "left", "--out", "@x.txt")],
                               ["--out must be a .png"]),
    "outpaint amount 0": (["outpaint", "--model", "@randar", *_img("--side", "left", "--amount", "0")],
                          ["--amount", "got 0"]),
    "outpaint within too far": (["outpaint", "--model", "@randar", *_img("--side", "left", "--within", "--amount",
                                                                          "9")], ["--amount must be < 4"]),
    "outpaint negative padding": (["outpaint", "--model", "@randar", *_img("--left", "-1")], ["left=-1"]),
    "outpaint NTK boundary": (["outpaint", "--model", "@randar",
                               *_img("--side", "right", "--rope", "ntk", "--ntk-boundary", "99")],
                              ["ntk_boundary", "99"]),
    "extrapolate factor 1": (["extrapolate", "--model", "@randar", "--factor", "1"], ["factor >= 2", "got 1"]),
    "extrapolate mask ratio": (["extrapolate", "--model", "@randar", "--spatial-mask-ratio", "2"],
                               ["spatial_mask_ratio", "2.0"]),
    "features layer too deep": (["features", "--model", "@randar", *_img("--layer", "99")], ["layer must be in 1..2"]),
    "features no orders": (["features", "--model", "@randar", *_img("--num-orders", "0")], ["num_orders", "got 0"]),
    "features output not safetensors": (["features", "--model", "@randar", *_img("--out", "@f.png")],
                                        [".safetensors"]),
}

ARGPARSE = {  # refused while the command line is parsed: argparse's usage line, then one error line
    "seed beyond 32 bits": (["inpaint", "--model", "@randar", *_img("--side", "left", "--seed", str(2**64))],
                            ["--seed", "0..4294967295"]),
    "negative seed": (["inpaint", "--model", "@randar", *_img("--side", "left", "--seed", "-1")],
                      ["--seed", "0..4294967295"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_a_bad_input_is_one_line_and_exit_2(files, capsys, case):
    argv, words = ERRORS[case]
    rc, err = _run(files, capsys, argv)
    assert rc == 2 and "\n" not in err and err.startswith(f"anyorder {argv[0]}: error: "), (rc, err)
    for w in words:
        assert w in err, (w, err)


@pytest.mark.parametrize("case", list(ARGPARSE))
def test_a_bad_option_value_is_refused_before_any_work(files, capsys, case):
    argv, words = ARGPARSE[case]
    with pytest.raises(SystemExit) as exit_info:
        _run(files, capsys, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err[-1].startswith("anyorder inpaint: error: argument --seed")
    assert all(w in err[-1] for w in words), err


def test_what_is_not_an_error(files, capsys):
    # an image of another size is centre-cropped and resized to the model's (the documented behaviour), and a
    # 16-bit mask reads as the same binary mask
    for argv in (["inpaint", "--model", "@randar", "--image", "@wide.png", "--mask", "@mask.png"],
                 ["inpaint", "--model", "@randar", *_img("--mask", "@mask16.png")],
                 ["features", "--model", "@randar", "--image", "@img.png", "@wide.png"]):
        rc, err = _run(files, capsys, argv)
        assert rc == 0, err
