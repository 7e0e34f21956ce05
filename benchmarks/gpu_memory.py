"""GPU memory of sampling per model, batch and dtype — weights + KV cache + the sampling step's working set —
and the largest batch that fits a 40 / 80 / 141 GB card. Arithmetic from the presets, no GPU needed.

- weights: the parameter count of the preset (built on the meta device) x 4 bytes (fp32) or 2 (bf16);
- KV cache: per layer ``2 (k, v) x rows x slots x D`` elements in the weights' dtype, ``rows`` = batch x 2 with
  classifier-free guidance; ``slots`` = RAR ``T + 2`` (cls, class, tokens), RandAR ``2T + 2`` (class, an
  instruction and a token per position, the static step's scratch slot), LPD ``T + 1`` (class, tokens);
- working set of the widest step: ``4 x rows x n x V`` fp32 values (the mixed logits, probabilities, the race's
  noise, the top-k / top-p copies), ``n`` the most tokens a step decodes under the default plan (RAR 1,
  RandAR 88 steps, LPD 20 steps);
- fits: ``weights + cache + working <= 0.9 x (card - 1.5 GiB)`` (1.5 GiB for the CUDA context and kernels
  such as cuBLAS workspaces, 10% for the caching allocator's fragmentation). The card sizes are read as
  GiB (40, 80, 141), close to what ``torch.cuda.get_device_properties().total_memory`` reports.

Not counted: the tokenizer's decode of the batch (it runs after the generator; the eager loop frees the
cache first, the compiled CUDA path keeps it for the next generation), activations of one step (rows x n x D
per layer, small beside the cache). ``benchmarks/device_check.py`` records each row's measured peak
(``peak_gib``) on the first GPU: compare it with this table.

    python benchmarks/gpu_memory.py                        # markdown tables
    python benchmarks/gpu_memory.py --json gpu_memory.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from anyorder.models import build_model, get_preset
from anyorder.models.lpd.plans import group_sizes
from anyorder.nn.schedules import parallel_decoding_schedule

GIB = 2**30
CARDS_GIB = (40, 80, 141)
CONTEXT_GIB, FILL = 1.5, 0.9
BATCHES = (1, 16, 32, 64, 128, 256)
BYTES = {"fp32": 4, "bf16": 2}
MODELS = ("rar_b", "rar_l", "rar_xl", "rar_xxl", "randar_l", "randar_xl", "lpd_l", "lpd_xl", "lpd_xxl")


def _slots_and_widest_step(family: str, T: int, release: dict) -> tuple[int, int]:
    """Cache slots and the most tokens one step decodes, as the module docstring says."""
    if family == "rar":
        return T + 2, 1
    if family == "randar":
        return 2 * T + 2, max(parallel_decoding_schedule(88, T))
    if family == "lpd":
        return T + 1, max(group_sizes(T, release["steps"]))
    raise ValueError(f"no memory model for family {family!r}: add its cache slots and widest step here")


def models() -> list[dict]:
    """Each model's shape facts: parameters, depth, width, cache slots, vocabulary, widest step."""
    out = []
    for name in MODELS:
        p = get_preset(name)
        m = build_model(name, device="meta")
        T, D = m.seq_len, p.model["dim"]
        slots, widest = _slots_and_widest_step(p.family, T, p.sampling)
        out.append({"model": name, "params": sum(t.numel() for t in m.parameters()), "depth": p.model["depth"],
                    "dim": D, "slots": slots, "vocab": m.codebook_size, "widest_step": widest})
    return out


def memory_gib(m: dict, batch: int, dtype: str, guided: bool = True) -> dict[str, float]:
    rows = batch * (2 if guided else 1)
    weights = m["params"] * BYTES[dtype]
    cache = m["depth"] * 2 * rows * m["slots"] * m["dim"] * BYTES[dtype]
    working = 4 * rows * m["widest_step"] * m["vocab"] * 4
    return {"weights": weights / GIB, "cache": cache / GIB, "working": working / GIB,
            "total": (weights + cache + working) / GIB}


def largest_batch(m: dict, dtype: str, card: float) -> int:
    budget = FILL * (card - CONTEXT_GIB)
    b = 0
    while memory_gib(m, b + 1, dtype)["total"] <= budget:
        b += 1
    return b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    for m in models():
        for dtype in BYTES:
            rows.append({**{k: m[k] for k in ("model", "params", "depth", "dim", "slots", "widest_step")},
                         "dtype": dtype,
                         "per_batch_gib": {b: {k: round(v, 3) for k, v in memory_gib(m, b, dtype).items()}
                                           for b in BATCHES},
                         "largest_guided_batch": {f"{c} GB": largest_batch(m, dtype, c) for c in CARDS_GIB}})
    print("| model | params | dtype | weights GiB | cache GiB / 1 image (guided) | batch 128: cache | batch 128: "
          "total | largest guided batch 40 / 80 / 141 GB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        one, b128 = r["per_batch_gib"][1], r["per_batch_gib"][128]
        fits = " / ".join(str(v) for v in r["largest_guided_batch"].values())
        print(f"| {r['model']} | {r['params'] / 1e6:.0f}M | {r['dtype']} | {one['weights']:.2f} | "
              f"{one['cache']:.3f} | {b128['cache']:.1f} | {b128['total']:.1f} | {fits} |")
    if args.json:
        args.json.write_text(json.dumps({"assumptions": {"cards_gib": CARDS_GIB, "context_gib": CONTEXT_GIB,
                                                         "fill": FILL, "guided": True}, "rows": rows}, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
