"""The training loop both families share: the permuted next-token objective.

Per step and per sample: with probability ``r`` a uniformly random generation order, otherwise
the model's configured scan order; ``r`` follows RAR's annealing (1 before ``anneal_start``, 0 from
``anneal_end``, linear between; ``anneal_end < 0`` keeps it at 1 — RandAR's random orders). Labels
and target-aware embeddings / instruction tokens follow the order inside the model. Class labels
are dropped to the null class with the model's ``class_dropout`` (for guidance).

AdamW (weight decay on matrices and embeddings only), linear warm-up then cosine LR, grad-norm
clipping, bf16 autocast where the device supports it, atomic checkpoints every ``ckpt_every`` steps
and resume from the last one. Under ``torchrun`` it runs data-parallel (DDP), each rank drawing its
own share of the batch.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from anyorder.io import CheckpointError, atomic_torch_save, atomic_write_json
from anyorder.models.base import AnyOrderModel
from anyorder.nn import orders as orders_lib
from anyorder.training.config import TrainConfig, config_to_dict
from anyorder.training.schedules import anneal_ratio, lr_at

__all__ = ["train", "resolve_device", "make_optimizer", "permutation_ratio", "LAST_CKPT"]

LAST_CKPT = "last.pt"


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    use_bf16 = precision == "bf16" or (
        precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings (``dim >= 2``), none on biases and norms."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


class TrainingLoss(torch.nn.Module):
    """``model.training_loss`` as a module's ``forward``, so DDP and ``torch.compile`` can wrap it."""

    def __init__(self, model: AnyOrderModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, codes: Tensor, classes: Tensor, orders: Tensor) -> Tensor:
        return self.model.training_loss(codes, classes, orders)


def permutation_ratio(step: int, cfg: TrainConfig) -> float:
    """The probability ``r`` of a random order at ``step``."""
    if cfg.anneal_end < 0:
        return 1.0
    return anneal_ratio(step, cfg.anneal_start, cfg.anneal_end)


