"""The shared core: KV cache, sampler loop, merged position embeddings, RandAR bookkeeping."""

from __future__ import annotations

import math

import pytest
import torch

from anyorder.hub import build_model
from anyorder.models import family_names, get_family
from anyorder.models.randar import deinterleave, interleave
from anyorder.nn.kv_cache import attention_window
from anyorder.nn.orders import is_permutation, permute, random_orders, scan_order
from anyorder.sampling import generate, sample_logits, sampling_config
from anyorder.sampling.decode import filter_logits

RAR_TINY = {"family": "rar", **get_family("rar").debug}  # a 4x4 grid
RANDAR_TINY = {"family": "randar", **get_family("randar").debug}
FAMILY = family_names()


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Official init zeroes adaLN and heads; add noise so no layer is trivially zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


@pytest.fixture
def rar():
    return _randomise(build_model(RAR_TINY))


@pytest.fixture
def randar():
    return _randomise(build_model(RANDAR_TINY))


def _data(model, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, model.codebook_size, (B, model.seq_len), generator=g)
    classes = torch.randint(0, model.num_classes, (B,), generator=g)
    orders = random_orders(B, model.seq_len, generator=g)
    return codes, classes, orders


@torch.no_grad()
@pytest.mark.parametrize("static", [False, True], ids=["eager-step", "static-step"])
@pytest.mark.parametrize("ahead", [0, 3, 64], ids=["per-step", "3-slots-ahead", "all-slots-ahead"])
def test_rar_adaln_computed_ahead_gives_the_per_step_logits(rar, ahead, static):
    """The sampler computes adaLN outputs for several slots in one matmul (a bounded buffer); the logits are
    those of the full sequence whatever the chunk, and the adaLN layers run once per chunk, not per step."""
    codes, classes, orders = _data(rar)
    full = rar.logits(codes, classes, orders)
    gen = permute(codes, orders)
    per_slot = 3 * (6 * rar.config.depth + 2) * rar.config.dim * 4
    rar.adaln_ahead_bytes = ahead * per_slot
    calls = []
    hook = rar.transformer.blocks[0].adaLN_modulation.register_forward_hook(lambda *a: calls.append(1))
    state = rar.start_decoding(classes, orders, static=static)
    assert state.ahead == min(ahead, rar.seq_len + 2)
    steps, new = [], None
    for j in range(rar.seq_len):
        steps.append(rar.decode_one_step(state, new, 1)[:, 0])
        new, state.done = gen[:, j : j + 1], j + 1
    rar.end_decoding()
    hook.remove()
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-4)
    # 16 steps cover slots 0..16: the prefill's two slots, then one slot a step
    expected = {0: rar.seq_len, 3: 6, 64: 1}[ahead]
    assert len(calls) == expected


