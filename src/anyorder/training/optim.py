"""AdamW with the weight-decay groups of each family's official trainer.

- RAR (bytedance/1d-tokenizer ``utils/train_utils.py``, ``create_optimizer``): a parameter does *not* decay when
  it has fewer than 2 dims or its official name contains ``ln``, ``bias``, ``norm``, ``gamma``, ``embed``,
  ``embedding``, ``latent_tokens`` or ``mask_token`` (substring, case-sensitive). So the token embedding and the
  position / target-aware / timestep tables do not decay, ``cls_token`` does, and of the adaLN weights the blocks'
  (``adaLN_modulation``) decay while the final layer's (``adaln_before_head``) do not.
- RandAR (ziqipang/RandAR ``RandAR/model/randar_gpt.py``, ``configure_optimizer``): every parameter with 2 or more
  dims decays (embeddings and the position-instruction embedding included), the rest does not.

The RAR rule reads the official names, so ours are mapped back first (:func:`rar_official_name`, the inverse of
:meth:`anyorder.models.rar.RAR.convert_official_state_dict`).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from anyorder.training.config import TrainConfig

__all__ = ["FUSED_DEVICES", "decay_names", "make_optimizer", "rar_official_name"]

FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu")  # the device types with a fused AdamW kernel (torch >= 2.6)
_RAR_NO_DECAY = ("ln", "bias", "norm", "gamma", "embed", "embedding", "latent_tokens", "mask_token")
# our RAR names -> the official ones (first match wins)
_RAR_TO_OFFICIAL = [
    (r"^transformer\.blocks\.", "blocks."),
    (r"^transformer\.final\.head\.", "lm_head."),
    (r"^transformer\.final\.", "adaln_before_head."),
]


def rar_official_name(name: str) -> str:
    """Our RAR parameter name as the official checkpoint spells it."""
    for pat, rep in _RAR_TO_OFFICIAL:
        if re.match(pat, name):
            return re.sub(pat, rep, name)
    return name


def _decays(family: str, name: str, p: torch.Tensor) -> bool:
    if p.dim() < 2:
        return False
    if family == "rar":
        official = rar_official_name(name)
        return not any(s in official for s in _RAR_NO_DECAY)
    return True  # RandAR (and any other family): matrices and embeddings


def decay_names(model: nn.Module) -> set[str]:
    """Names (ours) of the trainable parameters that decay, by the model family's official rule."""
    family = getattr(model, "family", "")
    return {n for n, p in model.named_parameters() if p.requires_grad and _decays(family, n, p)}


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over two groups, ``decay`` (``cfg.weight_decay``) then ``no_decay`` (0), each group's
    ``names`` recorded. Call after any sharding (FSDP replaces the parameters). Fused where the device has the
    kernel (CUDA, and CPU from torch 2.4)."""
    decay = decay_names(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if n in decay], "weight_decay": cfg.weight_decay,
         "names": [n for n, _ in named if n in decay]},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0,
         "names": [n for n, _ in named if n not in decay]},
    ]
    # one fused kernel for the whole update (~4x faster than the per-tensor loop on CPU); torch only checks the
    # device and dtype at the first step, so decide here
    fused = all(p.is_floating_point() and p.device.type in FUSED_DEVICES for _, p in named)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=True if fused else None)
