"""``anyorder sample``: class-conditional samples from a generator, decoded by its tokenizer."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from anyorder.cli.common import _preset_name, check_tokenizer_fits, load_generator, load_tokenizer, parse_classes
from anyorder.demo.run import decode_batched
from anyorder.io import atomic_write_json
from anyorder.io.images import save_image_grid
from anyorder.models.presets import PRESETS
from anyorder.sampling.generate import generate

__all__ = ["add_sample_command", "cmd_sample"]


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


def add_sample_command(sub: argparse._SubParsersAction) -> None:
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