@pytest.mark.parametrize("max_len", [18, 34, 258, 514])
def test_the_static_steps_attention_windows_cover_each_step_and_are_at_most_four(max_len):
    windows = {attention_window(stop, max_len) for stop in range(1, max_len + 1)}
    assert len(windows) == 4 and max(windows) == max_len
    for stop in range(1, max_len + 1):
        w = attention_window(stop, max_len)
        assert stop <= w and (w == min(windows) or -(-w // 2) < stop)  # the smallest window that holds it
    with pytest.raises(ValueError, match="does not fit"):
        attention_window(max_len + 1, max_len)


@torch.no_grad()
def test_rar_prefix_fed_in_one_pass_equals_token_by_token(rar):
    codes, classes, orders = _data(rar)
    full = rar.logits(codes, classes, orders)
    gen = permute(codes, orders)
    state = rar.start_decoding(classes, orders)
    rar.decode_one_step(state, None, 1)
    state.done = 7
    out = rar.decode_one_step(state, gen[:, :7], 1)
    rar.end_decoding()
    torch.testing.assert_close(out[:, 0], full[:, 7], atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_merged_position_embeddings_give_the_same_outputs(rar):
    codes, classes, _ = _data(rar)
    merged = rar.merge_position_embeddings().eval()
    assert merged.target_aware_pos_embed is None
    assert merged.pos_embed.shape[1] == rar.seq_len + 2
    torch.testing.assert_close(merged.logits(codes, classes), rar.logits(codes, classes), atol=1e-5, rtol=1e-4)
    a = generate(rar, classes, guidance_scale=2.0, guidance_power=1.0, seed=3)
    b = generate(merged, classes, guidance_scale=2.0, guidance_power=1.0, seed=3)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="merged"):
        merged.logits(codes, classes, random_orders(codes.shape[0], rar.seq_len))


@torch.no_grad()
def test_rar_samples_in_the_order_annealing_ended_in():
    model = _randomise(build_model({**RAR_TINY, "order": "spiral_in"}))
    assert torch.equal(model.default_order().cpu(), scan_order("spiral_in", 4))
    codes, orders = generate(model, torch.tensor([0, 1]), temperature=1e-6, return_orders=True)
    assert torch.equal(orders.cpu(), scan_order("spiral_in", 4).expand(2, -1))
    # greedy in that order: every token is the argmax of the teacher-forced logits in that order
    logits = model.logits(codes.flatten(1), torch.tensor([0, 1]), orders)
    assert torch.equal(logits.argmax(-1), permute(codes.flatten(1), orders))


def test_interleaving_and_deinterleaving_round_trip():
    a, b = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    seq = interleave(a, b)
    assert seq.shape == (2, 10, 3)
    assert torch.equal(seq[:, 0], a[:, 0]) and torch.equal(seq[:, 1], b[:, 0])
    a2, b2 = deinterleave(seq)
    assert torch.equal(a2, a) and torch.equal(b2, b)


@torch.no_grad()
@pytest.mark.parametrize("static", [False, True], ids=["eager-step", "static-step"])
@pytest.mark.parametrize("plan", [[1] * 16, [1, 2, 3, 4, 6], [1, 15], [1, 1, 7, 7]])
def test_parallel_decode_logits_equal_full_sequence_forward(randar, plan, static):
    """Feeding the true tokens through the parallel-decoding cache bookkeeping, the first query of each
    step sees exactly the prefix the full-sequence forward sees at that position (the static step: with
    its rows padded to bucket sizes and attention over a window of the cache)."""
    codes, classes, orders = _data(randar)
    full = randar.logits(codes, classes, orders)
    gen = permute(codes, orders)
    state = randar.start_decoding(classes, orders, static=static)
    new, done = None, 0
    for n in plan:
        out = randar.decode_one_step(state, new, n)
        assert out.shape == (codes.shape[0], n, randar.codebook_size)
        torch.testing.assert_close(out[:, 0], full[:, done], atol=1e-5, rtol=1e-4)
        # (later queries of a parallel step see the earlier queries' instruction tokens, not their tokens)
        new, done = gen[:, done : done + n], done + n
        state.done = done
    randar.end_decoding()


@torch.no_grad()
@pytest.mark.parametrize("family", FAMILY)
def test_an_order_the_caller_supplies_is_honoured(family):
    """Given orders are decoded in, one token per step and (a parallel family) several per step; greedy one by
    one, each token is the argmax given the tokens before it in *that* order."""
    model = _randomise(build_model({"family": family, **get_family(family).debug}))
    _, classes, orders = _data(model)
    policy = sampling_config(family, {"top_k": 1})
    plans = [policy] + ([policy.replace(steps=5)] if get_family(family).can("parallel") else [])
    for p in plans:
        codes, used = generate(model, classes, p, orders=orders, return_orders=True)
        assert torch.equal(used, orders)
    codes = generate(model, classes, plans[0], orders=orders)
    logits = model.logits(codes.flatten(1), classes, orders)
    assert torch.equal(logits.argmax(-1), permute(codes.flatten(1), orders))


@torch.no_grad()
def test_randar_trained_into_a_scan_order_samples_in_that_order():
    """A RandAR configured with a scan ``order`` (annealed into it, like RAR) decodes in that order by
    default, not in random orders it was not trained to end in."""
    model = _randomise(build_model({**RANDAR_TINY, "order": "raster"}))
    codes, orders = generate(model, torch.tensor([0, 1]), top_k=1, return_orders=True)
    assert torch.equal(orders.cpu(), scan_order("raster", 4).expand(2, -1))
    logits = model.logits(codes.flatten(1), torch.tensor([0, 1]), orders)
    assert torch.equal(logits.argmax(-1), permute(codes.flatten(1), orders))


@pytest.mark.parametrize("family", [f for f in FAMILY if get_family(f).can("parallel")])
def test_random_orders_per_sample_are_permutations(family):
    model = _randomise(build_model({"family": family, **get_family(family).debug}))
    _, orders = generate(model, torch.tensor([0, 1, 2]), seed=0, return_orders=True)
    assert is_permutation(orders) and not torch.equal(orders[0], orders[1])


def test_sample_logits_top_k_top_p_and_greedy():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]]).repeat(2000, 1)
    assert torch.equal(sample_logits(logits, top_k=1), torch.ones(2000, dtype=torch.long))
    assert torch.equal(sample_logits(logits, temperature=0.0), torch.ones(2000, dtype=torch.long))
    k2 = sample_logits(logits, top_k=2, generator=g)
    assert set(k2.tolist()) == {1, 3}
    p = sample_logits(logits, top_p=0.5, generator=g)  # the top token alone has prob ~0.64 > 0.5
    assert set(p.tolist()) == {1}
    anything = sample_logits(logits, generator=g)
    assert set(anything.tolist()) == {0, 1, 2, 3}
    hot = sample_logits(logits, temperature=100.0, generator=g)
    assert (hot == 0).float().mean() > 0.2


