"""One training step — forward, backward, AdamW step, random orders — of anyorder against the official RAR and
RandAR implementations, same shapes and same weights, timed side by side in one process.

The official code is imported at run time from checkouts (never copied here), as ``make_fixture_twins.py``
does (its importer is reused: timm's ``Mlp`` stand-in when timm cannot import, ``BaseModel`` only)::

    git clone https://github.com/bytedance/1d-tokenizer /tmp/official/bytedance+1d-tokenizer
    git clone https://github.com/ziqipang/RandAR /tmp/official/ziqipang+RandAR
    python benchmarks/train_speed.py --official /tmp/official --threads 1 --reps 5

(``--rar-repo`` / ``--randar-repo`` point at checkouts elsewhere.) Model: width 256, 4 layers, 4 heads, 256 tokens
(16x16), codebook 1024, 1000 classes, batch 8; RAR with random-order probability r = 0.5 and class dropout 0.1
(the official ``sample_orders`` / ``preprocess_condition``), RandAR with a random order per sample. Each side
uses its trainer's AdamW (lr 1e-4, betas (0.9, 0.96), weight decay 0.03): ours ``make_optimizer``, RandAR's
``configure_optimizer``, 1d-tokenizer's plain ``AdamW``. Reported: image tokens per second, the median of
per-repetition ratios (official time / ours), and the fraction of this machine's measured matmul peak in the
run's precision (one ``n x n`` matmul, same thread count) that the step's matmul FLOPs reach. ``--compile``
adds ``torch.compile``-d steps of both sides (slow to build on a shared CPU); ``--precision bf16`` runs both
forwards under bf16 autocast.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kv_cache_speed import environment, markdown_table  # noqa: E402
from make_fixture_twins import AttrDict, official_modules  # noqa: E402

from anyorder.models import RAR, RandAR, get_family  # noqa: E402
from anyorder.nn import orders as orders_lib  # noqa: E402
from anyorder.training.config import TrainConfig  # noqa: E402
from anyorder.training.loop import TrainingLoss, autocast_context  # noqa: E402
from anyorder.training.optim import make_optimizer  # noqa: E402

SHAPE = {"dim": 256, "depth": 4, "heads": 4, "T": 256, "V": 1024, "C": 1000, "batch": 8}
QUICK = {"dim": 64, "depth": 2, "heads": 4, "T": 64, "V": 128, "C": 10, "batch": 4}
R, CLASS_DROP = 0.5, 0.1
CPU = torch.device("cpu")


def _noise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)


LR, BETAS, WD = 1e-4, (0.9, 0.96), 0.03


def _official_optim(family: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The AdamW each official trainer builds: RandAR's ``configure_optimizer`` (fused wherever the installed
    torch has ``fused``), 1d-tokenizer's ``create_optimizer`` a default ``AdamW`` (the per-tensor loop off CUDA)
    over its two decay groups (the grouping does not change the step's cost)."""
    if family == "randar":
        return model.configure_optimizer(lr=LR, weight_decay=WD, beta1=BETAS[0], beta2=BETAS[1], max_grad_norm=1.0)
    return torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WD)


