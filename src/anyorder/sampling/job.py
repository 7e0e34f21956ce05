"""Decode jobs: everything one run of the decode loop needs, prepared once for every caller.

:func:`generation_job` (class-conditional sampling) and :func:`edit_job` (known tokens first, the rest
generated: inpainting, outpainting) resolve the sampling policy, check the inputs, draw the orders and build
the step plan. The plain calls (:func:`~anyorder.sampling.generate`, :func:`anyorder.editing.inpaint`, ...)
and the web app's streamed runs execute the same job with :func:`~anyorder.sampling.decode`, so a streamed
result equals the library's for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from anyorder.io.seeds import check_seed
from anyorder.models.base import check_token_ids
from anyorder.models.policy import SamplingPolicy
from anyorder.models.registry import families_with, family_of, get_family, sampling_config
from anyorder.models.spec import CAPABILITY_HELP
from anyorder.nn import orders as orders_lib
from anyorder.nn.schedules import GuidanceSchedule

__all__ = ["DecodeJob", "resolve_policy", "seeded_generator", "check_orders", "check_codes", "check_classes", "require",
           "generation_job", "edit_job"]


@dataclass
class DecodeJob:
    """One decode: the loop's inputs and the canvas they fill.

    ``orders [B, T]``: generation index -> raster position on the ``canvas (H, W)``; ``plan``: tokens per
    step over the ``T - P`` unknown ones; ``prefix [B, P]``: the known tokens in generation order (teacher-forced
    first); ``table``: a position table for a canvas other than the trained grid; ``spatial`` + ``drop [B, P]``:
    spatial guidance against the prefix with the ``drop`` tokens' embeddings zeroed; ``base [B, H, W]``: the
    known codes (0 where generated)."""

    model: Any
    classes: Tensor
    orders: Tensor
    plan: list[int]
    policy: SamplingPolicy
    generator: torch.Generator | None
    canvas: tuple[int, int]
    prefix: Tensor | None = None
    table: Tensor | None = None
    spatial: GuidanceSchedule | None = None
    drop: Tensor | None = None
    base: Tensor | None = None

    @property
    def known(self) -> int:
        return 0 if self.prefix is None else int(self.prefix.shape[1])

    def codes(self, tokens: Tensor) -> Tensor:
        """The decoded ``tokens [B, T]`` (generation order) as codes ``[B, H, W]`` in raster order."""
        return orders_lib.unpermute(tokens, self.orders).view(-1, *self.canvas)


def resolve_policy(model: Any, sampling: SamplingPolicy | dict[str, Any] | None = None,
                   settings: dict[str, Any] | None = None, source: str = "sampling") -> SamplingPolicy:
    """The model family's policy from ``sampling`` (a policy or a dict; None: the family's defaults) with
    ``settings`` (its fields, ``None`` = keep) applied. A field of another family is an error naming it."""
    policy = sampling_config(model.family, sampling, source)
    changes = {k: v for k, v in (settings or {}).items() if v is not None}
    return policy.replace(**changes) if changes else policy


def seeded_generator(model: Any, seed: int | None, generator: torch.Generator | None = None
                     ) -> torch.Generator | None:
    """``generator``, or one on the model's device seeded with ``seed`` (None: unseeded, no generator)."""
    if generator is None and seed is not None:
        generator = torch.Generator(device=model.device).manual_seed(check_seed(seed, "seed"))
    return generator


def check_orders(orders: Any, batch: int, length: int, device: torch.device) -> Tensor:
    """``orders`` as ``[batch, length]`` permutations of ``range(length)`` (a ``[length]`` one is shared)."""
    orders = torch.as_tensor(orders, device=device).long()
    if orders.dim() == 1:
        orders = orders.expand(batch, -1)
    if tuple(orders.shape) != (batch, length) or not orders_lib.is_permutation(orders):
        raise ValueError(f"orders must be permutations of range({length}) with shape [{batch}, {length}] or "
                         f"[{length}], got shape {tuple(orders.shape)}")
    return orders


def check_classes(model: Any, classes: Any, batch: int | None = None) -> Tensor:
    c = model.check_classes(torch.as_tensor(classes, device=model.device), allow_null=True)
    if batch is None:
        return c
    if c.numel() == 1 and batch > 1:
        c = c.expand(batch).clone()
    if c.numel() != batch:
        raise ValueError(f"got {c.numel()} classes for {batch} images (pass one class, or one per image)")
    return c


