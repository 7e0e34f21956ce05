"""A static, preallocated key/value cache written by slot (gpt-fast style).

Keys and values live in ``[B, H, max_len, D]`` buffers. A step writes its new entries at the slots
``input_pos`` (no concatenation, no reallocation) and attends over the whole buffer with a mask
that lets a query at slot ``q`` see slots ``<= q``. Slots may be rewritten: RandAR's parallel
decoding overwrites the provisional slots of a step's extra queries on the next step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class KVCache(nn.Module):
    def __init__(self, batch: int, n_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__()
        shape = (batch, n_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("slots", torch.arange(max_len, device=device), persistent=False)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``k, v [B, H, L, D]`` at slots ``input_pos [L]``; return the full buffers."""
        self.k[:, :, input_pos] = k.to(self.k.dtype)
        self.v[:, :, input_pos] = v.to(self.v.dtype)
        return self.k, self.v

    def mask(self, input_pos: Tensor) -> Tensor:
        """Boolean ``[L, max_len]``: query at slot ``q`` attends to slots ``<= q``."""
        return self.slots[None, :] <= input_pos[:, None]