def build_pair(off: dict, family: str, s: dict, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The official model (noised official init) and ours loaded from its state dict."""
    torch.manual_seed(seed)
    if family == "rar":
        gen = {"hidden_size": s["dim"], "num_hidden_layers": s["depth"], "num_attention_heads": s["heads"],
               "intermediate_size": 4 * s["dim"], "image_seq_len": s["T"], "condition_num_classes": s["C"],
               "dropout": 0.0, "attn_drop": 0.0}
        theirs = off["rar"].RAR(AttrDict(model={"generator": gen, "vq_model": {"codebook_size": s["V"]}}))
        theirs.set_random_ratio(R)
        ours_cls, cfg = RAR, get_family("rar").official.config({**gen, "codebook_size": s["V"]}, "train_speed")
    else:
        theirs = off["randar_gpt"].RandARTransformer(
            dim=s["dim"], n_layer=s["depth"], n_head=s["heads"], multiple_of=256, vocab_size=s["V"],
            num_classes=s["C"], block_size=s["T"], token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0,
            attn_dropout_p=0.0, class_dropout_prob=CLASS_DROP, cls_token_num=1, rope_base=10000, norm_eps=1e-5,
            grad_checkpointing=False)
        ours_cls = RandAR
        cfg = get_family("randar").official.config(
            {"dim": s["dim"], "n_layer": s["depth"], "n_head": s["heads"], "block_size": s["T"], "vocab_size": s["V"],
             "num_classes": s["C"], "multiple_of": 256, "class_dropout_prob": CLASS_DROP}, "train_speed")
    _noise(theirs, seed)
    sd = {k: v.detach().clone() for k, v in theirs.state_dict().items() if "freqs_cis" not in k}
    ours = ours_cls(cfg)
    ours.load_state_dict(get_family(ours.family).official.convert_state_dict(sd))
    return theirs.train(), ours.train()


def steps(family: str, theirs: torch.nn.Module, ours: torch.nn.Module, s: dict, seed: int,
          compiled: bool = False, precision: str = "fp32",
          device: torch.device = CPU) -> dict[str, Callable[[], float]]:
    """One training step per side (fresh optimizers), each returning its loss. Ours is what ``anyorder train``
    runs: ``TrainingLoss`` (compiled whole when ``compiled``, as ``train.compile=true`` does) and
    ``make_optimizer``; the official side is its model's ``forward`` (``torch.compile``-d when ``compiled``) and
    the AdamW its trainer builds. ``precision="bf16"``: both forwards under bf16 autocast (the official trainers'
    ``mixed_precision: bf16``)."""
    B, T, V, C = s["batch"], s["T"], s["V"], s["C"]
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, V, (B, T), generator=g).to(device)
    classes = torch.randint(0, C, (B,), generator=g).to(device)
    opt_t = _official_optim(family, theirs)
    opt_o = make_optimizer(ours, TrainConfig(lr=LR, betas=BETAS, weight_decay=WD))
    their_fwd = torch.compile(theirs) if compiled else theirs
    ours.validate_inputs = False  # as the training loop: the data were validated once at load
    our_fwd = TrainingLoss(ours)
    our_fwd = torch.compile(our_fwd) if compiled else our_fwd
    base = torch.arange(T, device=device)

    def official() -> float:
        opt_t.zero_grad(set_to_none=True)
        with autocast_context(device, precision):
            if family == "rar":
                cond = theirs.preprocess_condition(classes.clone(), cond_drop_prob=CLASS_DROP)
                logits, labels = their_fwd(codes, cond, return_labels=True)
                loss = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), labels.reshape(-1))
            else:
                order = torch.stack([torch.randperm(T, device=device) for _ in range(B)])
                _, loss, _ = their_fwd(codes, classes, token_order=order, targets=codes)
        loss.backward()
        opt_t.step()
        return float(loss.detach())

    def anyorder() -> float:
        opt_o.zero_grad(set_to_none=True)
        drop = torch.rand(B, device=device) < CLASS_DROP
        cls = torch.where(drop, torch.full_like(classes, ours.null_class), classes)
        o = (orders_lib.training_orders(B, base, R) if family == "rar"
             else orders_lib.random_orders(B, T, device=device))
        with autocast_context(device, precision):
            loss = our_fwd(codes, cls, o)
        loss.backward()
        opt_o.step()
        return float(loss.detach())

    return {"official": official, "anyorder": anyorder}


def matmul_flops_per_step(model: torch.nn.Module, positions: int, s: dict) -> float:
    """Forward + backward matmul FLOPs: 6 per weight of every linear per position, plus attention
    (``QK^T`` and ``PV``: 4 * positions^2 * dim per layer forward, x3 with backward, causal half)."""
    lin = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return s["batch"] * (6 * lin * positions + 3 * 4 * positions**2 * s["dim"] * s["depth"] / 2)


def matmul_peak(n: int = 1024, reps: int = 5, dtype: torch.dtype = torch.float32,
                device: torch.device = CPU) -> float:
    """FLOP/s of one ``n x n`` matmul in ``dtype`` (bf16: what autocast's matmuls can reach)."""
    n = n if device.type == "cpu" else 8192  # a GPU needs a large matmul to reach its rate
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    best = min(_timed(lambda: a @ b, device) for _ in range(reps))
    return 2 * n**3 / best


def _timed(fn: Callable[[], object], device: torch.device = CPU) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", type=Path, default=Path("/tmp/official"),
                    help="folder with bytedance+1d-tokenizer and ziqipang+RandAR checkouts")
    ap.add_argument("--rar-repo", type=Path, help="1d-tokenizer checkout (default OFFICIAL/bytedance+1d-tokenizer)")
    ap.add_argument("--randar-repo", type=Path, help="RandAR checkout (default OFFICIAL/ziqipang+RandAR)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="training steps per timed repetition")
    ap.add_argument("--families", nargs="+", default=["rar", "randar"])
    ap.add_argument("--compile", action="store_true", help="also time torch.compile-d steps (both sides)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: both forwards under bf16 autocast (mixed precision, as the official trainers)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i] (the official checkouts must be on that machine)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    root = args.official
    if args.rar_repo or args.randar_repo:  # official_modules expects one folder holding both checkouts
        link = Path("/tmp/anyorder_official_links")
        link.mkdir(exist_ok=True)
        for name, repo in (("bytedance+1d-tokenizer", args.rar_repo), ("ziqipang+RandAR", args.randar_repo)):
            target = repo or root / name
            (link / name).unlink(missing_ok=True)
            (link / name).symlink_to(target.resolve())
        root = link
    off = official_modules(root)
    s = QUICK if args.quick else SHAPE
    device = torch.device(args.device)
    if device.type == "cuda":  # TF32 for what runs outside autocast, as anyorder train and the official trainers
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak = matmul_peak(dtype=torch.bfloat16 if args.precision == "bf16" else torch.float32, device=device)
    results, rows = {}, []
    modes = ["eager", "compiled"] if args.compile else ["eager"]
    for family in args.families:
        theirs, ours = (m.to(device) for m in build_pair(off, family, s, args.seed))
        fns: dict[str, Callable[[], float]] = {}
        for mode in modes:  # every variant in the same alternating rounds: all ratios are paired
            for side, fn in steps(family, theirs, ours, s, args.seed, mode == "compiled", args.precision,
                                  device).items():
                fns[f"{side} {mode}"] = fn
        for fn in fns.values():  # warm-up (and compilation)
            fn()
            fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        names = list(fns)
        for r in range(args.reps):
            for name in names if r % 2 == 0 else names[::-1]:
                times[name].append(_timed(lambda fn=fns[name]: [fn() for _ in range(args.steps)], device)
                                   / args.steps)
        tokens = s["batch"] * s["T"]
        positions = s["T"] + 2 if family == "rar" else 2 * s["T"] + 1
        flops = matmul_flops_per_step(ours, positions, s)
        res: dict = {k: {"step_s": statistics.median(v), "tokens_per_s": tokens / statistics.median(v),
                         "matmul_peak_fraction": flops / statistics.median(v) / peak, "all_s": v}
                     for k, v in times.items()}
        pairs = [(f"anyorder {m}", f"official {m}") for m in modes]
        if args.compile:
            pairs.append(("anyorder compiled", "official eager"))
        for ours_k, theirs_k in pairs:
            ratio = statistics.median(a / b for a, b in zip(times[theirs_k], times[ours_k]))
            # the fastest repetition of each side: least disturbed by other jobs on a shared machine
            best = min(times[theirs_k]) / min(times[ours_k])
            res[f"speedup {ours_k} vs {theirs_k}"] = {"median_ratio": ratio, "best_vs_best": best}
            rows.append([f"{family} {args.precision}", ours_k, theirs_k, f"{res[theirs_k]['tokens_per_s']:.0f}",
                         f"{res[ours_k]['tokens_per_s']:.0f}", f"{ratio:.2f}x", f"{best:.2f}x",
                         f"{res[ours_k]['matmul_peak_fraction']:.2f}"])
            print(rows[-1], flush=True)
        results[f"{family} {args.precision}"] = res
    print(markdown_table(["family, precision", "anyorder step", "official step", "official tok/s", "anyorder tok/s",
                          "anyorder speed-up (median of paired ratios)", "best vs best", "anyorder / matmul peak"],
                         rows))
    print(f"matmul peak ({args.precision}): {peak / 1e9:.1f} GFLOP/s ({args.threads} thread(s))")
    if args.json:
        env = {**environment(args.threads), "device": str(device),
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
        args.json.write_text(json.dumps({"shape": s, "reps": args.reps, "steps": args.steps,
                                         "precision": args.precision, "peak_flops": peak, "env": env,
                                         "results": results}, indent=1))


if __name__ == "__main__":
    main()
