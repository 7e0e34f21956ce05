"""``anyorder demo`` and ``anyorder train``: run configs (a preset or YAML + dotted overrides) to trained models."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist

from anyorder.demo.run import run_demo
from anyorder.hub import build_model, save_pretrained
from anyorder.io import load_state_dict
from anyorder.training.config import load_run_config
from anyorder.training.loop import init_distributed, resolve_device, train

__all__ = ["add_run_commands"]


def _run_config(args: argparse.Namespace):
    source = args.config or f"demo_{args.model}"
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out_dir={args.out}")
    if getattr(args, "threads", None):
        overrides.append(f"threads={args.threads}")
    cfg = load_run_config(source, overrides)
    if args.config is None and cfg.family != args.model:
        raise ValueError(f"--model {args.model} but the config's preset is {cfg.model_preset}")
    return cfg


def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(_run_config(args), progress=not args.quiet, fresh=args.fresh)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _run_config(args)
    if cfg.data.source == "mnist":
        run_demo(cfg, progress=not args.quiet, fresh=args.fresh)
        return 0
    rank, world = init_distributed()
    data = load_state_dict(cfg.data.source)
    for key in ("codes", "labels"):
        if key not in data:
            raise ValueError(f"{cfg.data.source}: missing tensor {key!r} (need codes [N,h,w] and labels [N])")
    codes, labels = data["codes"].long(), data["labels"].long()
    if codes.dim() != 3:
        raise ValueError(f"{cfg.data.source}: codes must be [N, h, w], got {tuple(codes.shape)}")
    device = resolve_device(cfg.train.device)
    md = {**cfg.model_dict(), "seq_len": codes.shape[1] * codes.shape[2]}
    torch.manual_seed(cfg.train.seed)
    model = build_model(md, device=device)
    if args.fresh:
        (Path(cfg.out_dir) / "checkpoints" / "last.pt").unlink(missing_ok=True)
    try:
        train(model, codes, labels, cfg.train, cfg.out_dir, progress=not args.quiet)
        if rank == 0:  # DDP keeps the replicas identical: one writer
            save_pretrained(model, Path(cfg.out_dir) / "model")
            print(f"saved {Path(cfg.out_dir) / 'model'}")
        if world > 1:  # tear down together: gloo can abort a rank that exits while its peer is still writing
            dist.barrier()
    finally:
        if world > 1:
            dist.destroy_process_group()
    return 0


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=["rar", "randar"], default="rar", help="model family (default: rar)")
    p.add_argument("--config", help="run preset name or YAML file (default: demo_<model>)")
    p.add_argument("--out", help="output directory (overrides out_dir)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--fresh", action="store_true", help="ignore results of an earlier run in the same directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=500 model.depth=2")


def add_run_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train tokenizer + generator on the bundled digits, sample, judge")
    _add_run_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a generator (bundled digits, or codes from data.source=FILE)")
    _add_run_args(p)
    p.set_defaults(func=cmd_train)
