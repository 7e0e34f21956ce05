"""The images ``anyorder inpaint`` / ``outpaint`` write: the known part of the image comes back as given, the
regenerated part is new and depends on the seed. Only the public CLI and the tokenizer are used.

The commands decode the whole result, so a known token's pixels also depend on regenerated neighbours within
the decoder's reach. That reach ``r`` (in tokens) is measured here by brute force — change one token, see
which token cells' pixels move — and the known region is checked pixel for pixel on its cells more than ``r``
tokens from any regenerated one, against the decoding of the input's own tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from decoded_codes import png_tiles, to_uint8
from PIL import Image

from anyorder.cli.main import main
from anyorder.hub import build_model, save_pretrained
from anyorder.tokenizers.demo_vq import DemoVQ, DemoVQConfig

pytestmark = pytest.mark.usefixtures("one_thread")

GRID, DS, V = 12, 4, 16  # 12x12 tokens of 4x4 pixels: a 48x48 image
S = GRID * DS


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny RandAR run (model/ + tokenizer/) and a random grey input image of the model's size."""
    d = tmp_path_factory.mktemp("edit_run")
    torch.manual_seed(0)
    model = build_model({"family": "randar", "dim": 32, "depth": 2, "n_head": 2, "seq_len": GRID * GRID,
                         "codebook_size": V, "num_classes": 10, "multiple_of": 16}).eval()
    with torch.no_grad():  # the head is zero-initialised; give it weights so the samples vary
        model.transformer.final.head.weight.normal_(0, 0.5)
    save_pretrained(model, d / "model")
    torch.manual_seed(1)
    tok = DemoVQ(DemoVQConfig(image_size=S, downsample=DS, codebook_size=V, code_dim=8, hidden=16)).eval()
    save_pretrained(tok, d / "tokenizer")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (S, S), dtype=np.uint8)).save(d / "input.png")
    return d, tok


def _reach(tok) -> int:
    """How many tokens away a token's change moves decoded pixels (brute force over every position)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, V, (1, GRID, GRID), generator=g)
    with torch.no_grad():
        ref = tok.decode(base)
        reach = 0
        for p in range(GRID * GRID):
            other = base.clone().view(-1)
            other[p] = (other[p] + 1 + torch.randint(0, V - 1, (), generator=g)) % V
            moved = (tok.decode(other.view(1, GRID, GRID)) - ref).abs().amax(1)[0]  # [S, S]
            cells = moved.view(GRID, DS, GRID, DS).amax((1, 3)) > 0
            ys, xs = torch.nonzero(cells, as_tuple=True)
            reach = max(reach, int(torch.maximum((ys - p // GRID).abs(), (xs - p % GRID).abs()).max()))
    return reach


def _input_codes(run_dir, tok) -> torch.Tensor:
    """The input image's own tokens (the image is already the model's size and grey)."""
    x = torch.from_numpy(np.asarray(Image.open(run_dir / "input.png"), dtype=np.float32) / 255.0)
    with torch.no_grad():
        return tok.encode(x[None, None])


def _cells(mask_cells: np.ndarray) -> np.ndarray:
    """Token-cell mask ``[h, w]`` -> pixel mask ``[h * DS, w * DS]``."""
    return np.kron(mask_cells, np.ones((DS, DS), dtype=bool)).astype(bool)


def _far_from(regenerated: np.ndarray, reach: int) -> np.ndarray:
    """Known cells more than ``reach`` tokens (Chebyshev) from every regenerated cell."""
    h, w = regenerated.shape
    far = ~regenerated.copy()
    for y, x in zip(*np.nonzero(regenerated)):
        far[max(0, y - reach) : y + reach + 1, max(0, x - reach) : x + reach + 1] = False
    return far


def _edit(command: str, run_dir, out, seed: int, *extra: str) -> None:
    argv = [command, "--model", str(run_dir), "--image", str(run_dir / "input.png"), "--class", "3",
            "--seed", str(seed), "--steps", "4", "--device", "cpu", *extra, "--out", str(out)]
    assert main(argv) == 0


def test_inpaint_png_keeps_the_known_half_and_regenerates_the_other_by_seed(run, tmp_path):
    run_dir, tok = run
    reach = _reach(tok)  # 3 for this decoder
    regenerated = np.zeros((GRID, GRID), dtype=bool)
    regenerated[:, : GRID // 2] = True  # --side left: regenerate the left half
    far = _cells(_far_from(regenerated, reach))
    assert far.any()
    new = _cells(regenerated)
    with torch.no_grad():
        given = to_uint8(tok.decode(_input_codes(run_dir, tok)))[0]
    results = {}
    for seed in (1, 2, 1):
        out = tmp_path / f"inpaint_{seed}.png"
        _edit("inpaint", run_dir, out, seed, "--side", "left")
        results.setdefault(seed, []).append(out.read_bytes())
        result = png_tiles(out, S, 3)[2]  # input | input with the regenerated part greyed | result
        assert np.array_equal(result[far], given[far]), f"seed {seed}: the known half changed"
    assert results[1][0] == results[1][1]  # the same seed, the same PNG
    one, two = (png_tiles(tmp_path / f"inpaint_{s}.png", S, 3)[2] for s in (1, 2))
    assert not np.array_equal(one[new], two[new]), "the regenerated half does not depend on the seed"
    assert not np.array_equal(one[new], given[new]), "the regenerated half is the input's"


def test_outpaint_png_keeps_the_known_block_and_fills_the_new_one_by_seed(run, tmp_path):
    run_dir, tok = run
    reach = _reach(tok)
    amount = GRID // 2
    canvas = np.zeros((GRID, GRID + amount), dtype=bool)
    canvas[:, GRID:] = True  # --side right --amount 6: 6 new token columns right of the image
    far = _cells(_far_from(canvas, reach))
    assert far.any()
    new = _cells(canvas)
    with torch.no_grad():
        given = np.zeros((S, S + amount * DS, 3), dtype=np.uint8)
        given[:, :S] = to_uint8(tok.decode(_input_codes(run_dir, tok)))[0]
    tiles = []
    for seed in (1, 2):
        out = tmp_path / f"outpaint_{seed}.png"
        _edit("outpaint", run_dir, out, seed, "--side", "right", "--amount", str(amount))
        result = png_tiles(out, S, 2, width=S + amount * DS)[1]  # the input on the canvas | result
        assert np.array_equal(result[far], given[far]), f"seed {seed}: the known block changed"
        tiles.append(result)
    assert not np.array_equal(tiles[0][new], tiles[1][new]), "the new block does not depend on the seed"
