"""``generate``: class-conditional sampling with a family's sampling policy, on the shared decode loop."""

from __future__ import annotations

import torch
from torch import Tensor

from anyorder.nn import orders as orders_lib
from anyorder.sampling.decode import decode
from anyorder.sampling.schedules import GuidanceSchedule, parallel_decoding_schedule

__all__ = ['generate']


@torch.no_grad()
def generate(model, classes: Tensor | list[int], orders: Tensor | None = None, steps: int | None = None,
             guidance_scale: float = 1.0, guidance_power: float = 0.0, guidance_start: float = 1.0,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
             generator: torch.Generator | None = None, return_orders: bool = False):
    """Sample codes ``[B, h, w]`` (raster) for ``classes``.

    - RAR: one token per step in the model's final scan order; guidance on RAR's pow-cosine
      schedule (``guidance_scale``, ``guidance_power``; power 0 is constant).
    - RandAR: ``steps`` (default: ``T``, one token per step) on the cosine parallel-decoding
      schedule; a random order per sample unless ``orders`` is given (a model configured with a scan
      ``order``, i.e. trained to anneal into it, decodes in that order); linear guidance from
      ``guidance_start`` to ``guidance_scale``.
    Without ``orders``, the model's :meth:`~anyorder.models.base.AnyOrderModel.sampling_orders` are used.
    A ``seed`` makes the result reproducible (orders and samples).
    """
    dev = model.device
    classes = model.check_classes(torch.as_tensor(classes, device=dev), allow_null=True)
    B, T = classes.shape[0], model.seq_len
    if generator is None and seed is not None:
        generator = torch.Generator(device=dev).manual_seed(seed)
    if model.family == "rar":
        plan = [1] * T
        if steps not in (None, T):
            raise ValueError(f"RAR decodes one token per step: steps must be {T}, got {steps}")
        guidance = GuidanceSchedule("pow_cosine", guidance_scale, guidance_power)
    else:
        plan = parallel_decoding_schedule(steps or T, T)
        guidance = GuidanceSchedule("linear", guidance_scale, start=guidance_start)
    if orders is None:
        orders = model.sampling_orders(B, generator)
    orders = torch.as_tensor(orders, device=dev).long()
    if orders.dim() == 1:
        orders = orders.expand(B, -1)
    if orders.shape != (B, T) or not orders_lib.is_permutation(orders):
        raise ValueError(f"orders must be permutations of range({T}) with shape [{B}, {T}]")
    was_training = model.training
    model.eval()
    try:
        gen = decode(model, classes, orders, plan, guidance, temperature, top_k, top_p, generator)
    finally:
        model.train(was_training)
    codes = orders_lib.unpermute(gen, orders).view(B, *model.grid)
    return (codes, orders) if return_orders else codes
