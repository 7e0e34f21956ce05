"""RAR's family spec: sampling policy, official format, presets.

Sampling (the paper's Sec. 3 and 1d-tokenizer's ``RAR.generate``): one token per step in the model's scan
order; classifier-free guidance on a pow-cosine schedule over the tokens decoded so far.

Presets follow RAR's Table 1 (B/L/XL/XXL: 261M/461M/955M/1499M parameters) with the sampling settings each
release recommends (1d-tokenizer ``README_RAR.md``, "Reproducing RAR-*" = the paper's Table 6:
``randomize_temperature`` / ``guidance_scale`` / ``guidance_scale_pow`` of B 1.0/16.0/2.75, L 1.02/15.5/2.5,
XL 1.02/6.9/1.5, XXL 1.02/8.0/1.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anyorder.models.policy import SamplingPolicy, setting
from anyorder.models.rar.model import OFFICIAL_KEYS, RAR, RARConfig
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

__all__ = ["RARSampling", "RAROfficial", "SPEC"]


@dataclass(frozen=True)
class RARSampling(SamplingPolicy):
    """RAR: scan-order decoding, one token per step, pow-cosine guidance."""

    family = "rar"
    guidance_power: float = setting(0.0, "power of the pow-cosine guidance schedule (0: the full scale from the "
                                         "first token)", low=0.0, high=5.0, step=0.05)

    def guidance(self) -> GuidanceSchedule:
        return GuidanceSchedule("pow_cosine", self.guidance_scale, self.guidance_power)


# official generator key, our field, type, default, rule (1d-tokenizer configs/training/generator/rar.yaml)
_CONFIG = [
    ("hidden_size", "dim", int, REQUIRED, POSITIVE),
    ("num_hidden_layers", "depth", int, REQUIRED, POSITIVE),
    ("num_attention_heads", "n_head", int, REQUIRED, POSITIVE),
    ("intermediate_size", "mlp_hidden", int, REQUIRED, POSITIVE),
    ("image_seq_len", "seq_len", int, REQUIRED, POSITIVE),
    ("codebook_size", "codebook_size", int, REQUIRED, POSITIVE),
    ("condition_num_classes", "num_classes", int, REQUIRED, POSITIVE),
    ("dropout", "dropout", float, 0.0, PROBABILITY),
    ("attn_drop", "attn_dropout", float, 0.0, PROBABILITY),
    ("class_label_dropout", "class_dropout", float, 0.1, PROBABILITY),
]


class RAROfficial(OfficialFormat):
    """bytedance/1d-tokenizer: ``rar_{b,l,xl,xxl}.bin`` (a plain state dict), hyper-parameters in a flat
    ``config.json`` or the training YAML (``model.generator``, the codebook size under ``model.vq_model``)."""

    repo = "bytedance/1d-tokenizer"
    keys = OFFICIAL_KEYS
    markers = ("lm_head.weight",)
    release_files = {"rar_b": "rar_b", "rar_l": "rar_l", "rar_xl": "rar_xl", "rar_xxl": "rar_xxl"}

    def section(self, cfg: dict[str, Any]) -> dict[str, Any] | None:
        model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
        g = model.get("generator", cfg)
        if not isinstance(g, dict) or "hidden_size" not in g:
            return None
        vq = model.get("vq_model") if isinstance(model.get("vq_model"), dict) else {}
        return {"codebook_size": vq["codebook_size"], **g} if "codebook_size" in vq else g

    def config(self, section: dict[str, Any], source: str) -> RARConfig:
        fields = official_fields(section, _CONFIG, f"{source} (official RAR config)")
        try:
            return RARConfig(**fields)
        except ValueError as e:
            raise ValueError(f"{source} (official RAR config): {e}") from e

    def sampling(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """1d-tokenizer's generator section records ``randomize_temperature``, ``guidance_scale`` and
        ``guidance_scale_pow``."""
        g = cfg.get("model", {}).get("generator", {}) if isinstance(cfg.get("model"), dict) else {}
        keys = {"randomize_temperature": "temperature", "guidance_scale": "guidance_scale",
                "guidance_scale_pow": "guidance_power"}
        return {ours: g[theirs] for theirs, ours in keys.items() if theirs in g}


_IMAGENET = {"seq_len": 256, "codebook_size": 1024, "num_classes": 1000}
_TOKENIZER = "maskgit-vqgan"


def _release(dim: int, depth: int, mlp: int, temperature: float, scale: float, power: float, what: str) -> Preset:
    return Preset("rar", {"dim": dim, "depth": depth, "n_head": 16, "mlp_hidden": mlp, **_IMAGENET},
                  {"temperature": temperature, "guidance_scale": scale, "guidance_power": power},
                  _TOKENIZER, 256, what)


PRESETS = {
    "rar_b": _release(768, 24, 3072, 1.0, 16.0, 2.75, "RAR-B, 261M"),
    "rar_l": _release(1024, 24, 4096, 1.02, 15.5, 2.5, "RAR-L, 461M"),
    "rar_xl": _release(1280, 32, 5120, 1.02, 6.9, 1.5, "RAR-XL, 955M"),
    "rar_xxl": _release(1408, 40, 6144, 1.02, 8.0, 1.2, "RAR-XXL, 1499M"),
    # a small model for the bundled 28x28 digits (7x7 code grid)
    "rar_demo": Preset("rar", {"dim": 128, "depth": 4, "n_head": 4, "mlp_hidden": 512, "seq_len": 49,
                               "codebook_size": 128, "num_classes": 10, "pos_extra": 2, "timestep_extra": 2},
                       {"temperature": 1.0, "guidance_scale": 3.0, "guidance_power": 0.0},
                       "demo-vq", 28, "RAR for the bundled digits"),
}

# 1d-tokenizer sample_imagenet_rar.py: labels list(range(1000)) * 50 (50 per class, interleaved), the
# generator and the tokenizer in float32 with TF32 matmuls allowed (torch.backends.cuda.matmul.allow_tf32
# = True), demo_util.sample_fn converting with clamp(x, 0, 1) * 255 cast to uint8 (truncation); the
# guidance settings are the releases' (README_RAR: no search script)
PROTOCOL = EvalProtocol(
    name="rar", labels="balanced", dtype="fp32", uint8="truncate", tf32=True, num_samples=50_000,
    guidance=None, source="bytedance/1d-tokenizer sample_imagenet_rar.py, demo_util.sample_fn")

SPEC = FamilySpec(
    name="rar",
    display_name="RAR",
    description="Randomized AutoRegressive visual generation (Yu et al., arXiv 2411.00776)",
    model_class=RAR,
    config_class=RARConfig,
    policy_class=RARSampling,
    capabilities=Capabilities(),
    official=RAROfficial(),
    order_schedule=(0.5, 0.75),  # the paper: r = 1 for the first half, linear to 0 at three quarters
    default_tokenizer=_TOKENIZER,
    presets=PRESETS,
    run_configs=Path(__file__).parent / "configs",
    debug={"dim": 32, "depth": 2, "n_head": 4, "mlp_hidden": 64, "seq_len": 16, "codebook_size": 24,
           "num_classes": 5, "pos_extra": 4, "timestep_extra": 4},
    protocol=PROTOCOL,
)
