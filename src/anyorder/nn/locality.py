"""Locality-aware generation orders (LPD, arXiv 2507.01957, Sec. 3.3), for a batch at once.

Decoding several tokens per step works best when the tokens of a step are *close to what is already decoded*
(they depend on it) and *far from each other* (they are decoded independently). For a plan of group sizes the
order is built step by step:

1. every undecoded cell gets a proximity score, the sum of ``1 / distance`` over decoded cells within
   Chebyshev distance 1 (1 per edge neighbour, ``1/sqrt(2)`` per diagonal one); cells are ranked by it,
   ties in random order;
2. cells scoring at least ``proximity`` are taken in rank order, except that a cell within Chebyshev distance
   ``repulsion`` of a cell already taken in this step is deferred;
3. the rest of the step is filled by farthest-point sampling — each next cell the one farthest (Euclidean) from
   the cells taken *in this step*, the first in [low-score cells by rank, deferred cells, untried high-score
   cells] on a tie — from a random one when the step has taken nothing; a pool no larger than what is needed is
   taken whole.

The first cell of an empty grid is drawn uniformly. Known cells (editing) count as decoded before the first
step and come first in the order.

This is the official ``orders/lpd_order.py`` rule, vectorised over the batch (the official code is a Python
loop over cells run in a process pool to pre-generate order files). Its random draws — the first cell, the tie
order of each step, the start of farthest-point sampling — come from a :class:`Draws` object: a seeded torch
generator by default, or any other source, so the official draws can be replayed (``tests/test_lpd.py``
replays ``random`` / ``numpy.random`` as the official code calls them and gets the fixture's orders).
Proximity scores are accumulated in float64 in the order cells are decoded, as the official sums are.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["Draws", "TorchDraws", "locality_orders"]


class Draws(Protocol):
    """The random choices of :func:`locality_orders`."""

    def first(self, batch: int, cells: int) -> Tensor:
        """``[batch]``: the first cell of an empty grid, uniform over ``range(cells)`` (raster index)."""

    def ties(self, decoded: Tensor) -> Tensor:
        """``[B, T]`` keys ordering the undecoded cells of equal score in a step (lower first); ``decoded
        [B, T]`` says which cells are taken already."""

    def start(self, sizes: Tensor) -> Tensor:
        """``[B]``: a uniform index in ``range(sizes[b])`` (farthest-point sampling's first pick)."""


class TorchDraws:
    """:class:`Draws` from a torch generator (on its own device; results moved to ``device``)."""

    def __init__(self, generator: torch.Generator | None, device: torch.device) -> None:
        self.generator, self.device = generator, device
        self.where = generator.device if generator is not None else device

    def _rand(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self.generator, device=self.where, dtype=torch.float64).to(self.device)

    def first(self, batch: int, cells: int) -> Tensor:
        return (self._rand(batch) * cells).long().clamp_max(cells - 1)

    def ties(self, decoded: Tensor) -> Tensor:
        return self._rand(*decoded.shape)

    def start(self, sizes: Tensor) -> Tensor:
        return torch.minimum((self._rand(sizes.shape[0]) * sizes).long(), (sizes - 1).clamp_min(0))


@lru_cache(maxsize=8)
def _geometry(h: int, w: int, repulsion: int, device: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(weight, near, dist)`` over cell pairs ``[T, T]``: the proximity weight (1 / distance within Chebyshev
    distance 1, float64), whether within Chebyshev distance ``repulsion``, the Euclidean distance (float64)."""
    pos = torch.arange(h * w, device=device)
    r, c = pos // w, pos % w
    dr, dc = (r[:, None] - r[None]).abs(), (c[:, None] - c[None]).abs()
    cheb = torch.maximum(dr, dc)
    dist = (dr.double() ** 2 + dc.double() ** 2).sqrt()
    weight = torch.where(cheb == 1, 1.0 / dist.clamp_min(1.0), torch.zeros_like(dist))
    return weight, cheb <= repulsion, dist


def _first_in(values: Tensor, allowed: Tensor) -> tuple[Tensor, Tensor]:
    """Per row, the column of the smallest ``values`` among ``allowed`` and whether there is one."""
    big = torch.iinfo(torch.long).max
    idx = torch.where(allowed, values, torch.full_like(values, big)).argmin(dim=1)
    return idx, allowed.any(dim=1)


def locality_orders(grid: tuple[int, int], plan: list[int], batch: int, *, proximity: float = 1.0,
                    repulsion: int = 1, known: Tensor | None = None, generator: torch.Generator | None = None,
                    device: torch.device | str | None = None, draws: Draws | None = None) -> Tensor:
    """Locality-aware orders ``[batch, T]`` (raster indices in generation order) for the group sizes ``plan``.

    ``known [batch, T]`` (bool, True = already decoded: an edit's known tokens) come first, in raster order, and
    ``plan`` covers the others (their count must be the same in every row). Draws come from ``draws`` or a
    :class:`TorchDraws` on ``generator``: a seed gives the same orders."""
    h, w = grid
    T = h * w
    device = torch.device(device if device is not None else (known.device if known is not None else "cpu"))
    draws = draws or TorchDraws(generator, device)
    weight, near, dist = _geometry(h, w, int(repulsion), str(device))
    decoded = torch.zeros(batch, T, dtype=torch.bool, device=device) if known is None else known.clone().bool()
    n_known = int(decoded[0].sum()) if batch else 0
    if decoded.shape != (batch, T) or bool((decoded.sum(1) != n_known).any()):
        raise ValueError(f"known must be [{batch}, {T}] with the same number of known cells in every row")
    if sum(plan) != T - n_known or min(plan, default=1) < 1:
        raise ValueError(f"plan {plan} must be positive and sum to the {T - n_known} cells to order")
    score = decoded.double() @ weight  # proximity of every cell to the decoded ones
    parts = [decoded.long().argsort(dim=1, descending=True, stable=True)[:, :n_known]]  # known cells, raster order
    for g in plan:
        cells = _step(decoded, score, g, proximity, near, dist, draws)
        for j in range(g):  # the step's cells are decoded: scores grow in the order they were taken
            score += weight[cells[:, j]]
        decoded[torch.arange(batch, device=device)[:, None], cells] = True
        parts.append(cells)
    return torch.cat(parts, dim=1)


def _step(decoded: Tensor, score: Tensor, g: int, proximity: float, near: Tensor, dist: Tensor,
          draws: Draws) -> Tensor:
    """The ``g`` cells ``[B, g]`` of one step, in the order they are taken."""
    B, T = decoded.shape
    device = decoded.device
    rows = torch.arange(B, device=device)
    taken = torch.zeros_like(decoded)
    cells = torch.full((B, g), -1, dtype=torch.long, device=device)
    count = torch.zeros(B, dtype=torch.long, device=device)
    blocked = torch.zeros_like(decoded)  # within the repulsion distance of a cell taken in this step

    def take(ok: Tensor, cell: Tensor) -> None:
        r = rows[ok]
        taken[r, cell[ok]], cells[r, count[ok]] = True, cell[ok]
        blocked[ok] |= near[cell[ok]]
        count.add_(ok.long())

    if not bool(decoded.any()):  # an empty grid: the first cell uniformly
        take(torch.ones(B, dtype=torch.bool, device=device), draws.first(B, T))
        if g == 1:
            return cells
    avail = ~decoded
    # rank: score descending, ties by the step's random keys (a shuffle, then a stable sort)
    by_key = draws.ties(decoded).argsort(dim=1, stable=True)
    neg = torch.where(avail, -score, torch.full_like(score, float("inf"))).gather(1, by_key)
    ranked = by_key.gather(1, neg.argsort(dim=1, stable=True))
    rank = torch.empty_like(ranked).scatter_(1, ranked, torch.arange(T, device=device).expand(B, -1))
    high = avail & (score >= proximity) & ~taken
    last = torch.full((B,), -1, dtype=torch.long, device=device)
    for _ in range(g):  # proximity pass: high-score cells in rank order, repelled ones deferred
        cell, ok = _first_in(rank, high & ~taken & ~blocked)
        ok &= count < g
        if not bool(ok.any()):
            break
        last = torch.where(ok, rank.gather(1, cell[:, None])[:, 0], last)
        take(ok, cell)
    # the pool: low-score cells, deferred ones, untried high-score ones (each by rank)
    untried = high & ~taken & (rank > last[:, None]) & (count == g)[:, None]
    deferred = high & ~taken & ~untried
    low = avail & ~high & ~taken
    pool_key = torch.where(low, rank, torch.where(deferred, T + rank, 2 * T + rank))
    in_pool = low | deferred | untried
    size = in_pool.sum(1)
    whole = (size <= g - count) & (count < g)
    for r in rows[whole].tolist():  # (rare) the pool taken whole, in pool order
        pool = in_pool[r].nonzero().flatten()
        pool = pool[pool_key[r, pool].argsort()]
        cells[r, count[r] : count[r] + len(pool)] = pool
        taken[r, pool] = True
        count[r] += len(pool)
    nearest = torch.full(score.shape, float("inf"), dtype=torch.float64, device=device)
    for j in range(g):  # distance to the nearest cell taken in this step
        has = cells[:, j] >= 0
        nearest = torch.where(has[:, None], torch.minimum(nearest, dist[cells[:, j].clamp_min(0)]), nearest)
    active = (count < g) & ~whole
    while bool(active.any()):  # farthest-point sampling from the cells taken in this step
        free = in_pool & ~taken
        order = pool_key.masked_fill(~free, 3 * T).argsort(dim=1, stable=True)  # the pool in its order
        value = torch.where(free, nearest, torch.full_like(nearest, -1.0)).gather(1, order)
        pick = order.gather(1, value.argmax(dim=1, keepdim=True))[:, 0]  # the first maximum in pool order
        fresh = active & (count == 0)
        if bool(fresh.any()):  # nothing taken in this step yet: a uniform start in the pool
            start = draws.start(size).clamp(0, T - 1)
            pick = torch.where(fresh, order.gather(1, start[:, None])[:, 0], pick)
        r = rows[active]
        taken[r, pick[active]], cells[r, count[active]] = True, pick[active]
        nearest[active] = torch.minimum(nearest[active], dist[pick[active]])
        count.add_(active.long())
        active = count < g
    return cells
