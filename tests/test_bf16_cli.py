"""``anyorder sample --dtype bf16`` against fp32, on the official fixtures (RAR + its MaskGIT-VQGAN tokenizer).

* The logits of the model the CLI loads (``from_pretrained(run, dtype="bf16")``) are within ``BF16_REL`` = 3% of
  the largest magnitude of the official fp32 logits (bf16 rounds each operation to 8 significant bits,
  2**-9 relative; through the fixture's layers that adds up to about 1%; see ``test_bf16.py``).
* Greedy (``--top-k 1``) images, with each guidance setting the fixture records: the fp32 PNG is the decoding of
  the official greedy ids; the bf16 PNG is the decoding of bf16 greedy ids (read back by matching pixels, see
  ``decoded_codes.py``), which must
  - take fp32's choice at every step where it is clear: where the fp32 model, fed the bf16 run's own earlier
    tokens, prefers its best token over the runner-up by more than twice the bf16 error bound — ``BF16_REL``
    of the largest logit magnitude, times ``|s| + |s - 1|`` for guidance ``u + s (c - u)`` — no rounding can
    change the argmax; elsewhere a near tie may go either way;
  - agree with the official fp32 ids on at least ``MIN_AGREE`` = 75% of the tokens. Greedy decoding is
    autoregressive, so one near tie that flips changes the prefix of every later step: agreement is not per
    token independent (measured 88.5% on these tiny random-weight models, whose top logits are close).
    Below 75% means more than a near tie went astray; a broken bf16 path agrees on ~1/V.
  - differ from fp32 somewhere (the bf16 weights were used).
  Measured over the three settings (12 images, 192 tokens): 170 agree, 22 differ, 85 steps have a clear choice.
"""

from __future__ import annotations

import pytest
import torch
from conftest import fixture_dir, fixture_geometry
from decoded_codes import max_level_diff, png_tiles, to_uint8
from safetensors.torch import load_file

from anyorder.cli.main import main
from anyorder.hub import from_pretrained
from anyorder.nn.orders import permute
from anyorder.sampling import generate
from anyorder.tokenizers.official import load_official_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

BF16_REL = 0.03
MIN_AGREE = 0.75


def _greedy_png(tmp_path, classes, scale: float, power: float, dtype: str) -> str:
    out = tmp_path / f"{dtype}_{scale}_{power}.png"
    tok = fixture_dir("maskgit_vqgan")
    argv = ["sample", "--model", str(fixture_dir("rar")), "--tokenizer", str(tok / "vqgan_checkpoint.bin"),
            "--classes", *map(str, classes.tolist()), "--top-k", "1", "--guidance-scale", str(scale),
            "--guidance-power", str(power), "--dtype", dtype, "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    return str(out)


@torch.no_grad()
def test_bf16_logits_of_the_cli_model_are_within_tolerance_of_the_official_fp32_logits():
    model = from_pretrained(fixture_dir("rar"), dtype="bf16").eval()  # what `sample --dtype bf16` loads
    assert model.transformer.final.head.weight.dtype == torch.bfloat16
    c = load_file(str(fixture_dir("rar") / "cases.safetensors"))
    ours = model(permute(c["train_input_ids"], c["train_orders"]), c["train_condition"], c["train_orders"])
    assert ours.dtype == torch.bfloat16
    err = (ours.float() - c["train_logits"]).abs().max().item()
    assert err <= BF16_REL * c["train_logits"].abs().max().item(), f"bf16 logits off by {err:.4g}"


@torch.no_grad()
def test_bf16_greedy_ids_from_the_cli_agree_with_fp32(tmp_path):
    geo, ds = fixture_geometry("rar"), fixture_geometry("maskgit_vqgan")["downsample"]
    side, T = geo["side"], geo["seq_len"]
    c = load_file(str(fixture_dir("rar") / "cases.safetensors"))
    d = fixture_dir("maskgit_vqgan")
    tok = load_official_tokenizer(d / "vqgan_checkpoint.bin", d / "vqgan_config.json").eval()
    fp32 = from_pretrained(fixture_dir("rar")).eval()
    bf16 = from_pretrained(fixture_dir("rar"), dtype="bf16").eval()
    settings = {"nocfg": (1.0, 0.0), "cfg4_const": (4.0, 0.0), "cfg8_pow2.75": (8.0, 2.75)}
    agree, clear, total, differ = 0, 0, 0, 0
    for name, (scale, power) in settings.items():
        classes, official = c[f"greedy_{name}_condition"], c[f"greedy_{name}_ids"]  # [B], [B, T] raster
        B = len(classes)
        # fp32: the PNG is the decoding of the official greedy ids
        tiles = png_tiles(_greedy_png(tmp_path, classes, scale, power, "fp32"), side * ds, B)
        assert max_level_diff(tiles, to_uint8(tok.decode(official.view(B, side, side)))) <= 1, name
        # bf16: read its ids back (the library's bf16 greedy ids, checked against the PNG's pixels)
        tiles = png_tiles(_greedy_png(tmp_path, classes, scale, power, "bf16"), side * ds, B)
        ids = generate(bf16, classes, guidance_scale=scale, guidance_power=power, top_k=1, seed=0)
        assert max_level_diff(tiles, to_uint8(tok.decode(ids))) <= 1, f"{name}: the bf16 PNG is not these ids"
        ids = ids.flatten(1)
        agree += int((ids == official).sum())
        differ += int((ids != official).sum())
        # fp32 guided logits on the bf16 run's own prefix; s per step as the fixture's schedule
        cond = fp32.logits(ids.view(B, side, side), classes)
        uncond = fp32.logits(ids.view(B, side, side), torch.full_like(classes, fp32.null_class))
        s = (c["cfg_schedule_g8_p2.75"] if name == "cfg8_pow2.75" else torch.full((T,), scale))[None, :, None]
        guided = uncond + s * (cond - uncond)
        top2 = guided.topk(2, dim=-1).values
        largest = torch.maximum(cond.abs().amax(-1), uncond.abs().amax(-1))
        bound = BF16_REL * largest * (s.abs() + (s - 1).abs())[..., 0]
        is_clear = top2[..., 0] - top2[..., 1] > 2 * bound
        assert torch.equal(ids[is_clear], guided.argmax(-1)[is_clear]), f"{name}: bf16 lost a clear choice"
        clear += int(is_clear.sum())
        total += ids.numel()
    assert agree >= MIN_AGREE * total, f"bf16 greedy ids agree with fp32 on {agree} of {total}"
    assert differ > 0, "bf16 and fp32 greedy ids are identical: was --dtype bf16 applied?"
    assert clear >= total // 4, f"only {clear} of {total} steps have a clear choice: the check above is weak"
