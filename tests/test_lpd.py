"""LPD against the official code's outputs (``../shared/fixtures/lpd``, mit-han-lab/lpd): teacher-forced logits for
two group plans, the training and inference masks, greedy generations with their per-step logits (with and
without guidance, linear and constant), the locality-aware orders with the official random draws replayed, the
group-size rule, and loading release files. Every shape comes from the fixture's ``config.json``."""

from __future__ import annotations

import argparse
import math
import random
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import fixture_dir, fixture_geometry, load_json
from safetensors.torch import load_file

from anyorder.hub import from_pretrained, load_official
from anyorder.io import CheckpointError
from anyorder.models import build_model, get_family
from anyorder.models.lpd.model import group_causal_mask, group_ids
from anyorder.models.lpd.plans import group_sizes, training_plans
from anyorder.nn.locality import locality_orders
from anyorder.nn.orders import is_permutation, permute
from anyorder.sampling import DecodeJob, GuidanceRows, decode, generate, sampling_config

ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def fx():
    d = fixture_dir("lpd")
    return from_pretrained(d).eval(), load_file(str(d / "cases.safetensors")), load_json(d / "config.json")


def _policy(run: dict, **more) -> object:
    return sampling_config("lpd", {"guidance_scale": run["cfg"], "guidance_schedule": run["cfg_schedule"],
                                   "top_k": 1, **more})


# ---- teacher forcing and masks --------------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("plan", ["seq", "par"])
def test_teacher_forced_logits_and_loss_equal_the_official_forward(fx, plan):
    model, cases, cfg = fx
    sizes = cfg["group_size_plans"][plan]
    logits = model.logits(cases["train_ids"], cases["train_labels"], cases["train_orders"], groups=sizes)
    torch.testing.assert_close(logits, cases[f"train_{plan}_logits"], atol=ATOL, rtol=RTOL)
    labels = permute(cases["train_ids"], cases["train_orders"])
    loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    torch.testing.assert_close(loss, cases[f"train_{plan}_loss"][0], atol=ATOL, rtol=RTOL)
    assert torch.equal(cases["train_targets"], labels)


@pytest.mark.parametrize("plan", ["seq", "par"])
def test_the_queries_of_one_group_see_each_other_and_nothing_after_them(fx, plan):
    """Our training mask over ``[class, T tokens, T queries]`` is the official one over ``[class, the tokens of
    all groups but the last, T queries]`` once the last group's tokens (which no query sees) are taken out."""
    _, cases, cfg = fx
    sizes = cfg["group_size_plans"][plan]
    T = sum(sizes)
    ours = group_causal_mask(group_ids(sizes))
    keep = [i for i in range(2 * T + 1) if not (T + 1 - sizes[-1] <= i <= T)]  # drop the last group's tokens
    assert torch.equal(ours[keep][:, keep], cases[f"plan_{plan}_train_mask"].bool())
    last = range(T + 1 - sizes[-1], T + 1)
    assert not ours[T + 1 :, last].any()  # no query sees a token of the last group


@torch.no_grad()
@pytest.mark.parametrize("plan", ["seq", "par"])
def test_the_cached_steps_attend_as_the_official_block_causal_mask(fx, plan):
    """Step i feeds the tokens of group i - 1 and the queries of group i; each fed row attends to the slots the
    official inference mask allows (a row of block b sees every slot up to the end of block b)."""
    model, cases, cfg = fx
    sizes = cfg["group_size_plans"][plan]
    T = sum(sizes)
    seen = torch.zeros(T + 1, T + 1, dtype=torch.bool)
    orders = cases["train_orders"][:1]
    state = model.start_decoding(cases["train_labels"][:1], orders)
    gen, new, done = permute(cases["train_ids"][:1], orders), None, 0
    calls = []
    hook = model.transformer.blocks[0].attn.register_forward_hook(
        lambda mod, args, out: calls.append(args[3]))  # the step's CacheStep
    try:
        for n in sizes:
            model.decode_one_step(state, new, n)
            new, done = gen[:, done : done + n], done + n
            state.done = done
    finally:
        hook.remove()
        model.end_decoding()
    for step in calls:
        for pos, lim in zip(step.input_pos.tolist(), step.visible.tolist()):
            seen[pos, :lim] = True
    official = cases[f"plan_{plan}_infer_attn_mask"] == 0
    rows = torch.arange(T + 1 - sizes[-1])  # the last group's tokens are never fed back
    assert torch.equal(seen[rows], official[rows])


