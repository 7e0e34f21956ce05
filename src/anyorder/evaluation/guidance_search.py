"""Guidance search: a grid of guidance settings, scored, tabulated and plotted; the best one picked.

RandAR's ``tools/search_cfg_weights.py`` samples 10,000 images at each scale of ``np.arange(2.0, 8.0
+ 1e-4, 0.2)``, scores them with the ADM evaluator and keeps the lowest FID (then samples 50,000 at
it). ``anyorder tune-guidance`` does the same through ``anyorder sample --npz`` and ``anyorder
eval`` (RAR's pow-cosine powers can be a second axis of the grid); this module holds what does not
sample: the grid and its points' names, the table (JSON + markdown), the plot, the choice of the
best point.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anyorder.io import atomic_write_bytes

__all__ = ["GridPoint", "guidance_grid", "best_point", "markdown_table", "plot_search",
           "METRIC_COLUMNS"]

# metrics JSON key -> table header (FID decides; the rest are reported)
METRIC_COLUMNS = {"fid": "FID", "sfid": "sFID", "inception_score": "IS", "precision": "precision",
                  "recall": "recall", "judge_accuracy": "judge accuracy"}


@dataclass(frozen=True)
class GridPoint:
    """One grid point: its guidance scale and, when the search has a power axis, its pow-cosine
    power."""

    scale: float
    power: float | None = None

    @property
    def name(self) -> str:
        """A file-name-safe name: ``scale3.400`` or ``scale8.000_power1.500``."""
        base = f"scale{self.scale:.3f}"
        return base if self.power is None else f"{base}_power{self.power:.3f}"

    def settings(self) -> dict[str, float]:
        """The sampling settings of this point."""
        out = {"guidance_scale": self.scale}
        if self.power is not None:
            out["guidance_power"] = self.power
        return out


def guidance_grid(scales: Sequence[float], powers: Sequence[float] = ()) -> list[GridPoint]:
    """Every (scale, power) pair, scales outer; no powers: the scales alone. Duplicates are errors
    (two points with the same files)."""
    if not scales:
        raise ValueError("the guidance grid needs at least one scale")
    if powers:
        points = [GridPoint(float(s), float(p)) for s in scales for p in powers]
    else:
        points = [GridPoint(float(s)) for s in scales]
    names = [p.name for p in points]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"the guidance grid repeats {', '.join(dupes)} (scales and powers are "
                         "named to 3 decimals)")
    return points


def best_point(rows: list[dict[str, Any]], metric: str = "fid") -> dict[str, Any]:
    """The row of the lowest ``metric`` (the first of equal ones, in grid order), as RandAR's
    ``min(eval_results, key=lambda x: eval_results[x]["fid"])``; rows with a non-finite value are
    skipped."""
    finite = [r for r in rows
              if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    if not finite:
        raise ValueError(f"no grid point has a finite {metric}")
    return min(finite, key=lambda r: r[metric])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.2f}"
    return "—" if value is None else str(value)


def markdown_table(rows: list[dict[str, Any]], best: dict[str, Any], with_power: bool,
                   title: str) -> str:
    """The search as a markdown table, one row per grid point, the best one in bold."""
    metrics = [k for k in METRIC_COLUMNS if any(r.get(k) is not None for r in rows)]
    head = ["guidance scale", *(["guidance power"] if with_power else []),
            *(METRIC_COLUMNS[k] for k in metrics), "samples"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['guidance_scale']:g}", *([f"{r['guidance_power']:g}"] if with_power else []),
                 *(_cell(r.get(k)) for k in metrics), _cell(r.get("num_samples"))]
        if r is best:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    power = f", power {best.get('guidance_power'):g}" if with_power else ""
    lines += ["", f"Best (lowest FID): guidance scale {best['guidance_scale']:g}{power}, "
                  f"FID {_cell(best['fid'])}."]
    return "\n".join(lines) + "\n"


def plot_search(rows: list[dict[str, Any]], best: dict[str, Any], out: str | os.PathLike,
                title: str) -> Path | None:
    """FID and IS against the guidance scale (one line per power), the best point starred, as a PNG.
    Returns the path, or None when matplotlib is not installed (``pip install anyorder[demo]``)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    powers = sorted({r.get("guidance_power") for r in rows},
                    key=lambda p: -math.inf if p is None else p)
    panels = [k for k in ("fid", "inception_score") if any(r.get(k) is not None for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, key in zip(axes[0], panels):
        for p in powers:
            pts = sorted((r["guidance_scale"], r[key]) for r in rows if r.get("guidance_power") == p
                         and r.get(key) is not None)
            label = None if p is None else f"power {p:g}"
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=label)
        if best.get(key) is not None:
            ax.plot([best["guidance_scale"]], [best[key]], marker="*", markersize=16, color="black",
                    linestyle="none", label="best FID")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_xlabel("guidance scale")
        ax.set_ylabel(METRIC_COLUMNS[key])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    out = Path(out)
    atomic_write_bytes(out, buf.getvalue())
    return out
