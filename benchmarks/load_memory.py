"""Peak memory (RSS) of loading a checkpoint: the old path (random init, then ``load_state_dict`` copies)
against the new one (``anyorder.hub.load_official``: meta-device build, ``assign=True``).

Random weights for the preset are written once to a temporary safetensors file (in a subprocess, so their
memory is gone before the measurements); each path then loads it in a fresh subprocess that reports its
peak resident set size (``ru_maxrss``, after reading every weight once so memory-mapped pages count) and
wall time. Writes a JSON of the numbers (``--json``).

    python benchmarks/load_memory.py                     # rar_xxl (~1.4B parameters, 5.6 GB fp32)
    python benchmarks/load_memory.py --preset rar_b --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(1)
mode, path, preset, dtype = sys.argv[1:5]
t = time.perf_counter()
if mode == "write":
    from safetensors.torch import save_file
    from anyorder.hub import build_model
    with torch.device("meta"):
        shapes = {k: (v.shape, v.dtype) for k, v in build_model(preset).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    save_file({k: (torch.randn(s, generator=g) * 0.02).to(d).contiguous() for k, (s, d) in shapes.items()}, path)
elif mode == "old":  # what load_official did before: random init, then a copy of every tensor into it
    from anyorder.hub import build_model
    from anyorder.io import load_state_dict
    model = build_model(preset)
    model.load_state_dict(load_state_dict(path))
    if dtype != "fp32":
        model = model.to(torch.bfloat16)
else:
    from anyorder.hub import load_official
    model = load_official(path, preset=preset, dtype=None if dtype == "fp32" else dtype)
n = 0
if mode != "write":  # read every weight once (as inference does), so memory-mapped pages count as resident
    n = sum(p.numel() for p in model.parameters())
    touched = sum(float(p.detach().float().abs().sum()) for p in model.parameters())
print(json.dumps({"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "seconds": time.perf_counter() - t, "params": n}))
"""


def _child(mode: str, path: Path, preset: str, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), preset, dtype], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="rar_xxl")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{args.preset}.safetensors"
        _child("write", path, args.preset, args.dtype)
        size = path.stat().st_size / 2**30
        old = _child("old", path, args.preset, args.dtype)
        new = _child("new", path, args.preset, args.dtype)
    result = {"preset": args.preset, "dtype": args.dtype, "checkpoint_gb": size, "params": new["params"],
              "old": old, "new": new, "peak_ratio_old_over_new": old["peak_rss_gb"] / new["peak_rss_gb"],
              "torch": torch.__version__, "load_average": list(__import__("os").getloadavg()),
              "parent_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    print(f"| path | peak RSS GB | seconds |\n|---|---|---|\n"
          f"| old (random init + load_state_dict copy) | {old['peak_rss_gb']:.2f} | {old['seconds']:.1f} |\n"
          f"| new (meta device + assign=True) | {new['peak_rss_gb']:.2f} | {new['seconds']:.1f} |\n"
          f"{args.preset}: {new['params'] / 1e9:.3f}B parameters, checkpoint {size:.2f} GB, "
          f"old/new peak {result['peak_ratio_old_over_new']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
