"""RAR sampling speed: our static KV cache vs. no cache vs. an official-style sampler.

Usage::

    python benchmarks/kv_cache_speed.py [--quick] [--threads 1] [--reps 3] [--json PATH]

Times three ways of sampling the same RAR model (width 256, 4 layers, 4 heads, MLP 4x, 256 tokens on a
16x16 grid, codebook 1024, 1000 classes; batch 8 with classifier-free guidance, i.e. 16 rows):

- ``ours``: :func:`anyorder.sampling.generate` — static preallocated KV cache, one token per step;
- ``uncached``: the same sampler without a cache — every step runs the teacher-forced path
  ``model.forward(prefix, classes, orders)`` on the whole prefix and keeps the last logit;
- ``reference``: :func:`reference_samplers.official_style_rar_generate`, which does per step what the
  official RAR code does (cache grown by ``torch.cat``, full position tables rebuilt every step).

All three are first run greedily and must return identical ids; then they are timed with sampling
(temperature 1) in alternating order, repetition by repetition, in one process. Ratios are medians of
per-repetition ratios (wall clock and process CPU time). The machine is shared, so absolute times are
noisy; the ratios are what to read.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_samplers import official_style_rar_generate  # noqa: E402

from anyorder.models.rar import RAR, RARConfig  # noqa: E402
from anyorder.nn.orders import permute  # noqa: E402
from anyorder.nn.schedules import GuidanceSchedule  # noqa: E402
from anyorder.sampling import generate, sample_logits  # noqa: E402

FULL = {"dim": 256, "depth": 4, "n_head": 4, "seq_len": 256, "codebook_size": 1024, "num_classes": 1000,
        "batch": 8}
QUICK = {"dim": 128, "depth": 2, "n_head": 4, "seq_len": 64, "codebook_size": 256, "num_classes": 10, "batch": 4}


# ---- shared helpers (parallel_decoding_speed.py imports these) -----------------------------------------
def common_args(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small model, fewer tokens, 1 repetition: a sanity run")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: the box is shared)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per sampler (default 3, quick 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p


def randomise(model: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """Official inits zero the adaLN layers and heads; add seeded noise so every layer does real work and
    greedy decoding is not degenerate."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def measure(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, dict[str, list[float]]]:
    """Run every function ``reps`` times, alternating the order each repetition (ABC, CBA, ...)."""
    out = {name: {"wall": [], "cpu": []} for name in fns}
    names = list(fns)
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            w0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            out[name]["wall"].append(time.perf_counter() - w0)
            out[name]["cpu"].append(time.process_time() - c0)
            print(f"  rep {r + 1}/{reps} {name}: {out[name]['wall'][-1]:.2f} s wall", flush=True)
    return out


def ratio(times: dict, slow: str, fast: str, kind: str = "wall") -> float:
    """Median over repetitions of ``time(slow) / time(fast)``."""
    return statistics.median(a / b for a, b in zip(times[slow][kind], times[fast][kind]))


def median(times: dict, name: str, kind: str = "wall") -> float:
    return statistics.median(times[name][kind])


