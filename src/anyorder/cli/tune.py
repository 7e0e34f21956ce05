"""``anyorder tune-guidance``: a guidance search, as RandAR's ``tools/search_cfg_weights.py``.

    anyorder tune-guidance --model M [--checkpoint C] [--tokenizer T] --ref REF.npz --out DIR
        [--scales S ... | --scale-range START STOP STEP] [--powers P ...] [--num-samples N]
        [--protocol NAME] [fixed sampling options: --steps, --guidance-start, --temperature, ...]
        [eval options: --features ...]

Each grid point is sampled as ``anyorder sample --npz`` samples (same labels, protocol, per-chunk
seeds; torchrun splits the chunks) into ``DIR/points/<point>.npz`` and scored as ``anyorder eval``
scores (rank 0) into ``DIR/points/<point>_metrics.json``. A rerun skips the points whose metrics
exist (a killed point resumes by chunk), and may add points to the grid; other settings than the
grid are refused (``DIR/search.json``). At the end: ``DIR/results.json`` and ``DIR/results.md`` (the
table), ``DIR/results.png`` (FID and IS against the scale), and ``DIR/best.json``: the settings of
the lowest FID, which ``anyorder sample --sampling-file DIR/best.json`` samples with.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from anyorder.cli.common import (
    add_sampling_options,
    check_tokenizer_fits,
    load_generator,
    load_tokenizer,
    parse_classes,
    sampling_values,
)
from anyorder.cli.sample import (
    SAMPLING_FILE_KEY,
    add_protocol_options,
    dtype_path,
    write_sample_npz,
)
from anyorder.evaluation.adm import read_reference
from anyorder.evaluation.evaluate import DEFAULT_BATCH_SIZE, FEATURE_KINDS, evaluate, resolve_judge_dir
from anyorder.evaluation.guidance_search import (
    GridPoint,
    best_point,
    guidance_grid,
    markdown_table,
    plot_search,
)
from anyorder.evaluation.inception import INCEPTION_WEIGHTS_ENV, resolve_inception_weights
from anyorder.io import atomic_write_bytes, atomic_write_json
from anyorder.io.outputs import ensure_writable
from anyorder.io.seeds import seed_arg
from anyorder.models.registry import family_of
from anyorder.models.spec import EvalProtocol, scale_range
from anyorder.nn.device import resolve_device
from anyorder.sampling.policy import model_sampling
from anyorder.sampling.protocol import model_protocol, prepare_model, with_dtype

__all__ = ["add_tune_command", "cmd_tune_guidance"]

GRID_KEYS = ("guidance_scale", "guidance_power")  # what the grid sets; every other setting is fixed
DEFAULT_SEARCH_SAMPLES = 10_000  # RandAR's --num-fid-samples-search
_ROW_KEYS = ("fid", "sfid", "inception_score", "precision", "recall", "judge_accuracy", "num_samples")


def _join_torchrun() -> tuple[int, int, bool]:
    """``(rank, world, created)``: one gloo group for the whole search under torchrun (every
    sample_npz call and the barriers around rank 0's scoring use it)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(hours=6))
        return dist.get_rank(), dist.get_world_size(), True
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    return 0, 1, False


def _from_rank0(value: Any, world: int) -> Any:
    """Rank 0's ``value`` on every rank."""
    if world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _grid(args: argparse.Namespace, protocol: EvalProtocol,
          model) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The scales and powers to search: the options', else the protocol's official search."""
    search = protocol.guidance
    if args.scales is not None:
        scales = tuple(args.scales)
    elif args.scale_range is not None:
        scales = scale_range(*args.scale_range)
    elif search is not None:
        scales = search.scales
    else:
        raise ValueError(f"protocol {protocol.name!r} has no official guidance search: give the "
                         "grid with --scales S [S ...] or --scale-range START STOP STEP")
    powers = tuple(args.powers) if args.powers is not None else (search.powers if search else ())
    if powers and "guidance_power" not in family_of(model).policy_class.field_names():
        raise ValueError(f"--powers: a {model.family} model's sampling policy has no "
                         "guidance_power")
    return scales, powers


def _fixed_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The sampling options given, which every grid point shares; the grid's own are refused."""
    given = {k: v for k, v in sampling_values(args).items() if v is not None}
    clash = [k for k in GRID_KEYS if k in given]
    if clash:
        flags = " / ".join("--" + k.replace("_", "-") for k in clash)
        raise ValueError(f"{flags}: the grid sets these; give them as --scales / --scale-range / "
                         "--powers")
    return given


def _check_search(path: Path, spec: dict[str, Any]) -> str | None:
    """None if ``path`` is absent (then written) or records the same search; else why not."""
    if path.is_file():
        old = json.loads(path.read_text())
        if old != spec:
            diff = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
            return (f"{path.parent} holds a search with other settings (differs in "
                    f"{', '.join(diff)}): use another --out, or rerun with the settings in {path} "
                    "(the grid itself may change)")
        return None
    atomic_write_json(path, spec)
    return None


def _check_scoring(args: argparse.Namespace) -> None:
    """What scoring needs, checked before any sampling: the reference batch, and the judge or the
    Inception weights (each error names the file)."""
    read_reference(args.ref, require_spatial=args.features == "inception", features=args.features,
                   allow_images_only=True)
    if args.features == "judge":
        if args.judge is None:
            raise ValueError("--features judge needs the digit judge: pass --judge RUN_OR_DIR")
        resolve_judge_dir(args.judge)
    else:
        resolve_inception_weights(args.inception_weights)


def _resolved(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path and Path(path).exists() else path


def _row(point: GridPoint, metrics: dict[str, Any], npz: Path, metrics_path: Path) -> dict[str, Any]:
    return {"point": point.name, "guidance_scale": point.scale, "guidance_power": point.power,
            **{k: metrics.get(k) for k in _ROW_KEYS}, "samples": str(npz),
            "metrics": str(metrics_path)}


def cmd_tune_guidance(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or (args.num_samples is not None and args.num_samples < 2):
        raise ValueError(f"--batch-size must be >= 1 and --num-samples >= 2, got "
                         f"{args.batch_size} and {args.num_samples}")
    if not Path(args.ref).is_file():
        raise FileNotFoundError(f"--ref {args.ref}: reference batch not found")
    _check_scoring(args)
    out = ensure_writable(args.out, folder=True, what="--out")
    rank, world, created = _join_torchrun()
    try:
        return _search(args, out, rank, world)
    finally:
        if created:
            dist.destroy_process_group()


def _search(args: argparse.Namespace, out: Path, rank: int, world: int) -> int:
    device = resolve_device(args.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    path = dtype_path(args.dtype)
    weights = "bf16" if path == "bf16-weights" else None
    model = load_generator(args.model, args.checkpoint, str(device), dtype=weights,
                           config=args.config).eval()
    tok = load_tokenizer(args.tokenizer, args.model, str(device))
    check_tokenizer_fits(model, tok, args.tokenizer or args.model)
    protocol = with_dtype(model_protocol(model, args.protocol), path)
    model = prepare_model(model, protocol)
    scales, powers = _grid(args, protocol, model)
    points = guidance_grid(scales, powers)
    fixed = _fixed_settings(args)
    base = {k: v for k, v in model_sampling(model, **fixed).to_dict().items() if k not in GRID_KEYS}
    classes = (parse_classes(args.classes, model.num_classes) if args.classes
               else list(range(model.num_classes)))
    search = protocol.guidance
    n = args.num_samples or (search.num_samples if search else DEFAULT_SEARCH_SAMPLES)
    sources = {"model": args.model, "checkpoint": args.checkpoint, "tokenizer": args.tokenizer}
    spec = {"family": model.family, **{k: _resolved(v) for k, v in sources.items()},
            "config": _resolved(args.config), "protocol": protocol.to_dict(), "sampling": base,
            "num_samples": n, "batch_size": args.batch_size, "seed": args.seed,
            "classes": classes if args.classes else "all", "reference": _resolved(args.ref),
            "features": args.features, "judge": _resolved(args.judge)}
    points_dir = out / "points"
    verdict = None
    if rank == 0:
        points_dir.mkdir(parents=True, exist_ok=True)
        verdict = _check_search(out / "search.json", spec)
    verdict = _from_rank0(verdict, world)
    if verdict is not None:
        raise ValueError(verdict)
    # which points still need samples / scores: rank 0 looks, every rank follows
    files = {p.name: (points_dir / f"{p.name}.npz", points_dir / f"{p.name}_metrics.json")
             for p in points}
    state = _from_rank0({k: (a.is_file(), b.is_file()) for k, (a, b) in files.items()}, world)
    for i, point in enumerate(points):
        npz, metrics_path = files[point.name]
        sampled, scored = state[point.name]
        if scored:
            continue
        if rank == 0 and not args.quiet:
            print(f"[{i + 1}/{len(points)}] {point.name}: {n} samples", flush=True)
        if not sampled:
            kw = {**model_sampling(model, **fixed, **point.settings()).to_dict(), "seed": args.seed}
            write_sample_npz(model, tok, npz, classes=classes, all_classes=not args.classes,
                             num_samples=n, batch_size=args.batch_size, seed=args.seed,
                             sampling=kw, protocol=protocol, sources=sources,
                             progress=not args.quiet)
        if rank == 0:
            metrics = evaluate(npz, args.ref, args.features, judge=args.judge,
                               inception_weights=args.inception_weights,
                               batch_size=args.eval_batch_size, device=device,
                               progress=not args.quiet)
            atomic_write_json(metrics_path, metrics)
            if not args.quiet:
                print(f"  FID {metrics['fid']:.4f}, IS {metrics['inception_score']:.4f}",
                      flush=True)
        if world > 1:
            dist.barrier()
    if rank == 0:
        _report(out, points, model, fixed, protocol, n, bool(powers))
    return 0


def _report(out: Path, points: list[GridPoint], model, fixed: dict[str, Any],
            protocol: EvalProtocol, n: int, with_power: bool) -> None:
    """The table (JSON + markdown), the plot and best.json, from every point's metrics file."""
    rows = []
    for p in points:
        npz, mpath = out / "points" / f"{p.name}.npz", out / "points" / f"{p.name}_metrics.json"
        rows.append(_row(p, json.loads(mpath.read_text()), npz, mpath))
    best = best_point(rows, "fid")
    title = f"guidance search: {model.family}, protocol {protocol.name}, {n} samples per point"
    chosen = {k: best[k] for k in GRID_KEYS if best.get(k) is not None}
    settings = model_sampling(model, **fixed, **chosen).to_dict()
    best_file = out / "best.json"
    record = {"family": model.family, SAMPLING_FILE_KEY: settings, "fid": best["fid"],
              "inception_score": best.get("inception_score"), "num_samples": n,
              "protocol": protocol.to_dict(), "point": best["point"],
              "search": str(out / "results.json"),
              "use": f"anyorder sample ... --sampling-file {best_file}"}
    atomic_write_json(out / "results.json", {"title": title, "metric": "fid (lowest)",
                                             "best": best["point"], "points": rows})
    atomic_write_bytes(out / "results.md", markdown_table(rows, best, with_power, title).encode())
    plot = plot_search(rows, best, out / "results.png", title)
    atomic_write_json(best_file, record)
    wrote = [out / "results.json", out / "results.md", *([plot] if plot is not None else [])]
    note = "" if plot is not None else " (no plot: matplotlib is not installed)"
    print(f"best: {best['point']} (FID {best['fid']:.4f}); wrote {', '.join(map(str, wrote))} and "
          f"{best_file}{note}: sample with --sampling-file {best_file}")


def add_tune_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune-guidance", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="search the guidance scale (and power) for the lowest FID, as RandAR's "
             "search_cfg_weights.py",
        description="Sample N images at each point of a grid of guidance scales (and, for a policy "
        "with a pow-cosine schedule, powers) as `anyorder sample --npz` does, score each as "
        "`anyorder eval` does, and write the table (results.json, results.md), a plot of FID and "
        "IS against the scale (results.png) and the best setting (best.json, for `anyorder sample "
        "--sampling-file`). Resumable: rerun the same command. Runs under torchrun (the chunks of "
        "each point are split; rank 0 scores).")
    p.add_argument("--model", required=True,
                   help="preset name (with --checkpoint), run/model directory or hub id")
    p.add_argument("--checkpoint", help="official or our checkpoint file")
    p.add_argument("--config",
                   help="hyper-parameters of --checkpoint (config.json or an official YAML)")
    p.add_argument("--tokenizer", help="tokenizer file or demo tokenizer directory")
    p.add_argument("--ref", required=True,
                   help="reference batch .npz (VIRTUAL_imagenet256_labeled.npz; on the digits: "
                        "anyorder eval --make-ref digits:test ...)")
    p.add_argument("--out", required=True,
                   help="the search's folder (points/, results.*, best.json)")
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--scales", type=float, nargs="+", default=None,
                      help="guidance scales (default: the protocol's official search; RandAR's: "
                           "2.0 to 8.0 by 0.2)")
    grid.add_argument("--scale-range", type=float, nargs=3, default=None,
                      metavar=("START", "STOP", "STEP"),
                      help="scales START, START + STEP, ... up to STOP inclusive")
    p.add_argument("--powers", type=float, nargs="+", default=None,
                   help="pow-cosine powers (policies with guidance_power, RAR's): every scale with "
                        "every power")
    p.add_argument("--num-samples", type=int, default=None,
                   help="samples per grid point (default: the protocol's search, else "
                        f"{DEFAULT_SEARCH_SAMPLES})")
    p.add_argument("--classes", nargs="*",
                   help="class indices or ImageNet names (default: all classes)")
    add_sampling_options(p)
    add_protocol_options(p)
    p.add_argument("--seed", type=seed_arg, default=0,
                   help="every point samples from the same seed")
    p.add_argument("--batch-size", type=int, default=16, help="images per sampling chunk")
    p.add_argument("--device", default="auto",
                   help="auto: CUDA (cuda:LOCAL_RANK under torchrun) when present")
    p.add_argument("--features", choices=FEATURE_KINDS, default="inception",
                   help="Inception (ADM; needs the weights) or the digit judge (bundled digits)")
    p.add_argument("--judge", default=None, metavar="RUN_OR_DIR",
                   help="digit judge for --features judge")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="torch-fidelity's Inception weights file (or set "
                        f"${INCEPTION_WEIGHTS_ENV})")
    p.add_argument("--eval-batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="images per feature batch")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_tune_guidance)
