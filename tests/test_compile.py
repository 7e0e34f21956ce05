"""The static, compiled decode step (gpt-fast shape) reproduces the official fixtures, and a parallel-decoding
generation compiles to a few bucketed shapes instead of one graph per step.

The compiler backend is ``$ANYORDER_COMPILE_BACKEND`` (default ``eager``: dynamo's whole-step graph capture —
a graph break or host sync shows up as extra frames — without inductor's C++ build, which takes minutes on a
shared CPU; ``aot_eager`` adds the functionalised cache writes); ``benchmarks/device_check.sh`` runs this
file with ``inductor`` on the GPU.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch._dynamo
from conftest import GENERATOR_FIXTURES, decode_job, fixture_dir, load_json
from safetensors.torch import load_file
from torch._dynamo.testing import CompileCounter

from anyorder.hub import from_pretrained
from anyorder.sampling.decode import decode
from anyorder.sampling.policy import sampling_config

BACKEND = os.environ.get("ANYORDER_COMPILE_BACKEND", "eager")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ATOL, RTOL = 1e-5, 1e-4


# ---- expected graph counts, derived here (not with the project's bucket / window / schedule helpers) ----
def _pow2_at_least(n: int) -> int:
    """A static step's padded size of ``n`` rows: the smallest power of two >= n, by counting up."""
    p = 1
    while p < n:
        p *= 2
    return p


