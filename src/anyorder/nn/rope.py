"""2D rotary position tables (LlamaGen / RandAR layout) and NTK-style mixing for larger grids.

A table has shape ``[prefix + h*w, head_dim // 2, 2]`` holding ``(cos, sin)`` per frequency pair.
The first half of the pairs rotate by the row index, the second half by the column index, with
frequencies ``base ** (-(0, 2, 4, ...) / (head_dim / 2))``. The ``prefix`` rows (class tokens) are
all zeros, which zeroes those tokens' queries and keys, as the official code does. Pairs are
adjacent elements of the head dimension.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["axis_frequencies", "rope_2d", "rope_2d_mixed", "apply_rope"]


def axis_frequencies(head_dim: int, base: float = 10000.0) -> Tensor:
    """The ``head_dim // 4`` frequencies used along each axis."""
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {head_dim}")
    half = head_dim // 2
    return 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))


def _table(row_pos: Tensor, col_pos: Tensor, freqs_row: Tensor, freqs_col: Tensor, prefix: int) -> Tensor:
    """Angles ``[h, w, head_dim/2]`` from per-axis positions; zero rows for the prefix."""
    h, w = row_pos.numel(), col_pos.numel()
    ang_r = row_pos[:, None] * freqs_row[None]  # [h, F]
    ang_c = col_pos[:, None] * freqs_col[None]  # [w, F]
    ang = torch.cat([ang_r[:, None, :].expand(h, w, -1), ang_c[None, :, :].expand(h, w, -1)], dim=-1)
    table = torch.stack([ang.cos(), ang.sin()], dim=-1).flatten(0, 1)
    return torch.cat([torch.zeros(prefix, *table.shape[1:]), table])


def rope_2d(grid: int | tuple[int, int], head_dim: int, base: float = 10000.0, prefix: int = 1) -> Tensor:
    """The RoPE table of an ``h x w`` grid: ``[prefix + h*w, head_dim // 2, 2]``."""
    h, w = (grid, grid) if isinstance(grid, int) else grid
    f = axis_frequencies(head_dim, base)
    return _table(torch.arange(h).float(), torch.arange(w).float(), f, f, prefix)


def rope_2d_mixed(grid: int | tuple[int, int], head_dim: int, factor: float, ntk_boundary: int,
                  base: float = 10000.0, prefix: int = 1) -> Tensor:
    """RandAR's resolution-extrapolation table for a grid ``factor`` times the trained one.

    In each axis's half, the first ``ntk_boundary`` frequency pairs (the highest frequencies) rotate by
    the true positions of the large grid (extrapolated); the remaining pairs rotate by positions
    squeezed back into the trained range, ``linspace(0, n / factor - 1, n)`` (interpolated).
    """
    h, w = (grid, grid) if isinstance(grid, int) else grid
    f = axis_frequencies(head_dim, base)
    if not 0 <= ntk_boundary <= f.numel():
        raise ValueError(f"ntk_boundary must be in [0, {f.numel()}], got {ntk_boundary}")

    def mixed(n: int) -> tuple[Tensor, Tensor]:
        true = torch.arange(n).float()
        squeezed = torch.linspace(0, n / factor - 1, n)
        return true, squeezed

    (r_true, r_sq), (c_true, c_sq) = mixed(h), mixed(w)
    hi = _table(r_true, c_true, f, f, prefix)
    lo = _table(r_sq, c_sq, f, f, prefix)
    keep = torch.zeros(f.numel(), dtype=torch.bool)
    keep[:ntk_boundary] = True
    keep = torch.cat([keep, keep])  # row half, column half
    return torch.where(keep[None, :, None], hi, lo)


def _pairs_as_complex(t: Tensor) -> bool:
    """Whether ``view_as_complex`` can view ``t [..., 2]``: unit last stride, even other strides and offset."""
    return (t.stride(-1) == 1 and t.storage_offset() % 2 == 0
            and all(st % 2 == 0 for st, n in zip(t.stride()[:-1], t.shape[:-1]) if n > 1))


def apply_rope(x: Tensor, table: Tensor) -> Tensor:
    """Rotate ``x [B, L, H, D]`` by ``table [B or 1, L, D/2, 2]`` (adjacent pairs), in fp32.

    Each pair ``(x0, x1)`` becomes ``(x0 cos - x1 sin, x1 cos + x0 sin)``: a complex product
    ``(x0 + i x1)(cos + i sin)``. Eager mode computes it as that product (one kernel forward and backward,
    several times faster on CPU than the four strided real products); under ``torch.compile`` (inductor has no
    complex kernels) and for layouts a complex view cannot take, as the real products, which inductor fuses
    into one kernel. The two agree up to the rounding of the last bit."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    t = table[:, :, None]  # broadcast over heads
    if (not torch.compiler.is_compiling() and x.device.type in ("cpu", "cuda") and t.dtype == torch.float32
            and _pairs_as_complex(xs) and _pairs_as_complex(t)):
        out = torch.view_as_real(torch.view_as_complex(xs) * torch.view_as_complex(t))
        return out.flatten(-2).type_as(x)
    cos, sin = t[..., 0], t[..., 1]
    out = torch.stack([xs[..., 0] * cos - xs[..., 1] * sin, xs[..., 1] * cos + xs[..., 0] * sin], dim=-1)
    return out.flatten(-2).type_as(x)