@pytest.mark.parametrize("top_p", [0.3, 0.45, 0.6, 0.85, 0.9, 0.97])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p):
    """Probabilities 0.5, 0.3, 0.15, 0.05: nucleus sampling keeps the most likely tokens up to and including
    the first whose cumulative probability reaches ``top_p`` (written out by hand here)."""
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    ranked, cum, keep = [1, 3, 0, 2], 0.0, set()
    for i in ranked:
        keep.add(i)
        cum += float(probs[0, i])
        if cum >= top_p:
            break
    kept = torch.isfinite(filter_logits(probs.log(), top_p=top_p))[0]
    assert set(kept.nonzero().flatten().tolist()) == keep


def _assert_greedy_guided_on(model, scale: list[float], final: float, **settings) -> None:
    """A greedy guided sample is, at every step, the argmax of ``u + (c - u) * s`` with the teacher-forced
    conditional / null-class logits ``c`` / ``u`` and ``s`` the expected scale of that step; and neither ``c``
    alone nor the final scale at every step gives these tokens (the check can fail)."""
    _, classes, orders = _data(model, B=16)
    T = model.seq_len
    codes, used = generate(model, classes, orders=orders, top_k=1, return_orders=True, **settings)
    tokens = permute(codes.flatten(1), used)  # in generation order
    c = model.logits(codes.flatten(1), classes, used)
    u = model.logits(codes.flatten(1), torch.full_like(classes, model.null_class), used)
    s = torch.tensor(scale).view(1, T, 1)
    assert torch.equal((u + (c - u) * s).argmax(-1), tokens)
    assert not torch.equal(c.argmax(-1), tokens)
    assert not torch.equal((u + (c - u) * final).argmax(-1), tokens)


@torch.no_grad()
def test_rar_guidance_follows_the_pow_cosine_schedule(rar):
    """RAR: s = 1 + (g - 1)(1 - cos(pi (j/T)^p)) / 2 after j of T tokens (1d-tokenizer's ``RAR.generate``)."""
    T, g, p = rar.seq_len, 8.0, 2.75
    scale = [1 + (g - 1) * (1 - math.cos(math.pi * (j / T) ** p)) / 2 for j in range(T)]
    _assert_greedy_guided_on(rar, scale, g, guidance_scale=g, guidance_power=p)


@torch.no_grad()
def test_randar_guidance_is_linear_from_its_start(randar):
    """RandAR: s = start + (g - start) j / T after j of T tokens (``RandARTransformer.generate``)."""
    T, g, start = randar.seq_len, 8.0, 0.5
    scale = [start + (g - start) * j / T for j in range(T)]
    _assert_greedy_guided_on(randar, scale, g, guidance_start=start, guidance_scale=g, steps=T)


