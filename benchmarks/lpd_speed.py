"""Few-step decoding speed: LPD against RandAR and RAR on one machine, and our LPD sampler against the official.

Part 1 (``families``): time per image at batch 1 and batch 64 (with classifier-free guidance: 2x the rows) for
LPD at 20 and 32 steps, RandAR at 88 and 256 steps and RAR at 256, every model of the same width and depth
(default 512 wide, 8 blocks, 8 heads, 16x16 tokens, 16,384 codes: the step counts and the codebook of the
ImageNet releases, a model small enough for a CPU), random weights, one script, alternating repetitions.

Part 2 (``official``): mit-han-lab/lpd's own ``LPD.sample_tokens`` (imported at run time from a checkout,
never copied here; its one hard-coded ``device = "cuda"`` is pointed at the model's device when the module is
loaded, and ``timm``'s ``Mlp`` / ``DropPath`` / ``use_fused_attn`` are stood in for when timm is absent) against
:func:`anyorder.generate` on the same weights (the official model, noised, loaded through our official-format
reader): same greedy ids first (top-k 1, guidance 4 linear, the same orders and group plan), then timed at
temperature 1, median of per-repetition ratios::

    git clone https://github.com/mit-han-lab/lpd /tmp/official/mit-han-lab+lpd
    python benchmarks/lpd_speed.py --official /tmp/official --threads 2 --json benchmarks/lpd_speed.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kv_cache_speed import environment, markdown_table  # noqa: E402
from make_fixture_twins import _TimmMlp  # noqa: E402

from anyorder.hub import load_official  # noqa: E402
from anyorder.models import build_model, get_family  # noqa: E402
from anyorder.models.lpd.plans import group_sizes  # noqa: E402
from anyorder.sampling import generate  # noqa: E402

RUNS = [("lpd", 20), ("lpd", 32), ("randar", 88), ("randar", 256), ("rar", 256)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fns: dict[str, Callable[[], object]], reps: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each function, alternating A B C ... per repetition, after one warm-up call each."""
    for f in fns.values():
        f()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            _sync(device)
            t = time.perf_counter()
            f()
            _sync(device)
            out[k].append(time.perf_counter() - t)
    return out


def _model(family: str, dim: int, depth: int, heads: int, tokens: int, codes: int, device: torch.device) -> nn.Module:
    shape = {"dim": dim, "depth": depth, "n_head": heads, "seq_len": tokens, "codebook_size": codes,
             "num_classes": 1000}
    if family == "rar":
        shape |= {"mlp_hidden": 4 * dim}
    torch.manual_seed(0)
    model = build_model({"family": family, **shape}, device=device).eval()
    with torch.no_grad():  # official inits zero some layers (adaLN, RandAR's head): give every weight noise
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


@torch.no_grad()
def families(args: argparse.Namespace, device: torch.device) -> list[dict]:
    models = {f: _model(f, args.dim, args.depth, args.heads, args.tokens, args.codes, device)
              for f in {f for f, _ in RUNS}}
    rows = []
    for batch in args.batches:
        classes = torch.arange(batch, device=device) % 1000
        fns = {}
        for fam, steps in RUNS:
            kw = {"guidance_scale": 4.0} | ({"steps": steps} if get_family(fam).can("parallel") else {})
            fns[f"{fam} {steps}"] = (lambda m=models[fam], kw=kw, c=classes: generate(m, c, seed=0, **kw))
        times = _timed(fns, args.reps, device)
        for name, t in times.items():
            fam, steps = name.split()
            rows.append({"family": fam, "steps": int(steps), "batch": batch,
                         "ms_per_image": round(1e3 * statistics.median(t) / batch, 2),
                         "seconds": [round(x, 4) for x in t]})
    return rows


