"""A small convolutional VQ-VAE for the 28x28 MNIST demo (28x28 -> 7x7 code grid).

The codebook is trained with exponential moving averages (k-means style updates, no codebook
gradient) and dead codes are restarted from random encoder outputs of the current batch, which
keeps codebook usage high. The encoder learns through the straight-through estimator plus a
commitment loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anyorder.tokenizers.base import ImageTokenizer

__all__ = [
    "DemoVQConfig",
    "DemoVQ",
    "EMAQuantizer",
    "reconstruction_error",
    "codebook_usage",
]


@dataclass
class DemoVQConfig:
    """Hyper-parameters of :class:`DemoVQ` (``downsample``: a power of two >= 2 dividing ``image_size``)."""

    in_channels: int = 1
    image_size: int = 28
    downsample: int = 4
    codebook_size: int = 128
    code_dim: int = 32
    hidden: int = 64
    num_res_blocks: int = 1
    commitment: float = 0.25
    ema_decay: float = 0.95
    dead_code_threshold: float = 0.5  # EMA count below which a code is restarted

    def __post_init__(self) -> None:
        ds = self.downsample
        if ds < 2 or ds & (ds - 1):
            raise ValueError(f"downsample must be a power of two >= 2, got {ds}")
        if self.image_size % ds:
            raise ValueError(f"image_size {self.image_size} is not divisible by downsample {ds}")
        if self.codebook_size < 2 or self.code_dim < 1 or self.hidden < 1 or self.in_channels < 1:
            raise ValueError(f"invalid sizes in {self}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


class _ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class EMAQuantizer(nn.Module):
    """Nearest-neighbour vector quantiser with EMA codebook updates and dead-code restarts."""

    def __init__(self, codebook_size: int, code_dim: int, decay: float, dead_code_threshold: float) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.decay = decay
        self.dead_code_threshold = dead_code_threshold
        self.register_buffer("embed", torch.randn(codebook_size, code_dim) * 0.1)
        self.register_buffer("embed_avg", self.embed.clone())
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def lookup(self, flat: Tensor) -> Tensor:
        """Index of the nearest code for each row of ``flat`` ``[N, D]``."""
        dist = (
            flat.pow(2).sum(1, keepdim=True)
            - 2.0 * flat @ self.embed.t()
            + self.embed.pow(2).sum(1)[None, :]
        )
        return dist.argmin(1)

    @torch.no_grad()
    def _init_from(self, flat: Tensor) -> None:
        idx = torch.randint(0, flat.shape[0], (self.codebook_size,), device=flat.device)
        self.embed.copy_(flat[idx])
        self.embed_avg.copy_(flat[idx])
        self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, idx: Tensor) -> None:
        onehot = F.one_hot(idx, self.codebook_size).type(flat.dtype)
        counts = onehot.sum(0)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + 1e-5) / (n + self.codebook_size * 1e-5) * n
        self.embed.copy_(self.embed_avg / smoothed[:, None])
        dead = self.cluster_size < self.dead_code_threshold
        n_dead = int(dead.sum())
        if n_dead:
            pick = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
            new = flat[pick] + 1e-3 * torch.randn_like(flat[pick])
            self.embed[dead] = new
            self.embed_avg[dead] = new
            self.cluster_size[dead] = 1.0

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``z [B, D, h, w]`` -> (straight-through quantised ``z``, commitment MSE, codes ``[B, h, w]``)."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        if self.training and not bool(self.initialized):
            self._init_from(flat.detach())
        idx = self.lookup(flat.detach())
        q = F.embedding(idx, self.embed).view(b, h, w, d).permute(0, 3, 1, 2)
        if self.training:
            self._ema_update(flat.detach(), idx)
        commit = F.mse_loss(z, q.detach())
        q = z + (q - z).detach()
        return q, commit, idx.view(b, h, w)


class DemoVQ(ImageTokenizer):
    """Small conv VQ-VAE: images ``[B, C, H, W]`` in ``[0, 1]`` <-> codes ``[B, H/ds, W/ds]``.

    Encoder: 2x2 pixel-unshuffle, conv, stride-2 convs, residual block, 1x1 to ``code_dim``; EMA
    quantiser; mirrored decoder ending in a pixel-shuffle and a sigmoid (in :meth:`decode`).
    """

    model_type = "demo_vq"
    config_class = DemoVQConfig

    def __init__(self, config: DemoVQConfig | None = None) -> None:
        super().__init__()
        cfg = config or DemoVQConfig()
        self.config = cfg
        self.codebook_size = cfg.codebook_size
        self.downsample = cfg.downsample
        self.in_channels = cfg.in_channels
        n_down = int(math.log2(cfg.downsample))
        # Channels per resolution level (level i has stride 2**i): ``hidden`` at the code grid, halved
        # per finer level. Level 0 (full resolution) has no convs: a 2x2 pixel (un)shuffle maps it to
        # level 1, which is ~2x faster on CPU than full-resolution convs and reconstructs better.
        chans = [max(cfg.hidden // 2 ** (n_down - i), 8) for i in range(n_down + 1)]
        c_in = cfg.in_channels * 4
        enc: list[nn.Module] = [nn.PixelUnshuffle(2), nn.Conv2d(c_in, chans[1], 3, padding=1)]
        for i in range(1, n_down):
            enc += [nn.ReLU(), nn.Conv2d(chans[i], chans[i + 1], 4, stride=2, padding=1)]
        enc += [_ResBlock(cfg.hidden) for _ in range(cfg.num_res_blocks)]
        enc += [nn.ReLU(), nn.Conv2d(cfg.hidden, cfg.code_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        self.quantizer = EMAQuantizer(cfg.codebook_size, cfg.code_dim, cfg.ema_decay, cfg.dead_code_threshold)
        dec: list[nn.Module] = [nn.Conv2d(cfg.code_dim, cfg.hidden, 3, padding=1)]
        dec += [_ResBlock(cfg.hidden) for _ in range(cfg.num_res_blocks)]
        for i in range(n_down, 1, -1):
            dec += [nn.ReLU(), nn.ConvTranspose2d(chans[i], chans[i - 1], 4, stride=2, padding=1)]
        dec += [nn.ReLU(), nn.Conv2d(chans[1], c_in, 3, padding=1), nn.PixelShuffle(2)]
        self.decoder = nn.Sequential(*dec)

    def _check_images(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"expected images [B, {self.in_channels}, H, W], got {tuple(images.shape)}")
        if images.shape[-1] % self.downsample or images.shape[-2] % self.downsample:
            raise ValueError(f"image size {tuple(images.shape[-2:])} not divisible by {self.downsample}")

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Training pass: returns (reconstruction logits, commitment loss, codes)."""
        self._check_images(images)
        z = self.encoder(images * 2.0 - 1.0)
        q, commit, codes = self.quantizer(z)
        return self.decoder(q), commit, codes

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` in ``[0, 1]`` -> codes ``[B, H/ds, W/ds]`` int64."""
        self._check_images(images)
        z = self.encoder(images.to(self.quantizer.embed.dtype) * 2.0 - 1.0)
        b, d, h, w = z.shape
        idx = self.quantizer.lookup(z.permute(0, 2, 3, 1).reshape(-1, d))
        return idx.view(b, h, w).long()

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``[B, h, w]`` (ints in ``[0, codebook_size)``) -> images ``[B, C, h*ds, w*ds]`` in ``[0, 1]``."""
        if codes.ndim != 3:
            raise ValueError(f"expected codes [B, h, w], got {tuple(codes.shape)}")
        codes = codes.long()
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            lo, hi = int(codes.min()), int(codes.max())
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got values in [{lo}, {hi}]")
        q = F.embedding(codes, self.quantizer.embed).permute(0, 3, 1, 2)
        return torch.sigmoid(self.decoder(q))


@torch.no_grad()
def reconstruction_error(model: DemoVQ, images: Tensor, batch_size: int = 500) -> float:
    """Mean squared error (pixels in [0, 1]) between ``images`` and their VQ reconstructions."""
    was_training = model.training
    model.eval()
    device = model.quantizer.embed.device
    total, n = 0.0, 0
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size].to(device)
        total += float(F.mse_loss(model.reconstruct(x), x, reduction="sum"))
        n += x.numel()
    model.train(was_training)
    return total / max(n, 1)


@torch.no_grad()
def codebook_usage(model: DemoVQ, images: Tensor, batch_size: int = 500) -> float:
    """Fraction of the codebook used when encoding ``images``."""
    device = model.quantizer.embed.device
    used = torch.zeros(model.codebook_size, dtype=torch.bool, device=device)
    for i in range(0, images.shape[0], batch_size):
        used[model.encode(images[i : i + batch_size].to(device)).flatten()] = True
    return float(used.float().mean())