def environment(threads: int) -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(), "threads": threads,
            "cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)}


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---- the uncached baseline -------------------------------------------------------------------------------
@torch.no_grad()
def uncached_generate(model: RAR, classes: torch.Tensor, guidance_scale: float, guidance_power: float,
                      temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Our sampler without a KV cache: each step runs the teacher-forced path on the whole prefix and
    samples from the last logit. Returns ids ``[B, T]`` in generation order."""
    B, T = classes.shape[0], model.seq_len
    guidance = GuidanceSchedule("pow_cosine", guidance_scale, guidance_power)
    orders = model.default_order().expand(B, -1)
    rows_classes, rows_orders = classes, orders
    if guidance.enabled:
        rows_classes = torch.cat([classes, torch.full_like(classes, model.null_class)])
        rows_orders = torch.cat([orders, orders])
    ids = torch.empty(B, 0, dtype=torch.long, device=classes.device)
    for step in range(T):
        prefix = torch.cat([ids, ids]) if guidance.enabled else ids
        logits = model(prefix, rows_classes, rows_orders)[:, -1]  # [rows, V]: predicts generation index `step`
        if guidance.enabled:
            c, u = logits.chunk(2)
            logits = u + (c - u) * guidance(step, T)
        tok = sample_logits(logits, temperature, generator=generator)
        ids = torch.cat([ids, tok[:, None]], dim=1)
    return ids


def main() -> None:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--guidance-scale", type=float, default=4.0)
    p.add_argument("--guidance-power", type=float, default=2.75)
    p.add_argument("--no-uncached", action="store_true", help="skip the (slow) uncached sampler")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = QUICK if args.quick else FULL
    reps = args.reps or (1 if args.quick else 3)
    torch.manual_seed(args.seed)
    model = randomise(RAR(RARConfig(dim=cfg["dim"], depth=cfg["depth"], n_head=cfg["n_head"],
                                    mlp_hidden=4 * cfg["dim"], seq_len=cfg["seq_len"],
                                    codebook_size=cfg["codebook_size"], num_classes=cfg["num_classes"])),
                      args.seed)
    B, T = cfg["batch"], cfg["seq_len"]
    classes = torch.randint(0, cfg["num_classes"], (B,), generator=torch.Generator().manual_seed(args.seed))
    g, pw = args.guidance_scale, args.guidance_power
    order = model.default_order()
    print(f"RAR dim {cfg['dim']} depth {cfg['depth']} heads {cfg['n_head']} T {T} V {cfg['codebook_size']}, "
          f"batch {B} x2 (guidance {g}, power {pw}), {args.threads} thread(s), {reps} rep(s)", flush=True)

    # 1. same greedy ids from all three (the official greedy setting: temperature 1e-6)
    t = 1e-6
    ours_ids = permute(generate(model, classes, guidance_scale=g, guidance_power=pw, temperature=t).flatten(1),
                       order.expand(B, -1))
    ref_ids = official_style_rar_generate(model, classes, g, pw, temperature=t)
    assert torch.equal(ours_ids, ref_ids), "reference sampler disagrees with ours (greedy)"
    if not args.no_uncached:
        unc_ids = uncached_generate(model, classes, g, pw, temperature=t)
        assert torch.equal(ours_ids, unc_ids), "uncached sampler disagrees with ours (greedy)"
    print("greedy ids: ours == reference" + ("" if args.no_uncached else " == uncached"), flush=True)

    # 2. timing, sampling at temperature 1 with a fixed seed per run
    def gen(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    fns = {
        "ours": lambda: generate(model, classes, guidance_scale=g, guidance_power=pw, generator=gen(1)),
        "reference": lambda: official_style_rar_generate(model, classes, g, pw, generator=gen(1)),
        "uncached": lambda: uncached_generate(model, classes, g, pw, generator=gen(1)),
    }
    if args.no_uncached:
        del fns["uncached"]
    fns["ours"]()  # warm-up
    times = measure(fns, reps)

    r_ref = ratio(times, "reference", "ours")
    r_unc = None if args.no_uncached else ratio(times, "uncached", "ours")
    results = {
        "benchmark": "kv_cache_speed", "config": {**cfg, "guidance_scale": g, "guidance_power": pw, "reps": reps},
        "env": environment(args.threads), "greedy_ids_equal": True, "times_s": times,
        "median_wall_s": {k: median(times, k) for k in fns},
        "per_image_ms": {k: 1e3 * median(times, k) / B for k in fns},
        "speedup_vs_uncached": None if r_unc is None else {
            "wall": r_unc, "cpu": ratio(times, "uncached", "ours", "cpu"), "target": 9.0},
        "speedup_vs_reference": {"wall": r_ref, "cpu": ratio(times, "reference", "ours", "cpu"), "target": 2.0},
    }
    rows = [[k, f"{median(times, k):.2f}", f"{1e3 * median(times, k) / B:.0f}",
             "1.00" if k == "ours" else f"{ratio(times, k, 'ours'):.2f}",
             "1.00" if k == "ours" else f"{ratio(times, k, 'ours', 'cpu'):.2f}"] for k in fns]
    print()
    print(markdown_table(["sampler", "wall s (median)", "ms / image", "x slower than ours (wall)",
                          "x slower (CPU time)"], rows))
    if r_unc is not None:
        print(f"\nours vs uncached: {r_unc:.1f}x (target >= 9x)")
    print(f"ours vs reference: {r_ref:.2f}x (target >= 2x)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
