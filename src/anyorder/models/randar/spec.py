"""RandAR's family spec: sampling policy, official format, presets.

Sampling (the paper's Sec. 3.3 and ``RandARTransformer.generate``): a random order per image, ``steps``
parallel-decoding steps on a cosine schedule (88 instead of 256 at ImageNet scale), classifier-free guidance
linear from ``guidance_start`` to ``guidance_scale`` over the tokens decoded so far.

Presets: RandAR's configs (L 0.3B, XL 0.7B; LlamaGen GPT-L / GPT-XL, 342.9M / 774.7M with the class embedding
and head) with the sampling settings of the released LlamaGen-tokenizer checkpoints (README model zoo +
``tools/search_cfg_weights.py``: linear guidance from 1.0 to the "optimal CFG" 3.4 / 4.0, 88 steps,
temperature 1, no top-k / top-p).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anyorder.models.policy import ParallelSampling, setting
from anyorder.models.randar.model import OFFICIAL_KEYS, RandAR, RandARConfig
from anyorder.models.spec import (
    NONNEGATIVE,
    POSITIVE,
    PROBABILITY,
    REQUIRED,
    Capabilities,
    EvalProtocol,
    FamilySpec,
    GuidanceSearch,
    OfficialFormat,
    Preset,
    official_fields,
    scale_range,
)
from anyorder.nn.schedules import GuidanceSchedule

__all__ = ["RandARSampling", "RandAROfficial", "SPEC"]


@dataclass(frozen=True)
class RandARSampling(ParallelSampling):
    """RandAR: random orders, ``steps`` cosine parallel-decoding steps, linear guidance."""

    family = "randar"
    guidance_start: float = setting(1.0, "guidance scale at the first token, linear to guidance_scale at the "
                                         "last", low=0.0, high=20.0, step=0.25)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.guidance_start != 1.0 and self.guidance_scale <= 1.0:
            raise ValueError(f"guidance_start={self.guidance_start} has no effect with guidance_scale="
                             f"{self.guidance_scale}: RandAR guides only when its final scale exceeds 1")

    def guidance(self) -> GuidanceSchedule:
        return GuidanceSchedule("linear", self.guidance_scale, start=self.guidance_start)


# official key (ar_model.params of configs/randar/*.yaml, or a flat config.json), our field, type, default, rule
_CONFIG = [
    ("dim", "dim", int, REQUIRED, POSITIVE),
    ("n_layer", "depth", int, REQUIRED, POSITIVE),
    ("n_head", "n_head", int, REQUIRED, POSITIVE),
    ("block_size", "seq_len", int, REQUIRED, POSITIVE),
    ("vocab_size", "codebook_size", int, REQUIRED, POSITIVE),
    ("num_classes", "num_classes", int, REQUIRED, POSITIVE),
    ("multiple_of", "multiple_of", int, 256, POSITIVE),
    ("rope_base", "rope_base", float, 10000.0, POSITIVE),
    ("norm_eps", "norm_eps", float, 1e-5, NONNEGATIVE),
    ("class_dropout_prob", "class_dropout", float, 0.1, PROBABILITY),
    ("ffn_hidden", "mlp_hidden", int, None, NONNEGATIVE),
    ("resid_dropout_p", "dropout", float, 0.0, PROBABILITY),
    ("token_dropout_p", "token_dropout", float, 0.0, PROBABILITY),
    ("position_order", "order", str, None, None),
    ("cls_token_num", "_cls_token_num", int, 1, POSITIVE),
]


class RandAROfficial(OfficialFormat):
    """ziqipang/RandAR: ``*.safetensors`` state dicts (``freqs_cis`` is not a parameter); hyper-parameters in a
    flat ``config.json`` or the YAML's ``ar_model.params``."""

    repo = "ziqipang/RandAR"
    keys = OFFICIAL_KEYS
    markers = ("output.weight", "pos_instruct_embeddings")
    ignored = ("freqs_cis",)
    release_files = {"randar_0.3b_llamagen_360k_bs_1024_lr_0.0004": "randar_l",
                     "randar_0.7b_llamagen_360k_bs_1024_lr_0.0004": "randar_xl"}

    def section(self, cfg: dict[str, Any]) -> dict[str, Any] | None:
        g = cfg
        for name in ("ar_model", "model"):
            sub = cfg.get(name)
            if isinstance(sub, dict):
                g = sub.get("params", sub)
                break
        return g if isinstance(g, dict) and ("n_layer" in g or "dim" in g) else None

    def config(self, section: dict[str, Any], source: str) -> RandARConfig:
        where = f"{source} (official RandAR config)"
        fields = official_fields(section, _CONFIG, where)
        if fields.pop("_cls_token_num") != 1:
            raise ValueError(f"{where}: cls_token_num={section['cls_token_num']} is not supported "
                             "(class-conditional RandAR uses 1)")
        if "order" in fields:  # RandAR's position_order: "random" or a raster scan
            fields["order"] = "random" if fields["order"] == "random" else "raster"
        try:
            return RandARConfig(**fields)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e

    def sampling(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """The YAML's ``num_inference_steps``."""
        g = cfg.get("ar_model", {}).get("params", {}) if isinstance(cfg.get("ar_model"), dict) else {}
        return {"steps": g["num_inference_steps"]} if "num_inference_steps" in g else {}


_IMAGENET = {"seq_len": 256, "codebook_size": 16384, "num_classes": 1000}
_TOKENIZER = "llamagen-vq"


def _release(dim: int, depth: int, heads: int, cfg: float, what: str) -> Preset:
    return Preset("randar", {"dim": dim, "depth": depth, "n_head": heads, **_IMAGENET},
                  {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "guidance_start": 1.0, "guidance_scale": cfg,
                   "steps": 88}, _TOKENIZER, 256, what)


PRESETS = {
    "randar_l": _release(1024, 24, 16, 3.4, "RandAR-L, 0.3B"),
    "randar_xl": _release(1280, 36, 20, 4.0, "RandAR-XL, 0.7B"),
    # a small model for the bundled 28x28 digits (7x7 code grid)
    "randar_demo": Preset("randar", {"dim": 128, "depth": 4, "n_head": 4, "seq_len": 49, "codebook_size": 128,
                                     "num_classes": 10, "multiple_of": 32},
                          {"temperature": 1.0, "guidance_start": 1.0, "guidance_scale": 3.0, "steps": 49},
                          "demo-vq", 28, "RandAR for the bundled digits"),
}

# RandAR tools/search_cfg_weights.py: per batch torch.randint(0, num_classes, (per_proc_batch_size,))
# labels; the model cast to --precision bf16 (the default; instantiate_from_config(...).to(device,
# dtype=precision): the RoPE table recomputed in float32 by setup_caches, logits .float()); the tokenizer
# in float32; TF32 allowed (allow_tf32 = True at import); tokenizer.decode_codes_to_img: r * 127.5 + 128
# clamped to [0, 255] and cast (x * 255 + 0.5 for x = (r + 1) / 2); guidance searched per checkpoint:
# np.arange(2.0, 8.0 + 1e-4, 0.2), linear from 1.0 (cfg_scales=(1.0, s)), on --num-fid-samples-search
# 10000, the lowest FID then sampled with --num-fid-samples-report 50000
_SEARCH = GuidanceSearch(scale_range(2.0, 8.0, 0.2), num_samples=10_000, report_samples=50_000,
                         metric="fid", source="ziqipang/RandAR tools/search_cfg_weights.py")
PROTOCOL = EvalProtocol(
    name="randar", labels="random", dtype="bf16-weights", uint8="round", tf32=True,
    num_samples=50_000, guidance=_SEARCH,
    source="ziqipang/RandAR tools/search_cfg_weights.py, RandAR/model/tokenizer.py")

SPEC = FamilySpec(
    name="randar",
    display_name="RandAR",
    description="Decoder-only autoregressive visual generation in random orders (Pang et al., arXiv 2412.01827)",
    model_class=RandAR,
    config_class=RandARConfig,
    policy_class=RandARSampling,
    capabilities=Capabilities(parallel=True, known_tokens=True, canvas=True, extrapolation=True, features=True),
    official=RandAROfficial(),
    order_schedule=None,  # random orders throughout
    default_tokenizer=_TOKENIZER,
    presets=PRESETS,
    run_configs=Path(__file__).parent / "configs",
    debug={"dim": 32, "depth": 2, "n_head": 2, "seq_len": 16, "codebook_size": 24, "num_classes": 5,
           "multiple_of": 16},
    protocol=PROTOCOL,
)