# ---- generation ------------------------------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("static", [False, True], ids=["eager", "static"])
def test_greedy_generations_id_for_id(fx, static):
    model, cases, cfg = fx
    for name, run in cfg["runs"].items():
        job = DecodeJob(model, cases["greedy_labels"], cases["greedy_orders"], cfg["group_size_plans"][run["plan"]],
                        _policy(run), None, tuple(model.grid))
        ids = job.codes(decode(job, static=static)).flatten(1)
        assert torch.equal(ids, cases[f"greedy_{name}_ids"]), name


@torch.no_grad()
def test_every_steps_head_and_guided_logits_equal_the_official(fx):
    """The per-step head logits (conditional and null-class rows) and the logits handed to sampling (guided per
    token, linear or constant), fed the official greedy tokens."""
    model, cases, cfg = fx
    for name, run in cfg["runs"].items():
        sizes, labels, orders = cfg["group_size_plans"][run["plan"]], cases["greedy_labels"], cases["greedy_orders"]
        rows = GuidanceRows(_policy(run).guidance())
        R, T = len(rows), model.seq_len
        state = model.start_decoding(rows.classes(labels, model.null_class), orders.repeat(R, 1))
        gen = permute(cases[f"greedy_{name}_ids"], orders)
        head, guided, new, done = [], [], None, 0
        for n in sizes:
            out = model.decode_one_step(state, new, n)
            head.append(out)
            guided.append(rows.combine(out, done, T))
            new, done = gen[:, done : done + n].repeat(R, 1), done + n
            state.done = done
        model.end_decoding()
        torch.testing.assert_close(torch.cat(head, 1), cases[f"greedy_{name}_head_logits"], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(torch.cat(guided, 1), cases[f"greedy_{name}_guided_logits"], atol=ATOL,
                                   rtol=RTOL)


def test_linear_guidance_grows_per_token_inside_a_step():
    g = sampling_config("lpd", {"guidance_scale": 4.0}).guidance()
    assert g.enabled and g.scales(3, 4, 16) == [1 + 3 * j / 16 for j in (3, 4, 5, 6)]
    assert sampling_config("lpd", {"guidance_scale": 0.5}).guidance().enabled  # the official guides at any cfg != 1
    c = sampling_config("lpd", {"guidance_scale": 3.0, "guidance_schedule": "constant"}).guidance()
    assert c.scales(0, 3, 16) == [3.0] * 3 and not sampling_config("lpd", {}).guidance().enabled


# ---- locality-aware orders -------------------------------------------------------------------------------
class OfficialDraws:
    """The official ``lpd_order_schedule``'s random calls, replayed: ``random.seed(s)`` and
    ``numpy.random.seed(s)``, then ``random.choice`` over the row-major cells for the first, one
    ``random.shuffle`` of the row-major undecoded cells per later step, ``numpy.random.randint`` to start
    farthest-point sampling."""

    def __init__(self, seed: int) -> None:
        self.py, self.np = random.Random(seed), np.random.RandomState(seed)

    def first(self, batch, cells):
        return torch.tensor([self.py.choice(range(cells))])

    def ties(self, decoded):
        cand = (~decoded[0]).nonzero().flatten().tolist()
        perm = list(range(len(cand)))
        self.py.shuffle(perm)
        key = torch.zeros(decoded.shape, dtype=torch.float64)
        key[0, [cand[i] for i in perm]] = torch.arange(len(cand), dtype=torch.float64)
        return key

    def start(self, sizes):
        return torch.tensor([self.np.randint(int(sizes[0]))])


def test_locality_orders_are_the_officials_when_its_draws_are_replayed(fx):
    _, cases, cfg = fx
    for name, spec in cfg["lpd_orders"].items():
        plan, g = spec["group_sizes"], spec["grid_size"]
        assert cases[f"lpdorder_{name}_group_sizes"].tolist() == plan
        for rep in spec["repulsion_thresholds"]:
            for seed in spec["seeds"]:
                got = locality_orders((g, g), plan, 1, proximity=spec["proximity_threshold"], repulsion=rep,
                                      draws=OfficialDraws(seed))[0]
                assert torch.equal(got, cases[f"lpdorder_{name}_rep{rep}_seed{seed}"]), (name, rep, seed)


def _steps(order: torch.Tensor, plan: list[int]) -> list[list[int]]:
    cut = np.cumsum([0, *plan])
    return [order[a:b].tolist() for a, b in zip(cut[:-1], cut[1:])]


def test_locality_orders_follow_the_selection_rules():
    """Seeded torch draws, many orders at once: permutations; reproducible; after the first step every cell
    taken whose neighbours made it high-scoring is adjacent to a decoded cell; the proximity picks of one step
    keep the repulsion distance; a step of cells with no decoded neighbour is spread (farthest points)."""
    H = W = 8
    plan = group_sizes(H * W, 8)
    gen = torch.Generator().manual_seed(0)
    orders = locality_orders((H, W), plan, 32, repulsion=1, generator=gen)
    assert is_permutation(orders)
    assert torch.equal(orders, locality_orders((H, W), plan, 32, repulsion=1,
                                               generator=torch.Generator().manual_seed(0)))
    near_decoded = total = 0
    for row in orders:
        decoded: set[int] = set()
        for cells in _steps(row, plan):
            for c in cells:
                touching = any(max(abs(c // W - d // W), abs(c % W - d % W)) == 1 for d in decoded)
                near_decoded += touching
                total += 1
            decoded |= set(cells)
    assert near_decoded / total > 0.8  # a random order would give about half (measured: 0.47)
    # no cell scores high enough: the step is farthest points, each the farthest from the step's cells so far
    spread = locality_orders((H, W), [1, 5, 58], 16, proximity=float("inf"), generator=gen)
    for row in spread:
        step = _steps(row, [1, 5, 58])[1]
        for i in range(1, len(step)):
            rest = [c for c in range(H * W) if c not in row[:1].tolist() + step[:i]]
            far = max(min(math.dist(divmod(c, W), divmod(s, W)) for s in step[:i]) for c in rest)
            assert min(math.dist(divmod(step[i], W), divmod(s, W)) for s in step[:i]) == far


def test_random_orders_put_neighbours_in_one_step_and_locality_orders_do_not():
    """The second reason the LPD paper gives, measured: with random orders the cells of a step are often adjacent;
    locality-aware orders (repulsion 2) keep them apart — on the 16x16 grid at 20 steps, about a third as many
    adjacent pairs (on a 7x7 grid at 8 steps only 0.6x: few cells are left to keep apart)."""
    H = W = 16
    plan = group_sizes(H * W, 20)
    g = torch.Generator().manual_seed(1)

    def adjacent_pairs(order):
        n = 0
        for cells in _steps(order, plan):
            n += sum(max(abs(a // W - b // W), abs(a % W - b % W)) == 1 for i, a in enumerate(cells)
                     for b in cells[i + 1:])
        return n

    rand = torch.stack([torch.randperm(H * W, generator=g) for _ in range(16)])
    loc = locality_orders((H, W), plan, 16, repulsion=2, generator=g)
    assert sum(adjacent_pairs(o) for o in loc) < 0.5 * sum(adjacent_pairs(o) for o in rand)


def test_known_cells_come_first_and_count_as_decoded():
    H = W = 6
    known = torch.zeros(4, H * W, dtype=torch.bool)
    known[:, :12] = True  # the top two rows
    plan = group_sizes(24, 4)
    out = locality_orders((H, W), plan, 4, known=known, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :12], torch.arange(12).expand(4, -1)) and is_permutation(out)
    first = out[:, 12 : 12 + plan[0]]  # the first generated cell touches the known rows
    assert bool((first // W == 2).all())


# ---- group plans ----------------------------------------------------------------------------------------------
def test_the_group_size_rule_gives_the_official_plan_of_the_fixture(fx):
    _, cases, _ = fx
    official = cases["lpdorder_res256_steps20_group_sizes"].tolist()
    assert group_sizes(sum(official), len(official)) == official


@pytest.mark.parametrize("total, steps", [(49, 4), (49, 8), (49, 17), (256, 20), (256, 32), (1024, 48), (16, 5)])
def test_group_plans_start_with_one_grow_and_sum_to_the_tokens(total, steps):
    plan = group_sizes(total, steps)
    assert len(plan) == steps and sum(plan) == total and plan[0] == 1 and plan == sorted(plan)


def test_training_draws_one_plan_per_step_from_the_official_step_counts():
    assert [len(p) for p in training_plans(256)] == [256, 128, 64, 32, 24, 20, 16, 12, 8]
    assert all(sum(p) == 49 for p in training_plans(49)) and len(training_plans(49)) >= 5
    model = build_model({"family": "lpd", **get_family("lpd").debug})
    g = torch.Generator().manual_seed(0)
    drawn = {tuple(model.training_extras(8, g)["groups"].tolist()) for _ in range(200)}
    assert drawn == {tuple(group_ids(p).tolist()) for p in training_plans(model.seq_len)}


# ---- loading ----------------------------------------------------------------------------------------------
def test_a_release_file_with_its_run_args_loads_without_running_code(fx, tmp_path):
    """The official trainer saves ``{'model', 'optimizer', 'epoch', 'scaler', 'args': Namespace}``: the tensors are
    read by torch's weights-only loader (the Namespace allowed as inert), nothing else is unpickled."""
    model, cases, _ = fx
    d = fixture_dir("lpd")
    sd = torch.load(d / "checkpoint.pth", weights_only=True)["model"]
    release = {"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "epoch": 449,
               "scaler": {"scale": 65536.0}, "args": argparse.Namespace(model="lpd_l", img_size=256, blr=1e-4)}
    torch.save(release, tmp_path / "lpd_l_256.pth")
    loaded = load_official(tmp_path / "lpd_l_256.pth", config=d / "config.json")
    with torch.no_grad():
        assert torch.equal(loaded.logits(cases["train_ids"], cases["train_labels"], cases["train_orders"]),
                           model.logits(cases["train_ids"], cases["train_labels"], cases["train_orders"]))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"model": sd, "args": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refused to load"):
        load_official(tmp_path / "evil.pth", config=d / "config.json")


def test_a_256_position_table_is_resized_for_a_larger_grid_as_the_official_loader_does(fx, tmp_path):
    """``interpolate_pos_embed``: the grid rows bicubic (align_corners False), the class row kept."""
    model, _, cfg = fx
    side = fixture_geometry("lpd")["side"]
    sd = torch.load(fixture_dir("lpd") / "checkpoint.pth", weights_only=True)["model"]
    torch.save({"model": sd}, tmp_path / "small.pth")
    big = load_official(tmp_path / "small.pth", config={**cfg, "img_size": 2 * cfg["img_size"]})
    table = sd["pos_embed"]
    grid = table[0, 1:].reshape(side, side, -1).permute(2, 0, 1)[None]
    want = F.interpolate(grid, size=(2 * side, 2 * side), mode="bicubic", align_corners=False)
    assert torch.equal(big.pos_embed[0, 0], table[0, 0])
    torch.testing.assert_close(big.pos_embed[0, 1:], want[0].permute(1, 2, 0).reshape(4 * side * side, -1))
    assert big.seq_len == 4 * side * side and generate(big, [0], seed=0, steps=4).shape == (1, 2 * side, 2 * side)


@pytest.mark.parametrize("key, value, words", [
    ("decoder_depth", -3, "'decoder_depth' must be an integer >= 1, got -3"),
    ("decoder_embed_dim", "64", "'decoder_embed_dim' must be an integer"),
    ("decoder_num_heads", 2.5, "'decoder_num_heads' must be an integer"),
    ("label_drop_prob", 1.5, "'label_drop_prob' must be a number in [0, 1)"),
    ("img_size", "stride + 1", "img_size {v} is not a multiple of vqgan_stride {s}"),
])
def test_an_official_config_with_a_bad_value_names_the_file_key_and_value(fx, tmp_path, key, value, words):
    stride = fx[2]["vqgan_stride"]
    if value == "stride + 1":
        value = 3 * stride + 1
        words = words.format(v=value, s=stride)
    cfg = {**fx[2], key: value}
    with pytest.raises(ValueError, match=re.escape(words)) as e:
        load_official(fixture_dir("lpd") / "checkpoint.pth", config=cfg)
    assert "official LPD config" in str(e.value)


def test_weight_decay_follows_the_official_add_weight_decay(fx):
    """The official trainer (util/misc.py add_weight_decay) exempts 1-D parameters and biases only: the position
    table, mask_token and fake_latent decay. Checked on the official names of the fixture checkpoint."""
    model, _, _ = fx
    official = torch.load(fixture_dir("lpd") / "checkpoint.pth", weights_only=True)["model"]
    theirs = {n for n, p in official.items() if not (p.dim() == 1 or n.endswith(".bias"))}
    keys = get_family("lpd").official.keys
    ours = {keys.to_official(n) for n, p in model.named_parameters() if model.decays(n, p)}
    assert ours == theirs and {"pos_embed", "mask_token", "fake_latent"} <= ours