def check_order_schedule(model: AnyOrderModel, cfg: TrainConfig) -> None:
    """A RandAR's ``order`` records the order training ends in, which is the order it decodes in by
    default: a scan order needs annealing into it (``anneal_end >= 0``); ``"random"`` with annealing ends
    in raster order while the model would decode in random orders (warned)."""
    if model.family != "randar":
        return
    order = model.config.order
    if order != "random" and cfg.anneal_end < 0:
        raise ValueError(f"model.order={order!r} means training anneals into the {order!r} scan order, but "
                         f"train.anneal_end={cfg.anneal_end} keeps every order random: set train.anneal_start/"
                         "anneal_end (>= 0) or model.order=random")
    if order == "random" and cfg.anneal_end >= 0:
        warnings.warn(f"train.anneal_end={cfg.anneal_end} anneals this RandAR into raster order, but with "
                      "model.order='random' it will decode in random orders: set model.order=raster to record "
                      "the order it ends in", stacklevel=3)


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _finite_on_all_ranks(loss: Tensor, world: int) -> bool:
    ok = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
    if world > 1:  # every rank must take the same branch (the checkpoint write is collective)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def train(model: AnyOrderModel, codes: Tensor, labels: Tensor, cfg: TrainConfig, out_dir: str | Path,
          resume: bool = True, progress: bool = True,
          step_callback: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train ``model`` on ``codes [N, h, w]`` with class ``labels [N]``; checkpoints go to ``out_dir``.

    Returns a summary (final loss, steps, seconds, loss history). ``step_callback(step, stats)`` is
    called after each optimizer step (tests use it to simulate a crash).
    """
    rank, world = _dist_info()
    device = model.device
    out_dir = Path(out_dir)
    ckpt_path = out_dir / "checkpoints" / LAST_CKPT
    check_order_schedule(model, cfg)
    codes = model.check_codes(codes).to(device)
    labels = model.check_classes(labels, allow_null=False).to(device)
    if codes.shape[0] != labels.shape[0]:
        raise ValueError(f"{codes.shape[0]} code grids but {labels.shape[0]} labels")
    local_batch = cfg.batch_size // world
    if local_batch < 1:
        raise ValueError(f"batch_size {cfg.batch_size} is smaller than the world size {world}")

    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * rank)
    step, history = 0, []
    if resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{ckpt_path}: does not fit this model config ({e})") from e
        opt.load_state_dict(state["optimizer"])
        step, history = int(state["step"]), list(state.get("history", []))
        gens = state.get("generators") or [state["generator"]]  # ("generator": checkpoints before DDP streams)
        if len(gens) == world:  # each rank continues its own data stream
            gen.set_state(gens[rank])
        else:  # another world size than the checkpoint's: a fresh, distinct stream per rank
            gen.manual_seed(cfg.seed + 1000 * rank + 7919 * step)
            if rank == 0:
                tqdm.write(f"{ckpt_path} was written by {len(gens)} process(es), this run has {world}: "
                           "the data order is reseeded")
        if rank == 0:
            tqdm.write(f"resumed from {ckpt_path} at step {step}")

    forward: torch.nn.Module = TrainingLoss(model)
    if world > 1:
        forward = torch.nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        forward = torch.compile(forward)
    base_order = model.default_order().cpu()
    class_dropout = float(getattr(model.config, "class_dropout", 0.0))

    def save(at: int) -> None:
        """Checkpoint (rank 0 writes; every rank's data-stream state is kept, so resume is exact)."""
        gens = [gen.get_state()]
        if world > 1:
            gens = [torch.empty(0)] * world
            dist.all_gather_object(gens, gen.get_state())
        if rank != 0:
            return
        atomic_torch_save(ckpt_path, {
            "model": model.state_dict(), "optimizer": opt.state_dict(), "generators": gens,
            "step": at, "history": history, "train_config": config_to_dict(cfg),
        })

    model.train()
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {model.family}", disable=not progress or rank != 0)
    # resuming a finished run trains no step: report the loss its history recorded at that step
    last = history[-1] if history else {}
    loss_val = float(last["loss"]) if last.get("step") == step and "loss" in last else float("nan")
    while step < cfg.steps:
        idx = torch.randint(0, codes.shape[0], (local_batch,), generator=gen)
        x, y = codes[idx.to(device)], labels[idx.to(device)]
        drop = torch.rand(local_batch, generator=gen) < class_dropout
        y = torch.where(drop.to(device), torch.full_like(y, model.null_class), y)
        r = permutation_ratio(step, cfg)
        o = orders_lib.training_orders(local_batch, base_order, r, generator=gen).to(device)
        lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.end_lr)
        for g in opt.param_groups:
            g["lr"] = lr
        with autocast_context(device, cfg.precision):
            loss = forward(x, y, o)
        if not _finite_on_all_ranks(loss, world):
            save(step)
            raise FloatingPointError(f"loss is {loss.item()} at step {step}; last good state saved to {ckpt_path}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        loss_val = loss.item()
        stats = {"loss": loss_val, "lr": lr, "r": r, "grad_norm": float(grad_norm)}
        if step % max(1, cfg.log_every) == 0 or step == cfg.steps:
            history.append({"step": step, **stats})
        bar.set_postfix(loss=f"{loss_val:.3f}", r=f"{r:.2f}")
        bar.update(1)
        if cfg.ckpt_every > 0 and step % cfg.ckpt_every == 0:
            save(step)
        if step_callback is not None:
            step_callback(step, stats)
    bar.close()
    save(step)
    seconds = time.perf_counter() - t0
    summary = {"steps": step, "final_loss": loss_val, "seconds": seconds, "history": history}
    if rank == 0:
        atomic_write_json(out_dir / "train_log.json", summary)
    return summary


def init_distributed() -> tuple[int, int]:
    """Initialise the process group under ``torchrun`` (NCCL on CUDA, gloo on CPU); no-op otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return _dist_info()

