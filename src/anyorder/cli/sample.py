"""``anyorder sample``: class-conditional samples from a generator, decoded by its tokenizer."""

from __future__ import annotations

import argparse
import dataclasses
import json
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
from anyorder.models.registry import family_of
from anyorder.models.spec import DEFAULT_PROTOCOL, DTYPE_PATHS, EvalProtocol
from anyorder.sampling.batch import sample_chunk, sample_npz
from anyorder.sampling.policy import model_sampling
from anyorder.sampling.protocol import (
    model_protocol,
    precision,
    prepare_model,
    protocol_labels,
    protocols,
    with_dtype,
)

__all__ = ["add_sample_command", "cmd_sample", "add_protocol_options", "dtype_path",
           "read_sampling_file", "write_sample_npz", "SAMPLING_FILE_KEY"]

SAMPLING_FILE_KEY = "sampling"  # the settings in a --sampling-file JSON (tune-guidance's best.json)
_DTYPE_CHOICES = ["fp32", "bf16", *[d for d in DTYPE_PATHS if d != "fp32"]]


def dtype_path(value: str | None) -> str | None:
    """``--dtype`` as a dtype path (``bf16`` is ``bf16-weights``); None when not given."""
    return "bf16-weights" if value == "bf16" else value


def read_sampling_file(path: str | None, model) -> dict[str, Any]:
    """The sampling settings of a ``--sampling-file`` JSON (its ``"sampling"`` object; ``anyorder
    tune-guidance`` writes ``best.json`` so), checked against the model's family. None: none."""
    if path is None:
        return {}
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--sampling-file {p}: not JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get(SAMPLING_FILE_KEY), dict):
        raise ValueError(f"--sampling-file {p}: expected a JSON object with a {SAMPLING_FILE_KEY!r} "
                         "object of sampling settings (as anyorder tune-guidance writes best.json)")
    family = data.get("family")
    if family is not None and family != model.family:
        raise ValueError(f"--sampling-file {p}: its settings are for a {family} model, not "
                         f"{model.family}")
    settings = dict(data[SAMPLING_FILE_KEY])
    model_sampling(model, **settings)  # every key and value checked now, naming the key
    return settings


def _sampling_args(args: argparse.Namespace, model) -> dict[str, Any]:
    """The settings to sample with: what the model was made / released with (its run's recorded
    sampling settings, the official YAML's, or its preset's), then a ``--sampling-file``'s,
    overridden by the options given. An option the family does not use (``--guidance-power`` for
    RandAR, ``--steps`` for RAR, ...) is an error. Includes ``seed``, and ``compile`` when asked
    for."""
    chosen = {**read_sampling_file(getattr(args, "sampling_file", None), model),
              **{k: v for k, v in sampling_values(args).items() if v is not None}}
    kw = {**model_sampling(model, **chosen).to_dict(), "seed": args.seed}
    if getattr(args, "compile", False):  # the compiled step draws differently: recorded with the settings
        kw["compile"] = args.compile
    return kw


def cmd_sample(args: argparse.Namespace) -> int:
    if args.per_class < 1 or args.batch_size < 1:
        raise ValueError(f"--per-class and --batch-size must be >= 1, got {args.per_class} and {args.batch_size}")
    if args.num_samples is not None and not args.npz:
        raise ValueError("--num-samples writes an ADM-format npz: give --npz OUT.npz")
    out = args.npz or args.out
    ensure_writable(out, what="--npz" if args.npz else "--out")  # before the model is loaded
    if args.protocol is not None and not args.npz:
        raise ValueError("--protocol says how an evaluation npz is made: give --npz OUT.npz")
    args.tf32_given = args.tf32  # None: on, or with --npz the protocol's (device_context resolves args.tf32)
    return _sample(args)


