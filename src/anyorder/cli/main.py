"""``anyorder`` command line: demo, train, sample (and the editing commands of :mod:`anyorder.editing`).

Configuration follows the official repos: a preset or YAML file plus dotted overrides,
``anyorder demo --model randar train.steps=500 model.depth=2``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from anyorder.cli.common import _preset_name, check_tokenizer_fits, load_generator, load_tokenizer, parse_classes
from anyorder.cli.edit import add_editing_commands
from anyorder.demo.run import decode_batched, run_demo
from anyorder.hub import build_model, save_pretrained
from anyorder.io import atomic_write_json, load_state_dict
from anyorder.io.images import save_image_grid
from anyorder.models.presets import PRESETS
from anyorder.sampling.generate import generate
from anyorder.training.config import load_run_config
from anyorder.training.loop import init_distributed, resolve_device, train

__all__ = ["main", "build_parser"]


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
    import torch.distributed as dist

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


def _sampling_args(args: argparse.Namespace, model) -> dict[str, Any]:
    preset = _preset_name(args.model, args.checkpoint)
    defaults = PRESETS[preset].sampling if preset and PRESETS[preset].family == model.family else {}
    kw: dict[str, Any] = {"temperature": args.temperature if args.temperature is not None
                          else defaults.get("temperature", 1.0), "seed": args.seed}
    kw["guidance_scale"] = args.guidance_scale if args.guidance_scale is not None else defaults.get(
        "guidance_scale", 1.0)
    if model.family == "rar":
        kw["guidance_power"] = args.guidance_power if args.guidance_power is not None else defaults.get(
            "guidance_power", 0.0)
    else:
        kw["guidance_start"] = defaults.get("guidance_start", 1.0)
        kw["steps"] = args.steps or defaults.get("steps")
        kw["top_k"] = args.top_k if args.top_k is not None else defaults.get("top_k", 0)
        kw["top_p"] = args.top_p if args.top_p is not None else defaults.get("top_p", 1.0)
    return kw


def cmd_sample(args: argparse.Namespace) -> int:
    if args.per_class < 1 or args.batch_size < 1:
        raise ValueError(f"--per-class and --batch-size must be >= 1, got {args.per_class} and {args.batch_size}")
    model = load_generator(args.model, args.checkpoint, args.device).eval()
    if model.family == "rar" and args.steps not in (None, model.seq_len):
        raise ValueError("--steps is for RandAR's parallel decoding; RAR decodes one token per step")
    classes = parse_classes(args.classes, model.num_classes) if args.classes else list(range(model.num_classes))
    tok = load_tokenizer(args.tokenizer, args.model, args.device)
    check_tokenizer_fits(model, tok, args.tokenizer or args.model)
    classes = [c for c in classes for _ in range(args.per_class)]
    kw = _sampling_args(args, model)
    codes = []
    for i in range(0, len(classes), args.batch_size):
        codes.append(generate(model, torch.tensor(classes[i : i + args.batch_size]), **kw).cpu())
    codes = torch.cat(codes)
    images = decode_batched(tok, codes)
    out = Path(args.out)
    save_image_grid(images, out, nrow=args.per_class if args.per_class > 1 else min(8, len(classes)))
    atomic_write_json(out.with_suffix(".json"), {"classes": classes, "sampling": kw, "codes_shape": list(codes.shape),
                                                 "image_shape": list(images.shape[1:])})
    print(f"wrote {out} ({len(classes)} images of {images.shape[-2]}x{images.shape[-1]})")
    return 0


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=["rar", "randar"], default="rar", help="model family (default: rar)")
    p.add_argument("--config", help="run preset name or YAML file (default: demo_<model>)")
    p.add_argument("--out", help="output directory (overrides out_dir)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--fresh", action="store_true", help="ignore results of an earlier run in the same directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=500 model.depth=2")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anyorder", description="Any-order autoregressive image generation "
                                     "(RAR and RandAR)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train tokenizer + generator on the bundled digits, sample, judge")
    _add_run_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a generator (bundled digits, or codes from data.source=FILE)")
    _add_run_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="sample a class-conditional image grid")
    p.add_argument("--model", required=True, help="preset name (with --checkpoint), run/model directory or hub id")
    p.add_argument("--checkpoint", help="official or our checkpoint file")
    p.add_argument("--tokenizer", help="tokenizer file (MaskGIT-VQGAN .bin, LlamaGen .pt) or demo tokenizer dir")
    p.add_argument("--classes", nargs="*", help="class indices or ImageNet names (default: all classes)")
    p.add_argument("--per-class", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="RandAR parallel-decoding steps")
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--guidance-power", type=float, default=None, help="RAR pow-cosine power (0 = constant)")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="samples.png")
    p.set_defaults(func=cmd_sample)

    add_editing_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"anyorder {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
