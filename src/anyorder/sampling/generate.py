"""``generate``: class-conditional sampling with a family's sampling policy, on the shared decode loop."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from anyorder.nn import orders as orders_lib
from anyorder.sampling.decode import decode
from anyorder.sampling.policy import SamplingConfig, sampling_config

__all__ = ['generate']


@torch.no_grad()
def generate(model, classes: Tensor | list[int], sampling: SamplingConfig | dict[str, Any] | None = None, *,
             orders: Tensor | None = None, seed: int | None = None, generator: torch.Generator | None = None,
             return_orders: bool = False, compile: bool | str = False, step_callback=None,
             **settings: Any) -> Tensor | tuple[Tensor, Tensor]:
    """Sample codes ``[B, h, w]`` (raster order) for ``classes`` with the model family's sampling policy.

    ``sampling`` (a :class:`~anyorder.sampling.policy.SamplingConfig` or dict) and ``settings`` (its fields as
    keywords, applied on top) pick the settings; a setting the family does not have is an error:

    - RAR (:class:`~anyorder.sampling.policy.RARSampling`): one token per step in the model's final scan order;
      guidance on RAR's pow-cosine schedule (``guidance_scale``, ``guidance_power``; power 0 is constant).
    - RandAR (:class:`~anyorder.sampling.policy.RandARSampling`): ``steps`` (0 or None: one token per step) on
      the cosine parallel-decoding schedule, a random order per sample unless ``orders`` is given (a model
      configured with a scan ``order``, i.e. trained to anneal into it, decodes in that order); guidance linear
      from ``guidance_start`` to ``guidance_scale``.

    Unset settings take the family's defaults (unguided, temperature 1); the settings a run or release was
    made with are ``anyorder.sampling.model_sampling(model)``. Without ``orders``, the model's
    :meth:`~anyorder.models.base.AnyOrderModel.sampling_orders` are used. A ``seed`` (or ``generator``) makes
    the result reproducible (orders and samples). ``compile=True`` runs the static-shape decode step under
    ``torch.compile`` (CUDA graphs on GPU; a string names another compile backend): same greedy ids, and a seed
    is reproducible, but a seeded sample differs from the eager loop's (another sampling draw).
    ``step_callback(done, tokens)`` is called after every step (tokens in generation order; see ``decode``).
    """
    policy = sampling_config(model.family, sampling)
    if settings:
        policy = policy.replace(**{k: v for k, v in settings.items() if v is not None})
    dev = model.device
    classes = model.check_classes(torch.as_tensor(classes, device=dev), allow_null=True)
    B, T = classes.shape[0], model.seq_len
    if generator is None and seed is not None:
        generator = torch.Generator(device=dev).manual_seed(seed)
    plan, guidance = policy.plan(T), policy.guidance()
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
        gen = decode(model, classes, orders, plan, guidance, policy.temperature, policy.top_k, policy.top_p, generator,
                     step_callback=step_callback, compile=compile)
    finally:
        model.train(was_training)
    codes = orders_lib.unpermute(gen, orders).view(B, *model.grid)
    return (codes, orders) if return_orders else codes
