"""``anyorder eval``: FID / sFID / IS / precision / recall of a sample npz against an ADM reference batch.

    anyorder eval SAMPLES.npz --ref REF.npz [--features inception|judge] [--judge RUN_OR_DIR]
                  [--inception-weights PATH] [--batch-size N] [--device auto] [--out metrics.json]
    anyorder eval --make-ref SRC --out REF.npz [--features inception|judge] [--judge RUN_OR_DIR] [--image-size S]

``SRC`` for ``--make-ref``: an image folder, an npz with ``arr_0``, or ``digits:test`` / ``digits:train`` (the
bundled digits' split of the demo). The metrics go to ``--out`` (default: ``SAMPLES_metrics.json`` beside the
samples) as JSON and are printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from anyorder.cli.common import pick_device
from anyorder.evaluation.evaluate import DEFAULT_BATCH_SIZE, DIGIT_SOURCES, FEATURE_KINDS, evaluate, make_reference
from anyorder.evaluation.inception import INCEPTION_WEIGHTS_ENV
from anyorder.evaluation.metrics import IS_SPLIT_SIZE
from anyorder.io import atomic_write_json
from anyorder.io.outputs import ensure_writable

__all__ = ["add_eval_command", "cmd_eval"]


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def cmd_eval(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ImportError as e:  # torch-fidelity missing: a message, not a traceback
        raise RuntimeError(str(e)) from e


def _run(args: argparse.Namespace) -> int:
    args.device = str(pick_device(args.device))
    common = dict(judge=args.judge, inception_weights=args.inception_weights, batch_size=args.batch_size,
                  device=args.device, progress=not args.quiet)
    if args.make_ref is not None:
        if args.samples is not None or args.ref is not None:
            raise ValueError("--make-ref writes a reference batch: give no SAMPLES.npz or --ref with it")
        if args.out is None:
            raise ValueError("--make-ref needs --out REF.npz")
        ensure_writable(args.out, what="--out")  # before any feature is computed
        summary = make_reference(args.make_ref, args.out, args.features, image_size=args.image_size, **common)
        atomic_write_json(Path(args.out).with_suffix(".json"), summary)
        print(f"wrote reference batch {summary['reference']} ({summary['num_images']} images, {args.features} "
              f"features of {summary['feature_dim']} dimensions) and {Path(args.out).with_suffix('.json')}")
        return 0
    if args.samples is None or args.ref is None:
        raise ValueError("give SAMPLES.npz and --ref REF.npz (or --make-ref SRC --out REF.npz)")
    if args.image_size is not None:
        raise ValueError("--image-size is for --make-ref (centre-cropping an image folder)")
    samples = Path(args.samples)
    out = Path(args.out) if args.out else samples.with_name(samples.stem + "_metrics.json")
    if out.suffix != ".json":
        raise ValueError(f"--out {out}: the metrics are written as JSON; give a .json path")
    ensure_writable(out, what="--out")  # before any feature is computed
    metrics = evaluate(samples, args.ref, args.features, is_split_size=args.is_split_size, k=args.k,
                       pr_fp16=not args.pr_float32, **common)
    atomic_write_json(out, metrics)
    keys = ("fid", "sfid", "inception_score", "precision", "recall", "judge_accuracy")
    print(" ".join(f"{k}={_fmt(metrics[k])}" for k in keys if k in metrics and metrics[k] is not None)
          + f"  ({metrics['num_samples']} samples vs {metrics['num_reference']} reference images, "
            f"{metrics['features']} features; reference statistics {metrics['reference_statistics']}; "
            f"samples made by protocol {(metrics.get('protocol') or {}).get('name', 'unknown')})")
    print(f"wrote {out}")
    return 0


def add_eval_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="FID, sFID, Inception Score, precision and recall (the ADM evaluator's definitions)",
        description="Score an ADM-format sample npz (arr_0 uint8 [N, H, W, 3]) against a reference batch "
                    "(mu, sigma, mu_s, sigma_s, arr_0; or arr_0 alone: its statistics are then computed from "
                    "its images, as ADM does), or write a reference batch with --make-ref.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("samples", nargs="?", default=None, help="sample batch .npz (arr_0, optional arr_1 labels)")
    p.add_argument("--ref", default=None, help="reference batch .npz, e.g. VIRTUAL_imagenet256_labeled.npz "
                                               "(a file of images alone, arr_0, is accepted)")
    p.add_argument("--make-ref", default=None, metavar="SRC",
                   help=f"write a reference batch from SRC (image folder, .npz, or {' / '.join(DIGIT_SOURCES)}) "
                        "to --out instead of evaluating")
    p.add_argument("--features", choices=FEATURE_KINDS, default="inception",
                   help="Inception (ADM; needs the weights) or the digit judge (bundled digits)")
    p.add_argument("--judge", default=None, metavar="RUN_OR_DIR",
                   help="digit judge for --features judge: a demo run (runs/demo_rar) or its judge/ directory")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help=f"torch-fidelity's Inception weights file (or set ${INCEPTION_WEIGHTS_ENV})")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per feature batch")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--image-size", type=int, default=None, help="--make-ref: ADM centre crop of folder images")
    p.add_argument("--is-split-size", type=int, default=IS_SPLIT_SIZE,
                   help="samples per Inception Score split (ADM: 5000 at any N; the last split may be shorter)")
    p.add_argument("--k", type=int, default=3, help="nearest neighbours of the precision / recall manifolds")
    p.add_argument("--pr-float32", action="store_true",
                   help="precision / recall from exact float32 distances instead of ADM's float16 blocks "
                        "(not the official numbers)")
    p.add_argument("--out", default=None,
                   help="metrics JSON (default SAMPLES_metrics.json beside the samples); REF.npz with --make-ref")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)

