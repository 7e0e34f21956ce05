"""The small seeded training loop of the demo's helper networks (the demo VQ tokenizer, the digit judge).

Both are trained the same way: Adam, the cosine learning rate of :func:`anyorder.training.schedules.lr_at`
(no warm-up) decaying to 5%, random minibatches drawn
from a seeded generator, a tqdm bar — and the caller's global RNG left untouched (:func:`seeded`).
The generators themselves use the real training loop, :mod:`anyorder.training.loop`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from anyorder.training.schedules import lr_at

__all__ = ["seeded", "fit"]


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch inside a forked RNG state so the caller's global RNG is left untouched."""
    devices: list[int] = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def fit(model: nn.Module, step_loss: Callable[[Tensor], tuple[Tensor, dict[str, Tensor]]], num_examples: int,
        steps: int, batch_size: int, lr: float, generator: torch.Generator, device: torch.device,
        desc: str, progress: bool = True) -> tuple[dict[str, Tensor], float]:
    """Train ``model`` for ``steps`` Adam steps; each step draws ``batch_size`` example indices with
    ``generator`` and calls ``step_loss(idx) -> (loss, shown)``. Returns the last ``shown`` values
    (displayed on the progress bar) and the wall time in seconds."""
    from tqdm.auto import tqdm

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    start = time.perf_counter()
    shown: dict[str, Tensor] = {}
    bar = tqdm(range(steps), desc=desc, disable=not progress, dynamic_ncols=True)
    for step in bar:
        idx = torch.randint(0, num_examples, (min(batch_size, num_examples),), generator=generator).to(device)
        for g in opt.param_groups:  # the generators' schedule without warm-up, down to 5% of lr
            g["lr"] = lr_at(step, lr, 0, steps, end_lr=0.05 * lr)
        loss, shown = step_loss(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress and (step % 50 == 0 or step == steps - 1):
            bar.set_postfix({k: f"{v.item():.4f}" for k, v in shown.items()})
    return {k: v.detach() for k, v in shown.items()}, time.perf_counter() - start
