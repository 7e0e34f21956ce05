"""MaskGIT-VQGAN, the pixel tokenizer RAR uses (``maskgit-vqgan-imagenet-f16-256.bin``).

A convolutional VQGAN without attention: "same"-padded convolutions, GroupNorm(32, eps 1e-6),
SiLU, average-pool downsampling and nearest-neighbour upsampling. The module tree reproduces the
state-dict layout of the released file (``encoder.down.i.block.j.*``, ``decoder.up.i.*``,
``quantize.embedding.weight``) so it loads without renaming.

Images are in ``[0, 1]`` on both sides (no normalisation); decoded images are clamped to ``[0, 1]``
as in the official wrapper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anyorder.tokenizers.base import ImageTokenizer

__all__ = ["MaskGITVQGANConfig", "MaskGITVQGAN", "SameConv2d"]

_GROUPS = 32
_EPS = 1e-6


@dataclass
class MaskGITVQGANConfig:
    """Architecture of a MaskGIT-VQGAN. Defaults: the released ImageNet f16 / 256px / 1024-code model."""

    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    hidden_channels: int = 128
    num_res_blocks: int = 2
    z_channels: int = 256
    codebook_size: int = 1024
    num_channels: int = 3
    resolution: int = 256
    dropout: float = 0.0  # training-only; the port runs in inference mode
    commitment_cost: float = 0.25  # training-only

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        if not self.channel_mult or any(m <= 0 for m in self.channel_mult):
            raise ValueError(f"channel_mult must be a non-empty list of positive ints, got {self.channel_mult}")
        for name in (
            "hidden_channels",
            "num_res_blocks",
            "z_channels",
            "codebook_size",
            "num_channels",
            "resolution",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        bad = [self.hidden_channels * m for m in self.channel_mult if (self.hidden_channels * m) % _GROUPS]
        if bad:
            raise ValueError(
                f"GroupNorm uses {_GROUPS} groups, so hidden_channels * channel_mult must be divisible by "
                f"{_GROUPS}; got widths {bad}"
            )

    @property
    def num_resolutions(self) -> int:
        return len(self.channel_mult)

    @property
    def downsample(self) -> int:
        """Image pixels per code along one side."""
        return 2 ** (self.num_resolutions - 1)


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow-style "SAME" zero padding computed from the input size.

    The total padding per axis is split with the odd pixel on the bottom / right.
    """

    @staticmethod
    def _same_pad(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
        total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: Tensor) -> Tensor:
        top, bottom = self._same_pad(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = self._same_pad(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_GROUPS, channels, eps=_EPS, affine=True)


class _ResBlock(nn.Module):
    """Pre-activation residual block (bias-free convs).

    When the width changes, the official block feeds the 1x1 ``nin_shortcut`` with the *branch output*
    (so the projection is out->out and the block input is dropped from the sum). Reproduced as is.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = SameConv2d(in_ch, out_ch, kernel_size=3, bias=False)
        self.norm2 = _norm(out_ch)
        self.conv2 = SameConv2d(out_ch, out_ch, kernel_size=3, bias=False)
        self.nin_shortcut = SameConv2d(out_ch, out_ch, kernel_size=1, bias=False) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(h)
        return h + skip


class _DownStage(nn.Module):
    """``num_res_blocks`` residual blocks, then 2x average pooling (except at the last level)."""

    def __init__(self, in_ch: int, out_ch: int, num_blocks: int, pool: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(_ResBlock(in_ch if i == 0 else out_ch, out_ch) for i in range(num_blocks))
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.block:
            x = blk(x)
        return F.avg_pool2d(x, kernel_size=2, stride=2) if self.pool else x


class _UpStage(nn.Module):
    """``num_res_blocks`` residual blocks, then nearest 2x upsampling + 3x3 conv (except at level 0)."""

    def __init__(self, in_ch: int, out_ch: int, num_blocks: int, upsample: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(_ResBlock(in_ch if i == 0 else out_ch, out_ch) for i in range(num_blocks))
        self.upsample_conv = SameConv2d(out_ch, out_ch, kernel_size=3) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.block:
            x = blk(x)
        if self.upsample_conv is not None:
            x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class _Encoder(nn.Module):
    def __init__(self, cfg: MaskGITVQGANConfig) -> None:
        super().__init__()
        widths = [cfg.hidden_channels * m for m in cfg.channel_mult]
        ins = [cfg.hidden_channels] + widths[:-1]
        last = cfg.num_resolutions - 1
        self.conv_in = SameConv2d(cfg.num_channels, cfg.hidden_channels, kernel_size=3, bias=False)
        self.down = nn.ModuleList(
            _DownStage(ins[i], widths[i], cfg.num_res_blocks, pool=i != last) for i in range(cfg.num_resolutions)
        )
        self.mid = nn.ModuleList(_ResBlock(widths[-1], widths[-1]) for _ in range(cfg.num_res_blocks))
        self.norm_out = _norm(widths[-1])
        self.conv_out = SameConv2d(widths[-1], cfg.z_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for stage in self.down:
            x = stage(x)
        for blk in self.mid:
            x = blk(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class _Decoder(nn.Module):
    def __init__(self, cfg: MaskGITVQGANConfig) -> None:
        super().__init__()
        widths = [cfg.hidden_channels * m for m in cfg.channel_mult]
        # level i reads the width of level i+1 (the deepest level reads its own width)
        ins = widths[1:] + widths[-1:]
        self.conv_in = SameConv2d(cfg.z_channels, widths[-1], kernel_size=3)
        self.mid = nn.ModuleList(_ResBlock(widths[-1], widths[-1]) for _ in range(cfg.num_res_blocks))
        # stored by level (up.0 = full resolution) and run from the deepest level up
        self.up = nn.ModuleList(
            _UpStage(ins[i], widths[i], cfg.num_res_blocks, upsample=i != 0) for i in range(cfg.num_resolutions)
        )
        self.norm_out = _norm(widths[0])
        self.conv_out = SameConv2d(widths[0], cfg.num_channels, kernel_size=3)

    def forward(self, z: Tensor) -> Tensor:
        x = self.conv_in(z)
        for blk in self.mid:
            x = blk(x)
        for stage in reversed(self.up):
            x = stage(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class _Codebook(nn.Module):
    """Plain VQ codebook: nearest entry by squared L2 distance (no normalisation)."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(size, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / size, 1.0 / size)

    def nearest(self, z: Tensor) -> Tensor:
        """``[B, D, h, w]`` features -> ``[B, h, w]`` int64 codes."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        table_t = self.embedding.weight.t()
        # |z|^2 + |e|^2 - 2 z.e, in the same association order as the official code
        base = flat.pow(2.0).sum(dim=1, keepdim=True) + table_t.pow(2.0).sum(dim=0, keepdim=True)
        dist = torch.addmm(base, flat, table_t, alpha=-2.0)
        return dist.argmin(dim=1).view(b, h, w)

    def lookup(self, codes: Tensor) -> Tensor:
        """``[B, h, w]`` codes -> ``[B, D, h, w]`` codebook vectors."""
        return self.embedding(codes).permute(0, 3, 1, 2).contiguous()


def as_code_grid(codes: Tensor, codebook_size: int) -> Tensor:
    """Validate codes and return them as ``[B, h, w]`` int64 (``[B, N]`` with square ``N`` is accepted)."""
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
    if codes.dim() == 2:
        side = math.isqrt(codes.shape[1])
        if side * side != codes.shape[1]:
            raise ValueError(f"flat codes [B, N] need a square N to form a grid, got N={codes.shape[1]}")
        codes = codes.reshape(codes.shape[0], side, side)
    if codes.dim() != 3:
        raise ValueError(f"codes must be [B, h, w] (or [B, h*w]), got shape {tuple(codes.shape)}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= codebook_size):
        raise ValueError(
            f"codes must lie in [0, {codebook_size - 1}], got range [{int(codes.min())}, {int(codes.max())}]"
        )
    return codes.long()


def check_image_batch(images: Tensor, channels: int, downsample: int) -> None:
    if images.dim() != 4 or images.shape[1] != channels:
        raise ValueError(f"images must be [B, {channels}, H, W], got shape {tuple(images.shape)}")
    if not images.dtype.is_floating_point:
        raise TypeError(f"images must be a floating tensor, got {images.dtype}")
    h, w = images.shape[-2:]
    if h % downsample or w % downsample:
        raise ValueError(f"image size {h}x{w} is not divisible by the tokenizer's downsampling {downsample}")


class MaskGITVQGAN(ImageTokenizer):
    """MaskGIT-VQGAN tokenizer: images ``[B, C, H, W]`` in ``[0, 1]`` <-> codes ``[B, H/f, W/f]``."""

    def __init__(self, config: MaskGITVQGANConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else MaskGITVQGANConfig()
        self.codebook_size = self.config.codebook_size
        self.downsample = self.config.downsample
        self.in_channels = self.config.num_channels
        self.encoder = _Encoder(self.config)
        self.decoder = _Decoder(self.config)
        self.quantize = _Codebook(self.config.codebook_size, self.config.z_channels)

    def _to_model(self, images: Tensor) -> Tensor:
        w = self.quantize.embedding.weight
        return images.to(device=w.device, dtype=w.dtype)

    def encoder_features(self, images: Tensor) -> Tensor:
        """Pre-quantisation encoder output ``[B, z_channels, h, w]`` for images in ``[0, 1]``."""
        check_image_batch(images, self.in_channels, self.downsample)
        return self.encoder(self._to_model(images))

    def features_to_codes(self, features: Tensor) -> Tensor:
        """Nearest codebook entry (squared L2) for each position: ``[B, D, h, w]`` -> ``[B, h, w]``."""
        return self.quantize.nearest(features)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images in ``[0, 1]`` -> int64 codes ``[B, h, w]``."""
        return self.features_to_codes(self.encoder_features(images))

    def encode_raw(self, images: Tensor) -> Tensor:
        """Same as :meth:`encode` (the official input range is already ``[0, 1]``)."""
        return self.encode(images)

    def codes_to_latents(self, codes: Tensor) -> Tensor:
        """Codes ``[B, h, w]`` (or square ``[B, N]``) -> codebook vectors ``[B, z_channels, h, w]``."""
        return self.quantize.lookup(as_code_grid(codes, self.codebook_size).to(self.quantize.embedding.weight.device))

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Decoder output for latents ``[B, z_channels, h, w]``, not clamped."""
        return self.decoder(latents)

    @torch.no_grad()
    def decode_raw(self, codes: Tensor) -> Tensor:
        """Codes -> decoder output in (roughly) ``[0, 1]``, not clamped."""
        return self.decode_latents(self.codes_to_latents(codes))

    @torch.no_grad()
    def decode_codes(self, codes: Tensor, clamp: bool = True) -> Tensor:
        """Codes -> images; clamped to ``[0, 1]`` unless ``clamp=False``."""
        out = self.decode_raw(codes)
        return out.clamp(0.0, 1.0) if clamp else out

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``[B, h, w]`` -> images ``[B, C, H, W]`` clamped to ``[0, 1]`` (as the official wrapper)."""
        return self.decode_codes(codes, clamp=True)
