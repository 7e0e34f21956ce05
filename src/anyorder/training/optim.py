"""AdamW with the weight-decay groups of each family's official trainer.

The rule lives with the model (:meth:`anyorder.models.base.AnyOrderModel.decays`: RAR's 1d-tokenizer rule on
the official names, RandAR's "every matrix decays", ...); this module only splits the parameters by it. A
family without a rule is an error naming the family, never another family's rule.
"""

from __future__ import annotations

import torch
from torch import nn

from anyorder.training.config import TrainConfig

__all__ = ["FUSED_DEVICES", "decay_names", "make_optimizer"]

FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu")  # the device types with a fused AdamW kernel (torch >= 2.6)


def decay_names(model: nn.Module) -> set[str]:
    """Names (ours) of the trainable parameters that decay, by the model family's official rule."""
    return {n for n, p in model.named_parameters() if p.requires_grad and model.decays(n, p)}


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
