"""RandAR parallel decoding: wall time at 256 steps vs. 88 steps, ours and an official-style sampler.

Usage::

    python benchmarks/parallel_decoding_speed.py [--quick] [--threads 1] [--reps 3] [--codebook 16384] [--json PATH]

One RandAR model (width 256, 4 layers, 4 heads, SwiGLU, 256 tokens on a 16x16 grid, 1000 classes;
codebook 16384 as RandAR's LlamaGen tokenizer, ``--codebook`` to change it), batch 8 with guidance
(linear 1 -> 4, so 16 rows), random orders. Four samplers, each timed at ``--steps-a`` (256: one token per
step) and ``--steps-b`` (88, RandAR's default):

- ``ours``: :func:`anyorder.sampling.generate` (static KV cache, attention over the filled prefix only,
  everything per generation precomputed, one sampling call per step);
- ``reference``: :func:`reference_samplers.official_style_randar_generate`, the official loop's per-step
  behaviour (index tensors rebuilt every step, head on every fed position, per-token sampling loop).

Before timing, ours and the reference must give identical greedy (``top_k=1``) ids at both step counts.
Timed runs sample at temperature 1 (top-k off). Repetitions alternate the order of the four runs; ratios
are medians of per-repetition ratios of wall clock (and of process CPU time). The machine is shared:
read the ratios, not the absolute times.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kv_cache_speed import common_args, environment, markdown_table, measure, median, randomise, ratio  # noqa: E402
from reference_samplers import official_style_randar_generate  # noqa: E402

from anyorder.models.randar import RandAR, RandARConfig  # noqa: E402
from anyorder.nn.orders import random_orders, unpermute  # noqa: E402
from anyorder.nn.schedules import parallel_decoding_schedule  # noqa: E402
from anyorder.sampling.generate import generate

FULL = {"dim": 256, "depth": 4, "n_head": 4, "seq_len": 256, "num_classes": 1000, "batch": 8}
QUICK = {"dim": 128, "depth": 2, "n_head": 4, "seq_len": 64, "num_classes": 10, "batch": 4}


def positions_fed(plan: list[int]) -> int:
    """Positions one sequence sends through the transformer: the prefill ``[class, instr_0..]``, then per
    step the ``n`` tokens just sampled with the ``n - 1`` instruction tokens between them, plus the next
    ``m`` queries. More steps feed fewer positions; fewer steps save per-step work, not arithmetic."""
    total = 1 + plan[0]
    for n, m in zip(plan, plan[1:]):
        total += 2 * n - 1 + m
    return total


def profile_breakdown(fn) -> dict[str, float]:
    """Self CPU seconds of one run by kind of op (torch.profiler): matmuls, attention, sampling, the rest."""
    from torch.profiler import ProfilerActivity, profile

    kinds = {"matmul": ("aten::mm", "aten::addmm", "aten::bmm"), "attention": ("aten::_scaled_dot_product",),
             "sampling": ("aten::exponential_", "aten::multinomial", "aten::softmax", "aten::_softmax",
                          "aten::argmax", "aten::topk")}
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    out = dict.fromkeys([*kinds, "other"], 0.0)
    for e in prof.key_averages():
        kind = next((k for k, names in kinds.items() if e.key.startswith(names)), "other")
        out[kind] += e.self_cpu_time_total / 1e6
    return out


def main() -> None:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--codebook", type=int, default=None, help="codebook size (default 16384, quick 1024)")
    p.add_argument("--steps-a", type=int, default=None, help="the slow setting (default: T, one token per step)")
    p.add_argument("--steps-b", type=int, default=None, help="the parallel setting (default 88; quick 22)")
    p.add_argument("--guidance-scale", type=float, default=4.0)
    p.add_argument("--profile", action="store_true", help="also print where our sampler's time goes per step count")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = dict(QUICK if args.quick else FULL)
    cfg["codebook_size"] = args.codebook or (1024 if args.quick else 16384)
    reps = args.reps or (1 if args.quick else 3)
    T, B = cfg["seq_len"], cfg["batch"]
    sa, sb = args.steps_a or T, args.steps_b or (22 if args.quick else 88)
    torch.manual_seed(args.seed)
    model = randomise(RandAR(RandARConfig(dim=cfg["dim"], depth=cfg["depth"], n_head=cfg["n_head"], seq_len=T,
                                          codebook_size=cfg["codebook_size"], num_classes=cfg["num_classes"])),
                      args.seed)
    g = torch.Generator().manual_seed(args.seed)
    classes = torch.randint(0, cfg["num_classes"], (B,), generator=g)
    orders = random_orders(B, T, generator=g)
    gs = args.guidance_scale
    rows_per_step = {s: positions_fed(parallel_decoding_schedule(s, T)) for s in (sa, sb)}
    print(f"RandAR dim {cfg['dim']} depth {cfg['depth']} heads {cfg['n_head']} T {T} V {cfg['codebook_size']}, "
          f"batch {B} x2 (guidance 1 -> {gs}), {args.threads} thread(s), {reps} rep(s); steps {sa} vs {sb}; "
          f"positions fed per sequence: {rows_per_step}", flush=True)

    def ours(steps: int, **kw) -> torch.Tensor:
        return generate(model, classes, orders=orders, steps=steps, guidance_scale=gs, **kw).flatten(1)  # raster

    def reference(steps: int, **kw) -> torch.Tensor:
        return unpermute(official_style_randar_generate(model, classes, orders, steps, 1.0, gs, **kw), orders)

    # 1. identical greedy ids
    for s in (sa, sb):
        assert torch.equal(ours(s, top_k=1), reference(s, top_k=1)), f"reference disagrees with ours at {s} steps"
    print(f"greedy ids: ours == reference at {sa} and {sb} steps", flush=True)

    # 2. timing (temperature 1, top-k off, fixed seeds)
    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(1)

    fns = {
        f"ours@{sa}": lambda: ours(sa, generator=gen()),
        f"ours@{sb}": lambda: ours(sb, generator=gen()),
        f"reference@{sa}": lambda: reference(sa, generator=gen()),
        f"reference@{sb}": lambda: reference(sb, generator=gen()),
    }
    fns[f"ours@{sb}"]()  # warm-up
    times = measure(fns, reps)

    def r(slow: str, fast: str, kind: str = "wall") -> float:
        return ratio(times, slow, fast, kind)

    ours_ratio, ref_ratio = r(f"ours@{sa}", f"ours@{sb}"), r(f"reference@{sa}", f"reference@{sb}")
    results = {
        "benchmark": "parallel_decoding_speed",
        "config": {**cfg, "steps": [sa, sb], "guidance": [1.0, gs], "reps": reps, "positions_fed": rows_per_step},
        "env": environment(args.threads), "greedy_ids_equal": True, "times_s": times,
        "median_wall_s": {k: median(times, k) for k in fns},
        "per_image_ms": {k: 1e3 * median(times, k) / B for k in fns},
        "steps_speedup": {
            "ours": {"wall": ours_ratio, "cpu": r(f"ours@{sa}", f"ours@{sb}", "cpu"), "target": 2.5},
            "reference": {"wall": ref_ratio, "cpu": r(f"reference@{sa}", f"reference@{sb}", "cpu")},
        },
        "ours_vs_reference": {f"{s}_steps": {"wall": r(f"reference@{s}", f"ours@{s}"),
                                             "cpu": r(f"reference@{s}", f"ours@{s}", "cpu")} for s in (sa, sb)},
    }
    rows = []
    for name in ("ours", "reference"):
        rows.append([name, f"{median(times, f'{name}@{sa}'):.2f}", f"{median(times, f'{name}@{sb}'):.2f}",
                     f"{1e3 * median(times, f'{name}@{sb}') / B:.0f}",
                     f"{r(f'{name}@{sa}', f'{name}@{sb}'):.2f}", f"{r(f'{name}@{sa}', f'{name}@{sb}', 'cpu'):.2f}"])
    print()
    print(markdown_table(["sampler", f"wall s @{sa}", f"wall s @{sb}", f"ms / image @{sb}",
                          f"{sa}/{sb} (wall)", f"{sa}/{sb} (CPU)"], rows))
    print(f"\nours {sa} vs {sb} steps: {ours_ratio:.2f}x (target >= 2.5x); reference: {ref_ratio:.2f}x; "
          f"ours vs reference: {r(f'reference@{sa}', f'ours@{sa}'):.2f}x at {sa} steps, "
          f"{r(f'reference@{sb}', f'ours@{sb}'):.2f}x at {sb} steps")
    if args.profile:
        prof = {name: profile_breakdown(fns[name]) for name in fns}
        results["profile_self_cpu_s"] = prof
        kinds = list(next(iter(prof.values())))
        print("\nself CPU seconds by kind of op (torch.profiler, one run each):\n")
        print(markdown_table(["run", *kinds, "total"],
                             [[n, *(f"{v[k]:.2f}" for k in kinds), f"{sum(v.values()):.2f}"] for n, v in prof.items()]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