@pytest.mark.parametrize("family", FAMILY)
def test_bf16_autocast_forward_runs_and_stays_close(family):
    model = _randomise(build_model({"family": family, **get_family(family).debug}))
    codes, classes, orders = _data(model)
    ref = model.logits(codes, classes, orders)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.logits(codes, classes, orders)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


@torch.no_grad()
def test_features_stop_at_the_requested_layer(randar):
    """``features`` runs the blocks up to the requested layer only: no later block, no vocabulary head, and the
    same residual stream as the full forward's hidden states."""
    from anyorder.editing.features import features_by_layer

    codes, classes, orders = _data(randar)
    ran: list[str] = []
    hooks = [b.register_forward_hook(lambda *_, k=k: ran.append(f"block{k}")) for k, b in
             enumerate(randar.transformer.blocks)]
    hooks.append(randar.transformer.final.register_forward_hook(lambda *_: ran.append("head")))
    try:
        feats = features_by_layer(randar, codes.view(-1, *randar.grid), classes, layers=[1], orders=orders)
    finally:
        for h in hooks:
            h.remove()
    assert ran == ["block0"]  # one pass of the stacked sequence through block 0, nothing after it
    gen = permute(codes, orders)
    # block 0 run by hand on the full stacked sequence (the hook above is gone)
    x, rope = randar._sequence(torch.cat([gen, gen], 1), classes, torch.cat([orders, orders], 1))
    hidden = randar.transformer.blocks[0](x, rope=rope)
    T = randar.seq_len
    full = hidden[:, 1 + 2 * T :: 2][:, :T]  # the second pass's instruction slots, generation order
    expect = torch.empty_like(full).scatter_(1, orders[..., None].expand_as(full), full)
    torch.testing.assert_close(feats[1][0], expect)


def test_rope_rotates_each_pair_by_its_angle_in_eager_and_compiled_forms() -> None:
    """``apply_rope`` is a complex product in eager mode and real products under ``torch.compile``: both rotate
    every adjacent pair ``(x0, x1)`` by the table's angle, with the same gradients."""
    from anyorder.nn.rope import apply_rope

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, 8, generator=g)
    angle = torch.rand(1, 5, 4, generator=g) * 6.28
    table = torch.stack([angle.cos(), angle.sin()], dim=-1)
    pairs = x.reshape(2, 5, 3, 4, 2)
    c, s = angle.cos()[:, :, None], angle.sin()[:, :, None]
    expected = torch.stack([pairs[..., 0] * c - pairs[..., 1] * s, pairs[..., 1] * c + pairs[..., 0] * s], -1)
    expected = expected.flatten(-2)
    graphs: list[str] = []

    def record(gm: torch.fx.GraphModule, _inputs: list) -> object:
        graphs.append(gm.code)
        return gm.forward

    for fn in (apply_rope, torch.compile(apply_rope, backend=record, fullgraph=True)):
        xi = x.clone().requires_grad_()
        out = fn(xi, table)
        assert torch.allclose(out, expected, atol=1e-6)
        out.pow(2).sum().backward()  # a rotation keeps each pair's norm: d/dx |R x|^2 = 2x
        assert torch.allclose(xi.grad, 2 * x, atol=1e-5)
    assert len(graphs) == 1 and "view_as_complex" not in graphs[0]  # the compiled form: real products
    # layouts a complex view cannot take (odd offset, transposed) fall back to the real products
    odd = torch.cat([torch.zeros(2, 5, 3, 1), x], dim=-1)[..., 1:]
    assert odd.storage_offset() % 2 == 1 and torch.allclose(apply_rope(odd, table), expected, atol=1e-6)
    flipped = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert flipped.stride(-1) != 1 and torch.allclose(apply_rope(flipped, table), expected, atol=1e-6)
    # bf16 inputs are rotated in fp32 and returned in bf16
    out = apply_rope(x.bfloat16(), table)
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), expected, atol=0.05)
