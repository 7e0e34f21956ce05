"""bf16 inference: weights cast to bf16, RoPE tables, softmax, guidance mixing and sampling kept in fp32.

Tolerance: bf16 keeps 8 significant bits (relative rounding 2**-9 per operation); through a transformer's
few layers the logits of the official fixtures move by about 1% of their largest magnitude (measured: RAR
0.6%, RandAR 1.0%). The tests allow ``BF16_REL = 3%`` of the fp32 logits' largest magnitude.
"""

from __future__ import annotations

import pytest
import torch
from conftest import GENERATOR_FIXTURES, decode_job, fixture_dir, fixture_geometry
from safetensors.torch import load_file

from anyorder.hub import from_pretrained
from anyorder.nn.orders import permute
from anyorder.nn.schedules import GuidanceSchedule
from anyorder.sampling import GuidanceRows, generate, sampling_config
from anyorder.sampling.decode import decode

BF16_REL = 0.03
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _load(family: str, dtype=None, device: str = "cpu"):
    d = fixture_dir(family)
    return from_pretrained(d, dtype=dtype, device=device).eval(), load_file(str(d / "cases.safetensors"),
                                                                            device=device)


def _close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.dtype == torch.bfloat16
    err = (ours.float() - ref).abs().max().item()
    assert err <= BF16_REL * ref.abs().max().item(), f"bf16 logits off by {err:.4g}"


def test_rope_table_stays_fp32_when_the_model_is_cast():
    model, cases = _load("randar")
    for cast in (lambda m: m.to(torch.bfloat16), lambda m: m.bfloat16(), lambda m: m.half()):
        m = cast(model)
        assert m.freqs_cis.dtype == torch.float32 and m.transformer.final.head.weight.dtype != torch.float32
        torch.testing.assert_close(m.freqs_cis, cases["freqs_cis"], atol=1e-6, rtol=1e-6)
    assert _load("randar", "bf16")[0].freqs_cis.dtype == torch.float32


@torch.no_grad()
@pytest.mark.parametrize("device", DEVICES)
def test_teacher_forced_logits_within_tolerance(device):
    rar, c = _load("rar", "bf16", device)
    gen = permute(c["train_input_ids"], c["train_orders"])
    _close(rar(gen, c["train_condition"], c["train_orders"]), c["train_logits"])
    randar, c = _load("randar", "bf16", device)
    _close(randar.logits(c["train_idx"], c["train_cond"], c["train_orders"]), c["train_logits"])


@torch.no_grad()
@pytest.mark.parametrize("static", [False, True], ids=["eager", "static"])
def test_kv_step_logits_within_tolerance(static):
    model, cases = _load("rar", "bf16")
    ids, cls = cases["train_input_ids"], cases["train_condition"]
    B, T = ids.shape
    both = torch.cat([ids, ids])
    state = model.start_decoding(torch.cat([cls, torch.full_like(cls, model.null_class)]),
                                 model.default_order().expand(2 * B, -1), static=static)
    assert state.table.dtype == torch.bfloat16 and model.transformer.blocks[0].attn.kv_cache.k.dtype == (
        torch.bfloat16)
    steps, new = [], None
    for s in range(T):
        steps.append(model.decode_one_step(state, new, 1)[:, 0])
        new, state.done = both[:, s : s + 1], s + 1
    model.end_decoding()
    _close(torch.stack(steps), cases["kv_step_logits"])


def test_guidance_mixing_is_fp32():
    rows = GuidanceRows(GuidanceSchedule("linear", 4.0, start=1.0))
    logits = torch.randn(4, 3, 7).bfloat16()
    mixed = rows.combine(logits, 1, 4)
    assert mixed.dtype == torch.float32
    c, u = logits.float().chunk(2)
    torch.testing.assert_close(mixed, u + (c - u) * rows.scales(1, 3, 4)[0][0])


@torch.no_grad()
@pytest.mark.parametrize("family", GENERATOR_FIXTURES)
@pytest.mark.parametrize("static", [False, True], ids=["eager", "static"])
def test_bf16_sampling_runs_and_repeats(family, static):
    model, _ = _load(family, "bf16")
    geo = fixture_geometry(family)
    if not static:
        policy = sampling_config(family, {"guidance_scale": 3.0, "top_p": 0.9})
        if "steps" in policy.field_names():
            policy = policy.replace(steps=5)
        a, b = (generate(model, [0, geo["num_classes"] - 1], policy, seed=1) for _ in range(2))
    else:
        orders = model.default_order().expand(2, -1)
        policy = sampling_config(family, {"guidance_scale": 3.0, "top_p": 0.9})
        a, b = (decode(decode_job(model, torch.tensor([0, 1]), orders, policy, torch.Generator().manual_seed(1)),
                       static=True) for _ in range(2))
    assert torch.equal(a, b) and 0 <= int(a.min()) and int(a.max()) < geo["codebook_size"]
