"""RandAR reproduces the official implementation number for number (../shared/fixtures/randar)."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import fixture_dir, load_json
from safetensors.torch import load_file

from anyorder.hub import load_official
from anyorder.nn.schedules import parallel_decoding_schedule
from anyorder.sampling.generate import generate

ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def randar():
    d = fixture_dir("randar")
    model = load_official(d / "checkpoint.safetensors", d / "config.json").eval()
    return model, load_file(str(d / "cases.safetensors")), load_json(d / "config.json")


def test_rope_table(randar):
    model, cases, _ = randar
    torch.testing.assert_close(model.freqs_cis, cases["freqs_cis"], atol=1e-6, rtol=1e-6)
    assert model.freqs_cis[0].abs().sum() == 0  # the class token's row is zeros


def test_position_instruction_tokens(randar):
    model, cases, _ = randar
    with torch.no_grad():
        instr = model.instruction_tokens(cases["train_orders"])
    torch.testing.assert_close(instr, cases["instruction_tokens"], atol=ATOL, rtol=RTOL)


def test_training_logits_and_loss(randar):
    model, cases, _ = randar
    with torch.no_grad():
        logits = model.logits(cases["train_idx"], cases["train_cond"], cases["train_orders"])
        loss = model.training_loss(cases["train_idx"], cases["train_cond"], cases["train_orders"])
    torch.testing.assert_close(logits, cases["train_logits"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(loss.reshape(1), cases["train_loss"], atol=1e-5, rtol=1e-5)


def test_parallel_decoding_schedules(randar):
    _, cases, _ = randar
    keys = [k for k in cases if re.fullmatch(r"schedule_\d+_\d+", k)]
    assert keys
    for key in keys:
        steps, total = (int(x) for x in key.split("_")[1:])
        assert parallel_decoding_schedule(steps, total) == cases[key].tolist(), key


def test_greedy_generations_id_for_id(randar):
    model, cases, cfg = randar
    for name, run in cfg["runs"].items():
        start, end = run["cfg_scales"]
        out = generate(model, cases["greedy_cond"], orders=cases["greedy_orders"], steps=run["steps"],
                             guidance_start=start, guidance_scale=end, top_k=1)
        assert torch.equal(out.flatten(1), cases[f"greedy_{name}_ids"]), name
