"""Sampling throughput on one device: RAR-B … XXL img/s (random weights, batch 128, classifier-free guidance,
KV cache; fp32 / bf16, eager / compiled) beside RAR's Table 5 (A100), RandAR-L at 88 vs 256 steps, and LPD-L/XL
with their release policy (20 steps, locality orders) at batch 1 (latency) and 64 (throughput) beside the LPD
README's A100 figures.

Run by ``benchmarks/device_check.sh`` (after the CUDA cases of the device-parametrised tests). Every figure is
the generator alone (codes, no tokenizer decode), timed on the second of two generations (the first compiles /
warms up; eager RAR's warm-up stops after a few steps, a compiled one runs whole so that the step of every
attention window is compiled) with ``torch.cuda.synchronize``.

**Each configuration runs in its own process** (this script with ``--one TAG``): a budget that runs out kills
that process — never a signal inside a CUDA-graph capture or a compile — and an out-of-memory or a crash costs
one row, not the run. ``--budget-s`` is the wall-clock budget of all rows: a configuration gets what is left,
one that would start with less than ``--min-row-s`` is skipped; both are listed under ``skipped`` (``failed``
holds the rows whose process failed, with the end of its output). The JSON is rewritten after every row.

``--tf32`` (default) / ``--no-tf32``: TF32 matmuls for the fp32 rows, as ``anyorder sample --tf32`` (its
default) and the official samplers run; recorded in the JSON. ``--smoke``: tiny models, batch 4, the ``eager``
compile backend — a CPU check that the script runs, in about a minute.

    python benchmarks/device_check.py --json out.json             # on a GPU
    python benchmarks/device_check.py --smoke --json /tmp/dc.json  # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from anyorder.hub import build_model
from anyorder.models import get_family, get_preset
from anyorder.nn.device import resolve_device, tf32_mode
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
    "lpd_l": {"family": "lpd", "dim": 64, "depth": 2, "n_head": 4, "seq_len": 64, "codebook_size": 32,
              "num_classes": 10},
    "lpd_xl": {"family": "lpd", "dim": 96, "depth": 2, "n_head": 4, "seq_len": 64, "codebook_size": 32,
               "num_classes": 10},
}
# mit-han-lab/lpd README, A100, bf16, 20 steps: batch-1 latency (s) and batch-64 throughput (img/s)
LPD_TABLE_A100 = {"lpd_l": {"steps": 20, "latency_s": 0.28, "img_per_s": 139.11},
                  "lpd_xl": {"steps": 20, "latency_s": 0.41, "img_per_s": 75.20}}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class _Stop(Exception):
    pass


# ---- one configuration (the child process) --------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(name: str, device: torch.device, dtype: torch.dtype, smoke: bool):
    """Random weights built directly on the device (no CPU init of a billion parameters)."""
    cfg = SMOKE[name] if smoke else {"family": get_preset(name).family, **get_preset(name).model}
    model = build_model(cfg, device=device)
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


@torch.no_grad()
def _time_release(model, name: str, batch: int, compile: Any, reps: int) -> list[float]:
    """Seconds per generation of ``batch`` images with the preset's release policy (steps, guidance, order
    policy: LPD's protocol), the orders drawn before the clock starts (the official sampler reads them from
    pre-generated files); one warm-up generation, then ``reps`` timed ones."""
    device = model.device
    g = torch.Generator(device=device).manual_seed(0)
    classes = torch.arange(batch, device=device) % model.num_classes
    release = dict(get_preset(name).sampling)
    release["steps"] = min(release["steps"], model.seq_len)
    out = []
    for i in range(reps + 1):
        job = generation_job(model, classes, release, generator=g)  # orders drawn here, outside the clock
        _sync(device)
        t = time.perf_counter()
        decode(job, compile=compile)
        _sync(device)
        if i:
            out.append(time.perf_counter() - t)
    return out


def run_one(tag: str, device: torch.device, batch: int, smoke: bool) -> dict[str, Any]:
    """The row of configuration ``tag``: ``"rar_b fp32 eager"``, ``"randar_l bf16 compiled"``, or a release-policy
    latency row ``"lpd_l bf16 eager b1+64"`` (batch 1 latency and batch 64 throughput, LPD's protocol)."""
    name, dtype_name, mode, *batches = tag.split()
    compiled = mode == "compiled"
    backend: Any = ("eager" if smoke else True) if compiled else False
    model = _model(name, device, DTYPES[dtype_name], smoke)
    peak = {}
    if batches:
        reps = 2 if smoke else 5
        row = {"model": name, "dtype": dtype_name, "compiled": compiled,
               "steps": min(get_preset(name).sampling["steps"], model.seq_len), "policy": get_preset(name).sampling,
               "paper_a100": LPD_TABLE_A100.get(name)}
        for b in (int(x) for x in batches[0].lstrip("b").split("+")):
            sec = sorted(_time_release(model, name, b, backend, reps))
            row[f"batch{b}"] = {"median_s": sec[len(sec) // 2], "s_per_image": sec[len(sec) // 2] / b,
                                "img_per_s": b / sec[len(sec) // 2], "seconds": sec}
    elif get_family(model.family).can("parallel"):
        T = model.seq_len
        few = max(1, round(88 * T / 256))  # 88 of 256 steps: the paper's setting, scaled to smoke grids
        t_all = _time_generation(model, batch, T, backend, warm_steps=None)
        t_few = _time_generation(model, batch, few, backend, warm_steps=None)
        row = {"model": name, "dtype": dtype_name, "compiled": compiled, "steps": [T, few],
               "seconds": [t_all, t_few], "speedup": t_all / t_few, "target_speedup": 2.5}
    else:
        # compiled: warm up a whole generation, so every attention window's step is compiled before timing
        sec = _time_generation(model, batch, None, backend, warm_steps=None if compiled else 8)
        row = {"model": name, "dtype": dtype_name, "compiled": compiled, "seconds": sec,
               "img_per_s": batch / sec, "table5_a100_img_per_s": TABLE5_A100.get(name)}
    if device.type == "cuda":
        peak = {"peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)}
    return {**row, **peak}


# ---- the driver -----------------------------------------------------------------------------------------------
def configurations(sizes: list[str], smoke: bool) -> list[str]:
    """Cheapest and most informative first, so a spent budget skips the tail: eager RAR (fp32, bf16), eager
    RandAR, compiled bf16, compiled RandAR, compiled fp32."""
    rows = [f"{n} {d} eager" for n in sizes for d in ("fp32", "bf16")]
    rows += ["randar_l bf16 eager"]
    rows += ["lpd_l bf16 eager b1+64", "lpd_xl bf16 eager b1+64"]  # LPD's protocol: bf16, batch 1 and 64
    rows += [f"{n} bf16 compiled" for n in sizes]
    rows += ["randar_l bf16 compiled", "lpd_l bf16 compiled b1+64"]
    rows += [f"{n} fp32 compiled" for n in sizes]
    return rows


def _child(tag: str, args: argparse.Namespace, row_file: Path, timeout: float) -> tuple[str, Any]:
    """Run ``tag`` in a process of its own for at most ``timeout`` s: ``("row", row)``, ``("timeout", None)`` or
    ``("failed", the end of its output)``."""
    cmd = [sys.executable, __file__, "--one", tag, "--device", args.device, "--batch", str(args.batch),
           "--row-json", str(row_file), "--tf32" if args.tf32 else "--no-tf32", *(["--smoke"] if args.smoke else [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: a timeout kills compile workers too
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return "timeout", None
    if proc.returncode != 0 or not row_file.is_file():
        return "failed", (output or "")[-2000:]
    return "row", json.loads(row_file.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=None, help="default 128 (smoke: 4)")
    ap.add_argument("--sizes", nargs="+", default=None, help="RAR presets (default rar_b rar_l rar_xl rar_xxl)")
    ap.add_argument("--budget-s", type=float, default=330.0, help="wall-clock budget of all rows")
    ap.add_argument("--min-row-s", type=float, default=None,
                    help="skip a row that would start with less than this left (default 45; smoke: 5)")
    ap.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                    help="TF32 for fp32 work on CUDA (default on, as `anyorder sample`)")
    ap.add_argument("--json", type=Path, default=Path(os.environ["OUT"]) / "device_check.json"
                    if os.environ.get("OUT") else None)
    ap.add_argument("--one", metavar="TAG", help=argparse.SUPPRESS)  # the child: one configuration
    ap.add_argument("--row-json", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = resolve_device(args.device, "--device")
    args.device = str(device)
    args.batch = args.batch or (4 if args.smoke else 128)
    if args.one:
        with tf32_mode(args.tf32, device):
            row = run_one(args.one, device, args.batch, args.smoke)
        args.row_json.write_text(json.dumps(row))
        print(json.dumps(row), flush=True)
        return 0

    sizes = args.sizes or (["rar_b", "rar_l"] if args.smoke else list(TABLE5_A100))
    min_row = args.min_row_s if args.min_row_s is not None else (5.0 if args.smoke else 45.0)
    start = time.perf_counter()
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "batch": args.batch, "smoke": args.smoke, "guidance_scale": 4.0,
        "tf32": args.tf32 and device.type == "cuda",
        "note": "generator only (codes), second of two runs, each configuration in its own process; Table 5 is "
                "the RAR paper's A100 img/s",
        "rar": [], "randar": {}, "lpd": [], "skipped": [], "failed": {},
    }

    def save() -> None:  # after every row: a run cut short by an outer timeout still leaves its rows
        out["total_seconds"] = time.perf_counter() - start
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(out, indent=1))

    with tempfile.TemporaryDirectory() as tmp:
        for i, tag in enumerate(configurations(sizes, args.smoke)):
            left = args.budget_s - (time.perf_counter() - start)
            if left < min_row:
                out["skipped"].append(tag)
                print(f"skipped (budget spent): {tag}", flush=True)
                continue
            kind, result = _child(tag, args, Path(tmp) / f"row{i}.json", left)
            if kind == "row":
                if len(tag.split()) == 4:
                    out["lpd"].append(result)
                elif tag.startswith("randar"):
                    out["randar"][f"{result['dtype']}_{'compiled' if result['compiled'] else 'eager'}"] = result
                else:
                    out["rar"].append(result)
                print(json.dumps(result), flush=True)
            elif kind == "timeout":
                out["skipped"].append(tag)
                print(f"skipped (budget spent while running): {tag}", flush=True)
            else:
                out["failed"][tag] = result
                print(f"FAILED: {tag}\n{result}", file=sys.stderr, flush=True)
            save()
    save()
    if args.json:
        print(f"wrote {args.json}")
    return 1 if out["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
