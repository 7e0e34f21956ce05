"""``generate``: class-conditional sampling with a family's sampling policy, on the shared decode loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from anyorder.models.policy import SamplingPolicy
from anyorder.sampling.decode import decode
from anyorder.sampling.job import generation_job

__all__ = ["generate"]


@torch.no_grad()
def generate(model: Any, classes: Tensor | list[int], sampling: SamplingPolicy | dict[str, Any] | None = None, *,
             orders: Tensor | None = None, seed: int | None = None, generator: torch.Generator | None = None,
             return_orders: bool = False, compile: bool | str = False,
             step_callback: Callable[[int, Tensor], None] | None = None,
             **settings: Any) -> Tensor | tuple[Tensor, Tensor]:
    """Sample codes ``[B, h, w]`` (raster order) for ``classes`` with the model family's sampling policy.

    ``sampling`` (the family's :class:`~anyorder.models.policy.SamplingPolicy`, or a dict of its fields) and
    ``settings`` (its fields as keywords, applied on top) pick the settings; a setting the family does not have
    is an error naming it. Unset settings take the family's defaults (unguided, temperature 1); the settings a
    run or release was made with are ``anyorder.sampling.model_sampling(model)``. Each family decodes as its
    paper does: RAR one token per step in its scan order with pow-cosine guidance; RandAR ``steps`` cosine
    parallel-decoding steps in a random order per sample with linear guidance; see the family's policy.

    ``orders`` (``[B, T]`` or ``[T]`` raster permutations) fixes the generation orders. A ``seed`` (or
    ``generator``) makes the result reproducible (orders and samples). ``compile=True`` runs the static-shape
    decode step under ``torch.compile`` (CUDA graphs on GPU; a string names another compile backend): the same
    sampling draws as the eager loop, so a seed gives the same ids wherever the compiled logits agree with the
    eager ones (they differ by float rounding). ``step_callback(done, tokens)`` is called after every step
    (see :func:`decode`).
    """
    job = generation_job(model, classes, sampling, orders=orders, seed=seed, generator=generator, **settings)
    was_training = model.training
    model.eval()
    try:
        tokens = decode(job, step_callback, compile=compile)
    finally:
        model.train(was_training)
    codes = job.codes(tokens)
    return (codes, job.orders) if return_orders else codes
