"""``anyorder app``: the web app (Gradio) — sample and watch the generation order, inpaint and outpaint.

Without ``--model`` it serves the bundled demo runs ``RUNS/demo_randar`` and ``RUNS/demo_rar`` (training
each one that is absent with ``anyorder demo``, and saying so); with ``--model`` one generator (a run or
model directory, an official checkpoint named like its preset, e.g. ``rar_b.bin``) and its tokenizer.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from anyorder.app.core import AppModel
from anyorder.app.models import DEMO_FAMILIES, demo_models, ensure_demo_runs, run_class_names
from anyorder.cli.common import add_device_options, check_tokenizer_fits, load_generator, load_tokenizer, on_device
from anyorder.models import families_with, get_family

__all__ = ["add_app_command", "cmd_app"]


def _models(args: argparse.Namespace, device: str) -> list[AppModel]:
    if args.model is None:
        if args.tokenizer:
            raise ValueError("--tokenizer needs --model (the demo runs bring their own tokenizers)")
        return demo_models(ensure_demo_runs(args.runs, DEMO_FAMILIES), device=device)
    model = load_generator(args.model, None, device).eval()
    tok = load_tokenizer(args.tokenizer, args.model, device).eval()
    check_tokenizer_fits(model, tok, args.tokenizer or args.model)
    name = Path(args.model).name or str(args.model)
    return [AppModel(name, model, tok, class_names=run_class_names(args.model))]


@on_device
def cmd_app(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    try:  # gradio is an optional dependency (pip install 'anyorder[app]'): imported by this command only
        from anyorder.app import ui
    except ImportError as e:
        raise RuntimeError(f"anyorder app needs gradio ({e}): pip install 'gradio>=6,<7'") from e
    device = args.device
    models = _models(args, device)
    app = ui.build_app(models)
    tf32 = " (TF32 on)" if args.tf32 else ""
    print(f"serving {', '.join(m.label for m in models)} on {device}{tf32}")
    ui.launch(app, host=args.host, port=args.port, block=False, quiet=True)
    print(f"ready in {time.perf_counter() - t0:.1f} s: open http://{args.host}:{args.port}  (Ctrl+C stops)", flush=True)
    try:
        app.block_thread()
    finally:
        app.close()
    return 0


def add_app_command(sub: argparse._SubParsersAction) -> None:
    editors = ", ".join(get_family(f).display_name for f in families_with("known_tokens"))
    p = sub.add_parser("app", help="web app: sample and watch the generation order; inpaint / outpaint "
                       f"({editors})")
    p.add_argument("--model", help="run or model directory, or checkpoint file (default: the bundled demo runs, "
                   "trained with `anyorder demo` when absent)")
    p.add_argument("--tokenizer", help="tokenizer file or directory (default: the run's tokenizer/)")
    p.add_argument("--runs", default="runs", help="where the demo runs are (default: runs)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    add_device_options(p)
    p.set_defaults(func=cmd_app)
