"""Sampling speed and memory of the released model sizes on CPU (random weights, fp32, full 256 tokens).

Usage::

    python benchmarks/official_sizes.py [--models rar_b randar_l] [--batches 1 16] [--max-steps 8]
                                        [--threads 1] [--json official_sizes.json]
    python benchmarks/official_sizes.py --max-steps 0      # run every decode step (slow on CPU)

Each (model, batch) runs in a fresh Python process so its peak RSS is its own. The generator samples with
the preset's own settings (guidance on, so the decoded batch is 2x the image batch; RandAR-L uses 88
parallel-decoding steps, RAR one token per step = 256 steps). The tokenizer decode is not included.

With ``--max-steps N`` only the first N decode steps run; the total is *extrapolated*:
``first step + (S - 1) x mean(steps 2..N)``, linear per step. The first step includes allocating the static
KV cache (large at batch 16) and the prefill. Later steps attend over a longer cache, and RandAR's later
steps decode several tokens each (up to ~6 of 256 at 88 steps), so for RandAR the extrapolation
underestimates (batch 1, 8 of 88 steps: CPU time ~30% low against a full run); for RAR it is close.
``--max-steps 0`` measures everything. Rows are labelled "measured" or "extrapolated".
Wall time depends on other load on the machine; process CPU time (all threads) is reported beside it.

Memory: ``peak RSS`` is the process's ``ru_maxrss`` (weights, temporaries of the random initialisation,
sampling); ``sampling ΔRSS`` is the peak resident size seen while sampling (polled every 2 ms from
``/proc/self/statm``) minus the resident size just before sampling — the KV cache and activations. Torch's
CPU allocations are invisible to ``tracemalloc``, hence RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def max_rss_mb() -> float:
    """Peak resident set size of this process so far in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RSSPoller:
    """Background thread recording the highest RSS while active (torch ops release the GIL)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.interval)

    def __enter__(self) -> RSSPoller:
        self.peak = rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


class _Stop(Exception):
    """Raised from the step callback to end decoding after ``max_steps`` steps."""


def _total(steps: list[float], total_steps: int) -> float:
    """All ``total_steps`` from the timed ones: measured sum, or first + (S - 1) x mean of the later ones."""
    if len(steps) == total_steps:
        return sum(steps)
    if len(steps) >= 2:
        return steps[0] + (total_steps - 1) * sum(steps[1:]) / len(steps[1:])
    return steps[0] * total_steps


def run_one(model_name: str, batch: int, max_steps: int, threads: int, seed: int) -> dict[str, Any]:
    """Build ``model_name`` with random weights and time sampling ``batch`` images (this process)."""
    import torch

    from anyorder.hub import build_model
    from anyorder.models import get_preset
    from anyorder.sampling import decode, generation_job, model_sampling

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rss_import = rss_mb()
    t0 = time.perf_counter()
    model = build_model(model_name).eval()
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    T = model.seq_len
    gen = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, model.num_classes, (batch,), generator=gen)
    policy = model_sampling(model)  # the release's settings
    plan = policy.plan(T)
    orders = policy.orders(model, batch, gen)
    total_steps = len(plan)
    run_steps = total_steps if max_steps <= 0 else min(max_steps, total_steps)
    stamps: list[float] = []
    cpu_stamps: list[float] = []

    def on_step(done: int, _tokens: object = None) -> None:
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())
        if len(stamps) >= run_steps and len(stamps) < total_steps:
            raise _Stop

    rss_before = rss_mb()
    with torch.no_grad(), RSSPoller() as poll:
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            decode(generation_job(model, classes, policy, orders=orders, generator=gen), on_step)
        except _Stop:
            pass
    steps = [b - a for a, b in zip([start, *stamps[:-1]], stamps)]
    cpu_steps = [b - a for a, b in zip([cpu_start, *cpu_stamps[:-1]], cpu_stamps)]
    measured = run_steps == total_steps
    total_s, cpu_s = (_total(x, total_steps) for x in (steps, cpu_steps))
    return {
        "model": model_name, "family": model.family, "params_M": round(n_params / 1e6, 1), "batch": batch,
        "decoded_batch": batch * (2 if policy.guidance().enabled else 1), "tokens": T, "total_steps": total_steps,
        "timed_steps": len(steps), "kind": "measured" if measured else "extrapolated",
        "first_step_s": round(steps[0], 4),
        "mean_later_step_s": round(sum(steps[1:]) / len(steps[1:]), 4) if len(steps) > 1 else None,
        "total_s": round(total_s, 2), "per_image_s": round(total_s / batch, 2),
        "cpu_total_s": round(cpu_s, 2), "cpu_per_image_s": round(cpu_s / batch, 2),
        "rss_import_MB": round(rss_import), "rss_before_sampling_MB": round(rss_before),
        "sampling_delta_rss_MB": round(poll.peak - rss_before), "peak_rss_MB": round(max_rss_mb()),
        "build_s": round(build_s, 1), "threads": threads, "dtype": "float32",
        "sampling": dict(get_preset(model_name).sampling), "torch": torch.__version__,
    }


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the result rows."""
    head = ("| model | params | batch (decoded) | steps timed / total | s per image | CPU s per image | "
            "s per batch | first step s (cache + prefill) | later step s | sampling ΔRSS MB | peak RSS MB | |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        later = "-" if r["mean_later_step_s"] is None else f"{r['mean_later_step_s']:.3f}"
        lines.append(
            f"| {r['model']} | {r['params_M']:.1f}M | {r['batch']} ({r['decoded_batch']}) | "
            f"{r['timed_steps']} / {r['total_steps']} | {r['per_image_s']:.2f} | {r['cpu_per_image_s']:.2f} | "
            f"{r['total_s']:.1f} | "
            f"{r['first_step_s']:.3f} | {later} | {r['sampling_delta_rss_MB']} | {r['peak_rss_MB']} | "
            f"{r['kind']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["rar_b", "randar_l"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    p.add_argument("--max-steps", type=int, default=8,
                   help="time only the first N decode steps and extrapolate (0: run all steps)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="official_sizes.json", help="where to write the results")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:  # one (model, batch) in this process; result as JSON on stdout
        print(json.dumps(run_one(args.models[0], args.batches[0], args.max_steps, args.threads, args.seed)))
        return
    rows = []
    for name in args.models:
        for b in args.batches:
            cmd = [sys.executable, __file__, "--worker", "--models", name, "--batches", str(b),
                   "--max-steps", str(args.max_steps), "--threads", str(args.threads), "--seed", str(args.seed)]
            print(f"running {name} batch {b} ...", file=sys.stderr, flush=True)
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise SystemExit(f"{name} batch {b} failed:\n{res.stderr}")
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(table(rows))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
