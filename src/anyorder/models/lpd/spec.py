"""LPD's family spec: sampling policy, official format, presets.

Sampling (``LPD.sample_tokens`` and ``engine.py`` of mit-han-lab/lpd): ``steps`` groups of sizes from the
official plans (:mod:`anyorder.models.lpd.plans`), the queries of a group decoded jointly, in locality-aware
orders (``order="locality"``, the ``proximity`` / ``repulsion`` thresholds of the released order files) or random
ones; classifier-free guidance on a ``linear`` schedule *per token* (``1 + (s - 1) j / T`` for the ``j``-th token)
or ``constant``; temperature, top-k and top-p as LlamaGen's sampler.

Presets: the released models (README, ``scripts/eval/*.sh``): LPD-L / XL / XXL at 256 px (337M / 752M / 1.4B
parameters; 20 steps, guidance 4.8 / 4.9 / 5.9, repulsion 2 / 2 / 3 — the 32-step rows use guidance 5.4 / 5.0) and
LPD-L / XL at 512 px (48 steps, guidance 7.3 / 6.0, repulsion 4), all on LlamaGen's VQ tokenizer, temperature 1,
no top-k / top-p.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from anyorder.io.config import official_value
from anyorder.models.lpd.model import LPD, OFFICIAL_KEYS, LPDConfig
from anyorder.models.lpd.plans import group_sizes
from anyorder.models.policy import ParallelSampling, setting
from anyorder.models.spec import (
    POSITIVE,
    PROBABILITY,
    REQUIRED,
    Capabilities,
    EvalProtocol,
    FamilySpec,
    OfficialFormat,
    Preset,
    official_fields,
)
from anyorder.nn.schedules import GuidanceSchedule

__all__ = ["LPDSampling", "LPDOfficial", "SPEC"]


@dataclass(frozen=True)
class LPDSampling(ParallelSampling):
    """LPD: ``steps`` groups decoded jointly, locality-aware or random orders, linear (per token) or constant
    guidance."""

    family = "lpd"
    guidance_schedule: str = setting("linear", "linear: the guidance scale grows per token from 1 at the first to "
                                               "guidance_scale at the last; constant: guidance_scale throughout",
                                     choices=("linear", "constant"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.guidance_schedule not in ("linear", "constant"):
            raise ValueError(f"guidance_schedule must be 'linear' or 'constant', got {self.guidance_schedule!r}")

    def plan_for(self, steps: int, total: int) -> list[int]:
        return group_sizes(total, steps)

    def guidance(self) -> GuidanceSchedule:
        on = self.guidance_scale != 1.0  # the official code guides whenever cfg != 1
        if self.guidance_schedule == "constant":
            return GuidanceSchedule("constant", self.guidance_scale, enabled=on)
        return GuidanceSchedule("linear", self.guidance_scale, start=1.0, per_token=True, enabled=on)


# official constructor argument (config.json of a run, or the fixture's), our field, kind, default, rule
_CONFIG = [
    ("decoder_embed_dim", "dim", int, REQUIRED, POSITIVE),
    ("decoder_depth", "depth", int, REQUIRED, POSITIVE),
    ("decoder_num_heads", "n_head", int, REQUIRED, POSITIVE),
    ("vqgan_vocab_size", "codebook_size", int, 16384, POSITIVE),
    ("class_num", "num_classes", int, 1000, POSITIVE),
    ("label_drop_prob", "class_dropout", float, 0.1, PROBABILITY),
    ("proj_dropout", "dropout", float, 0.0, PROBABILITY),
]


class LPDOfficial(OfficialFormat):
    """mit-han-lab/lpd: ``lpd_{l,xl,xxl}_256.pth`` / ``lpd_{l,xl}_512.pth``, ``torch.load(...)['model']``; the
    hyper-parameters are the constructor's arguments (``main.py --model lpd_l --img_size 256``): a flat
    ``config.json`` of them, or the preset named like the release file."""

    repo = "mit-han-lab/lpd"
    keys = OFFICIAL_KEYS
    markers = ("mask_token", "fake_latent", "z_proj_ln.weight")
    release_files = {"lpd_l_256": "lpd_l", "lpd_xl_256": "lpd_xl", "lpd_xxl_256": "lpd_xxl",
                     "lpd_l_512": "lpd_l_512", "lpd_xl_512": "lpd_xl_512"}

    def section(self, cfg: dict[str, Any]) -> dict[str, Any] | None:
        return cfg if "decoder_embed_dim" in cfg else None

    def config(self, section: dict[str, Any], source: str) -> LPDConfig:
        where = f"{source} (official LPD config)"
        fields = official_fields(section, _CONFIG, where)
        fields["mlp_hidden"] = int(fields["dim"] * official_value(section, "mlp_ratio", float, where, POSITIVE, 4.0))
        img = official_value(section, "img_size", int, where, POSITIVE, 256)
        stride = official_value(section, "vqgan_stride", int, where, POSITIVE, 16)
        if img % stride:
            raise ValueError(f"{where}: img_size {img} is not a multiple of vqgan_stride {stride}")
        fields["seq_len"] = (img // stride) ** 2
        try:
            return LPDConfig(**fields)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e

    def fit(self, sd: dict[str, Tensor], model: Any) -> dict[str, Tensor]:
        """A position table of another grid (a 256-px checkpoint for a 512-px model) resized as the official
        ``interpolate_pos_embed``: the grid rows bicubic (``align_corners=False``), the class row kept."""
        table = sd.get("pos_embed")
        want = model.pos_embed.shape
        if table is None or table.shape == want or table.shape[-1] != want[-1]:
            return sd
        old, new = int((table.shape[1] - 1) ** 0.5), int((want[1] - 1) ** 0.5)
        grid = table[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
        rows = grid.permute(0, 2, 3, 1).reshape(1, new * new, -1).to(table.dtype)
        return {**sd, "pos_embed": torch.cat([table[:, :1], rows], dim=1)}


_IMAGENET = {"codebook_size": 16384, "num_classes": 1000}
_TOKENIZER = "llamagen-vq"


def _release(dim: int, depth: int, heads: int, tokens: int, steps: int, cfg: float, repulsion: int,
             what: str) -> Preset:
    return Preset("lpd", {"dim": dim, "depth": depth, "n_head": heads, "seq_len": tokens, **_IMAGENET},
                  {"steps": steps, "guidance_scale": cfg, "guidance_schedule": "linear", "order": "locality",
                   "proximity": 1.0, "repulsion": repulsion, "temperature": 1.0, "top_k": 0, "top_p": 1.0},
                  _TOKENIZER, 16 * int(tokens ** 0.5), what)


PRESETS = {
    "lpd_l": _release(1024, 24, 16, 256, 20, 4.8, 2, "LPD-L, 337M, 256 px (20 steps; 32 steps: guidance 5.4)"),
    "lpd_xl": _release(1280, 36, 20, 256, 20, 4.9, 2, "LPD-XL, 752M, 256 px (20 steps; 32 steps: guidance 5.0)"),
    "lpd_xxl": _release(1536, 48, 24, 256, 20, 5.9, 3, "LPD-XXL, 1.4B, 256 px (20 steps)"),
    "lpd_l_512": _release(1024, 24, 16, 1024, 48, 7.3, 4, "LPD-L, 338M, 512 px (48 steps)"),
    "lpd_xl_512": _release(1280, 36, 20, 1024, 48, 6.0, 4, "LPD-XL, 753M, 512 px (48 steps)"),
    # a small model for the bundled 28x28 digits (7x7 code grid)
    "lpd_demo": Preset("lpd", {"dim": 128, "depth": 4, "n_head": 4, "seq_len": 49, "codebook_size": 128,
                               "num_classes": 10},
                       {"steps": 8, "guidance_scale": 3.0, "guidance_schedule": "linear", "order": "locality",
                        "proximity": 1.0, "repulsion": 1, "temperature": 1.0},
                       "demo-vq", 28, "LPD for the bundled digits"),
}

# engine.py evaluate: labels np.arange(1000).repeat(50) (class-sorted), sampling and decoding under bf16 autocast,
# (x + 1) / 2 in bf16, then np.round(np.clip(x * 255, 0, 255)) (half to even); TF32 not set; no guidance search
PROTOCOL = EvalProtocol(
    name="lpd", labels="sorted", dtype="bf16-autocast", uint8="round-half-even", tf32=False, num_samples=50_000,
    guidance=None, source="mit-han-lab/lpd engine.py evaluate, scripts/eval/*.sh")

SPEC = FamilySpec(
    name="lpd",
    display_name="LPD",
    description="Locality-aware Parallel Decoding (Zhang et al., arXiv 2507.01957)",
    model_class=LPD,
    config_class=LPDConfig,
    policy_class=LPDSampling,
    capabilities=Capabilities(parallel=True, known_tokens=True),
    official=LPDOfficial(),
    order_schedule=None,  # random orders throughout; the group plan is drawn per step (training_extras)
    default_tokenizer=_TOKENIZER,
    presets=PRESETS,
    run_configs=Path(__file__).parent / "configs",
    debug={"dim": 32, "depth": 2, "n_head": 2, "seq_len": 16, "codebook_size": 24, "num_classes": 5},
    protocol=PROTOCOL,
)