def _window(stop: int, max_len: int, levels: int = 4) -> int:
    """The attention window a step reading slots ``< stop`` uses: the smallest of the ``levels`` sizes
    ``max_len``, ``ceil(max_len / 2)``, ... that holds ``stop`` slots."""
    sizes = [max_len]
    while len(sizes) < levels:
        sizes.append(-(-sizes[-1] // 2))
    return min(size for size in sizes if size >= stop)


def _official_randar_steps(steps: int, T: int) -> list[tuple[int, int]]:
    """``(tokens decoded before, tokens decoded)`` of each step of RandAR's official parallel decoding, its
    loop re-run (``randar_gpt.RandARTransformer.generate`` with
    ``utils.calculate_num_query_tokens_for_parallel_decoding``; the first step decodes one token)."""
    out, done, n, step = [], 0, 1, 0
    while done <= T - n and done <= T - 1:
        out.append((done, n))
        step += 1
        target = min(int((1 - math.cos(math.pi / 2 * (step + 1) / steps)) * T + 1), T)
        n, done = min(max(target - done - n, 1), T - done - n), done + n
    return out


def _randar_step_shapes(steps: int, T: int) -> set[tuple[int, int, int]]:
    """The distinct (fed rows, queries, window) of a RandAR generation, from the official loop's layout: slot
    0 holds the class, then each token's position instruction and the token itself, in generation order;
    step 0 feeds the class and asks its queries; a later step feeds the last step's ``n`` tokens with the
    ``n - 1`` instructions between them (its first instruction is already in place) and asks its ``m``
    queries at slots ``2 * done + 1 ..``, so it reads ``2 * done + m + 1`` slots of the ``2T + 2``."""
    plan, shapes = _official_randar_steps(steps, T), set()
    for k, (done, m) in enumerate(plan):
        fed = 1 if k == 0 else 2 * plan[k - 1][1] - 1
        shapes.add((_pow2_at_least(fed), _pow2_at_least(m), _window(2 * done + m + 1, 2 * T + 2)))
    return shapes


def _load(family: str, device: str):
    d = fixture_dir(family)
    model = from_pretrained(d, device=device).eval()
    return model, load_file(str(d / "cases.safetensors"), device=device), load_json(d / "config.json")


def _rar_greedy_runs(cases, cfg):
    """The RAR fixture's greedy runs: (guidance scale, power) per run, in scan order."""
    for name, (scale, power) in cfg["greedy_settings"].items():
        policy = sampling_config("rar", {"guidance_scale": scale, "guidance_power": power,
                                         "temperature": cfg.get("greedy_temperature", 1e-6)})
        yield name, cases[f"greedy_{name}_condition"], None, policy, None


def _randar_greedy_runs(cases, cfg):
    """The RandAR fixture's greedy runs: steps and the linear guidance's (start, end) per run, in given orders."""
    for name, run in cfg["runs"].items():
        start, end = run["cfg_scales"]
        policy = sampling_config("randar", {"steps": run["steps"], "guidance_start": start,
                                            "guidance_scale": end, "top_k": 1})
        yield name, cases["greedy_cond"], cases["greedy_orders"], policy, None


def _lpd_greedy_runs(cases, cfg):
    """The LPD fixture's greedy runs: a group plan, guidance scale and schedule per run, in given orders."""
    for name, run in cfg["runs"].items():
        plan = cfg["group_size_plans"][run["plan"]]
        policy = sampling_config("lpd", {"steps": len(plan), "guidance_scale": run["cfg"],
                                         "guidance_schedule": run["cfg_schedule"], "top_k": 1})
        yield name, cases["greedy_labels"], cases["greedy_orders"], policy, plan


# one reader per generator fixture: (name, classes, orders or None, policy, plan or None: the policy's)
GREEDY_RUNS = {"rar": _rar_greedy_runs, "randar": _randar_greedy_runs, "lpd": _lpd_greedy_runs}


def _greedy_runs(family: str, cases, cfg):
    """(name, classes, orders or None, policy) of every greedy run the fixture holds."""
    if family not in GREEDY_RUNS:
        pytest.fail(f"no reader of the {family} fixture's greedy runs: add one to GREEDY_RUNS")
    return GREEDY_RUNS[family](cases, cfg)


@torch.no_grad()
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", GENERATOR_FIXTURES)
@pytest.mark.parametrize("compile", [False, True], ids=["static-eager", "compiled"])
def test_greedy_generations_id_for_id_with_the_static_step(family, compile, device):
    model, cases, cfg = _load(family, device)
    for name, classes, orders, policy, plan in _greedy_runs(family, cases, cfg):
        B = classes.shape[0]
        orders = model.default_order().expand(B, -1) if orders is None else orders
        gen = decode(decode_job(model, classes, orders, policy, plan=plan), static=True,
                     compile=BACKEND if compile else False)
        ids = torch.empty_like(gen).scatter_(1, orders, gen)  # back to raster order
        assert torch.equal(ids, cases[f"greedy_{name}_ids"]), name


@torch.no_grad()
@pytest.mark.parametrize("device", DEVICES)
def test_static_kv_step_logits_equal_official(device):
    """RAR's KV-cached step logits (fixture ``kv_step_logits``) from the whole-cache, masked static step."""
    model, cases, _ = _load("rar", device)
    ids, cls = cases["train_input_ids"], cases["train_condition"]
    B, T = ids.shape
    classes = torch.cat([cls, torch.full_like(cls, model.null_class)])
    both = torch.cat([ids, ids])
    state = model.start_decoding(classes, model.default_order().expand(2 * B, -1), static=True)
    steps, new = [], None
    for s in range(T):
        steps.append(model.decode_one_step(state, new, 1)[:, 0])
        new, state.done = both[:, s : s + 1], s + 1
    model.end_decoding()
    torch.testing.assert_close(torch.stack(steps), cases["kv_step_logits"], atol=ATOL, rtol=RTOL)


@torch.no_grad()
@pytest.mark.parametrize("steps", [None, "fixture"])
def test_a_parallel_generation_compiles_once_per_bucket_not_per_step(steps):
    """RandAR's steps feed ``2n - 1`` rows and ask ``m`` queries; both are padded to :func:`bucket` sizes and
    attention reads one of four cache windows, so the graphs compiled are the distinct (fed, queries, window)
    sizes of the plan — and a second generation compiles nothing."""
    model, cases, cfg = _load("randar", "cpu")
    T = model.seq_len
    n_steps = cfg["parallel_steps"] if steps else T
    policy = sampling_config("randar", {"steps": n_steps, "guidance_scale": 2.0})
    plan = policy.plan(T)
    assert plan == [n for _, n in _official_randar_steps(n_steps, T)]
    shapes = _randar_step_shapes(n_steps, T)
    hand = {(16, 6): 5, (16, 16): 4}  # worked by hand: plans [1, 2, 2, 3, 4, 4] and [1] * 16, windows 5/9/17/34
    assert len(shapes) == hand.get((T, n_steps), len(shapes))
    torch._dynamo.reset()
    counter = CompileCounter()
    classes = cases["greedy_cond"]
    orders = model.sampling_orders(classes.shape[0], torch.Generator().manual_seed(1))
    first = decode(decode_job(model, classes, orders, policy, torch.Generator().manual_seed(0)), compile=counter)
    assert counter.frame_count == len(shapes) < len(plan) + (steps is None) * T
    again = decode(decode_job(model, classes, orders, policy, torch.Generator().manual_seed(0)), compile=counter)
    assert counter.frame_count == len(shapes)
    assert torch.equal(first, again)  # seeded: reproducible


@torch.no_grad()
@pytest.mark.parametrize("ahead", [0, 3, 5, 7, None], ids=["per-step", "3-ahead", "5-ahead", "7-ahead", "default"])
def test_a_rar_generation_compiles_one_graph_per_window_however_its_adaln_is_chunked(ahead):
    """RAR's step reads adaLN outputs computed ahead for a few slots (views into a buffer renewed every few
    steps): the graphs are the prefill's and the one-token step's at each attention window its slots reach (at
    most four), and the greedy ids match the fixture."""
    model, cases, cfg = _load("rar", "cpu")
    name, classes, _, policy, _ = next(iter(_greedy_runs("rar", cases, cfg)))
    orders = model.default_order().expand(classes.shape[0], -1)
    if ahead is not None:
        rows = 2 * classes.shape[0] if policy.guidance().enabled else classes.shape[0]
        model.adaln_ahead_bytes = ahead * rows * (6 * model.config.depth + 2) * model.config.dim * 4
    torch._dynamo.reset()
    counter = CompileCounter()
    gen = decode(decode_job(model, classes, orders, policy), compile=counter)
    S = model.seq_len + 2  # slots: [cls, class, x_1 .. x_T]; step j feeds x_(j-1) at slot j + 1: stops 3 .. T + 1
    windows = {_window(stop, S) for stop in range(3, model.seq_len + 2)}
    assert model.seq_len != 16 or windows == {3, 5, 9, 18}  # by hand for the fixture's 16 tokens
    assert counter.frame_count == 1 + len(windows) <= 5
    assert torch.equal(torch.empty_like(gen).scatter_(1, orders, gen), cases[f"greedy_{name}_ids"])


@torch.no_grad()
def test_compiled_sampling_matches_the_static_eager_step_for_a_seed():
    """Temperature sampling (top-k + top-p, exponential race) gives the same ids compiled and uncompiled."""
    model, cases, _ = _load("rar", "cpu")
    classes = cases["greedy_cfg4_const_condition"]
    policy = sampling_config("rar", {"guidance_scale": 3.0, "top_k": 8, "top_p": 0.9})
    orders = model.default_order().expand(classes.shape[0], -1)
    outs = [decode(decode_job(model, classes, orders, policy, torch.Generator().manual_seed(3)), static=True,
                   compile=c) for c in (False, BACKEND)]
    assert torch.equal(*outs)
