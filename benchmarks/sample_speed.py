"""Sampling speed of anyorder against the official samplers themselves, imported at run time, same weights.

``kv_cache_speed.py`` and ``parallel_decoding_speed.py`` time *official-style* loops written here; this script
times the released code: 1d-tokenizer's ``RAR.generate`` (its KV cache on) and RandAR's
``RandARTransformer.generate`` (at one token per step and at its parallel-decoding default), each against
:func:`anyorder.generate` on the same weights (the official model, noised, loaded into ours as
``train_speed.py`` builds them). The official code comes from checkouts (never copied here)::

    git clone https://github.com/bytedance/1d-tokenizer /tmp/official/bytedance+1d-tokenizer
    git clone https://github.com/ziqipang/RandAR /tmp/official/ziqipang+RandAR
    python benchmarks/sample_speed.py --official /tmp/official --threads 1 --reps 5 --json sample_speed.json

Model: width 256, 4 layers, 4 heads, 256 tokens (16x16), codebook 1024, 1000 classes, batch 8 with guidance
(RAR: scale 4 on the pow-cosine schedule, power 2.75; RandAR: linear 1 -> 4), i.e. 16 rows. First both sides
decode greedily (RAR at the official greedy temperature 1e-6, RandAR with top-k 1, same orders) and must
return the same ids; then they are timed sampling at temperature 1, in alternating order, repetition by
repetition, in one process. Reported: ms per image, and the median of per-repetition ratios (official / ours).
``--device cuda`` runs both on a GPU (synchronised timing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kv_cache_speed import environment, markdown_table, ratio  # noqa: E402
from make_fixture_twins import official_modules  # noqa: E402
from train_speed import QUICK, SHAPE, build_pair  # noqa: E402

from anyorder.sampling import generate  # noqa: E402

GUIDANCE, POWER = 4.0, 2.75


def samplers(family: str, theirs: torch.nn.Module, ours: torch.nn.Module, classes: torch.Tensor,
             orders: torch.Tensor, steps: int | None, temperature: float = 1.0,
             top_k: int = 0) -> dict[str, Callable[[], torch.Tensor]]:
    """The official sampler and ours, each returning codes ``[B, T]`` in raster order."""
    B = classes.shape[0]
    dev = classes.device

    if family == "rar":
        def official() -> torch.Tensor:
            return theirs.generate(classes, guidance_scale=GUIDANCE, randomize_temperature=temperature,
                                   guidance_scale_pow=POWER)

        def anyorder() -> torch.Tensor:
            return generate(ours, classes, guidance_scale=GUIDANCE, guidance_power=POWER, temperature=temperature,
                            generator=torch.Generator(dev).manual_seed(1)).reshape(B, -1)
    else:
        T = orders.shape[1]

        def official() -> torch.Tensor:
            return theirs.generate(classes, orders, cfg_scales=(1.0, GUIDANCE), num_inference_steps=steps or T,
                                   temperature=temperature, top_k=top_k)

        def anyorder() -> torch.Tensor:
            return generate(ours, classes, orders=orders, steps=steps or T, guidance_start=1.0,
                            guidance_scale=GUIDANCE, temperature=temperature, top_k=top_k,
                            generator=torch.Generator(dev).manual_seed(1)).reshape(B, -1)

    return {"official": official, "anyorder": anyorder}


def timed_reps(fns: dict[str, Callable[[], object]], reps: int, device: torch.device) -> dict[str, dict[str, list]]:
    """Every sampler ``reps`` times, the order alternating each repetition; wall and process CPU seconds."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = {k: {"wall": [], "cpu": []} for k in fns}
    names = list(fns)
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            sync()
            w, c = time.perf_counter(), time.process_time()
            with torch.inference_mode():
                fns[name]()
            sync()
            out[name]["wall"].append(time.perf_counter() - w)
            out[name]["cpu"].append(time.process_time() - c)
        print(f"  rep {r + 1}/{reps}: " + ", ".join(f"{k} {v['wall'][-1]:.2f} s" for k, v in out.items()), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", type=Path, default=Path("/tmp/official"),
                    help="folder holding bytedance+1d-tokenizer and ziqipang+RandAR checkouts")
    ap.add_argument("--families", nargs="+", default=["rar", "randar"], choices=["rar", "randar"])
    ap.add_argument("--randar-steps", nargs="+", type=int, default=[256, 88],
                    help="RandAR step counts for 256 tokens, scaled to the model's (256: one token per step; "
                         "88: RandAR's default)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small model, 64 tokens, 1 repetition")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i] (the official checkouts must be on that machine)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    s = QUICK if args.quick else SHAPE
    reps = 1 if args.quick else args.reps
    off = official_modules(args.official)
    g = torch.Generator().manual_seed(args.seed)
    B, T = s["batch"], s["T"]
    classes = torch.randint(0, s["C"], (B,), generator=g).to(device)
    orders = torch.stack([torch.randperm(T, generator=g) for _ in range(B)]).to(device)
    results: dict = {"shape": s, "reps": reps, "guidance": {"scale": GUIDANCE, "rar_power": POWER},
                     "env": {**environment(args.threads), "device": str(device),
                             "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
                     "runs": {}}
    rows = []
    for family in args.families:
        theirs, ours = build_pair(off, family, s, args.seed)
        theirs, ours = theirs.to(device).eval(), ours.to(device).eval()
        if family == "rar":
            theirs.set_random_ratio(0.0)
        # step counts are given for 256 tokens (RandAR's 88 of 256); other token counts scale them
        step_counts = [None] if family == "rar" else list(dict.fromkeys(
            max(1, min(T, round(n * T / 256))) for n in args.randar_steps))
        for steps in step_counts:
            name = family if steps is None else f"randar {steps} steps"
            rar = family == "rar"  # greedy: RAR's official temperature 1e-6, RandAR's top-k 1
            greedy = samplers(family, theirs, ours, classes, orders, steps, temperature=1e-6 if rar else 1.0,
                              top_k=0 if rar else 1)
            with torch.inference_mode():
                same = torch.equal(greedy["official"]().long(), greedy["anyorder"]().long())
            if not same:
                raise SystemExit(f"{name}: greedy ids differ between the official sampler and anyorder")
            fns = samplers(family, theirs, ours, classes, orders, steps)
            times = timed_reps(fns, reps, device)
            r_wall, r_cpu = ratio(times, "official", "anyorder"), ratio(times, "official", "anyorder", "cpu")
            per_img = {k: 1e3 * statistics.median(v["wall"]) / B for k, v in times.items()}
            results["runs"][name] = {"greedy_ids_equal": True, "times_s": times, "ms_per_image": per_img,
                                     "speedup_wall": r_wall, "speedup_cpu": r_cpu}
            rows.append([name, f"{per_img['official']:.0f}", f"{per_img['anyorder']:.0f}", f"{r_wall:.2f}",
                         f"{r_cpu:.2f}"])
            print(f"{name}: greedy ids equal; anyorder {r_wall:.2f}x the official sampler", flush=True)
    print()
    print(markdown_table(["run", "official ms / image", "anyorder ms / image", "official / anyorder (wall)",
                          "(CPU time)"], rows))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
