"""A static, preallocated key/value cache written by slot (gpt-fast style).

Keys and values live in ``[B, H, max_len, D]`` buffers. A step writes its new entries at the slots
``input_pos`` (no concatenation, no reallocation) and attends with a mask that lets a query at slot
``q`` see slots ``<= q``. Slots may be rewritten: RandAR's parallel decoding overwrites the provisional
slots of a step's extra queries on the next step.

A step may pass ``kv_len`` — one past the highest slot written so far, a Python int the decode loop
knows without reading the device — and then attends over the filled prefix ``[:kv_len]`` only instead
of all ``max_len`` slots (the unwritten tail is masked out anyway; this skips its compute). Without
``kv_len`` every shape is fixed (the gpt-fast layout that ``torch.compile`` and CUDA graphs need): the
step attends under rows of a precomputed causal mask, over all slots or over a ``window`` — the first
``max_len``, ``max_len / 2``, ``max_len / 4`` or ``max_len / 8`` slots (:func:`attention_window`), so a
generation sees at most four windows (four shapes to compile) and reads about two thirds of the cache a step
(RAR, and RandAR one token per step; half at 88 parallel steps) instead of all of it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

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


class KVCache(nn.Module):
    def __init__(self, batch: int, n_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__()
        shape = (batch, n_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("slots", torch.arange(max_len, device=device), persistent=False)
        # the static step's mask: row q lets slot q see slots <= q (precomputed once, gathered by input_pos)
        self.register_buffer("causal", self.slots[:, None] >= self.slots[None, :], persistent=False)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor, kv_len: int | None = None,
               window: int | None = None) -> tuple[Tensor, Tensor]:
        """Write ``k, v [B, H, L, D]`` at slots ``input_pos [L]``; return the buffers (their first ``window``
        slots if given).

        With ``kv_len`` the step's slots must be the ``L`` slots just below it (``input_pos`` is
        ``arange(kv_len - L, kv_len)``, as in the decode loops): they are written as a slice and only the
        filled prefix ``[:kv_len]`` is returned (``window`` is for the static step, without ``kv_len``)."""
        if kv_len is None:
            self.k.index_copy_(2, input_pos, k.to(self.k.dtype))
            self.v.index_copy_(2, input_pos, v.to(self.v.dtype))
            if window is not None:
                return self.k[:, :, :window], self.v[:, :, :window]
            return self.k, self.v
        start = kv_len - k.shape[2]
        self.k[:, :, start:kv_len] = k
        self.v[:, :, start:kv_len] = v
        return self.k[:, :, :kv_len], self.v[:, :, :kv_len]

    def mask(self, input_pos: Tensor, kv_len: int | None = None, window: int | None = None) -> Tensor:
        """Boolean ``[L, kv_len or window or max_len]``: query at slot ``q`` attends to slots ``<= q``."""
        if kv_len is None:
            return self.causal[input_pos] if window is None else self.causal[input_pos, :window]
        return self.slots[None, :kv_len] <= input_pos[:, None]

    def matches(self, batch: int, n_head: int, max_len: int, head_dim: int, dtype: torch.dtype,
                device: torch.device) -> bool:
        """Whether this cache already has the given layout (the static step reuses it across generations)."""
        d = torch.device(device)
        same_device = self.k.device.type == d.type and d.index in (None, self.k.device.index)
        return tuple(self.k.shape) == (batch, n_head, max_len, head_dim) and self.k.dtype == dtype and same_device