@on_device
def _sample(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    path = dtype_path(args.dtype)
    weights = "bf16" if path == "bf16-weights" else None
    model = load_generator(args.model, args.checkpoint, args.device, dtype=weights, config=args.config).eval()
    classes = (parse_classes(args.classes, model.num_classes) if args.classes
               else list(range(model.num_classes)))
    tok = load_tokenizer(args.tokenizer, args.model, args.device)
    check_tokenizer_fits(model, tok, args.tokenizer or args.model)
    kw = _sampling_args(args, model)
    if args.npz:
        protocol = with_dtype(model_protocol(model, args.protocol), path)
        if args.tf32_given is not None and args.tf32_given != protocol.tf32:  # --tf32 / --no-tf32 given
            protocol = dataclasses.replace(protocol, name=f"{protocol.name}+{'tf32' if args.tf32_given else 'fp32mm'}",
                                           tf32=args.tf32_given)
        return _sample_npz(args, prepare_model(model, protocol), tok, classes, kw, protocol)
    # PNG grid: batch b draws from its own stream (chunk_seed(seed, b)), so no two batches repeat each other
    classes = [c for c in classes for _ in range(args.per_class)]
    bs = args.batch_size
    png = dataclasses.replace(with_dtype(DEFAULT_PROTOCOL, path), tf32=bool(args.tf32))
    with precision(png, device):  # bf16-autocast if asked for; TF32 as --tf32 says
        codes = torch.cat([sample_chunk(model, torch.tensor(classes[i : i + bs]), args.seed, i // bs,
                                        kw).cpu() for i in range(0, len(classes), bs)])
        images = decode_batched(tok, codes).float()
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


def write_sample_npz(model, tok, out: str | Path, *, classes: list[int], all_classes: bool,
                     num_samples: int, batch_size: int, seed: int, sampling: dict[str, Any],
                     protocol: EvalProtocol, sources: dict[str, Any], progress: bool = True,
                     keep_parts: bool = False) -> dict | None:
    """``anyorder sample --npz``'s file: ``num_samples`` labels over ``classes`` in the protocol's
    layout, sampled and converted as the protocol says (the model already in its weights dtype), the
    settings and the protocol recorded beside it. ``sources``: the model / checkpoint / tokenizer as
    given. Rank 0 returns the record."""
    labels = protocol_labels(protocol, num_samples, classes, seed)
    settings = {**{k: _as_recorded(v) for k, v in sources.items()},
                "classes": "all" if all_classes else classes, "family": family_of(model).name,
                "grid": list(model.grid), "dtype": protocol.dtype}
    return sample_npz(model, tok, out, labels, batch_size=batch_size, seed=seed, sampling=sampling,
                      settings=settings, progress=progress, keep_parts=keep_parts, protocol=protocol)


def _sample_npz(args: argparse.Namespace, model, tok, classes: list[int], kw: dict[str, Any],
                protocol: EvalProtocol) -> int:
    n = args.num_samples if args.num_samples is not None else args.per_class * len(classes)
    sources = {"model": args.model, "checkpoint": args.checkpoint, "tokenizer": args.tokenizer}
    record = write_sample_npz(model, tok, args.npz, classes=classes, all_classes=not args.classes,
                              num_samples=n, batch_size=args.batch_size, seed=args.seed, sampling=kw,
                              protocol=protocol, sources=sources, progress=not args.quiet,
                              keep_parts=args.keep_parts)
    if record is not None:  # rank 0
        speed = record["this_run"]["images_per_s"]
        print(f"wrote {args.npz} ({n} images of {record['image_shape'][0]}x{record['image_shape'][1]}, "
              f"{len(record['class_counts'])} classes, protocol {protocol.name}; {speed} images/s) and "
              f"{Path(args.npz).with_suffix('.json')}")
    return 0


def add_protocol_options(p: argparse.ArgumentParser) -> None:
    """``--protocol`` and ``--dtype`` (shared by ``sample`` and ``tune-guidance``)."""
    known = protocols()
    each = "; ".join(f"{n}: {q.labels} labels, {q.dtype}, {q.uint8}" for n, q in sorted(known.items()))
    p.add_argument("--protocol", choices=sorted(known), default=None,
                   help="with --npz: how the evaluation samples are made — labels, dtype path, uint8 "
                        "conversion, TF32 — as a paper's evaluation did (default: the model family's; "
                        f"'anyorder': class-balanced, float32, rounded). {each}")
    p.add_argument("--dtype", choices=_DTYPE_CHOICES, default=None,
                   help="inference precision: fp32; bf16 (= bf16-weights: weights cast to bf16, "
                        "softmax, guidance mixing and sampling in fp32); bf16-autocast (fp32 weights, "
                        "sampling and decoding under torch.autocast). Default: fp32, or with --npz the "
                        "protocol's (given, it replaces the protocol's and the file records protocol "
                        "NAME+DTYPE)")


def add_sample_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample a class-conditional image grid, or an ADM npz for evaluation",
                       description="Class-conditional samples: a PNG grid (--out), or with --npz N samples "
                       "made as the model family's paper made them (--protocol) in the ADM evaluator's "
                       "format (torchrun --nproc_per_node K -m anyorder.cli sample ... splits the chunks "
                       "over K processes; the file is the same for any K).")
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
    add_device_options(p, tf32_default=None)
    add_protocol_options(p)
    p.add_argument("--sampling-file", default=None, metavar="JSON",
                   help="sampling settings from a JSON file's 'sampling' object (anyorder "
                        "tune-guidance writes OUT/best.json so), over the model's own; options given "
                        "on the command line win")
    p.add_argument("--compile", nargs="?", const=True, default=False, metavar="BACKEND",
                   help="torch.compile the static-shape decode step (inductor, with CUDA graphs on GPU; or the "
                   "torch.compile backend named); the first generation compiles a few step shapes")
    p.add_argument("--out", default="samples.png", help="PNG grid (without --npz)")
    p.add_argument("--npz", help="write the ADM sample format (arr_0 uint8 [N,H,W,3], arr_1 labels) and a JSON "
                   "of the settings beside it; resumable by chunk, runs under torchrun")
    p.add_argument("--num-samples", type=int, default=None,
                   help="with --npz: N samples over --classes, labelled as the protocol says "
                        "(default: --per-class per class)")
    p.add_argument("--keep-parts", action="store_true", help="with --npz: keep OUT.npz.parts/ after the merge")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sample)
