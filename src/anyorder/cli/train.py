"""``anyorder demo`` and ``anyorder train``: run configs (a preset or YAML + dotted overrides) to trained models.

``anyorder train`` needs an explicit ``data.source``: a folder written by ``anyorder tokenize`` (memory-mapped),
a ``.safetensors`` file with codes and labels, or ``mnist`` (the bundled digits, through the demo pipeline).
Under ``torchrun`` it trains data-parallel (DDP; FSDP with ``train.fsdp=true``); rerunning the same command
resumes from ``OUT/checkpoints/last.pt``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist

from anyorder.cli.common import pick_device
from anyorder.data.codes import open_codes
from anyorder.data.datasets import DATASETS
from anyorder.demo.run import run_demo
from anyorder.hub import build_model, save_pretrained
from anyorder.io.outputs import ensure_writable
from anyorder.models import family_names
from anyorder.training.config import RunConfig, list_run_presets, load_run_config
from anyorder.training.distributed import barrier, init_distributed, shutdown
from anyorder.training.loop import LAST_CKPT, load_checkpoint, train

__all__ = ["add_run_commands"]

_SOURCES = ("data.source=DIR (a folder written by `anyorder tokenize`), data.source=FILE.safetensors (codes "
            "[N, h, w] + labels [N]) or data.source=mnist (the bundled digits)")


def _run_config(args: argparse.Namespace, command: str) -> RunConfig:
    """The run config of ``--config`` (default ``demo_<model>``) with the overrides. ``--model`` and ``--config``
    together must name the same family; ``train`` needs a data source given explicitly."""
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out_dir={args.out}")
    if getattr(args, "threads", None):
        overrides.append(f"threads={args.threads}")
    if command == "train" and args.config is None and not any(o.startswith("data.source=") for o in overrides):
        raise ValueError(f"anyorder train needs a data source: {_SOURCES}")
    cfg = load_run_config(args.config or f"demo_{args.model or 'rar'}", overrides)
    if args.model and cfg.family != args.model:
        raise ValueError(f"--model {args.model} but --config {args.config} trains a {cfg.family} (preset "
                         f"{cfg.model_preset}): drop one or make them agree")
    if command == "train" and not cfg.data.source:
        raise ValueError(f"anyorder train: the config {args.config} names no data source: add {_SOURCES}")
    ensure_writable(cfg.out_dir, folder=True, what="out_dir")  # before any data is read or step taken
    return cfg


def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(_run_config(args, "demo"), progress=not args.quiet, fresh=args.fresh)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _run_config(args, "train")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    owner = not dist.is_initialized()  # tear down only a process group this command set up
    rank, world = init_distributed(cfg.train.device)
    try:
        if cfg.data.source in DATASETS:  # a bundled dataset: the demo pipeline trains its tokenizer first
            if world > 1:
                raise ValueError(f"data.source={cfg.data.source} runs the single-process demo pipeline; for torchrun, "
                                 "tokenize the images first (anyorder tokenize) and pass data.source=DIR")
            run_demo(cfg, progress=not args.quiet, fresh=args.fresh)
            return 0
        data = open_codes(cfg.data.source)
        device = pick_device(cfg.train.device, "train.device")
        if device.type == "cuda":  # TF32 matmuls for what runs outside bf16 autocast, as the official trainers
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        h, w = data.grid
        torch.manual_seed(cfg.train.seed)
        model = build_model({**cfg.model_dict(), "seq_len": h * w}, device=device, source="model")
        if args.fresh:
            barrier()
            if rank == 0:
                (Path(cfg.out_dir) / "checkpoints" / LAST_CKPT).unlink(missing_ok=True)
            barrier()
        train(model, data, None, cfg.train, cfg.out_dir, progress=not args.quiet)
        if rank == 0:  # the replicas are identical (FSDP: the full state was gathered into the checkpoint)
            save_pretrained(model if not cfg.train.fsdp or world == 1 else _unsharded(model, cfg),
                            Path(cfg.out_dir) / "model", extra={"sampling": cfg.sampling_config().to_dict()})
            print(f"saved {Path(cfg.out_dir) / 'model'}")
    finally:
        if owner:
            shutdown()
    return 0


def _unsharded(model: torch.nn.Module, cfg: RunConfig) -> torch.nn.Module:
    """A plain copy of an FSDP-trained model, from the full state dict of the run's last checkpoint."""
    state = load_checkpoint(Path(cfg.out_dir) / "checkpoints" / LAST_CKPT)
    plain = build_model(state["model_config"], device="cpu")
    plain.load_state_dict(state["model"])
    return plain


def _add_run_args(p: argparse.ArgumentParser, train: bool) -> None:
    p.add_argument("--model", choices=family_names(), default=None,
                   help="model family (default: rar; with --config it must agree with the config's)")
    names = [n for n in list_run_presets() if train or n.startswith("demo_")]  # every registered family's
    p.add_argument("--config", help=f"packaged run config ({', '.join(names)}) or YAML file (default: demo_<model>)")
    p.add_argument("--out", help="output directory (overrides out_dir)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--fresh", action="store_true", help="ignore results of an earlier run in the same directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=500 model.depth=2" +
                   (" (train: data.source=DIR|FILE.safetensors|mnist is required)" if train else ""))


def add_run_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train tokenizer + generator on the bundled digits, sample, judge")
    _add_run_args(p, train=False)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a generator on data.source=DIR (anyorder tokenize), FILE.safetensors "
                                     "or mnist; torchrun for DDP / FSDP")
    _add_run_args(p, train=True)
    p.set_defaults(func=cmd_train)
