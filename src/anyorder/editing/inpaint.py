"""Inpainting and outpainting with RandAR: known tokens first, teacher-forced; the rest generated after them."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from anyorder.editing.common import (
    _classes,
    _codes,
    _eval_mode,
    _generator,
    _policy,
    known_first_orders,
    require_randar,
)
from anyorder.editing.masks import _token_mask
from anyorder.nn import orders as orders_lib
from anyorder.nn.rope import rope_2d, rope_2d_mixed
from anyorder.sampling.decode import decode

__all__ = ['inpaint', 'outpaint', 'outpaint_table']


# ---- inpainting ---------------------------------------------------------------------------------------
@torch.no_grad()
def inpaint(model: Any, codes: Tensor, mask: Any, classes: Any, guidance_scale: float = 1.0,
            guidance_start: float = 1.0, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
            steps: int | None = None, seed: int | None = None, generator: torch.Generator | None = None,
            orders: Tensor | None = None, return_orders: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Regenerate the masked tokens of ``codes [B, h, w]`` (``mask`` True) given the rest.

    Per image, the known tokens go first in a random order and are teacher-forced through the KV
    cache in one pass (:func:`anyorder.sampling.decode` with ``prefix``); the masked ones follow in
    a random order, ``steps`` cosine parallel-decoding steps over the masked count (default: one
    token per step), class guidance on RandAR's linear schedule. Known tokens come back unchanged.
    ``mask`` is ``[h, w]`` (shared) or ``[B, h, w]``; images with different masked counts are decoded
    in groups of equal count. ``orders`` (raster permutations ``[B, T]`` or ``[T]``) fixes the
    random orders; they are stably partitioned known-first. With a mask covering everything and the
    same ``seed`` this is exactly :func:`anyorder.sampling.generate` (same orders, same samples).
    """
    require_randar(model, "inpainting")
    grid = tuple(model.grid)
    codes = _codes(model, codes, grid)
    B, T = codes.shape[0], model.seq_len
    flat = codes.reshape(B, T)
    unknown = _token_mask(mask, B, grid, model.device)
    cls = _classes(model, classes, B)
    generator = _generator(model, seed, generator)
    if orders is None:
        orders = orders_lib.random_orders(B, T, generator=generator, device=model.device)
    orders = torch.as_tensor(orders, device=model.device).long()
    if orders.dim() == 1:
        orders = orders.expand(B, -1)
    if tuple(orders.shape) != (B, T) or not orders_lib.is_permutation(orders):
        raise ValueError(f"orders must be permutations of range({T}) with shape [{B}, {T}]")
    orders = known_first_orders(orders, unknown)
    policy = _policy(guidance_scale, guidance_start, temperature, top_k, top_p, steps)
    guidance = policy.guidance()
    counts = unknown.sum(1)
    out = flat.clone()
    with _eval_mode(model):
        for m in sorted(set(counts.tolist())):
            if m == 0:
                continue
            idx = (counts == m).nonzero().flatten()
            o = orders[idx]
            P = T - m
            prefix = orders_lib.permute(flat[idx], o)[:, :P] if P else None
            gen = decode(model, cls[idx], o, policy.plan_clamped(m), guidance, temperature, top_k, top_p, generator,
                         prefix=prefix)
            out[idx] = orders_lib.unpermute(gen, o)
    out = torch.where(unknown, out, flat).view(B, *grid)
    return (out, orders) if return_orders else out


# ---- outpainting ------------------------------------------------------------------------------------------
def outpaint_table(model: Any, canvas: tuple[int, int], rope: str = "extrapolate", ntk_boundary: int = 2) -> Tensor:
    """The RoPE table for a ``canvas = (H, W)`` token grid.

    ``"extrapolate"``: :func:`rope_2d` of the canvas — true positions; rows/columns inside the trained
    grid get exactly the trained rows of the table. ``"ntk"``: per axis, RandAR's NTK mix
    (:func:`rope_2d_mixed`) with the factor ``canvas / trained`` of that axis (an axis no longer than
    the trained one keeps its true positions); the first ``ntk_boundary`` frequency pairs extrapolate,
    the rest interpolate.
    """
    cfg = model.config
    head_dim, base = cfg.dim // cfg.n_head, cfg.rope_base
    H, W = canvas
    if rope == "extrapolate":
        table = rope_2d((H, W), head_dim, base)
    elif rope == "ntk":
        gh, gw = model.grid
        fh, fw = max(1.0, H / gh), max(1.0, W / gw)
        F = head_dim // 4
        t_rows = rope_2d_mixed((H, W), head_dim, fh, ntk_boundary, base)
        t_cols = rope_2d_mixed((H, W), head_dim, fw, ntk_boundary, base)
        table = torch.cat([t_rows[:, :F], t_cols[:, F:]], dim=1)
    else:
        raise ValueError(f"rope must be 'extrapolate', 'ntk' or 'window', got {rope!r}")
    return table.to(device=model.device, dtype=model.freqs_cis.dtype)


