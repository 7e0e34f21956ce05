"""Inpainting and outpainting: known tokens first, teacher-forced; the rest generated after them."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from anyorder.editing.common import _eval_mode, require_capability
from anyorder.editing.masks import _token_mask
from anyorder.models.policy import SamplingPolicy
from anyorder.models.registry import family_of
from anyorder.sampling.decode import decode
from anyorder.sampling.job import check_codes, check_orders, edit_job, resolve_policy, seeded_generator

__all__ = ["inpaint", "outpaint", "outpaint_table"]


# ---- inpainting ---------------------------------------------------------------------------------------
@torch.no_grad()
def inpaint(model: Any, codes: Tensor, mask: Any, classes: Any, sampling: SamplingPolicy | dict[str, Any] | None = None,
            *, seed: int | None = None, generator: torch.Generator | None = None, orders: Tensor | None = None,
            return_orders: bool = False, **settings: Any) -> Tensor | tuple[Tensor, Tensor]:
    """Regenerate the masked tokens of ``codes [B, h, w]`` (``mask`` True) given the rest.

    Per image, the known tokens go first in the generation order and are teacher-forced through the KV cache
    in one pass (the decode job's prefix); the masked ones follow in the order the family's sampling policy
    draws (``sampling`` / ``settings``: e.g. RandAR's or LPD's ``steps``, clamped to the masked count, and
    class guidance). Known tokens come back unchanged. ``mask`` is ``[h, w]`` (shared) or ``[B, h, w]``; images
    with different masked counts are decoded in groups of equal count. ``orders`` (raster permutations
    ``[B, T]`` or ``[T]``) fixes the orders; they are stably partitioned known-first. With a mask covering
    everything and the same ``seed`` this is exactly :func:`anyorder.sampling.generate` (same orders, same
    samples). Needs a family with the ``known_tokens`` capability.
    """
    require_capability(model, "known_tokens", "inpainting")
    grid = tuple(model.grid)
    codes = check_codes(model, codes, grid)
    B, T = codes.shape[0], model.seq_len
    unknown = _token_mask(mask, B, grid, model.device)  # [B, T]
    policy = resolve_policy(model, sampling, settings, source="editing")
    generator = seeded_generator(model, seed, generator)
    if orders is None:  # drawn for the whole batch at once, then split by masked count
        orders = policy.orders(model, B, generator, grid=grid, unknown=unknown)
    orders = check_orders(orders, B, T, model.device).clone()
    counts = unknown.sum(1)
    out = codes.clone()
    with _eval_mode(model):
        for m in sorted(set(counts.tolist()) - {0}):
            idx = (counts == m).nonzero().flatten()
            job = edit_job(model, codes[idx], unknown[idx].view(-1, *grid), _group(classes, idx, B), policy,
                           orders=orders[idx], generator=generator)
            out[idx] = job.codes(decode(job))
            orders[idx] = job.orders
    return (out, orders) if return_orders else out


def _group(classes: Any, idx: Tensor, batch: int) -> Any:
    """The classes of the images ``idx`` (one class is shared by all)."""
    c = torch.as_tensor(classes).reshape(-1)
    if c.numel() == 1:
        return c
    if c.numel() != batch:
        raise ValueError(f"got {c.numel()} classes for {batch} images (pass one class, or one per image)")
    return c.to(idx.device)[idx]


# ---- outpainting ------------------------------------------------------------------------------------------
def outpaint_table(model: Any, canvas: tuple[int, int], rope: str = "extrapolate", ntk_boundary: int = 2) -> Tensor:
    """The position table of a ``canvas = (H, W)`` token grid, for a family with the ``canvas`` capability
    (RandAR: a RoPE table, see :meth:`anyorder.models.randar.RandAR.canvas_table`; ``rope`` is
    ``"extrapolate"`` — true positions — or ``"ntk"`` — RandAR's NTK mix per axis)."""
    require_capability(model, "canvas", "a canvas other than the trained grid", random_orders=False)
    return model.canvas_table(canvas, rope, ntk_boundary)


@torch.no_grad()
def outpaint(model: Any, codes: Tensor, classes: Any, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0,
             sampling: SamplingPolicy | dict[str, Any] | None = None, *, seed: int | None = None,
             generator: torch.Generator | None = None, rope: str | None = None, ntk_boundary: int = 2,
             return_mask: bool = False, **settings: Any) -> Tensor | tuple[Tensor, Tensor]:
    """Place ``codes [B, h, w]`` on a canvas ``(top + h + bottom) x (left + w + right)`` and generate the rest.

    - Canvas equal to the trained grid (e.g. keep the left 4 columns of a 7x7 digit and pad 3 on the
      right): this is inpainting of the complement (:func:`inpaint`).
    - Any other canvas: the same known-first / generate-the-rest decode over ``H*W`` positions with a
      position table for the canvas (:func:`outpaint_table`; ``rope="extrapolate"`` or ``"ntk"``; a family
      with the ``canvas`` capability), or, with ``rope="window"``, sliding-window outpainting that stays
      inside the trained grid (any family with known-token decoding): the trained-size window holding the
      most known tokens (among those with tokens left to generate) is inpainted, again and again until the
      canvas is full (needs a canvas at least as large as the trained grid).
    ``rope`` None: ``"extrapolate"`` where the family has the ``canvas`` capability, else ``"window"``.
    ``sampling`` / ``settings``: the family's sampling policy. Returns codes ``[B, H, W]`` (the known block
    unchanged) and, with ``return_mask``, the mask of the generated tokens.
    """
    require_capability(model, "known_tokens", "outpainting")
    if rope is None:
        rope = "extrapolate" if family_of(model).can("canvas") else "window"
    if rope not in ("extrapolate", "ntk", "window"):
        raise ValueError(f"rope must be 'extrapolate', 'ntk' or 'window', got {rope!r}")
    codes = check_codes(model, codes)
    if min(left, right, top, bottom) < 0:
        raise ValueError(f"padding must be >= 0, got left={left} right={right} top={top} bottom={bottom}")
    B, h, w = codes.shape
    H, W = top + h + bottom, left + w + right
    canvas = torch.zeros(B, H, W, dtype=torch.long, device=model.device)
    canvas[:, top : top + h, left : left + w] = codes
    unknown = torch.ones(H, W, dtype=torch.bool, device=model.device)
    unknown[top : top + h, left : left + w] = False
    policy = resolve_policy(model, sampling, settings, source="editing")
    generator = seeded_generator(model, seed, generator)
    if (H, W) == tuple(model.grid):
        out = inpaint(model, canvas, unknown, classes, policy, generator=generator)
    elif rope == "window":
        out = _outpaint_windows(model, canvas, unknown, classes, policy, generator)
    else:
        table = outpaint_table(model, (H, W), rope, ntk_boundary)
        with _eval_mode(model):
            job = edit_job(model, canvas, unknown, classes, policy, generator=generator, table=table)
            out = job.codes(decode(job))
    return (out, unknown) if return_mask else out


def _outpaint_windows(model: Any, canvas: Tensor, unknown: Tensor, classes: Any, policy: SamplingPolicy,
                      generator: torch.Generator | None) -> Tensor:
    """Sliding-window outpainting with the trained positions: repeatedly inpaint the trained-size window
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
        win = inpaint(model, canvas[:, r0 : r0 + wh, c0 : c0 + ww], win_mask, classes, policy, generator=generator)
        canvas[:, r0 : r0 + wh, c0 : c0 + ww] = win
        unknown[r0 : r0 + wh, c0 : c0 + ww] = False
    return canvas