def generation_job(model: Any, classes: Any, sampling: SamplingPolicy | dict[str, Any] | None = None, *,
                   orders: Tensor | None = None, seed: int | None = None,
                   generator: torch.Generator | None = None, **settings: Any) -> DecodeJob:
    """Class-conditional sampling of one image per class in ``classes`` with the family's policy (``sampling``
    + ``settings``); the orders are the policy's, drawn from the seeded generator, unless given."""
    policy = resolve_policy(model, sampling, settings)
    classes = check_classes(model, classes)
    B, T = classes.shape[0], model.seq_len
    generator = seeded_generator(model, seed, generator)
    plan = policy.plan(T)
    if orders is None:
        orders = policy.orders(model, B, generator)
    return DecodeJob(model, classes, check_orders(orders, B, T, model.device), plan, policy, generator,
                     tuple(model.grid))


def check_codes(model: Any, codes: Any, grid: tuple[int, int] | None = None) -> Tensor:
    """Code ids ``[B, h, w]`` (a ``[h, w]`` grid is one image) on the model's device, checked: integers in
    ``[0, codebook_size)``, on ``grid`` when given."""
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
    check_token_ids(codes, model.codebook_size)
    return codes


def require(model: Any, capability: str, what: str) -> None:
    """A clear error unless the model's family has ``capability`` (naming the families that do)."""
    spec = family_of(model)
    if not spec.can(capability):
        able = ", ".join(get_family(f).display_name for f in families_with(capability)) or "none registered"
        raise ValueError(f"{what} needs a model family with the {capability!r} capability (one that "
                         f"{CAPABILITY_HELP[capability]}: {able}); got {spec.display_name}, which does not")


def edit_job(model: Any, codes: Tensor, unknown: Tensor, classes: Any,
             sampling: SamplingPolicy | dict[str, Any] | None = None, *, orders: Tensor | None = None,
             seed: int | None = None, generator: torch.Generator | None = None, table: Tensor | None = None,
             **settings: Any) -> DecodeJob:
    """Known-first decoding of a code canvas: the tokens where ``unknown`` is False are teacher-forced first,
    the others generated after them (inpainting on the trained grid; outpainting on a larger canvas, whose
    positions come from ``table`` or, by default, the family's canvas table of true positions).

    ``codes [B, H, W]`` (values under ``unknown`` are ignored); ``unknown [H, W]`` or ``[B, H, W]`` bool (True =
    generate), the same count for every image. The policy's steps are clamped to the number of unknown tokens.
    ``orders`` (raster permutations of the canvas) are partitioned known-first; by default the policy draws
    them. Needs a family that decodes known tokens at any positions."""
    require(model, "known_tokens", "decoding known tokens first (inpainting, outpainting)")
    codes = check_codes(model, codes)
    B, H, W = codes.shape
    unknown = torch.as_tensor(unknown, device=model.device)
    if unknown.dtype != torch.bool:
        raise ValueError(f"the token mask must be bool (True = generate), got dtype {unknown.dtype}")
    if unknown.dim() == 2:
        unknown = unknown[None].expand(B, -1, -1)
    if tuple(unknown.shape) != (B, H, W):
        raise ValueError(f"the token mask has shape {tuple(unknown.shape)}; the canvas is {B}x{H}x{W} tokens")
    T = H * W
    flat, unk = codes.reshape(B, T), unknown.reshape(B, T)
    counts = unk.sum(1)
    m = int(counts[0])
    if m == 0:
        raise ValueError("the mask is empty: nothing to generate")
    if bool((counts != m).any()):
        raise ValueError(f"one job decodes the same number of tokens per image; got counts {counts.tolist()}")
    policy = resolve_policy(model, sampling, settings, source="editing")
    cls = check_classes(model, classes, B)
    generator = seeded_generator(model, seed, generator)
    if orders is None:
        orders = policy.orders(model, B, generator, grid=(H, W), unknown=unk)
    orders = orders_lib.known_first(check_orders(orders, B, T, model.device), unk)
    P = T - m
    prefix = orders_lib.permute(flat, orders)[:, :P] if P else None
    if table is None and (H, W) != tuple(model.grid):  # a larger canvas: true positions beyond the grid
        require(model, "canvas", f"a {H}x{W} canvas (the model's grid is {model.grid[0]}x{model.grid[1]})")
        table = model.canvas_table((H, W))
    return DecodeJob(model, cls, orders, policy.plan_clamped(m), policy, generator, (H, W), prefix, table,
                     base=codes.masked_fill(unknown, 0))
