"""Named model presets: the released RAR and RandAR sizes and the small demo models.

Shapes follow RAR's Table 1 (B/L/XL/XXL: 261M/461M/955M/1499M parameters) and RandAR's configs
(L 0.3B, XL 0.7B; LlamaGen GPT-L / GPT-XL: 342.9M / 774.7M with the class embedding and head).
Sampling defaults are the ones each official release recommends:

- RAR (bytedance/1d-tokenizer ``README_RAR.md``, "Reproducing RAR-*" commands = the paper's Table 6):
  ``randomize_temperature`` / ``guidance_scale`` / ``guidance_scale_pow`` of B 1.0/16.0/2.75,
  L 1.02/15.5/2.5, XL 1.02/6.9/1.5, XXL 1.02/8.0/1.2.
- RandAR (ziqipang/RandAR README model zoo + ``tools/search_cfg_weights.py``): linear guidance from
  1.0 to the "optimal CFG" of the released LlamaGen-tokenizer checkpoints (0.3B: 3.4, 0.7B: 4.0),
  88 parallel-decoding steps, temperature 1, no top-k / top-p.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    family: str
    model: dict[str, Any]
    sampling: dict[str, Any] = field(default_factory=dict)
    tokenizer: str = ""
    image_size: int = 256
    description: str = ""


_RAR_IMAGENET = {"seq_len": 256, "codebook_size": 1024, "num_classes": 1000}
_RANDAR_IMAGENET = {"seq_len": 256, "codebook_size": 16384, "num_classes": 1000}

PRESETS: dict[str, Preset] = {
    "rar_b": Preset("rar", {"dim": 768, "depth": 24, "n_head": 16, "mlp_hidden": 3072, **_RAR_IMAGENET},
                    {"temperature": 1.0, "guidance_scale": 16.0, "guidance_power": 2.75},
                    "maskgit-vqgan", 256, "RAR-B, 261M"),
    "rar_l": Preset("rar", {"dim": 1024, "depth": 24, "n_head": 16, "mlp_hidden": 4096, **_RAR_IMAGENET},
                    {"temperature": 1.02, "guidance_scale": 15.5, "guidance_power": 2.5},
                    "maskgit-vqgan", 256, "RAR-L, 461M"),
    "rar_xl": Preset("rar", {"dim": 1280, "depth": 32, "n_head": 16, "mlp_hidden": 5120, **_RAR_IMAGENET},
                     {"temperature": 1.02, "guidance_scale": 6.9, "guidance_power": 1.5},
                     "maskgit-vqgan", 256, "RAR-XL, 955M"),
    "rar_xxl": Preset("rar", {"dim": 1408, "depth": 40, "n_head": 16, "mlp_hidden": 6144, **_RAR_IMAGENET},
                      {"temperature": 1.02, "guidance_scale": 8.0, "guidance_power": 1.2},
                      "maskgit-vqgan", 256, "RAR-XXL, 1499M"),
    "randar_l": Preset("randar", {"dim": 1024, "depth": 24, "n_head": 16, **_RANDAR_IMAGENET},
                       {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "guidance_start": 1.0,
                        "guidance_scale": 3.4, "steps": 88},
                       "llamagen-vq", 256, "RandAR-L, 0.3B"),
    "randar_xl": Preset("randar", {"dim": 1280, "depth": 36, "n_head": 20, **_RANDAR_IMAGENET},
                        {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "guidance_start": 1.0,
                         "guidance_scale": 4.0, "steps": 88},
                        "llamagen-vq", 256, "RandAR-XL, 0.7B"),
    # small models for the bundled 28x28 digits (7x7 code grid)
    "rar_demo": Preset("rar", {"dim": 128, "depth": 4, "n_head": 4, "mlp_hidden": 512, "seq_len": 49,
                               "codebook_size": 128, "num_classes": 10, "pos_extra": 2, "timestep_extra": 2},
                       {"temperature": 1.0, "guidance_scale": 3.0, "guidance_power": 0.0},
                       "demo-vq", 28, "RAR for the bundled digits"),
    "randar_demo": Preset("randar", {"dim": 128, "depth": 4, "n_head": 4, "seq_len": 49, "codebook_size": 128,
                                     "num_classes": 10, "multiple_of": 32},
                          {"temperature": 1.0, "guidance_start": 1.0, "guidance_scale": 3.0, "steps": 49},
                          "demo-vq", 28, "RandAR for the bundled digits"),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
