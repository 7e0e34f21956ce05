"""The models the app serves: the bundled demo runs (trained with ``anyorder demo`` when absent)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from anyorder.app.core import AppModel
from anyorder.data.datasets import get_dataset
from anyorder.demo.run import load_demo_model, run_demo
from anyorder.training.config import load_run_config

__all__ = ["DEMO_FAMILIES", "demo_run_ready", "ensure_demo_runs", "run_class_names", "demo_models"]

DEMO_FAMILIES = ("randar", "lpd", "rar")  # the editing families first: they offer every tab


def demo_run_ready(run_dir: str | Path) -> bool:
    """A demo run whose generator has been saved (``model/config.json`` + ``model/model.safetensors``)."""
    model = Path(run_dir) / "model"
    return (model / "config.json").is_file() and (model / "model.safetensors").is_file()


def ensure_demo_runs(root: str | Path = "runs", families: tuple[str, ...] = DEMO_FAMILIES,
                     log: Callable[[str], None] = print, threads: int = 0) -> list[Path]:
    """The demo run directories ``root/demo_<family>``; each one that is absent is trained first with the
    packaged ``demo_<family>`` config (what ``anyorder demo --model <family> --out root/demo_<family>`` does),
    saying so through ``log``."""
    runs = []
    for fam in families:
        run = Path(root) / f"demo_{fam}"
        if not demo_run_ready(run):
            log(f"{run}: no trained demo model there; training it now with `anyorder demo --model {fam} --out {run}` "
                "(about 8 minutes on an idle 2-core CPU; later starts reuse it)")
            overrides = [f"out_dir={run}"] + ([f"threads={threads}"] if threads else [])
            run_demo(load_run_config(f"demo_{fam}", overrides), progress=True)
        runs.append(run)
    return runs


def run_class_names(run_dir: str | Path) -> tuple[str, ...]:
    """The class names of the bundled dataset a demo run trained on (its ``metrics.json`` records the config),
    or none (the picker then shows indices)."""
    metrics = Path(run_dir) / "metrics.json"
    try:
        source = json.loads(metrics.read_text())["config"]["data"]["source"]
        return get_dataset(source).class_names
    except (OSError, ValueError, KeyError, TypeError):
        return ()


def demo_models(runs: list[Path], device: str = "cpu") -> list[AppModel]:
    """The generators and tokenizers of demo runs (:func:`anyorder.demo.run.load_demo_model`), ready to serve."""
    out = []
    for run in runs:
        model, tok = load_demo_model(run, device=device)
        out.append(AppModel(Path(run).name, model.eval(), tok.eval(), class_names=run_class_names(run)))
    return out
