"""RAR reproduces the official implementation number for number (../shared/fixtures/rar)."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import fixture_dir, load_json
from safetensors.torch import load_file

from anyorder.hub import load_official
from anyorder.nn.orders import permute
from anyorder.nn.schedules import pow_cosine_guidance
from anyorder.sampling.generate import generate

ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def rar():
    d = fixture_dir("rar")
    model = load_official(d / "checkpoint.bin", d / "config.json").eval()
    return model, load_file(str(d / "cases.safetensors")), load_json(d / "config.json")


def test_condition_token_layout(rar):
    model, cases, cfg = rar
    assert torch.equal(model.condition_tokens(cases["train_condition"]), cases["train_condition_tokens"])
    none = model.condition_tokens(torch.tensor([model.null_class]))
    assert torch.equal(none, cases["none_condition_token"])


def test_training_path_logits_and_labels(rar):
    model, cases, _ = rar
    orders = cases["train_orders"]
    gen = permute(cases["train_input_ids"], orders)
    assert torch.equal(gen, cases["train_labels"])
    with torch.no_grad():
        logits = model(gen, cases["train_condition"], orders)
    torch.testing.assert_close(logits, cases["train_logits"], atol=ATOL, rtol=RTOL)


def test_sampling_path_prefix_logits(rar):
    model, cases, _ = rar
    keys = [k for k in cases if re.fullmatch(r"sample_prefix\d+_logits", k)]
    assert keys
    ids = cases["train_input_ids"]
    raster = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
    for key in keys:
        L = int(re.findall(r"\d+", key)[0])
        with torch.no_grad():
            logits = model(ids[:, :L], cases["train_condition"], raster)
        torch.testing.assert_close(logits, cases[key], atol=ATOL, rtol=RTOL, msg=key)


def test_kv_cached_step_logits_equal_official(rar):
    model, cases, _ = rar
    ids, cls = cases["train_input_ids"], cases["train_condition"]
    B, T = ids.shape
    classes = torch.cat([cls, torch.full_like(cls, model.null_class)])
    both = torch.cat([ids, ids])
    state = model.start_decoding(classes, model.default_order().expand(2 * B, -1))
    steps, new = [], None
    with torch.no_grad():
        for s in range(T):
            steps.append(model.decode_one_step(state, new, 1)[:, 0])
            new, state.done = both[:, s : s + 1], s + 1
    model.end_decoding()
    torch.testing.assert_close(torch.stack(steps), cases["kv_step_logits"], atol=ATOL, rtol=RTOL)


def test_guidance_schedule_equals_fixture(rar):
    model, cases, _ = rar
    key = next(k for k in cases if k.startswith("cfg_schedule_"))
    g, p = (float(x) for x in re.fullmatch(r"cfg_schedule_g([\d.]+)_p([\d.]+)", key).groups())
    T = cases[key].numel()
    ours = torch.tensor([pow_cosine_guidance(s, T, g, p) for s in range(T)])
    torch.testing.assert_close(ours, cases[key], atol=1e-6, rtol=1e-6)


def test_greedy_generations_id_for_id(rar):
    model, cases, cfg = rar
    for name, (scale, power) in cfg["greedy_settings"].items():
        cond = cases[f"greedy_{name}_condition"]
        out = generate(model, cond, guidance_scale=scale, guidance_power=power,
                             temperature=cfg.get("greedy_temperature", 1e-6))
        assert torch.equal(out.flatten(1), cases[f"greedy_{name}_ids"]), name
