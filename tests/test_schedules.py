"""Annealing, learning-rate, guidance and parallel-decoding schedules."""

from __future__ import annotations

import math

import pytest
import torch

from anyorder.nn.schedules import (
    GuidanceSchedule,
    linear_guidance,
    parallel_decoding_schedule,
    pow_cosine_guidance,
)
from anyorder.training import fitting
from anyorder.training.config import TrainConfig
from anyorder.training.loop import permutation_ratio
from anyorder.training.schedules import anneal_ratio, lr_at


def test_r_is_1_before_start_and_0_after_end():
    assert anneal_ratio(0, 100, 300) == 1.0
    assert anneal_ratio(99, 100, 300) == 1.0
    assert anneal_ratio(100, 100, 300) == 1.0
    assert anneal_ratio(200, 100, 300) == pytest.approx(0.5)
    assert anneal_ratio(300, 100, 300) == 0.0
    assert anneal_ratio(10_000, 100, 300) == 0.0


def test_r_is_linear_between_start_and_end():
    vals = [anneal_ratio(s, 100, 300) for s in range(100, 301, 20)]
    diffs = [a - b for a, b in zip(vals, vals[1:])]
    assert all(d == pytest.approx(0.1) for d in diffs)


def test_randar_style_training_never_anneals():
    cfg = TrainConfig(anneal_start=0, anneal_end=-1)
    assert {permutation_ratio(s, cfg, "rar") for s in (0, 10, 10**6)} == {1.0}


def test_lr_warms_up_then_decays_to_end_lr():
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 10, 100, end_lr=0.1) == pytest.approx(1.0)
    assert lr_at(100, 1.0, 10, 100, end_lr=0.1) == pytest.approx(0.1)
    assert lr_at(55, 1.0, 10, 100, end_lr=0.0) == pytest.approx(0.5)


def test_pow_cosine_guidance():
    assert pow_cosine_guidance(0, 256, 8.0, 2.75) == pytest.approx(1.0)
    assert pow_cosine_guidance(256, 256, 8.0, 2.75) == pytest.approx(8.0)
    # power 0 is the constant full scale, also at step 0 (0 ** 0 == 1)
    assert {pow_cosine_guidance(s, 16, 4.0, 0.0) for s in range(16)} == {4.0}
    mid = pow_cosine_guidance(128, 256, 3.0, 1.0)
    assert mid == pytest.approx(1 + 2 * (1 - math.cos(math.pi / 2)) / 2)


def test_linear_guidance_and_enabling():
    assert linear_guidance(0, 100, 1.0, 4.0) == 1.0
    assert linear_guidance(50, 100, 1.0, 4.0) == 2.5
    assert not GuidanceSchedule("linear", 1.0).enabled
    assert GuidanceSchedule("linear", 4.0).enabled
    assert not GuidanceSchedule("pow_cosine", 0.0).enabled
    assert GuidanceSchedule("pow_cosine", 2.0).enabled
    with pytest.raises(ValueError, match="kind"):
        GuidanceSchedule("cosine", 2.0)


def test_per_token_scales_follow_each_tokens_own_index():
    """A step of 3 tokens after 4 of 10: per token (LPD) the scales at indices 4, 5, 6; otherwise all at 4.
    Linear from 1 to 3 over 10 tokens is 1 + 2 j / 10."""
    per_token = GuidanceSchedule("linear", 3.0, start=1.0, per_token=True)
    assert per_token.scales(4, 3, 10) == pytest.approx([1.8, 2.0, 2.2])
    assert GuidanceSchedule("linear", 3.0, start=1.0).scales(4, 3, 10) == pytest.approx([1.8, 1.8, 1.8])


@pytest.mark.parametrize("steps,total", [(1, 1), (1, 10), (10, 10), (88, 256), (6, 16), (20, 64), (17, 49), (3, 49)])
def test_parallel_schedule_is_positive_and_sums_to_total(steps, total):
    sched = parallel_decoding_schedule(steps, total)
    assert len(sched) == steps and sum(sched) == total and min(sched) >= 1
    assert sched[0] == (1 if steps > 1 else total)


def test_one_token_per_step_when_steps_equal_tokens():
    assert parallel_decoding_schedule(16, 16) == [1] * 16


def test_parallel_schedule_rejects_bad_steps():
    with pytest.raises(ValueError, match="steps"):
        parallel_decoding_schedule(0, 16)
    with pytest.raises(ValueError, match="steps"):
        parallel_decoding_schedule(17, 16)


def test_the_helper_networks_use_the_same_cosine_schedule(monkeypatch):
    """One cosine schedule: the demo's small fitting loop asks lr_at (no warm-up, down to 5% of lr) every step."""
    seen = []

    def spy(step, base_lr, warmup, total, end_lr=0.0):
        seen.append((step, base_lr, warmup, total, end_lr))
        return lr_at(step, base_lr, warmup, total, end_lr)

    monkeypatch.setattr(fitting, "lr_at", spy)
    lin = torch.nn.Linear(2, 1)
    lrs = []

    def step_loss(idx):
        return lin(torch.ones(len(idx), 2)).square().mean(), {}

    orig_step = torch.optim.Adam.step

    def record(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return orig_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", record)
    gen = torch.Generator().manual_seed(0)
    fitting.fit(lin, step_loss, 4, 5, 2, 0.5, gen, torch.device("cpu"), "t", progress=False)
    assert [s[0] for s in seen] == list(range(5)) and {s[1:] for s in seen} == {(0.5, 0, 5, 0.5 * 0.05)}
    assert lrs == [lr_at(s, 0.5, 0, 5, 0.5 * 0.05) for s in range(5)]
    assert lrs[0] == pytest.approx(0.5)
