"""Bidirectional per-position features from a causal model (the image fed twice; RandAR) and the raster
baseline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from anyorder.editing.common import _eval_mode, require_capability
from anyorder.nn import orders as orders_lib
from anyorder.sampling.job import check_classes, check_codes, seeded_generator

__all__ = ['default_feature_layer', 'features', 'features_by_layer']


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
    # stops after the deepest requested block: no later blocks, no vocabulary head
    blocks = sorted(set(layers))
    by_layer = dict(zip(blocks, model.hidden_states(gen, classes, allo, tuple(la - 1 for la in blocks))))
    first = (1 if read == "instruction" else 2) + 2 * (L - T)
    return [orders_lib.unpermute(by_layer[la][:, first::2][:, :T], passes[-1]) for la in layers]


@torch.no_grad()
def features_by_layer(model: Any, codes: Tensor, classes: Any = None, layers: Sequence[int] | None = None,
                      mode: str = "bidirectional", num_orders: int = 1, orders: Tensor | None = None,
                      seed: int | None = 0, batch_size: int = 256,
                      read: str = "instruction") -> dict[int, tuple[Tensor, Tensor]]:
    """:func:`features` for several layers at once: ``{layer: (per_token, pooled)}``."""
    require_capability(model, "features", f"{mode} feature extraction",
                       random_orders=mode == "bidirectional" and orders is None)
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
    codes = check_codes(model, codes, tuple(model.grid))
    B, T = codes.shape[0], model.seq_len
    flat = codes.reshape(B, T)
    cls = check_classes(model, model.null_class if classes is None else classes, B)
    gen = seeded_generator(model, seed)
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
    require_capability(model, "features", "feature extraction", random_orders=False)  # features_by_layer warns
    la = default_feature_layer(model.config.depth) if layer is None else int(layer)
    return features_by_layer(model, codes, classes, [la], mode, num_orders, orders, seed, batch_size, read)[la]