@torch.no_grad()
def outpaint(model: Any, codes: Tensor, classes: Any, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0,
             guidance_scale: float = 1.0, guidance_start: float = 1.0, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, steps: int | None = None, seed: int | None = None,
             generator: torch.Generator | None = None, rope: str = "extrapolate", ntk_boundary: int = 2,
             return_mask: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Place ``codes [B, h, w]`` on a canvas ``(top + h + bottom) x (left + w + right)`` and generate the rest.

    - Canvas equal to the trained grid (e.g. keep the left 4 columns of a 7x7 digit and pad 3 on the
      right): this is inpainting of the complement (:func:`inpaint`).
    - Any other canvas: the same known-first / generate-the-rest decode over ``H*W`` positions with a
      RoPE table for the canvas (:func:`outpaint_table`; ``rope="extrapolate"`` or ``"ntk"``), or, with
      ``rope="window"``, sliding-window outpainting that stays inside the trained grid: the trained-size
      window holding the most known tokens (among those with tokens left to generate) is inpainted,
      again and again until the canvas is full (needs a canvas at least as large as the trained grid).
    Returns codes ``[B, H, W]`` (the known block unchanged) and, with ``return_mask``, the mask of the
    generated tokens.
    """
    require_randar(model, "outpainting")
    if rope not in ("extrapolate", "ntk", "window"):
        raise ValueError(f"rope must be 'extrapolate', 'ntk' or 'window', got {rope!r}")
    codes = _codes(model, codes)
    if min(left, right, top, bottom) < 0:
        raise ValueError(f"padding must be >= 0, got left={left} right={right} top={top} bottom={bottom}")
    B, h, w = codes.shape
    H, W = top + h + bottom, left + w + right
    canvas = torch.zeros(B, H, W, dtype=torch.long, device=model.device)
    canvas[:, top : top + h, left : left + w] = codes
    unknown = torch.ones(H, W, dtype=torch.bool, device=model.device)
    unknown[top : top + h, left : left + w] = False
    if (H, W) == tuple(model.grid):
        out = inpaint(model, canvas, unknown, classes, guidance_scale, guidance_start, temperature, top_k, top_p,
                      steps, seed, generator)
        return (out, unknown) if return_mask else out
    cls = _classes(model, classes, B)
    generator = _generator(model, seed, generator)
    if rope == "window":
        out = _outpaint_windows(model, canvas, unknown, cls, guidance_scale, guidance_start, temperature, top_k,
                                top_p, steps, generator)
        return (out, unknown) if return_mask else out
    T = H * W
    flat = canvas.reshape(B, T)
    unk = unknown.reshape(1, T).expand(B, -1)
    orders = known_first_orders(orders_lib.random_orders(B, T, generator=generator, device=model.device), unk)
    P = T - int(unknown.sum())
    prefix = orders_lib.permute(flat, orders)[:, :P] if P else None
    table = outpaint_table(model, (H, W), rope, ntk_boundary)
    with _eval_mode(model):
        policy = _policy(guidance_scale, guidance_start, temperature, top_k, top_p, steps)
        gen = decode(model, cls, orders, policy.plan_clamped(T - P), policy.guidance(),
                     temperature, top_k, top_p, generator, prefix=prefix, table=table)
    out = torch.where(unk, orders_lib.unpermute(gen, orders), flat).view(B, H, W)
    return (out, unknown) if return_mask else out


def _outpaint_windows(model: Any, canvas: Tensor, unknown: Tensor, classes: Tensor, guidance_scale: float,
                      guidance_start: float, temperature: float, top_k: int, top_p: float, steps: int | None,
                      generator: torch.Generator | None) -> Tensor:
    """Sliding-window outpainting with the trained table: repeatedly inpaint the trained-size window
    (clipped to the canvas) that holds the most known tokens among those with something left to
    generate, until the canvas is full."""
    gh, gw = model.grid
    H, W = unknown.shape
    wh, ww = min(gh, H), min(gw, W)
    canvas, unknown = canvas.clone(), unknown.clone()
    if (wh, ww) != (gh, gw):
        raise ValueError(f"window outpainting needs a canvas at least as large as the trained grid {gh}x{gw}")
    while unknown.any():
        # known / unknown counts of every window placement (a box filter over the mask)
        unk = unknown.float()[None, None]
        n_unk = torch.nn.functional.avg_pool2d(unk, (wh, ww), stride=1)[0, 0] * wh * ww
        score = torch.where(n_unk > 0.5, wh * ww - n_unk, torch.full_like(n_unk, -1.0))
        r0, c0 = divmod(int(score.flatten().argmax()), score.shape[1])
        win_mask = unknown[r0 : r0 + wh, c0 : c0 + ww]
        win = inpaint(model, canvas[:, r0 : r0 + wh, c0 : c0 + ww], win_mask, classes, guidance_scale,
                      guidance_start, temperature, top_k, top_p, steps, generator=generator)
        canvas[:, r0 : r0 + wh, c0 : c0 + ww] = win
        unknown[r0 : r0 + wh, c0 : c0 + ww] = False
    return canvas
