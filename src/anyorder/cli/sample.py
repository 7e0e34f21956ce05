"""``anyorder sample``: class-conditional samples from a generator, decoded by its tokenizer."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from anyorder.cli.common import (
    add_device_options,
    add_sampling_options,
    check_tokenizer_fits,
    load_generator,
    load_tokenizer,
    on_device,
    parse_classes,
    sampling_values,
)
from anyorder.demo.run import decode_batched
from anyorder.io import atomic_write_json
from anyorder.io.images import save_image_grid
from anyorder.io.outputs import ensure_writable
from anyorder.io.seeds import seed_arg
from anyorder.sampling.batch import balanced_labels, sample_chunk, sample_npz
from anyorder.sampling.policy import model_sampling

__all__ = ["add_sample_command", "cmd_sample"]


def _sampling_args(args: argparse.Namespace, model) -> dict[str, Any]:
    """The settings to sample with: what the model was made / released with (its run's recorded sampling
    settings, the official YAML's, or its preset's), overridden by the options given. An option the family
    does not use (``--guidance-power`` for RandAR, ``--steps`` for RAR, ...) is an error. Includes ``seed``, and
    ``compile`` when asked for."""
    kw = {**model_sampling(model, **sampling_values(args)).to_dict(), "seed": args.seed}
    if getattr(args, "compile", False):  # compiled logits round differently: recorded with the settings
        kw["compile"] = args.compile
    return kw


def cmd_sample(args: argparse.Namespace) -> int:
    if args.per_class < 1 or args.batch_size < 1:
        raise ValueError(f"--per-class and --batch-size must be >= 1, got {args.per_class} and {args.batch_size}")
    if args.num_samples is not None and not args.npz:
        raise ValueError("--num-samples writes an ADM-format npz: give --npz OUT.npz")
    out = args.npz or args.out
    ensure_writable(out, what="--npz" if args.npz else "--out")  # before the model is loaded
    return _sample(args)


@on_device
def _sample(args: argparse.Namespace) -> int:
    model = load_generator(args.model, args.checkpoint, args.device, dtype=args.dtype, config=args.config).eval()
    classes = parse_classes(args.classes, model.num_classes) if args.classes else list(range(model.num_classes))
    tok = load_tokenizer(args.tokenizer, args.model, args.device)
    check_tokenizer_fits(model, tok, args.tokenizer or args.model)
    kw = _sampling_args(args, model)
    if args.npz:
        return _sample_npz(args, model, tok, classes, kw)
    # PNG grid: batch b draws from its own stream (chunk_seed(seed, b)), so no two batches repeat each other
    classes = [c for c in classes for _ in range(args.per_class)]
    bs = args.batch_size
    codes = torch.cat([sample_chunk(model, torch.tensor(classes[i : i + bs]), args.seed, i // bs, kw).cpu()
                       for i in range(0, len(classes), bs)])
    images = decode_batched(tok, codes)
    out = Path(args.out)
    save_image_grid(images, out, nrow=args.per_class if args.per_class > 1 else min(8, len(classes)))
    atomic_write_json(out.with_suffix(".json"), {"classes": classes, "sampling": kw, "batch_size": bs,
                                                 "device": args.device, "tf32": args.tf32,
                                                 "seed_stream": "batch b samples from chunk_seed(seed, b)",
                                                 "codes_shape": list(codes.shape),
                                                 "image_shape": list(images.shape[1:])})
    print(f"wrote {out} ({len(classes)} images of {images.shape[-2]}x{images.shape[-1]})")
    return 0


def _as_recorded(path: str | None) -> str | None:
    """A path as recorded in the job (absolute when it exists, so a rerun from elsewhere matches)."""
    return str(Path(path).resolve()) if path and Path(path).exists() else path


def _sample_npz(args: argparse.Namespace, model, tok, classes: list[int], kw: dict[str, Any]) -> int:
    n = args.num_samples if args.num_samples is not None else args.per_class * len(classes)
    labels = balanced_labels(n, classes)
    settings = {"model": _as_recorded(args.model), "checkpoint": _as_recorded(args.checkpoint),
                "tokenizer": _as_recorded(args.tokenizer), "classes": classes if args.classes else "all",
                "family": model.family, "grid": list(model.grid), "dtype": getattr(args, "dtype", "fp32"),
                "tf32": args.tf32}
    record = sample_npz(model, tok, args.npz, labels, batch_size=args.batch_size, seed=args.seed, sampling=kw,
                        settings=settings, progress=not args.quiet, keep_parts=args.keep_parts)
    if record is not None:  # rank 0
        speed = record["this_run"]["images_per_s"]
        print(f"wrote {args.npz} ({n} images of {record['image_shape'][0]}x{record['image_shape'][1]}, "
              f"{len(set(labels.tolist()))} classes; {speed} images/s) and {Path(args.npz).with_suffix('.json')}")
    return 0


def add_sample_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample a class-conditional image grid, or an ADM npz for evaluation",
                       description="Class-conditional samples: a PNG grid (--out), or with --npz N class-balanced "
                       "samples in the ADM evaluator's format (torchrun --nproc_per_node K -m anyorder.cli sample ... "
                       "splits the chunks over K processes; the file is the same for any K).")
    p.add_argument("--model", required=True, help="preset name (with --checkpoint), run/model directory or hub id")
    p.add_argument("--checkpoint", help="official or our checkpoint file")
    p.add_argument("--config", help="hyper-parameters of --checkpoint: a config.json or an official YAML "
                   "(1d-tokenizer's rar.yaml, RandAR's configs/randar/*.yaml)")
    p.add_argument("--tokenizer", help="tokenizer file (MaskGIT-VQGAN .bin, LlamaGen .pt) or demo tokenizer dir")
    p.add_argument("--classes", nargs="*", help="class indices or ImageNet names (default: all classes)")
    p.add_argument("--per-class", type=int, default=1)
    add_sampling_options(p)
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    add_device_options(p)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="inference weights (bf16: softmax, guidance mixing and sampling stay fp32)")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="BACKEND",
                   help="torch.compile the static-shape decode step (inductor, with CUDA graphs on GPU; or the "
                   "torch.compile backend named); the first generation compiles a few step shapes")
    p.add_argument("--out", default="samples.png", help="PNG grid (without --npz)")
    p.add_argument("--npz", help="write the ADM sample format (arr_0 uint8 [N,H,W,3], arr_1 labels) and a JSON "
                   "of the settings beside it; resumable by chunk, runs under torchrun")
    p.add_argument("--num-samples", type=int, default=None,
                   help="with --npz: N class-balanced samples over --classes (default: --per-class per class)")
    p.add_argument("--keep-parts", action="store_true", help="with --npz: keep OUT.npz.parts/ after the merge")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sample)
