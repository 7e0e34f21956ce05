"""Sampling throughput on one device: RAR-B … XXL img/s (random weights, batch 128, classifier-free guidance,
KV cache; fp32 / bf16, eager / compiled) beside RAR's Table 5 (A100), and RandAR-L at 88 vs 256 steps.

Run by ``benchmarks/device_check.sh`` (which first runs the test suite on the device). Every figure is the
generator alone (codes, no tokenizer decode), timed on the second of two generations (the first compiles /
warms up; eager RAR's warm-up stops after a few steps, a compiled one runs whole so that the step of every
attention window is compiled) with ``torch.cuda.synchronize``. A wall-clock ``--budget-s`` cuts short the
configuration running when it is spent and skips the rest (all listed as skipped; the JSON is rewritten after
every configuration). ``--smoke``: tiny models, batch 4, the ``eager`` compile backend — a CPU check that the
script runs, in well under a minute.

    python benchmarks/device_check.py --json out.json             # on a GPU
    python benchmarks/device_check.py --smoke --json /tmp/dc.json  # anywhere
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import time
from pathlib import Path
from typing import Any

import torch

from anyorder.hub import build_model
from anyorder.models import get_family, get_preset
from anyorder.sampling.decode import decode
from anyorder.sampling.job import generation_job
from anyorder.sampling.policy import sampling_config

TABLE5_A100 = {"rar_b": 17.0, "rar_l": 15.0, "rar_xl": 8.3, "rar_xxl": 6.4}  # img/s, RAR paper Table 5
SMOKE = {
    "rar_b": {"family": "rar", "dim": 64, "depth": 2, "n_head": 4, "mlp_hidden": 128, "seq_len": 16,
              "codebook_size": 32, "num_classes": 10, "pos_extra": 4, "timestep_extra": 4},
    "rar_l": {"family": "rar", "dim": 96, "depth": 2, "n_head": 4, "mlp_hidden": 192, "seq_len": 16,
              "codebook_size": 32, "num_classes": 10, "pos_extra": 4, "timestep_extra": 4},
    "randar_l": {"family": "randar", "dim": 64, "depth": 2, "n_head": 4, "seq_len": 64, "codebook_size": 32,
                 "num_classes": 10, "multiple_of": 32},
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class _Stop(Exception):
    pass


class _OutOfTime(Exception):
    pass


@contextlib.contextmanager
def _deadline(seconds: float):
    """Raise :class:`_OutOfTime` inside the block once ``seconds`` have passed (SIGALRM; the main thread of a
    Unix process): a compile or generation that would overrun the budget is cut short, not waited for."""
    if seconds <= 0:
        raise _OutOfTime

    def _fire(*_: object) -> None:
        raise _OutOfTime

    old = signal.signal(signal.SIGALRM, _fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(name: str, device: torch.device, dtype: torch.dtype, smoke: bool):
    """Random weights built directly on the device (no CPU init of a billion parameters)."""
    cfg = SMOKE[name] if smoke else {"family": get_preset(name).family, **get_preset(name).model}
    with torch.device(device):
        model = build_model(cfg)
    model.reset_buffers()
    with torch.no_grad():  # the official init zeroes adaLN and heads: give them weights so every layer computes
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.02)
    return model.to(dtype).eval()


@torch.no_grad()
def _time_generation(model, batch: int, steps: int | None, compile: Any, warm_steps: int | None) -> float:
    """Seconds for one generation of ``batch`` images after a warm-up (a full one, or ``warm_steps`` steps)."""
    device = model.device
    fam = model.family
    parallel = get_family(fam).can("parallel")
    policy = sampling_config(fam, {"guidance_scale": 4.0, **({"steps": steps} if parallel else {})})
    classes = torch.arange(batch, device=device) % model.num_classes
    g = torch.Generator(device=device).manual_seed(0)
    orders = model.sampling_orders(batch, g)
    job = generation_job(model, classes, policy, orders=orders, generator=g)

    def stop_after(done: int, _out: torch.Tensor) -> None:
        if warm_steps is not None and done >= warm_steps:
            raise _Stop

    try:
        decode(job, stop_after, compile=compile)
    except _Stop:
        pass
    _sync(device)
    t = time.perf_counter()
    decode(job, compile=compile)
    _sync(device)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="default 128 (smoke: 4)")
    ap.add_argument("--sizes", nargs="+", default=None, help="RAR presets (default rar_b rar_l rar_xl rar_xxl)")
    ap.add_argument("--budget-s", type=float, default=330.0, help="skip what is left after this many seconds")
    ap.add_argument("--json", type=Path, default=Path(os.environ["OUT"]) / "device_check.json"
                    if os.environ.get("OUT") else None)
    args = ap.parse_args()
    device = torch.device(args.device)
    batch = args.batch or (4 if args.smoke else 128)
    sizes = args.sizes or (["rar_b", "rar_l"] if args.smoke else list(TABLE5_A100))
    compile_backend: Any = "eager" if args.smoke else True
    torch.backends.cuda.matmul.allow_tf32 = True  # as the official samplers (and A100 fp32 matmuls) run
    torch.backends.cudnn.allow_tf32 = True
    start = time.perf_counter()
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "batch": batch, "smoke": args.smoke, "guidance_scale": 4.0,
        "note": "generator only (codes), second of two runs; Table 5 is the RAR paper's A100 img/s",
        "rar": [], "randar": {}, "skipped": [],
    }

    def save() -> None:  # after every row: a run cut short by an outer timeout still leaves its rows
        out["total_seconds"] = time.perf_counter() - start
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=1))

    def within_budget(tag: str, run) -> None:  # noqa: ANN001 - a no-argument callable
        """``run()`` if budget is left, cut short when it runs out (listed under ``skipped`` either way)."""
        try:
            with _deadline(args.budget_s - (time.perf_counter() - start)):
                run()
        except _OutOfTime:
            out["skipped"].append(tag)
            print(f"skipped (budget spent): {tag}", flush=True)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        save()

    def rar(name: str, dtype_name: str, compiled: bool) -> None:
        def run() -> None:
            model = _model(name, device, DTYPES[dtype_name], args.smoke)
            # compiled: warm up a whole generation, so every attention window's step is compiled before timing
            sec = _time_generation(model, batch, None, compile_backend if compiled else False,
                                   warm_steps=None if compiled else 8)
            row = {"model": name, "dtype": dtype_name, "compiled": compiled, "seconds": sec,
                   "img_per_s": batch / sec, "table5_a100_img_per_s": TABLE5_A100.get(name)}
            out["rar"].append(row)
            print(json.dumps(row), flush=True)

        within_budget(f"{name} {dtype_name} {'compiled' if compiled else 'eager'}", run)

    def randar(dtype_name: str, compiled: bool) -> None:
        name, mode = "randar_l", f"{dtype_name}_{'compiled' if compiled else 'eager'}"

        def run() -> None:
            model = _model(name, device, DTYPES[dtype_name], args.smoke)
            T = model.seq_len
            few = max(1, round(88 * T / 256))  # 88 of 256 steps: the paper's setting, scaled to smoke grids
            t_all = _time_generation(model, batch, T, compile_backend if compiled else False, warm_steps=None)
            t_few = _time_generation(model, batch, few, compile_backend if compiled else False, warm_steps=None)
            out["randar"][mode] = {"steps": [T, few], "seconds": [t_all, t_few], "speedup": t_all / t_few,
                                   "target_speedup": 2.5}
            print(json.dumps({name: out["randar"][mode]}), flush=True)

        within_budget(f"{name} {mode}", run)

    # cheapest and most informative first, so a spent budget skips the tail: eager RAR, RandAR, then compiled
    for name in sizes:
        for dtype_name in ("fp32", "bf16"):
            rar(name, dtype_name, False)
    randar("bf16", False)
    for name in sizes:
        rar(name, "bf16", True)
    randar("bf16", True)
    for name in sizes:
        rar(name, "fp32", True)
    save()
    if args.json:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
