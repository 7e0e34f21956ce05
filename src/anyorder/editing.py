"""Zero-shot editing with RandAR: inpainting, outpainting, resolution extrapolation, bidirectional features.

Everything here works because RandAR predicts the token at *any* position next (the position
instruction token says which): known tokens are simply put first in the generation order and
teacher-forced through the KV cache, and the unknown ones are generated after them. RAR generates
in one fixed scan order, so these functions refuse it (:func:`require_randar`).

- :func:`inpaint`: regenerate the masked tokens of a code grid given the others (and a class).
- :func:`outpaint`: place a code grid on a larger canvas and generate the rest. A canvas larger
  than the trained grid uses a RoPE table for the canvas (true positions, or NTK-mixed per axis).
- :func:`extrapolate`: RandAR's zero-shot resolution extrapolation (low-res image first, on the
  stride-``factor`` sub-grid, then the rest with the NTK-mixed table and optional spatial guidance).
- :func:`features`: bidirectional per-position features from the causal model (the image is fed
  twice; the second pass sees the whole image) and the raster-order single-pass baseline.
- Masks: :func:`mask_from_image` (pixel mask -> token mask, validated), :func:`half_mask`,
  :func:`box_mask`. Token masks are ``True`` where tokens are *regenerated*.

Guidance. Class guidance is RandAR's linear schedule from ``guidance_start`` to ``guidance_scale``
over the fraction of all tokens decoded so far (known tokens count as decoded, as in the official
resolution-extrapolation code). Spatial guidance (extrapolation) adds a batch copy whose
low-resolution context has a random ``spatial_mask_ratio`` of its token embeddings zeroed; the rows
and their mix (the official ``u + s_c (c - u_s) + s_s (u_s - u)`` with both on) are
:class:`anyorder.sampling.GuidanceRows`. Every decode here is the shared loop
:func:`anyorder.sampling.decode` (known tokens as its teacher-forced prefix, a RoPE table for a
larger canvas).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anyorder import orders as orders_lib
from anyorder.rope import rope_2d, rope_2d_mixed
from anyorder.sampling import decode, generate
from anyorder.schedules import GuidanceSchedule, parallel_decoding_schedule

__all__ = [
    "SIDES",
    "require_randar",
    "half_mask",
    "box_mask",
    "mask_from_image",
    "known_first_orders",
    "inpaint",
    "outpaint",
    "outpaint_table",
    "extrapolate",
    "hierarchical_orders",
    "default_feature_layer",
    "features",
    "features_by_layer",
]

SIDES = ("left", "right", "top", "bottom")
MASK_RULES = ("any", "majority", "all")


# ---- helpers ------------------------------------------------------------------------------------------
def require_randar(model: Any, what: str = "zero-shot editing", random_orders: bool = True) -> None:
    """Raise a clear :class:`ValueError` unless ``model`` is a RandAR generator. With ``random_orders``
    (the caller runs the model in random orders), warn when it was trained to end in a scan order."""
    family = getattr(model, "family", None)
    if family != "randar":
        raise ValueError(
            f"{what} needs a RandAR model, got family {family!r}: RAR generates its tokens in one fixed scan order, "
            "so it cannot condition on known tokens at arbitrary positions (use a RandAR model)"
        )
    order = getattr(getattr(model, "config", None), "order", "random")
    if order != "random" and random_orders:
        warnings.warn(f"this RandAR was configured to anneal into the {order!r} scan order; {what} runs it in "
                      "random orders, which such a model may not have been trained on",
                      stacklevel=_outside_stacklevel())


def _outside_stacklevel() -> int:
    """``stacklevel`` of the first frame outside this package and torch (decorators add frames)."""
    inside = (os.path.dirname(__file__), os.path.dirname(torch.__file__))
    frame, level = sys._getframe(2), 2  # 1: the caller of warnings.warn
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


def _pair(x: int | Sequence[int], name: str = "grid") -> tuple[int, int]:
    if isinstance(x, (int, np.integer)):
        h = w = int(x)
    else:
        vals = [int(v) for v in x]
        if len(vals) != 2:
            raise ValueError(f"{name} must be an int or (height, width), got {x!r}")
        h, w = vals
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive, got {(h, w)}")
    return h, w


def _generator(model: Any, seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    if generator is None and seed is not None:
        generator = torch.Generator(device=model.device).manual_seed(int(seed))
    return generator


def _classes(model: Any, classes: Any, batch: int) -> Tensor:
    c = model.check_classes(torch.as_tensor(classes, device=model.device), allow_null=True)
    if c.numel() == 1 and batch > 1:
        c = c.expand(batch).clone()
    if c.numel() != batch:
        raise ValueError(f"got {c.numel()} classes for {batch} images (pass one class, or one per image)")
    return c


def _codes(model: Any, codes: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
    codes = torch.as_tensor(codes, device=model.device)
    if codes.dim() == 2:
        codes = codes[None]
    if codes.dim() != 3:
        raise ValueError(f"codes must be [B, h, w], got shape {tuple(codes.shape)}")
    if grid is not None and tuple(codes.shape[1:]) != tuple(grid):
        raise ValueError(f"codes have grid {tuple(codes.shape[1:])}, the model's grid is {tuple(grid)}")
    if codes.is_floating_point() or codes.dtype == torch.bool:
        raise ValueError(f"codes must be integer token ids, got dtype {codes.dtype}")
    codes = codes.long()
    V = model.codebook_size
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= V):
        raise ValueError(f"token ids must be in [0, {V}), got [{int(codes.min())}, {int(codes.max())}]")
    return codes


def _guidance(scale: float, start: float) -> GuidanceSchedule:
    return GuidanceSchedule("linear", float(scale), start=float(start))


def _plan(steps: int | None, total: int) -> list[int]:
    """The parallel-decoding plan for ``total`` tokens: ``steps`` cosine steps (clamped to ``total``),
    or one token per step when ``steps`` is None."""
    if total == 0:
        return []
    if steps is None:
        return [1] * total
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return parallel_decoding_schedule(min(int(steps), total), total)


class _eval_mode:
    """Context manager: eval mode, restoring the previous training flag."""

    def __init__(self, model: Any) -> None:
        self.model, self.was = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was)


# ---- masks --------------------------------------------------------------------------------------------
def half_mask(grid: int | Sequence[int], side: str = "left") -> Tensor:
    """Token mask ``[h, w]`` (``True`` = regenerate) covering one half of the grid.

    With an odd side length the half is rounded *up* (``ceil(n / 2)`` rows/columns), which is also
    what :func:`mask_from_image` with ``rule="any"`` gives for an exact half of the pixels.
    """
    h, w = _pair(grid)
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    m = torch.zeros(h, w, dtype=torch.bool)
    if side == "left":
        m[:, : math.ceil(w / 2)] = True
    elif side == "right":
        m[:, w - math.ceil(w / 2) :] = True
    elif side == "top":
        m[: math.ceil(h / 2)] = True
    else:
        m[h - math.ceil(h / 2) :] = True
    return m


def box_mask(grid: int | Sequence[int], top: int, left: int, height: int, width: int) -> Tensor:
    """Token mask ``[h, w]`` that is ``True`` (regenerate) inside the box; the box must lie in the grid."""
    h, w = _pair(grid)
    if height <= 0 or width <= 0 or top < 0 or left < 0 or top + height > h or left + width > w:
        raise ValueError(f"box top={top} left={left} height={height} width={width} does not fit the {h}x{w} grid")
    m = torch.zeros(h, w, dtype=torch.bool)
    m[top : top + height, left : left + width] = True
    return m


def _mask_array(mask: Any) -> Tensor:
    """Anything mask-like -> a tensor (PIL images and files are read as 8-bit grayscale)."""
    from PIL import Image

    if isinstance(mask, (str, os.PathLike)):
        try:
            with Image.open(mask) as img:
                img.load()
                mask = img.convert("L")
        except FileNotFoundError as e:
            raise ValueError(f"cannot load mask {mask}: file not found") from e
        except OSError as e:
            raise ValueError(f"cannot load mask {mask}: unreadable or not an image ({e})") from e
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.array(mask, copy=True))
    if not isinstance(mask, Tensor):
        raise ValueError(f"mask must be an image, a file, a numpy array or a tensor, got {type(mask).__name__}")
    return mask


def mask_from_image(mask: Any, image_size: int | Sequence[int], grid: int | Sequence[int],
                    rule: str = "any") -> Tensor:
    """Snap a binary pixel mask to the token grid. ``True`` / white / 1 = regenerate.

    ``mask``: a PIL image or an image file (read as 8-bit grayscale), or an array / tensor
    ``[H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]`` with values in {0, 1} (bool allowed) or {0, 255}.
    ``rule`` decides when a token (a ``H/h x W/w`` pixel cell) is masked: ``"any"`` (default) if any
    of its pixels is — conservative: a token whose cell touches the masked region is regenerated, so
    no masked pixel survives — ``"majority"`` if more than half are, ``"all"`` if all are.

    Returns ``[h, w]`` (or ``[B, h, w]``) bool. Raises :class:`ValueError` naming the shape for a
    wrong size and the offending values for a non-binary mask.
    """
    if rule not in MASK_RULES:
        raise ValueError(f"mask rule must be one of {MASK_RULES}, got {rule!r}")
    H, W = _pair(image_size, "image_size")
    h, w = _pair(grid)
    if H % h or W % w:
        raise ValueError(f"image size {H}x{W} is not a multiple of the token grid {h}x{w}")
    m = _mask_array(mask)
    batched = True
    if m.dim() == 4 and m.shape[1] == 1:
        m = m[:, 0]
    elif m.dim() == 2:
        m, batched = m[None], False
    if m.dim() != 3 or tuple(m.shape[1:]) != (H, W):
        raise ValueError(f"mask has shape {tuple(_mask_array(mask).shape)}, expected {H}x{W} pixels "
                         f"([H, W], [B, H, W] or [B, 1, H, W]) to match the {H}x{W} image")
    if m.dtype != torch.bool:
        vals = torch.unique(m.float())
        if vals.numel() and set(vals.tolist()) <= {0.0, 1.0}:
            m = m != 0
        elif vals.numel() and set(vals.tolist()) <= {0.0, 255.0}:
            m = m != 0
        else:
            shown = ", ".join(f"{v:g}" for v in vals[:8].tolist()) + (" ..." if vals.numel() > 8 else "")
            raise ValueError(f"mask must be binary (0/1, or 0/255 for 8-bit images), found {vals.numel()} "
                             f"distinct values: {shown}")
    cells = m.reshape(m.shape[0], h, H // h, w, W // w)
    if rule == "any":
        out = cells.any(dim=4).any(dim=2)
    elif rule == "all":
        out = cells.all(dim=4).all(dim=2)
    else:
        out = cells.float().mean(dim=(2, 4)) > 0.5
    return out if batched else out[0]


def _token_mask(mask: Any, batch: int, grid: tuple[int, int], device: torch.device) -> Tensor:
    m = torch.as_tensor(mask, device=device)
    if m.dtype != torch.bool:
        if m.is_floating_point() or not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("token mask must be bool (or 0/1 integers); use mask_from_image for pixel masks")
        m = m.bool()
    if m.dim() == 2:
        m = m[None].expand(batch, -1, -1)
    if m.dim() != 3 or m.shape[0] != batch or tuple(m.shape[1:]) != grid:
        raise ValueError(f"token mask has shape {tuple(m.shape)}, expected [{grid[0]}, {grid[1]}] or "
                         f"[{batch}, {grid[0]}, {grid[1]}] for codes of shape [{batch}, {grid[0]}, {grid[1]}]")
    return m.reshape(batch, -1)


def known_first_orders(orders: Tensor, unknown: Tensor) -> Tensor:
    """Reorder each row of ``orders`` so the known positions (``unknown`` False, raster-indexed
    ``[B, T]``) come first; the relative order inside each group is kept (a stable partition)."""
    flag = unknown.gather(1, orders).to(torch.int8)
    idx = torch.sort(flag, dim=1, stable=True).indices
    return orders.gather(1, idx)


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
    guidance = _guidance(guidance_scale, guidance_start)
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
            gen = decode(model, cls[idx], o, _plan(steps, m), guidance, temperature, top_k, top_p, generator,
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
        gen = decode(model, cls, orders, _plan(steps, T - P), _guidance(guidance_scale, guidance_start),
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


# ---- resolution extrapolation ------------------------------------------------------------------------------
def hierarchical_orders(batch: int, grid: tuple[int, int], factor: int,
                        generator: torch.Generator | None = None, device: Any = None) -> Tensor:
    """Orders over the ``grid`` (the large one): the positions whose row and column are multiples of
    ``factor`` (for factor 2: even-even) first, shuffled, then all others, shuffled (per row)."""
    H, W = grid
    pos = torch.arange(H * W, device=device)
    later = (((pos // W) % factor != 0) | ((pos % W) % factor != 0))[None].expand(batch, -1)
    return known_first_orders(orders_lib.random_orders(batch, H * W, generator=generator, device=device), later)


@torch.no_grad()
def extrapolate(model: Any, classes: Any, factor: int = 2, ntk_boundary: int = 2, order: str = "hierarchical",
                guidance_scale: float = 1.0, guidance_start: float = 1.0, spatial_guidance_scale: float = 1.0,
                spatial_guidance_start: float = 1.0, spatial_mask_ratio: float = 0.5, steps: int | None = None,
                low_res_steps: int | None = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                seed: int | None = None, generator: torch.Generator | None = None, low_res: Tensor | None = None,
                return_low_res: bool = False) -> Tensor | tuple[Tensor, Tensor | None]:
    """RandAR's zero-shot resolution extrapolation to a ``factor`` times larger grid (``G = factor * g``).

    ``order="hierarchical"`` (the official default):

    1. orders over the G grid: the stride-``factor`` sub-grid (even-even for 2) first, shuffled, then
       the rest, shuffled;
    2. the sub-grid tokens are an ordinary trained-size image — generated by the model's own sampler
       at the trained positions (``low_res_steps``; the same class guidance), or given as ``low_res``
       codes ``[B, h, w]`` — placed at their G-grid positions;
    3. the RoPE table of the G grid mixes two position scales per frequency pair
       (:func:`anyorder.rope.rope_2d_mixed`: the first ``ntk_boundary`` pairs of each axis use the true
       positions, the rest positions squeezed by ``factor``);
    4. the low-res tokens are fed as context (with their instruction tokens, one pass through the
       cache), then the remaining tokens are generated, ``steps`` cosine parallel-decoding steps over
       their count (default one per step);
    5. spatial guidance (``spatial_guidance_scale > 1``): a third batch copy sees the context with a
       random ``spatial_mask_ratio`` of the low-res token embeddings zeroed (formula in the module
       docstring); both guidances follow the linear schedule over all ``G*G`` tokens.

    ``ntk_boundary`` defaults to the official 2. On the 7x7-token digits demo, 0 (every pair
    interpolated) gives coherent 2x digits while 2 tiles the canvas with fragments (see
    ``benchmarks/editing_digits.py``): with so few positions the extrapolated high frequencies are
    far out of distribution.

    ``order="random"``: no low-resolution stage; all ``G*G`` tokens are generated in one random order
    with the mixed table (so spatial guidance, which needs the low-res context, is not available). The
    official "random" mode maps the first tokens of a random large-grid order to low-res positions by
    integer division, which is not a permutation in general; we do not reproduce it.

    Returns codes ``[B, G_h, G_w]`` (and, with ``return_low_res``, the low-res codes ``[B, h, w]``; None for
    ``order="random"``).
    """
    require_randar(model, "resolution extrapolation")
    if order not in ("hierarchical", "random"):
        raise ValueError(f"order must be 'hierarchical' or 'random', got {order!r}")
    if not 0.0 <= spatial_mask_ratio <= 1.0:
        raise ValueError(f"spatial_mask_ratio must be in [0, 1], got {spatial_mask_ratio}")
    gh, gw = model.grid
    if order == "hierarchical":
        if int(factor) != factor or factor < 2:
            raise ValueError(f"hierarchical extrapolation needs an integer factor >= 2, got {factor}")
        factor = int(factor)
    elif factor <= 1:
        raise ValueError(f"factor must be > 1, got {factor}")
    H, W = int(gh * factor), int(gw * factor)
    T = H * W
    generator = _generator(model, seed, generator)
    if low_res is not None:
        low_res = _codes(model, low_res, (gh, gw))
    B = low_res.shape[0] if low_res is not None else torch.as_tensor(classes).numel()
    cls = _classes(model, classes, B)
    spatial = _guidance(spatial_guidance_scale, spatial_guidance_start)
    cfg = model.config
    table = rope_2d_mixed((H, W), cfg.dim // cfg.n_head, factor, ntk_boundary, cfg.rope_base).to(
        device=model.device, dtype=model.freqs_cis.dtype)
    guidance = _guidance(guidance_scale, guidance_start)
    with _eval_mode(model):
        if order == "random":
            if spatial.enabled:
                raise ValueError("spatial guidance needs the low-resolution context: use order='hierarchical'")
            if low_res is not None:
                raise ValueError("low_res codes are used by order='hierarchical' only")
            orders = orders_lib.random_orders(B, T, generator=generator, device=model.device)
            gen = decode(model, cls, orders, _plan(steps, T), guidance, temperature, top_k, top_p, generator,
                         table=table)
            out = orders_lib.unpermute(gen, orders).view(B, H, W)
            return (out, None) if return_low_res else out
        orders = hierarchical_orders(B, (H, W), factor, generator, model.device)
        P = gh * gw
        first = orders[:, :P]
        low_orders = (first // W) // factor * gw + (first % W) // factor  # the same order on the trained grid
        if low_res is None:
            low_res = generate(model, cls, orders=low_orders, steps=low_res_steps, guidance_scale=guidance_scale,
                               guidance_start=guidance_start, temperature=temperature, top_k=top_k, top_p=top_p,
                               generator=generator)
        prefix = low_res.reshape(B, -1).gather(1, low_orders)
        drop = None
        if spatial.enabled:
            k = int(P * spatial_mask_ratio)
            pick = torch.rand(B, P, generator=generator, device=model.device).argsort(dim=1)[:, :k]
            drop = torch.zeros(B, P, device=model.device).scatter_(1, pick, 1.0)
        gen = decode(model, cls, orders, _plan(steps, T - P), guidance, temperature, top_k, top_p, generator,
                     prefix=prefix, table=table, spatial=spatial, drop=drop)
    out = orders_lib.unpermute(gen, orders).view(B, H, W)
    return (out, low_res) if return_low_res else out


# ---- bidirectional features -------------------------------------------------------------------------------
def default_feature_layer(depth: int) -> int:
    """``round(2/3 * depth)``: the paper found the 24th of 36 layers best for its 775M model."""
    return max(1, round(2 * depth / 3))


def _hidden(model: Any, codes: Tensor, classes: Tensor, passes: list[Tensor], layers: list[int],
            read: str = "instruction") -> list[Tensor]:
    """Residual streams after ``layers`` blocks at the slots of the *last* pass, raster order.

    ``passes``: one order per pass (``[B, T]`` each); the image is fed once per pass, pass after pass,
    in one causal sequence ``[class, instr, tok, ...]``. ``read``: the position-instruction slots
    (``instr_k`` at ``1 + 2k``) or the image-token slots (``tok_k`` at ``2 + 2k``)."""
    T = codes.shape[1]
    gen = torch.cat([orders_lib.permute(codes, o) for o in passes], dim=1)
    allo = torch.cat(passes, dim=1)
    L = allo.shape[1]
    _, hidden = model.forward(gen, classes, allo, hidden_layers=tuple(sorted({la - 1 for la in layers})))
    by_layer = dict(zip(sorted(set(layers)), hidden))
    first = (1 if read == "instruction" else 2) + 2 * (L - T)
    return [orders_lib.unpermute(by_layer[la][:, first::2][:, :T], passes[-1]) for la in layers]


@torch.no_grad()
def features_by_layer(model: Any, codes: Tensor, classes: Any = None, layers: Sequence[int] | None = None,
                      mode: str = "bidirectional", num_orders: int = 1, orders: Tensor | None = None,
                      seed: int | None = 0, batch_size: int = 256,
                      read: str = "instruction") -> dict[int, tuple[Tensor, Tensor]]:
    """:func:`features` for several layers at once: ``{layer: (per_token, pooled)}``."""
    require_randar(model, f"{mode} feature extraction", random_orders=mode == "bidirectional" and orders is None)
    depth = model.config.depth
    layers = [default_feature_layer(depth)] if layers is None else [int(la) for la in layers]
    for la in layers:
        if not 1 <= la <= depth:
            raise ValueError(f"layer must be in 1..{depth} (blocks applied), got {la}")
    if mode not in ("bidirectional", "raster"):
        raise ValueError(f"mode must be 'bidirectional' or 'raster', got {mode!r}")
    if read not in ("instruction", "token"):
        raise ValueError(f"read must be 'instruction' or 'token', got {read!r}")
    if num_orders < 1:
        raise ValueError(f"num_orders must be >= 1, got {num_orders}")
    codes = _codes(model, codes, tuple(model.grid))
    B, T = codes.shape[0], model.seq_len
    flat = codes.reshape(B, T)
    cls = _classes(model, model.null_class if classes is None else classes, B)
    gen = torch.Generator(device=model.device).manual_seed(int(seed)) if seed is not None else None
    if orders is not None:
        orders = torch.as_tensor(orders, device=model.device).long()
        orders = orders.expand(B, -1) if orders.dim() == 1 else orders
        if tuple(orders.shape) != (B, T) or not orders_lib.is_permutation(orders):
            raise ValueError(f"orders must be permutations of range({T}) with shape [{B}, {T}] or [{T}]")
    raster = orders_lib.raster(*model.grid).to(model.device).expand(B, -1)
    sums: list[Tensor] = [torch.zeros(B, T, model.config.dim, device=model.device) for _ in layers]
    n_runs = 1 if (mode == "raster" or orders is not None) else num_orders
    with _eval_mode(model):
        for _ in range(n_runs):
            if mode == "raster":
                passes = [raster]
            elif orders is not None:
                passes = [orders, orders]
            else:
                passes = [orders_lib.random_orders(B, T, generator=gen, device=model.device) for _ in range(2)]
            for i in range(0, B, batch_size):
                sl = slice(i, i + batch_size)
                hs = _hidden(model, flat[sl], cls[sl], [p[sl] for p in passes], layers, read)
                for s, h in zip(sums, hs):
                    s[sl] += h.float()
    return {la: (s / n_runs, (s / n_runs).mean(dim=1)) for la, s in zip(layers, sums)}


@torch.no_grad()
def features(model: Any, codes: Tensor, classes: Any = None, layer: int | None = None, mode: str = "bidirectional",
             num_orders: int = 1, orders: Tensor | None = None, seed: int | None = 0, batch_size: int = 256,
             read: str = "instruction") -> tuple[Tensor, Tensor]:
    """Per-position features ``[B, T, D]`` (raster order) and their mean ``[B, D]`` from a RandAR model.

    ``mode="bidirectional"`` (bidirectional encoding with the causal model): the image's tokens are
    fed *twice* in one causal sequence, ``[class, (instr, tok) x T, (instr, tok) x T]``; every slot of
    the second pass attends to the whole image of the first pass, so each position's feature depends
    on all tokens, before and after it in any order. A random order is drawn for each pass (RandAR is
    trained on random orders; the instruction tokens say where each token is) and ``num_orders`` such
    pairs are averaged (a single pair carries the noise of its random orders: on the digits demo a
    linear probe gains ~2 points from 1 to 8 pairs); ``orders`` (``[T]`` or ``[B, T]``) fixes one order
    for both passes instead.
    ``mode="raster"``: the baseline — one pass in raster order, so a position's feature only sees the
    tokens before it in raster order.

    ``read``: which slot of the (last) pass gives position ``p``'s feature — ``"instruction"``
    (default): the position-instruction token of ``p``, i.e. the model's query "what is at ``p``?",
    the slot RandAR is trained to predict from; ``"token"``: the image token at ``p``. On the digits
    demo the instruction slots probe clearly better (``benchmarks/editing_digits.py
    --probe-token-slots``).
    ``layer``: the residual stream after that many blocks (1-based; default
    :func:`default_feature_layer`, a middle-to-late layer). ``classes``: the condition (default: the
    null class, i.e. unconditional features).
    """
    require_randar(model, "feature extraction", random_orders=False)  # features_by_layer warns if needed
    la = default_feature_layer(model.config.depth) if layer is None else int(layer)
    return features_by_layer(model, codes, classes, [la], mode, num_orders, orders, seed, batch_size, read)[la]
