"""Compiled vs eager decoding on this machine: the eager decode loop (filled-prefix attention), the static step
uncompiled (whole cache + precomputed mask, bucketed RandAR steps) and the static step under
``torch.compile`` (inductor; on CUDA with CUDA graphs).

Usage::

    python benchmarks/compile_speed.py [--quick] [--threads 1] [--reps 3] [--json PATH]

Models: RAR and RandAR, width 256, 4 layers, 4 heads, 256 tokens (16x16), codebook 1024, 1000 classes, random
weights; batch 8 with guidance (16 rows). RAR one token per step; RandAR at 256 and 88 steps. Compilation
happens in a warm-up generation (its time is reported separately); the timed generations alternate their
order repetition by repetition in one process (medians of per-repetition ratios).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kv_cache_speed import FULL, QUICK, common_args, environment, markdown_table, measure, randomise, ratio  # noqa: E402

from anyorder.hub import build_model  # noqa: E402
from anyorder.sampling.decode import decode  # noqa: E402
from anyorder.sampling.job import generation_job  # noqa: E402
from anyorder.sampling.policy import sampling_config  # noqa: E402


def main() -> None:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = QUICK if args.quick else FULL
    reps = args.reps or (1 if args.quick else 3)
    shape = {"dim": cfg["dim"], "depth": cfg["depth"], "n_head": cfg["n_head"], "seq_len": cfg["seq_len"],
             "codebook_size": cfg["codebook_size"], "num_classes": cfg["num_classes"]}
    models = {
        "rar": randomise(build_model({"family": "rar", "mlp_hidden": 4 * cfg["dim"], **shape}), args.seed),
        "randar": randomise(build_model({"family": "randar", **shape}), args.seed),
    }
    B, T = cfg["batch"], cfg["seq_len"]
    classes = torch.arange(B) % cfg["num_classes"]
    runs = {"rar": [None], "randar": [T, round(88 * T / 256)]}
    results, rows = {}, []
    for fam, model in models.items():
        for steps in runs[fam]:
            policy = sampling_config(fam, {"guidance_scale": 4.0, **({"steps": steps} if steps else {})})
            orders = model.sampling_orders(B, torch.Generator().manual_seed(args.seed))

            def run(mode: str, model=model, orders=orders, policy=policy):
                g = torch.Generator().manual_seed(args.seed)
                kw = {"static": True} if mode == "static" else {"compile": args.backend} if mode == "compiled" else {}
                with torch.no_grad():
                    return decode(generation_job(model, classes, policy, orders=orders, generator=g), **kw)

            t0 = time.perf_counter()
            run("compiled")  # compiles every shape this plan needs
            compile_s = time.perf_counter() - t0
            name = f"{fam}" + (f" {steps} steps" if steps else "")
            print(f"{name}: compiled in {compile_s:.1f} s", flush=True)
            times = measure({m: (lambda m=m: run(m)) for m in ("eager", "static", "compiled")}, reps)
            res = {"steps": steps or T, "compile_warmup_s": compile_s, "times": times,
                   "eager_over_compiled": ratio(times, "eager", "compiled"),
                   "eager_over_static": ratio(times, "eager", "static"),
                   "eager_over_compiled_cpu": ratio(times, "eager", "compiled", "cpu")}
            results[name] = res
            rows.append([name, f"{min(times['eager']['wall']):.2f}", f"{min(times['static']['wall']):.2f}",
                         f"{min(times['compiled']['wall']):.2f}", f"{res['eager_over_static']:.2f}",
                         f"{res['eager_over_compiled']:.2f}", f"{compile_s:.0f}"])
    table = markdown_table(["run", "eager s (best)", "static s", "compiled s", "eager/static", "eager/compiled",
                            "compile warm-up s"], rows)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"config": cfg, "reps": reps, "backend": args.backend,
                                         "env": environment(args.threads), "results": results}, indent=1))


if __name__ == "__main__":
    main()
