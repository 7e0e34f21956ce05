"""Training of the demo's helper networks: the demo VQ tokenizer and the digit judge (:func:`fit` loop)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from anyorder.evaluation.judge import class_accuracy
from anyorder.models.digit_judge import DigitClassifier, DigitClassifierConfig
from anyorder.tokenizers.demo_vq import DemoVQ, DemoVQConfig, codebook_usage, reconstruction_error
from anyorder.training.fitting import fit, seeded

__all__ = ['train_demo_vq', 'train_digit_classifier']


def train_demo_vq(
    train_images: Tensor,
    config: DemoVQConfig | None = None,
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[DemoVQ, dict[str, float]]:
    """Train a :class:`DemoVQ` on ``train_images`` ``[N, C, H, W]`` in ``[0, 1]``.

    Loss: binary cross-entropy of the reconstruction + ``commitment`` * commitment MSE; Adam with a
    cosine learning-rate decay. Returns the model (eval mode) and stats: final losses, training-set
    reconstruction MSE, codebook usage on the training set and wall time.
    """
    cfg = config or DemoVQConfig()
    if train_images.ndim != 4 or train_images.shape[1] != cfg.in_channels:
        raise ValueError(f"train_images must be [N, {cfg.in_channels}, H, W], got {tuple(train_images.shape)}")
    device = torch.device(device)
    with seeded(seed, device):
        gen = torch.Generator().manual_seed(seed)
        model = DemoVQ(cfg).to(device).train()
        data = train_images.float().to(device)

        def step_loss(idx: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
            x = data[idx]
            logits, commit, _ = model(x)
            rec = F.binary_cross_entropy_with_logits(logits, x)
            return rec + cfg.commitment * commit, {"bce": rec, "commit": commit}

        shown, seconds = fit(model, step_loss, data.shape[0], steps, batch_size, lr, gen, device, "train VQ",
                             progress)
    model.eval()
    stats = {
        "steps": float(steps),
        "seconds": seconds,
        "final_bce": float(shown["bce"]),
        "final_commitment": float(shown["commit"]),
        "train_mse": reconstruction_error(model, data[:2000]),
        "codebook_usage": codebook_usage(model, data),
    }
    return model, stats


def _random_shift(x: Tensor, max_shift: int, gen: torch.Generator) -> Tensor:
    """Translate each image by an integer offset in ``[-max_shift, max_shift]`` (zero fill)."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    offs = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=gen)
    rows = (offs[:, 0, None] + torch.arange(h)[None, :]).to(x.device)  # [B, H]
    cols = (offs[:, 1, None] + torch.arange(w)[None, :]).to(x.device)  # [B, W]
    bidx = torch.arange(b, device=x.device)[:, None, None]
    out = padded[:, 0][bidx, rows[:, :, None], cols[:, None, :]]  # single-channel fast path
    if x.shape[1] == 1:
        return out[:, None]
    return torch.stack([padded[:, c][bidx, rows[:, :, None], cols[:, None, :]] for c in range(x.shape[1])], 1)


def train_digit_classifier(
    images: Tensor,
    labels: Tensor,
    steps: int = 800,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    config: DigitClassifierConfig | None = None,
    max_shift: int = 2,
) -> tuple[DigitClassifier, dict[str, float]]:
    """Train a :class:`DigitClassifier` with Adam (cosine decay) and random ±``max_shift`` px shifts.

    Returns the classifier in eval mode and stats (final loss, train accuracy, seconds).
    """
    cfg = config or DigitClassifierConfig(in_channels=images.shape[1], image_size=images.shape[-1])
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= cfg.num_classes):
        raise ValueError(f"labels must lie in [0, {cfg.num_classes})")
    device = torch.device(device)
    with seeded(seed, device):
        gen = torch.Generator().manual_seed(seed)
        model = DigitClassifier(cfg).to(device).train()
        data, targets = images.float().to(device), labels.long().to(device)

        def step_loss(idx: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
            loss = F.cross_entropy(model(_random_shift(data[idx], max_shift, gen)), targets[idx])
            return loss, {"loss": loss}

        shown, seconds = fit(model, step_loss, data.shape[0], steps, batch_size, lr, gen, device,
                             "train classifier", progress)
    model.eval()
    stats = {
        "steps": float(steps),
        "seconds": seconds,
        "final_loss": float(shown["loss"]),
        "train_accuracy": class_accuracy(model, data[:2000], targets[:2000]),
    }
    return model, stats
