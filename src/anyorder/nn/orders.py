"""Scan orders and permutations of an ``h x w`` token grid.

An *order* is a permutation ``order`` of ``range(h * w)``: the token generated ``j``-th sits at
raster position ``order[j]``. Every scan order here is a pure function of the grid shape (RAR,
Table 3). ``permute`` puts raster-ordered tokens into generation order and ``unpermute`` undoes it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "SCAN_ORDERS",
    "scan_order",
    "raster",
    "spiral_in",
    "spiral_out",
    "z_curve",
    "subsample",
    "alternate",
    "random_orders",
    "training_orders",
    "known_first",
    "invert",
    "permute",
    "unpermute",
    "is_permutation",
]


def raster(h: int, w: int) -> Tensor:
    """Row by row, left to right."""
    return torch.arange(h * w)


def spiral_in(h: int, w: int) -> Tensor:
    """Clockwise from the top-left corner, winding inwards to the centre."""
    top, bottom, left, right = 0, h - 1, 0, w - 1
    out: list[int] = []
    while top <= bottom and left <= right:
        out += [top * w + c for c in range(left, right + 1)]
        out += [r * w + right for r in range(top + 1, bottom + 1)]
        if top < bottom:
            out += [bottom * w + c for c in range(right - 1, left - 1, -1)]
        if left < right:
            out += [r * w + left for r in range(bottom - 1, top, -1)]
        top, bottom, left, right = top + 1, bottom - 1, left + 1, right - 1
    return torch.tensor(out, dtype=torch.long)


def spiral_out(h: int, w: int) -> Tensor:
    """From the centre, winding outwards to the top-left corner (spiral-in reversed)."""
    return spiral_in(h, w).flip(0)


def z_curve(h: int, w: int) -> Tensor:
    """Morton (Z-order) curve: positions sorted by the bit-interleaving of (row, col)."""

    def morton(r: int, c: int) -> int:
        code = 0
        for bit in range(max(h, w).bit_length()):
            code |= ((c >> bit) & 1) << (2 * bit) | ((r >> bit) & 1) << (2 * bit + 1)
        return code

    keys = [morton(p // w, p % w) for p in range(h * w)]
    return torch.tensor(sorted(range(h * w), key=lambda p: keys[p]), dtype=torch.long)


def subsample(h: int, w: int) -> Tensor:
    """Four interleaved sub-grids one after another: (even row, even col), (even, odd), (odd, even),
    (odd, odd), raster order inside each."""
    pos = torch.arange(h * w)
    rows, cols = pos // w, pos % w
    group = (rows % 2) * 2 + (cols % 2)
    return pos[torch.argsort(group * (h * w) + pos)]


def alternate(h: int, w: int) -> Tensor:
    """Boustrophedon: even rows left to right, odd rows right to left."""
    grid = torch.arange(h * w).view(h, w).clone()
    grid[1::2] = grid[1::2].flip(1)
    return grid.flatten()


SCAN_ORDERS: dict[str, Callable[[int, int], Tensor]] = {
    "raster": raster,
    "spiral_in": spiral_in,
    "spiral_out": spiral_out,
    "z_curve": z_curve,
    "subsample": subsample,
    "alternate": alternate,
}


def scan_order(name: str, h: int, w: int | None = None) -> Tensor:
    """The scan order called ``name`` on an ``h x w`` grid (``w`` defaults to ``h``)."""
    w = h if w is None else w
    key = name.replace("-", "_")
    if key not in SCAN_ORDERS:
        raise ValueError(f"unknown scan order {name!r}; choose one of {sorted(SCAN_ORDERS)}")
    return SCAN_ORDERS[key](h, w)


def random_orders(batch: int, length: int, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> Tensor:
    """One uniformly random permutation of ``range(length)`` per row: ``[batch, length]`` on ``device``.

    The noise is drawn on the generator's device (a CUDA generator draws on its GPU, a CPU one on the
    CPU — so a seed gives the same orders wherever the result goes), without a generator on ``device``."""
    noise = torch.rand(batch, length, generator=generator, device=generator.device if generator is not None else device)
    return noise.argsort(dim=1).to(device)


def training_orders(batch: int, base: Tensor, r: float, generator: torch.Generator | None = None) -> Tensor:
    """RAR's per-sample choice: with probability ``r`` a random permutation, else ``base``; on ``base``'s device
    (the draws on the generator's device, as :func:`random_orders`)."""
    length = base.numel()
    rand = random_orders(batch, length, generator=generator, device=base.device)
    pick = torch.rand(batch, generator=generator, device=generator.device if generator is not None else base.device) < r
    return torch.where(pick.to(base.device)[:, None], rand, base[None].expand(batch, -1))


def known_first(orders: Tensor, unknown: Tensor) -> Tensor:
    """Reorder each row of ``orders`` so the known positions (``unknown`` False, raster-indexed ``[B, T]``)
    come first; the relative order inside each group is kept (a stable partition)."""
    flag = unknown.gather(1, orders).to(torch.int8)
    idx = torch.sort(flag, dim=1, stable=True).indices
    return orders.gather(1, idx)


def invert(order: Tensor) -> Tensor:
    """The inverse permutation (along the last dim): ``invert(o)[o[j]] == j``."""
    inv = torch.empty_like(order)
    inv.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return inv


def permute(x: Tensor, order: Tensor) -> Tensor:
    """Raster-ordered ``x [B, T, ...]`` to generation order: ``out[:, j] = x[:, order[:, j]]``."""
    if order.dim() == 1:
        order = order.expand(x.shape[0], -1)
    idx = order.view(*order.shape, *([1] * (x.dim() - 2))).expand(*order.shape, *x.shape[2:])
    return x.gather(1, idx)


def unpermute(x: Tensor, order: Tensor) -> Tensor:
    """Generation-ordered ``x`` back to raster order (inverse of :func:`permute`)."""
    if order.dim() == 1:
        order = order.expand(x.shape[0], -1)
    return permute(x, invert(order))


def is_permutation(order: Tensor) -> bool:
    """True when every row of ``order`` is a permutation of ``range(order.shape[-1])``."""
    n = order.shape[-1]
    return bool((order.sort(dim=-1).values == torch.arange(n, device=order.device)).all())