# ---- the official sampler -----------------------------------------------------------------------------------
def official_lpd(root: Path) -> types.ModuleType:
    """mit-han-lab/lpd's ``models/lpd.py`` imported from a checkout, its ``device = "cuda"`` pointed at the
    model's device (the only change), with stand-ins for timm where it is not installed."""
    repo = root / "mit-han-lab+lpd"
    if not (repo / "models" / "lpd.py").is_file():
        raise FileNotFoundError(f"{repo}/models/lpd.py not found: clone github.com/mit-han-lab/lpd there")
    try:
        import timm.layers  # noqa: F401
    except Exception:  # noqa: BLE001 - timm absent: the three names models/block.py takes from it
        timm, layers = types.ModuleType("timm"), types.ModuleType("timm.layers")
        layers.Mlp, layers.DropPath, layers.use_fused_attn = _TimmMlp, nn.Identity, lambda: True
        timm.layers = layers
        sys.modules.update({"timm": timm, "timm.layers": layers})
    sys.path.insert(0, str(repo))
    source = (repo / "models" / "lpd.py").read_text()
    hard = '\n        device = "cuda"\n'  # the first line of sample_tokens
    if source.count(hard) != 1:
        raise RuntimeError(f"{repo}/models/lpd.py changed: expected one line `device = \"cuda\"` in sample_tokens")
    source = source.replace(hard, "\n        device = self.pos_embed.device\n")
    spec = importlib.util.spec_from_loader("models.lpd", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules["models.lpd"] = module
    exec(compile(source, str(repo / "models" / "lpd.py"), "exec"), module.__dict__)
    return module


@torch.no_grad()
def against_official(args: argparse.Namespace, device: torch.device, tmp: Path) -> dict:
    lpd = official_lpd(Path(args.official))
    torch.manual_seed(0)
    theirs = lpd.LPD(img_size=16 * int(args.tokens ** 0.5), vqgan_stride=16, decoder_embed_dim=args.dim,
                     decoder_depth=args.depth, decoder_num_heads=args.heads, norm_layer=_layernorm,
                     vqgan_vocab_size=args.codes, attn_dropout=0.0, proj_dropout=0.0).to(device).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    torch.save({"model": theirs.state_dict()}, tmp / "lpd.pth")
    ours = load_official(tmp / "lpd.pth", config={"decoder_embed_dim": args.dim, "decoder_depth": args.depth,
                                                  "decoder_num_heads": args.heads, "vqgan_vocab_size": args.codes,
                                                  "img_size": 16 * int(args.tokens ** 0.5)}, device=device).eval()
    T, B = args.tokens, args.official_batch
    plan = group_sizes(T, args.steps)
    classes = torch.arange(B, device=device) % 1000
    g = torch.Generator().manual_seed(0)
    orders = torch.stack([torch.randperm(T, generator=g) for _ in range(B)]).to(device)
    mask = _block_causal([1] + plan, device)

    def official(top_k: int = 0) -> torch.Tensor:
        return theirs.sample_tokens(B, cfg=4.0, cfg_schedule="linear", labels=classes, temperature=1.0,
                                    attn_mask=mask, top_k=top_k, group_sizes=plan, orders=orders)

    def anyorder(top_k: int = 0) -> torch.Tensor:
        return generate(ours, classes, orders=orders, steps=args.steps, guidance_scale=4.0, top_k=top_k,
                        order="random", generator=torch.Generator(device).manual_seed(1)).reshape(B, -1)

    same = torch.equal(official(1), anyorder(1))
    if not same:
        raise AssertionError("the official and our greedy ids differ: not the same model, stopping")
    times = _timed({"official": official, "anyorder": anyorder}, args.reps, device)
    ratios = [a / b for a, b in zip(times["official"], times["anyorder"])]
    return {"batch": B, "steps": args.steps, "plan": plan, "greedy_ids_equal": same,
            "ms_per_image": {k: round(1e3 * statistics.median(v) / B, 2) for k, v in times.items()},
            "official_over_anyorder": round(statistics.median(ratios), 3),
            "seconds": {k: [round(x, 4) for x in v] for k, v in times.items()}}


def _layernorm(dim: int, **kw: object) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6, **kw)


def _block_causal(blocks: list[int], device: torch.device) -> torch.Tensor:
    """The official ``engine.create_block_causal_mask``: 0 where a row of block b sees a column of blocks <= b."""
    n = sum(blocks)
    mask = torch.full((n, n), float("-inf"), device=device)
    start = 0
    for size in blocks:
        mask[start : start + size, : start + size] = 0
        start += size
    return mask


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="*", default=["families", "official"], choices=["families", "official"])
    ap.add_argument("--official", default="/tmp/official", help="folder holding a checkout mit-han-lab+lpd")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--codes", type=int, default=16384)
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 64])
    ap.add_argument("--steps", type=int, default=20, help="LPD steps of the official comparison")
    ap.add_argument("--official-batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result: dict = {"environment": environment(torch.get_num_threads()), "shape": {
        k: getattr(args, k) for k in ("dim", "depth", "heads", "tokens", "codes")}}
    if "families" in args.parts:
        result["families"] = families(args, device)
        print(markdown_table(["model", "steps", "batch", "ms / image"],
                             [[r["family"], r["steps"], r["batch"], r["ms_per_image"]] for r in result["families"]]))
    if "official" in args.parts:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            result["official"] = against_official(args, device, Path(tmp))
        o = result["official"]
        print(f"LPD {o['steps']} steps, batch {o['batch']}: official {o['ms_per_image']['official']} ms / image, "
              f"anyorder {o['ms_per_image']['anyorder']} ms / image: official / ours = {o['official_over_anyorder']}")
    if args.json:  # parts not run this time are kept from an existing file, each with its environment
        path = Path(args.json)
        kept = json.loads(path.read_text()) if path.is_file() else {}
        if kept.get("shape") != result["shape"]:
            kept = {}  # another shape: nothing of it is kept
        shared = kept.pop("environment", None)  # files written before the parts had one each
        for part in ("families", "official"):
            if part in result:
                kept[part], kept[f"{part}_environment"] = result[part], result["environment"]
            elif part in kept and shared is not None:
                kept.setdefault(f"{part}_environment", shared)
        kept["shape"] = result["shape"]
        path.write_text(json.dumps(kept, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
