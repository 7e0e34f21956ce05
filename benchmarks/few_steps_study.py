"""Does few-step any-order decoding keep its quality? LPD against RandAR (random and locality-aware orders) on
the bundled digits, at the same training budget, on the same tokenizer, two training seeds.

Stages (each skipped when its output exists, so an interrupted run resumes):

1. ``train``: the demo runs ``randar_s{0,1}`` and ``lpd_s{0,1}`` (``anyorder demo --model F train.seed=S``: 1,500
   steps of batch 32 each, the packaged ``demo_randar`` / ``demo_lpd`` configs), all on the tokenizer of the
   first run (``tokenizer.path``);
2. ``sample``: 1,000 class-balanced samples per (run, steps, order): 49 / 17 / 8 / 4 steps, random and
   locality-aware orders (``anyorder sample --npz``), each model with the guidance its demo records (3, linear),
   every family under one protocol (``--protocol anyorder``: balanced labels, float32, rounded), not each
   paper's (RandAR's random labels and bf16 weights, LPD's sorted labels and bf16 autocast) — a comparison
   across families must not also compare protocols;
3. ``score``: ``anyorder eval --features judge`` against the 500 test digits (one judge scores everything);
4. ``report``: ``docs/few_steps_study.json`` (every number), ``docs/few_steps_study.png`` (FID and accuracy
   against steps) and the table printed in markdown.

Usage: ``python benchmarks/few_steps_study.py [--runs runs/study] [--samples 1000] [--threads 2]``
(about 45 minutes on an idle 2-core CPU: four trainings of ~8 minutes, then sampling and scoring).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FAMILIES, SEEDS, STEPS, ORDERS = ("randar", "lpd"), (0, 1), (49, 17, 8, 4), ("random", "locality")
METRICS = ("fid", "judge_accuracy", "precision", "recall")


def sh(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True, cwd=ROOT)


def anyorder(*args: str) -> None:
    sh(sys.executable, "-m", "anyorder.cli", *args)


def train(runs: Path, threads: int) -> None:
    tok = runs / "randar_s0" / "tokenizer"
    for fam in FAMILIES:
        for seed in SEEDS:
            out = runs / f"{fam}_s{seed}"
            if (out / "metrics.json").is_file():
                continue
            extra = [] if out == tok.parent else [f"tokenizer.path={tok}"]
            anyorder("demo", "--model", fam, "--out", str(out), "--threads", str(threads), "--quiet",
                     f"train.seed={seed}", *extra)


def sample_and_score(runs: Path, n: int) -> None:
    judge, out = runs / "randar_s0", runs / "npz"
    out.mkdir(parents=True, exist_ok=True)
    ref = out / "ref_test.npz"
    if not ref.is_file():
        anyorder("eval", "--make-ref", "digits:test", "--features", "judge", "--judge", str(judge), "--device",
                 "cpu", "--out", str(ref), "--quiet")
    floor = out / "train_floor_metrics.json"  # real digits scored the same way: what a perfect model would get
    if not floor.is_file():
        anyorder("eval", "--make-ref", "digits:train", "--features", "judge", "--judge", str(judge), "--device",
                 "cpu", "--out", str(out / "train_all.npz"), "--quiet")
        from anyorder.io.npz import read_samples, write_samples

        images, labels = read_samples(out / "train_all.npz")
        keep = np.sort(np.random.default_rng(0).permutation(len(images))[:n])
        write_samples(out / "train_floor.npz", images[keep], labels[keep])
        anyorder("eval", str(out / "train_floor.npz"), "--ref", str(ref), "--features", "judge", "--judge",
                 str(judge), "--device", "cpu", "--out", str(floor), "--quiet")
    for fam in FAMILIES:
        for seed in SEEDS:
            for steps in STEPS:
                for order in ORDERS:
                    name = f"{fam}_s{seed}_{steps}_{order}"
                    npz, metrics = out / f"{name}.npz", out / f"{name}_metrics.json"
                    if not npz.is_file():
                        anyorder("sample", "--model", str(runs / f"{fam}_s{seed}"), "--num-samples", str(n), "--npz",
                                 str(npz), "--batch-size", "100", "--seed", "0", "--steps", str(steps), "--order",
                                 order, "--protocol", "anyorder", "--device", "cpu", "--quiet")
                    if not metrics.is_file():
                        anyorder("eval", str(npz), "--ref", str(ref), "--features", "judge", "--judge", str(judge),
                                 "--device", "cpu", "--out", str(metrics), "--quiet")


def report(runs: Path, n: int, json_out: Path, png_out: Path) -> None:
    rows = []
    for fam in FAMILIES:
        for order in ORDERS:
            for steps in STEPS:
                names = [runs / "npz" / f"{fam}_s{s}_{steps}_{order}" for s in SEEDS]
                per_seed = [json.loads(Path(f"{p}_metrics.json").read_text()) for p in names]
                made = [json.loads(Path(f"{p}.json").read_text()) for p in names]
                rows.append({"family": fam, "order": order, "steps": steps,
                             **{m: [round(float(r[m]), 4) for r in per_seed] for m in METRICS},
                             "images_per_s": [r["this_run"]["images_per_s"] for r in made],
                             "protocol": made[0]["protocol"]["name"]})
    floor = json.loads((runs / "npz" / "train_floor_metrics.json").read_text())
    floor = {m: round(float(floor[m]), 4) for m in METRICS}
    json_out.write_text(json.dumps({"samples_per_row": n, "reference": "the 500 test digits (judge features)",
                                    "floor": {"what": f"{n} real training digits, scored the same way", **floor},
                                    "seeds": list(SEEDS), "images_per_s": "wall time of each sampling run (1,000 "
                                    "images, batch 100, one process each on a shared 2-core CPU: noisy)",
                                    "rows": rows}, indent=1) + "\n")
    print("| model | order | steps | judge FID (seed 0 / 1) | accuracy | precision | recall |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {n} real training digits | | | " + " | ".join(f"{floor[m]:.1f}" if m == "fid" else f"{floor[m]:.3f}"
                                                        for m in METRICS) + " |")
    for r in rows:
        cells = [" / ".join(f"{v:.1f}" if m == "fid" else f"{v:.3f}" for v in r[m]) for m in METRICS]
        print(f"| {r['family']} | {r['order']} | {r['steps']} | " + " | ".join(cells) + " |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for fam in FAMILIES:
        for order, style in zip(ORDERS, ("--", "-")):
            sel = [r for r in rows if r["family"] == fam and r["order"] == order]
            for ax, m in zip(axes, ("fid", "judge_accuracy")):
                mean = [sum(r[m]) / len(r[m]) for r in sel]
                lo, hi = [min(r[m]) for r in sel], [max(r[m]) for r in sel]
                line = ax.plot([r["steps"] for r in sel], mean, style, marker="o", label=f"{fam}, {order} orders")[0]
                ax.fill_between([r["steps"] for r in sel], lo, hi, color=line.get_color(), alpha=0.15)
    for ax, m in zip(axes, ("fid", "judge_accuracy")):
        ax.axhline(floor[m], color="grey", linestyle=":", label=f"{n} real training digits")
    for ax, title in zip(axes, ("judge FID (lower is better)", "judge accuracy")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(STEPS, [str(s) for s in STEPS])
        ax.set_xlabel("decoding steps (49 tokens)")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.suptitle("Few-step decoding on the digits: mean of two training seeds (band: the two seeds)")
    fig.tight_layout()
    fig.savefig(png_out, dpi=110)
    print(f"wrote {json_out} and {png_out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="runs/study")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stages", nargs="*", default=["train", "sample", "report"])
    ap.add_argument("--json", default="docs/few_steps_study.json")
    ap.add_argument("--png", default="docs/few_steps_study.png")
    args = ap.parse_args()
    runs = (ROOT / args.runs).resolve()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if "train" in args.stages:
        train(runs, args.threads)
    if "sample" in args.stages:
        sample_and_score(runs, args.samples)
    if "report" in args.stages:
        report(runs, args.samples, ROOT / args.json, ROOT / args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
