"""One sampling policy per family: which settings apply, the step plan, the guidance schedule."""

from __future__ import annotations

import importlib
import itertools
import math

import pytest
import torch
from conftest import debug_model

from anyorder.models import PRESETS, build_model, family_names, get_family
from anyorder.nn.schedules import parallel_decoding_schedule, parallel_decoding_schedule_from
from anyorder.sampling import (
    RandARSampling,
    RARSampling,
    generate,
    generation_job,
    model_sampling,
    sampling_config,
)

extrapolate_mod = importlib.import_module("anyorder.editing.extrapolate")  # the module, not the function
FAMILY = family_names()
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread beats two contending ones


def tiny(family: str):
    return debug_model(family)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_carries_valid_settings_for_its_family(name: str) -> None:
    """... and a model built from the preset keeps them as what it samples with (saved with the model: the
    contract's round trip)."""
    p = PRESETS[name]
    cfg = sampling_config(p.family, p.sampling)
    assert cfg.family == p.family and cfg.to_dict() == {**type(cfg)().to_dict(), **p.sampling}
    with torch.device("meta"):
        assert build_model(name).sampling_defaults == p.sampling


def test_the_step_plans_are_the_papers() -> None:
    assert RARSampling(guidance_scale=4).plan(16) == [1] * 16  # raster, one token per step
    assert RandARSampling().plan(16) == [1] * 16  # steps 0: one token per step
    assert RandARSampling(steps=6).plan(16) == parallel_decoding_schedule(6, 16)
    assert RandARSampling(steps=88).plan_clamped(10) == [1] * 10  # an edit with fewer tokens than steps
    with pytest.raises(ValueError, match="steps must be"):
        RandARSampling(steps=17).plan(16)


def test_the_guidance_schedules_are_the_papers() -> None:
    rar = RARSampling(guidance_scale=8.0, guidance_power=2.75).guidance()
    for s in (0, 5, 15):
        assert rar(s, 16) == pytest.approx(1 + 7 * (1 - math.cos(math.pi * (s / 16) ** 2.75)) / 2)
    randar = RandARSampling(guidance_scale=4.0, guidance_start=1.0).guidance()
    assert [randar(s, 16) for s in (0, 8, 16)] == [1.0, 2.5, 4.0]
    assert not RandARSampling(guidance_scale=1.0).guidance().enabled


@pytest.mark.parametrize("family", FAMILY)
def test_a_config_and_its_keywords_sample_the_same(family: str) -> None:
    model = tiny(family)
    cfg = sampling_config(family, {"guidance_scale": 2.0, "temperature": 0.9, "top_k": 5})
    a = generate(model, [0, 1, 2], cfg, seed=3)
    b = generate(model, [0, 1, 2], seed=3, **cfg.to_dict())
    c = generate(model, [0, 1, 2], seed=3, guidance_scale=2.0, temperature=0.2, top_k=5)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("family", FAMILY)
def test_a_model_samples_by_default_with_what_it_was_made_with(family: str) -> None:
    model = tiny(family)
    policy = get_family(family).policy_class
    assert model_sampling(model) == policy()
    model.sampling_defaults = {"guidance_scale": 3.0, "temperature": 0.5}
    assert model_sampling(model) == policy(guidance_scale=3.0, temperature=0.5)
    assert model_sampling(model, temperature=0.7, top_k=None) == policy(guidance_scale=3.0, temperature=0.7)


def _official_extrapolation_counts(steps: int, total: int, done: int) -> list[int]:
    """The official loop's bookkeeping (resolution_extrapolation.py), written out independently: the query
    pointer starts after the low-res tokens with one query; after each step the next count is the cosine
    target over the whole canvas minus what is decoded, clamped to [1, remaining]."""
    counts, idx, n, step = [], done, 1, 0
    while idx < total:
        counts.append(min(n, total - idx))
        step += 1
        target = min(int((1.0 - math.cos(math.pi / 2.0 * (step + 1) / steps)) * total + 1), total)
        nxt = max(target - idx - n, 1)
        nxt = min(nxt, total - idx - n) if total - idx - n > 0 else nxt
        idx, n = idx + n, nxt
    return counts


@pytest.mark.parametrize("steps, total, done", [(10, 196, 49), (88, 1024, 256), (20, 64, 16), (6, 16, 0)])
def test_extrapolation_schedule_runs_over_the_whole_canvas_from_the_placed_tokens(steps, total, done) -> None:
    plan = parallel_decoding_schedule_from(steps, total, done)
    assert sum(plan) == total - done and min(plan) >= 1
    assert plan == _official_extrapolation_counts(steps, total, done)
    # while the curve is still below the low-resolution tokens already placed, each step decodes one token
    below = sum(1 for s in range(1, steps) if int((1 - math.cos(math.pi / 2 * (s + 1) / steps)) * total + 1)
                <= done + s)
    assert plan[: max(1, below)] == [1] * max(1, below)
    if done == 0:  # nothing placed: the ordinary parallel-decoding schedule
        assert plan == parallel_decoding_schedule(steps, total)


def test_extrapolate_decodes_on_that_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny("randar")  # RandAR's zero-shot resolution extrapolation
    seen = {}
    real = extrapolate_mod.decode

    def spy(job, *args, **kwargs):
        seen.setdefault("plans", []).append(list(job.plan))
        return real(job, *args, **kwargs)

    monkeypatch.setattr(extrapolate_mod, "decode", spy)
    extrapolate_mod.extrapolate(model, [1], factor=2, steps=6, low_res_steps=4, seed=0)
    T, P = 4 * model.seq_len, model.seq_len
    assert seen["plans"][-1] == parallel_decoding_schedule_from(6, T, P)


@pytest.mark.parametrize("family", FAMILY)
def test_generate_streams_every_step_in_generation_order(family: str) -> None:
    model = tiny(family)
    policy = sampling_config(family)
    if "steps" in policy.field_names():  # several tokens per step
        policy = policy.replace(steps=5)
    plan = generation_job(model, [0, 1], policy).plan
    seen: list[tuple[int, torch.Tensor]] = []
    codes, orders = generate(model, [0, 1], policy, seed=0, return_orders=True,
                             step_callback=lambda done, tokens: seen.append((done, tokens[:, :done].clone())))
    assert [d for d, _ in seen] == list(itertools.accumulate(plan))
    final = seen[-1][1]  # the generation-order tokens, put back in raster order, are the result
    assert torch.equal(final.gather(1, orders.argsort(1)), codes.reshape(2, -1))
