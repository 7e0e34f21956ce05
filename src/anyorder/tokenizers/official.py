"""Load the official tokenizer checkpoints (MaskGIT-VQGAN for RAR, LlamaGen VQ for RandAR).

:func:`load_official_tokenizer` reads the state dict safely, detects which family it is from its keys,
builds the model from a config (a dict, a JSON/YAML file, a config dataclass, or, with ``None``, the
shapes inferred from the state dict) and loads the weights strictly, reporting every mismatched key
or shape as a :class:`~anyorder.io.CheckpointError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anyorder.io import CheckpointError, check_state_dict, load_state_dict, read_config_file
from anyorder.tokenizers.base import ImageTokenizer
from anyorder.tokenizers.llamagen_vq import LlamaGenVQ, LlamaGenVQConfig
from anyorder.tokenizers.maskgit_vqgan import MaskGITVQGAN, MaskGITVQGANConfig

__all__ = [
    "MASKGIT_VQGAN",
    "LLAMAGEN_VQ",
    "load_official_tokenizer",
    "detect_tokenizer_kind",
    "normalize_kind",
    "config_from_dict",
    "infer_config",
    "build_tokenizer",
]

MASKGIT_VQGAN = "maskgit_vqgan"
LLAMAGEN_VQ = "llamagen_vq"

_KIND_ALIASES = {
    "maskgit_vqgan": MASKGIT_VQGAN,
    "maskgit": MASKGIT_VQGAN,
    "vqgan": MASKGIT_VQGAN,
    "rar": MASKGIT_VQGAN,
    "llamagen_vq": LLAMAGEN_VQ,
    "llamagen": LLAMAGEN_VQ,
    "vq_ds16_c2i": LLAMAGEN_VQ,
    "randar": LLAMAGEN_VQ,
}

_CONFIG_TYPES: dict[str, type] = {MASKGIT_VQGAN: MaskGITVQGANConfig, LLAMAGEN_VQ: LlamaGenVQConfig}
_MODEL_TYPES: dict[str, type[ImageTokenizer]] = {MASKGIT_VQGAN: MaskGITVQGAN, LLAMAGEN_VQ: LlamaGenVQ}

# Keys of the fixture / official config files that describe the checkpoint but do not shape the model.
_METADATA_KEYS = frozenset(
    {"seed", "min_code_margin", "checkpoint_format", "name", "kind", "description", "notes", "comment"}
)
# Keys implied by the config fields; checked for consistency, not stored.
_DERIVED_KEYS = frozenset({"num_resolutions", "token_grid", "image_size", "embedding_dim", "image_range", "norm_type"})
# Other spellings accepted for config fields, per family (official argument names).
_ALIASES: dict[str, dict[str, str]] = {
    MASKGIT_VQGAN: {"num_embeddings": "codebook_size", "in_channels": "num_channels"},
    LLAMAGEN_VQ: {
        "encoder_ch_mult": "ch_mult",
        "dropout": "dropout_p",
        "out_channels": "in_channels",
        "codebook_dim": "codebook_embed_dim",
        "embedding_dim": "codebook_embed_dim",
        "beta": "commit_loss_beta",
    },
}


def normalize_kind(kind: str) -> str:
    """Canonical family name (``"maskgit_vqgan"`` or ``"llamagen_vq"``) for ``kind`` or an alias of it."""
    key = str(kind).strip().lower().replace("-", "_")
    if key not in _KIND_ALIASES:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {sorted(set(_KIND_ALIASES))}")
    return _KIND_ALIASES[key]


def detect_tokenizer_kind(state_dict: Mapping[str, Tensor]) -> str | None:
    """Family of an official state dict from its keys, or ``None`` if it is neither.

    LlamaGen has ``quant_conv.*`` / ``post_quant_conv.*`` / ``quantize.codebook_used`` and
    ``encoder.conv_blocks.*``; MaskGIT-VQGAN has ``encoder.down.*`` and none of those.
    """
    keys = list(state_dict)
    if any(k.startswith(("quant_conv.", "post_quant_conv.", "encoder.conv_blocks.")) for k in keys) or (
        "quantize.codebook_used" in state_dict
    ):
        return LLAMAGEN_VQ
    if "quantize.embedding.weight" in state_dict and any(k.startswith("encoder.down.") for k in keys):
        return MASKGIT_VQGAN
    return None


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        return read_config_file(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"tokenizer config not found: {path}") from e


def config_from_dict(kind: str, mapping: Mapping[str, Any]) -> MaskGITVQGANConfig | LlamaGenVQConfig:
    """Build the config dataclass of ``kind`` from a dict such as the official / fixture JSON.

    Missing fields take the released defaults. Derived entries (``num_resolutions``, ``token_grid``,
    ``image_size``, ``embedding_dim``, ``image_range``, ``norm_type``) are checked for consistency;
    unknown keys raise :class:`ValueError` naming them, so a config of the other family or a typo is
    not silently ignored.
    """
    kind = normalize_kind(kind)
    cls = _CONFIG_TYPES[kind]
    names = {f.name for f in fields(cls)}
    aliases = _ALIASES[kind]
    values: dict[str, Any] = {}
    derived: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in mapping.items():
        target = aliases.get(key, key)
        if target in names:
            if target in values and values[target] != value:
                raise ValueError(f"{kind} config gives {target} twice with different values ({key}={value!r})")
            values[target] = value
        elif key in _METADATA_KEYS:
            continue
        elif key in _DERIVED_KEYS:
            derived[key] = value
        else:
            unknown.append(key)
    if unknown:
        accepted = sorted(names | set(aliases) | _DERIVED_KEYS | _METADATA_KEYS)
        raise ValueError(f"{kind} config has unknown keys {unknown}; accepted keys: {accepted}")
    if kind == MASKGIT_VQGAN and "image_size" in derived:
        values.setdefault("resolution", derived["image_size"])  # the image size is metadata here
    cfg = cls(**values)
    _check_derived(kind, cfg, derived)
    return cfg


def _check_derived(kind: str, cfg: Any, derived: Mapping[str, Any]) -> None:
    """Consistency of keys that are implied by the config fields (a mismatch means a different model)."""
    problems = []
    if "num_resolutions" in derived and int(derived["num_resolutions"]) != cfg.num_resolutions:
        problems.append(f"num_resolutions={derived['num_resolutions']} but channel_mult has {cfg.num_resolutions}")
    if kind == MASKGIT_VQGAN and "embedding_dim" in derived and int(derived["embedding_dim"]) != cfg.z_channels:
        problems.append(f"embedding_dim={derived['embedding_dim']} must equal z_channels={cfg.z_channels}")
    if "norm_type" in derived and str(derived["norm_type"]) != "group":
        problems.append(f"norm_type={derived['norm_type']!r} is not supported (only 'group')")
    official_range = [-1.0, 1.0] if kind == LLAMAGEN_VQ else [0.0, 1.0]
    if "image_range" in derived and [float(v) for v in derived["image_range"]] != official_range:
        problems.append(f"image_range={derived['image_range']} differs from the official {official_range}")
    if "token_grid" in derived:
        size = cfg.image_size if kind == LLAMAGEN_VQ else derived.get("image_size", cfg.resolution)
        grid = [int(v) for v in derived["token_grid"]]
        if size % cfg.downsample or grid != [size // cfg.downsample] * len(grid):
            problems.append(f"token_grid={grid} does not match image size {size} / downsampling {cfg.downsample}")
    if problems:
        raise ValueError(f"inconsistent {kind} config: " + "; ".join(problems))


def _need(state_dict: Mapping[str, Tensor], key: str, kind: str) -> Tensor:
    if key not in state_dict:
        raise CheckpointError(f"cannot infer the {kind} config: key {key!r} is missing; pass a config explicitly")
    return state_dict[key]


def _count(state_dict: Mapping[str, Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in state_dict if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def _mults(widths: list[int], base: int, kind: str) -> list[int]:
    if any(w % base for w in widths):
        raise CheckpointError(f"cannot infer the {kind} config: widths {widths} are not multiples of {base}")
    return [w // base for w in widths]


def infer_config(kind: str, state_dict: Mapping[str, Tensor]) -> MaskGITVQGANConfig | LlamaGenVQConfig:
    """Architecture read off an official state dict. Fields the weights cannot tell (the image size,
    LlamaGen's ``codebook_l2_norm``) keep their released defaults."""
    kind = normalize_kind(kind)
    sd = state_dict
    if kind == MASKGIT_VQGAN:
        conv_in = _need(sd, "encoder.conv_in.weight", kind)
        hidden = conv_in.shape[0]
        levels = _count(sd, r"encoder\.down\.(\d+)\.")
        blocks = _count(sd, r"encoder\.down\.0\.block\.(\d+)\.")
        if levels == 0 or blocks == 0:
            raise CheckpointError(f"cannot infer the {kind} config: no encoder.down.*.block.* keys")
        widths = [_need(sd, f"encoder.down.{i}.block.0.conv1.weight", kind).shape[0] for i in range(levels)]
        return MaskGITVQGANConfig(
            channel_mult=tuple(_mults(widths, hidden, kind)),
            hidden_channels=hidden,
            num_res_blocks=blocks,
            z_channels=_need(sd, "encoder.conv_out.weight", kind).shape[0],
            codebook_size=_need(sd, "quantize.embedding.weight", kind).shape[0],
            num_channels=conv_in.shape[1],
        )
    conv_in = _need(sd, "encoder.conv_in.weight", kind)
    ch = conv_in.shape[0]
    levels = _count(sd, r"encoder\.conv_blocks\.(\d+)\.")
    blocks = _count(sd, r"encoder\.conv_blocks\.0\.res\.(\d+)\.")
    if levels == 0 or blocks == 0:
        raise CheckpointError(f"cannot infer the {kind} config: no encoder.conv_blocks.*.res.* keys")
    enc = _mults(
        [_need(sd, f"encoder.conv_blocks.{i}.res.0.conv1.weight", kind).shape[0] for i in range(levels)],
        ch,
        kind,
    )
    dec_levels = _count(sd, r"decoder\.conv_blocks\.(\d+)\.")
    if dec_levels != levels:
        raise CheckpointError(
            f"cannot infer the {kind} config: {levels} encoder levels but {dec_levels} decoder levels"
        )
    dec_rev = [_need(sd, f"decoder.conv_blocks.{j}.res.0.conv1.weight", kind).shape[0] for j in range(dec_levels)]
    dec = _mults(dec_rev[::-1], ch, kind)
    codebook = _need(sd, "quantize.embedding.weight", kind)
    with_conv = levels == 1 or "encoder.conv_blocks.0.downsample.conv.weight" in sd
    return LlamaGenVQConfig(
        ch=ch,
        ch_mult=tuple(enc),
        decoder_ch_mult=None if dec == enc else tuple(dec),
        z_channels=_need(sd, "encoder.conv_out.weight", kind).shape[0],
        codebook_size=codebook.shape[0],
        codebook_embed_dim=codebook.shape[1],
        codebook_show_usage="quantize.codebook_used" in sd,
        num_res_blocks=blocks,
        in_channels=conv_in.shape[1],
        resamp_with_conv=with_conv,
    )


def build_tokenizer(config: MaskGITVQGANConfig | LlamaGenVQConfig) -> ImageTokenizer:
    """Randomly initialised tokenizer for a config dataclass."""
    for kind, config_type in _CONFIG_TYPES.items():
        if isinstance(config, config_type):
            return _MODEL_TYPES[kind](config)
    raise TypeError(f"expected MaskGITVQGANConfig or LlamaGenVQConfig, got {type(config).__name__}")


def load_official_tokenizer(
    checkpoint_path: str | os.PathLike,
    config: Mapping[str, Any] | str | os.PathLike | MaskGITVQGANConfig | LlamaGenVQConfig | None = None,
    kind: str | None = None,
    map_location: str | torch.device = "cpu",
) -> ImageTokenizer:
    """Load an official MaskGIT-VQGAN or LlamaGen VQ checkpoint into an eval-mode, frozen tokenizer.

    Args:
        checkpoint_path: ``.bin/.pt/.pth`` (loaded with ``weights_only``; ``{"model": sd}`` is unwrapped)
            or ``.safetensors``.
        config: dict, path to a JSON/YAML file, or a config dataclass. ``None`` infers the architecture
            from the state dict. Missing keys take the released defaults.
        kind: ``"maskgit_vqgan"`` or ``"llamagen_vq"`` (aliases accepted); ``None`` detects it from the keys.
        map_location: device the weights are loaded to.

    Raises:
        CheckpointError: unreadable file, unknown family, a ``kind`` that contradicts the keys, or weights
            that do not fit the config (every mismatched key / shape is named).
        ValueError: a config with unknown or inconsistent keys.
    """
    source = str(checkpoint_path)
    state_dict = load_state_dict(checkpoint_path, map_location=map_location)
    detected = detect_tokenizer_kind(state_dict)
    if isinstance(config, (MaskGITVQGANConfig, LlamaGenVQConfig)) and kind is None:
        kind = MASKGIT_VQGAN if isinstance(config, MaskGITVQGANConfig) else LLAMAGEN_VQ
    if kind is None:
        if detected is None:
            sample = ", ".join(list(state_dict)[:6])
            raise CheckpointError(
                f"{source}: not a MaskGIT-VQGAN or LlamaGen VQ state dict (first keys: {sample}); pass kind="
            )
        kind = detected
    else:
        kind = normalize_kind(kind)
        if detected is not None and detected != kind:
            raise CheckpointError(f"{source}: the keys are those of a {detected} checkpoint, but kind={kind!r}")

    if config is None:
        cfg = infer_config(kind, state_dict)
    elif isinstance(config, (MaskGITVQGANConfig, LlamaGenVQConfig)):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = config_from_dict(kind, config)
    elif isinstance(config, (str, os.PathLike)):
        cfg = config_from_dict(kind, _read_config_file(Path(config)))
    else:
        raise TypeError(f"config must be a dict, a path, a config dataclass or None, got {type(config).__name__}")
    if not isinstance(cfg, _CONFIG_TYPES[kind]):
        raise ValueError(f"config is a {type(cfg).__name__} but the checkpoint is a {kind}")

    if isinstance(cfg, LlamaGenVQConfig):
        # ``quantize.codebook_used`` is training bookkeeping, not weights: follow the checkpoint
        cfg = replace(cfg, codebook_show_usage="quantize.codebook_used" in state_dict)
    model = build_tokenizer(cfg)
    check_state_dict(model.state_dict(), state_dict, source=f"{source} ({kind})")
    model.load_state_dict(state_dict, strict=True)
    model.to(map_location)
    model.eval()
    model.requires_grad_(False)
    return model
