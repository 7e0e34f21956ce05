"""A static, preallocated key/value cache written by slot (gpt-fast style).

Keys and values live in ``[B, H, max_len, D]`` buffers. A decode step (:class:`CacheStep`) writes its new
entries at the slots ``input_pos`` — no concatenation, no reallocation — and its rows attend to the slots
they may see: by default causally (row at slot ``q`` sees slots ``<= q``), or up to a per-row limit
(``visible``: row ``r`` sees slots ``< visible[r]``), which is how LPD's queries of one step see each other.
Slots may be rewritten: RandAR's and LPD's parallel steps overwrite their queries' slots on the next step.

An *eager* step passes ``kv_len`` — one past the highest slot written so far, a Python int the decode loop
knows without reading the device — and attends over the filled prefix ``[:kv_len]`` only. A *static* step
(``kv_len`` None) has fixed shapes, as ``torch.compile`` and CUDA graphs need: it attends under rows of a
precomputed mask, over all slots or over a ``window`` — the first ``max_len``, ``max_len / 2``,
``max_len / 4`` or ``max_len / 8`` slots (:func:`attention_window`), so a generation sees at most four
windows (four shapes to compile) and reads about two thirds of the cache a step instead of all of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.attention.bias import causal_lower_right

__all__ = ["WINDOW_LEVELS", "attention_window", "CacheStep", "KVCache"]

WINDOW_LEVELS = 4


def attention_window(stop: int, max_len: int, levels: int = WINDOW_LEVELS) -> int:
    """The static step's attention window for a step whose highest slot is ``stop - 1``: the smallest of
    ``max_len``, ``ceil(max_len / 2)``, ... (``levels`` sizes) that holds ``stop`` slots."""
    if not 0 < stop <= max_len:
        raise ValueError(f"a step ending at slot {stop - 1} does not fit a cache of {max_len} slots")
    window = max_len
    for _ in range(levels - 1):
        half = -(-window // 2)
        if half < stop:
            break
        window = half
    return window


@dataclass
class CacheStep:
    """Where one decode step writes in the cache, and what its rows see.

    ``input_pos [L]``: the slots the step's ``L`` rows are written at. ``kv_len``: eager steps only, one past
    the highest slot written (the rows' slots must then be the ``L`` slots just below it). ``window``: static
    steps only, attend over the cache's first ``window`` slots. ``visible [L]``: row ``r`` sees the slots
    ``< visible[r]`` (None: causal, ``input_pos + 1``)."""

    input_pos: Tensor
    kv_len: int | None = None
    window: int | None = None
    visible: Tensor | None = None


class KVCache(nn.Module):
    def __init__(self, batch: int, n_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__()
        shape = (batch, n_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("slots", torch.arange(max_len, device=device), persistent=False)
        # the static step's causal mask: row q lets slot q see slots <= q (precomputed once, gathered by slot)
        self.register_buffer("causal", self.slots[:, None] >= self.slots[None, :], persistent=False)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, step: CacheStep, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``k, v [B, H, L, D]`` at the step's slots; return the part of the buffers it attends over
        (``[:kv_len]`` for an eager step, the first ``window`` slots or all of them for a static one)."""
        if step.kv_len is None:
            self.k.index_copy_(2, step.input_pos, k.to(self.k.dtype))
            self.v.index_copy_(2, step.input_pos, v.to(self.v.dtype))
            n = self.max_len if step.window is None else step.window
            return self.k[:, :, :n], self.v[:, :, :n]
        start = step.kv_len - k.shape[2]  # eager: the L slots just below kv_len, written as a slice
        self.k[:, :, start : step.kv_len] = k
        self.v[:, :, start : step.kv_len] = v
        return self.k[:, :, : step.kv_len], self.v[:, :, : step.kv_len]

    def mask(self, step: CacheStep) -> Tensor | None:
        """What the step's ``L`` rows may attend to among the ``n`` attended slots: a boolean ``[L, n]``, or for
        an eager causal step (its rows are the ``L`` slots just below ``kv_len``) nothing when ``L == 1`` and
        else lower-right causal attention (:func:`~torch.nn.attention.bias.causal_lower_right`, the same mask
        exactly), which SDPA runs on its Flash kernel — Flash takes no boolean mask."""
        if step.kv_len is not None:
            L = step.input_pos.shape[0]
            if step.visible is None:  # row r, at slot kv_len - L + r, sees the slots up to its own
                return None if L == 1 else causal_lower_right(L, step.kv_len)
            return self.slots[None, : step.kv_len] < step.visible[:, None]
        n = self.max_len if step.window is None else step.window
        if step.visible is None:
            return self.causal[step.input_pos, :n]
        return self.slots[None, :n] < step.visible[:, None]

    def matches(self, batch: int, n_head: int, max_len: int, head_dim: int, dtype: torch.dtype,
                device: torch.device) -> bool:
        """Whether this cache already has the given layout (the static step reuses it across generations)."""
        d = torch.device(device)
        same_device = self.k.device.type == d.type and d.index in (None, self.k.device.index)
        return tuple(self.k.shape) == (batch, n_head, max_len, head_dim) and self.k.dtype == dtype and same_device
