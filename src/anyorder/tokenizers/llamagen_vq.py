"""LlamaGen's VQ tokenizer (``vq_ds16_c2i.pt``), the tokenizer RandAR uses.

A taming-style VQGAN: 3x3 convolutions with bias, GroupNorm(32, eps 1e-6), SiLU, single-head
spatial self-attention at the lowest resolution (and in the middle), strided-conv downsampling
with asymmetric (right / bottom) padding, nearest + conv upsampling, a 1x1 ``quant_conv`` to a
small code dimension and an l2-normalised codebook. The module tree reproduces the released
state-dict layout (``encoder.conv_blocks.i.res.j.*``, ``quantize.codebook_used``, ...).

The official model works on images in ``[-1, 1]``. :meth:`LlamaGenVQ.encode` / :meth:`LlamaGenVQ.decode`
take and return ``[0, 1]`` like every :class:`ImageTokenizer`; the ``*_raw`` methods expose the
official range.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anyorder.tokenizers.base import ImageTokenizer
from anyorder.tokenizers.maskgit_vqgan import as_code_grid, check_image_batch

__all__ = ["LlamaGenVQConfig", "LlamaGenVQ"]

_GROUPS = 32
_EPS = 1e-6
USAGE_BUFFER_LEN = 65536  # length of the official ``quantize.codebook_used`` buffer, whatever the codebook size


@dataclass
class LlamaGenVQConfig:
    """Architecture of a LlamaGen VQ model. Defaults: the released ``vq_ds16_c2i`` (f16, 16384 x 8 codes)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_ch_mult: tuple[int, ...] | None = None  # None: same as ``ch_mult``
    z_channels: int = 256
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    codebook_show_usage: bool = True  # whether the checkpoint carries ``quantize.codebook_used``
    num_res_blocks: int = 2
    in_channels: int = 3
    resamp_with_conv: bool = True
    image_size: int = 256  # only used for :meth:`ImageTokenizer.grid_size` defaults
    dropout_p: float = 0.0  # training-only
    commit_loss_beta: float = 0.25  # training-only
    entropy_loss_ratio: float = 0.0  # training-only

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        if self.decoder_ch_mult is not None:
            self.decoder_ch_mult = tuple(int(m) for m in self.decoder_ch_mult)
        for name, mult in (("ch_mult", self.ch_mult), ("decoder_ch_mult", self.dec_mult)):
            if not mult or any(m <= 0 for m in mult):
                raise ValueError(f"{name} must be a non-empty list of positive ints, got {mult}")
        if len(self.dec_mult) != len(self.ch_mult):
            raise ValueError(
                f"decoder_ch_mult {self.dec_mult} and ch_mult {self.ch_mult} must have the same length "
                "(same down/upsampling factor)"
            )
        for name in (
            "ch",
            "z_channels",
            "codebook_size",
            "codebook_embed_dim",
            "num_res_blocks",
            "in_channels",
            "image_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        widths = {self.ch} | {self.ch * m for m in self.ch_mult + self.dec_mult}
        bad = sorted(w for w in widths if w % _GROUPS)
        if bad:
            raise ValueError(f"GroupNorm uses {_GROUPS} groups; channel widths {bad} are not divisible by {_GROUPS}")

    @property
    def dec_mult(self) -> tuple[int, ...]:
        """The decoder's channel multipliers (``decoder_ch_mult`` or ``ch_mult``)."""
        return self.ch_mult if self.decoder_ch_mult is None else self.decoder_ch_mult

    @property
    def num_resolutions(self) -> int:
        return len(self.ch_mult)

    @property
    def downsample(self) -> int:
        return 2 ** (self.num_resolutions - 1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_GROUPS, channels, eps=_EPS, affine=True)


class _ResBlock(nn.Module):
    """Pre-activation residual block; a 1x1 ``nin_shortcut`` projects the input when the width changes."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)
        self.norm2 = _norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, kernel_size=1) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class _SelfAttention(nn.Module):
    """Single-head self-attention over all spatial positions (1x1-conv projections), residual."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = _norm(ch)
        self.q = nn.Conv2d(ch, ch, kernel_size=1)
        self.k = nn.Conv2d(ch, ch, kernel_size=1)
        self.v = nn.Conv2d(ch, ch, kernel_size=1)
        self.proj_out = nn.Conv2d(ch, ch, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q = self.q(y).reshape(b, c, h * w).transpose(1, 2)  # [b, n, c]
        k = self.k(y).reshape(b, c, h * w)  # [b, c, n]
        v = self.v(y).reshape(b, c, h * w)  # [b, c, n]
        attn = torch.softmax(torch.bmm(q, k) * (c**-0.5), dim=2)  # [b, n_query, n_key]
        out = torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class _Downsample(nn.Module):
    """2x downsampling: stride-2 3x3 conv after padding one pixel right / bottom, or 2x2 average pooling."""

    def __init__(self, ch: int, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, kernel_size=3, stride=2) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _Upsample(nn.Module):
    """2x nearest upsampling, optionally followed by a 3x3 conv."""

    def __init__(self, ch: int, with_conv: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, kernel_size=3, padding=1) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


class _Stage(nn.Module):
    """One resolution level: residual blocks, each followed by attention when ``attn`` is non-empty."""

    def __init__(self, widths: list[tuple[int, int]], with_attn: bool) -> None:
        super().__init__()
        self.res = nn.ModuleList(_ResBlock(i, o) for i, o in widths)
        self.attn = nn.ModuleList(_SelfAttention(o) for _, o in widths) if with_attn else nn.ModuleList()

    def run_blocks(self, x: Tensor) -> Tensor:
        for i, blk in enumerate(self.res):
            x = blk(x)
            if len(self.attn):
                x = self.attn[i](x)
        return x


def _chain(in_ch: int, out_ch: int, n: int) -> list[tuple[int, int]]:
    return [(in_ch if i == 0 else out_ch, out_ch) for i in range(n)]


class _Encoder(nn.Module):
    def __init__(self, cfg: LlamaGenVQConfig) -> None:
        super().__init__()
        last = cfg.num_resolutions - 1
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, kernel_size=3, padding=1)
        self.conv_blocks = nn.ModuleList()
        block_in = cfg.ch
        for level, mult in enumerate(cfg.ch_mult):
            block_out = cfg.ch * mult
            stage = _Stage(_chain(block_in, block_out, cfg.num_res_blocks), with_attn=level == last)
            if level != last:
                stage.downsample = _Downsample(block_out, cfg.resamp_with_conv)
            self.conv_blocks.append(stage)
            block_in = block_out
        self.mid = nn.ModuleList(
            [_ResBlock(block_in, block_in), _SelfAttention(block_in), _ResBlock(block_in, block_in)]
        )
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for stage in self.conv_blocks:
            h = stage.run_blocks(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        for blk in self.mid:
            h = blk(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class _Decoder(nn.Module):
    def __init__(self, cfg: LlamaGenVQConfig) -> None:
        super().__init__()
        mult = cfg.dec_mult
        last = cfg.num_resolutions - 1
        block_in = cfg.ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, kernel_size=3, padding=1)
        self.mid = nn.ModuleList(
            [_ResBlock(block_in, block_in), _SelfAttention(block_in), _ResBlock(block_in, block_in)]
        )
        # conv_blocks.0 is the deepest level (the only one with attention); one res block more per level
        self.conv_blocks = nn.ModuleList()
        for idx, level in enumerate(reversed(range(cfg.num_resolutions))):
            block_out = cfg.ch * mult[level]
            stage = _Stage(_chain(block_in, block_out, cfg.num_res_blocks + 1), with_attn=idx == 0)
            if idx != last:
                stage.upsample = _Upsample(block_out, cfg.resamp_with_conv)
            self.conv_blocks.append(stage)
            block_in = block_out
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.in_channels, kernel_size=3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        for blk in self.mid:
            h = blk(h)
        for stage in self.conv_blocks:
            h = stage.run_blocks(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class _Quantizer(nn.Module):
    """Codebook with optional l2 normalisation of both features and entries (lookup and decoding)."""

    def __init__(self, size: int, dim: int, l2_norm: bool, show_usage: bool) -> None:
        super().__init__()
        self.l2_norm = l2_norm
        self.embedding = nn.Embedding(size, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / size, 1.0 / size)
        if show_usage:
            # kept only so the official key loads; never updated here
            self.register_buffer("codebook_used", torch.zeros(USAGE_BUFFER_LEN))

    def table(self) -> Tensor:
        w = self.embedding.weight
        return F.normalize(w, p=2, dim=-1) if self.l2_norm else w

    def nearest(self, z: Tensor) -> Tensor:
        """``[B, D, h, w]`` features -> ``[B, h, w]`` codes (squared L2, after optional normalisation)."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        table = self.table()
        if self.l2_norm:
            flat = F.normalize(flat, p=2, dim=-1)
        dist = flat.pow(2).sum(dim=1, keepdim=True) + table.pow(2).sum(dim=1) - 2 * torch.mm(flat, table.t())
        return dist.argmin(dim=1).view(b, h, w)

    def lookup(self, codes: Tensor) -> Tensor:
        """``[B, h, w]`` codes -> ``[B, D, h, w]`` (normalised) codebook vectors."""
        return self.table()[codes].permute(0, 3, 1, 2).contiguous()


class LlamaGenVQ(ImageTokenizer):
    """LlamaGen VQ tokenizer: images ``[B, C, H, W]`` in ``[0, 1]`` <-> codes ``[B, H/f, W/f]``."""

    def __init__(self, config: LlamaGenVQConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else LlamaGenVQConfig()
        cfg = self.config
        self.codebook_size = cfg.codebook_size
        self.downsample = cfg.downsample
        self.in_channels = cfg.in_channels
        self.encoder = _Encoder(cfg)
        self.decoder = _Decoder(cfg)
        self.quantize = _Quantizer(
            cfg.codebook_size, cfg.codebook_embed_dim, cfg.codebook_l2_norm, cfg.codebook_show_usage
        )
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_embed_dim, cfg.z_channels, kernel_size=1)

    def _to_model(self, images: Tensor) -> Tensor:
        w = self.quantize.embedding.weight
        return images.to(device=w.device, dtype=w.dtype)

    # ---- official [-1, 1] range ----
    def encoder_features_raw(self, images: Tensor) -> Tensor:
        """Pre-quantisation features ``[B, codebook_embed_dim, h, w]`` (after ``quant_conv``, before
        normalisation) for images in ``[-1, 1]``."""
        check_image_batch(images, self.in_channels, self.downsample)
        return self.quant_conv(self.encoder(self._to_model(images)))

    def features_to_codes(self, features: Tensor) -> Tensor:
        """Nearest codebook entry per position: ``[B, D, h, w]`` -> ``[B, h, w]``."""
        return self.quantize.nearest(features)

    @torch.no_grad()
    def encode_raw(self, images: Tensor) -> Tensor:
        """Images in ``[-1, 1]`` -> int64 codes ``[B, h, w]`` (the official input range)."""
        return self.features_to_codes(self.encoder_features_raw(images))

    def codes_to_latents(self, codes: Tensor) -> Tensor:
        """Codes ``[B, h, w]`` (or square ``[B, N]``) -> codebook vectors ``[B, embed_dim, h, w]``."""
        grid = as_code_grid(codes, self.codebook_size).to(self.quantize.embedding.weight.device)
        return self.quantize.lookup(grid)

    def decode_latents(self, latents: Tensor) -> Tensor:
        """``post_quant_conv`` + decoder on latents ``[B, D, h, w]``; output in ~``[-1, 1]``, not clamped."""
        return self.decoder(self.post_quant_conv(latents))

    @torch.no_grad()
    def decode_raw(self, codes: Tensor) -> Tensor:
        """Codes -> decoder output in the official ``[-1, 1]`` range, not clamped."""
        return self.decode_latents(self.codes_to_latents(codes))

    # ---- library-wide [0, 1] range ----
    def encoder_features(self, images: Tensor) -> Tensor:
        """Pre-quantisation features for images in ``[0, 1]``."""
        return self.encoder_features_raw(images * 2.0 - 1.0)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images in ``[0, 1]`` -> int64 codes ``[B, h, w]``."""
        return self.encode_raw(images * 2.0 - 1.0)

    @torch.no_grad()
    def decode_codes(self, codes: Tensor, clamp: bool = True) -> Tensor:
        """Codes -> images mapped to ``[0, 1]`` (``(x + 1) / 2``), clamped unless ``clamp=False``."""
        out = (self.decode_raw(codes) + 1.0) / 2.0
        return out.clamp(0.0, 1.0) if clamp else out

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes ``[B, h, w]`` -> images ``[B, C, H, W]`` in ``[0, 1]``."""
        return self.decode_codes(codes, clamp=True)
