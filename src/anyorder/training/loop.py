"""The one training loop both families share: the permuted next-token objective, at any scale.

Per step and per sample: with probability ``r`` a uniformly random generation order, otherwise the model's scan
order; ``r`` follows RAR's annealing (:func:`anneal_bounds`: by default r = 1 until 50% of the steps and linear to
0 at 75% for RAR, random orders throughout for RandAR). Class labels are dropped to the null class with the
model's ``class_dropout`` (for guidance). AdamW with each official trainer's weight-decay groups
(:mod:`anyorder.training.optim`), linear warm-up then cosine learning rate (:func:`lr_at`), grad-norm clipping,
bf16 autocast on CUDA, gradient accumulation (``grad_accum``), activation checkpointing
(``model.grad_checkpointing``), DDP or FSDP2 under ``torchrun`` (:mod:`anyorder.training.distributed`).

**Determinism.** Every random draw of a step comes from seeds that are a function of ``(seed, step)``: the data
stream (:class:`anyorder.data.codes.EpochStream`, by position), the global batch's orders and label dropout (one
generator on the device, the same draws on every rank, each rank taking its slice), and the model's dropout (the
global RNG reseeded per step and rank). So 2 ranks at batch b equal 1 rank at batch 2b equal 2 accumulated
micro-batches of b (exactly with dropout 0; with dropout each rank / micro-batch draws its own masks, the same
distribution), and a run killed at any point and rerun with the same command ends bit-identical to an
uninterrupted one: nothing but the step and the position in the stream needs restoring.

**No host syncs inside a step** except at logging / checkpoint steps: the data are validated once at load, the
loss and grad norm are read (and checked for NaN / inf) every ``log_every`` steps and before every checkpoint.

**Checkpoints** (``out_dir/checkpoints/last.pt``, every ``ckpt_every`` steps and at the end): full state dicts
(one file, also from FSDP), the step, the stream position, the model config; written to a temporary file,
fsynced and renamed, so a kill mid-write never replaces the last good one. Resuming loads on the CPU first and
refuses a different model config, naming the keys.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from anyorder.data.codes import CodeSource, EpochStream, TensorCodes
from anyorder.io import CheckpointError, atomic_torch_save, atomic_write_json
from anyorder.models.base import AnyOrderModel
from anyorder.nn import orders as orders_lib
from anyorder.nn.device import resolve_device
from anyorder.training.config import TrainConfig, config_to_dict
from anyorder.training.distributed import dist_info, full_state, init_distributed, load_full_state, wrap
from anyorder.training.optim import make_optimizer
from anyorder.training.schedules import anneal_ratio, lr_at

__all__ = ["train", "resolve_device", "make_optimizer", "permutation_ratio", "anneal_bounds", "init_distributed",
           "load_checkpoint", "LAST_CKPT"]

LAST_CKPT = "last.pt"
CKPT_FORMAT = 2
# model-config keys that change how a step runs, not what is trained: free to differ on resume
_RUNTIME_KEYS = {"grad_checkpointing"}


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    use_bf16 = precision == "bf16" or (
        precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class TrainingLoss(torch.nn.Module):
    """``model.training_loss`` as a module's ``forward``, so DDP, FSDP and ``torch.compile`` can wrap it."""

    def __init__(self, model: AnyOrderModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, codes: Tensor, classes: Tensor, orders: Tensor) -> Tensor:
        return self.model.training_loss(codes, classes, orders)


# ---- schedules ---------------------------------------------------------------------------------------------
def anneal_bounds(cfg: TrainConfig, family: str = "rar") -> tuple[int, int]:
    """``(start, end)`` of the randomness annealing; ``end < 0``: random orders throughout. Unset (None): RAR's
    paper schedule (r = 1 until 50% of ``cfg.steps``, 0 from 75%), RandAR random throughout."""
    start, end = cfg.anneal_start, cfg.anneal_end
    if start is None and end is None:
        return (cfg.steps // 2, 3 * cfg.steps // 4) if family == "rar" else (0, -1)
    if end is None:
        raise ValueError(f"train.anneal_start={start} needs train.anneal_end (the step r reaches 0; -1: never)")
    start = 0 if start is None else start
    if end >= 0 and end < start:
        raise ValueError(f"train.anneal_end={end} is before train.anneal_start={start}")
    return start, end


def permutation_ratio(step: int, cfg: TrainConfig, family: str = "rar") -> float:
    """The probability ``r`` of a random order at ``step``."""
    start, end = anneal_bounds(cfg, family)
    if end < 0:
        return 1.0
    return anneal_ratio(step, start, end)


def check_order_schedule(model: AnyOrderModel, cfg: TrainConfig) -> None:
    """A RandAR's ``order`` records the order training ends in, which is the order it decodes in by
    default: a scan order needs annealing into it; ``"random"`` with annealing ends in raster order while the
    model would decode in random orders (warned)."""
    if model.family != "randar":
        return
    order = model.config.order
    _, end = anneal_bounds(cfg, model.family)
    if order != "random" and end < 0:
        raise ValueError(f"model.order={order!r} means training anneals into the {order!r} scan order, but "
                         f"train.anneal_end={cfg.anneal_end} keeps every order random: set train.anneal_start/"
                         "anneal_end (>= 0) or model.order=random")
    if order == "random" and end >= 0:
        warnings.warn(f"train.anneal_end={end} anneals this RandAR into raster order, but with "
                      "model.order='random' it will decode in random orders: set model.order=raster to record "
                      "the order it ends in", stacklevel=3)


def split_batch(batch_size: int, world: int, grad_accum: int) -> tuple[int, int]:
    """``(per rank, per micro-batch)`` of a global batch; it must divide evenly."""
    if batch_size % (world * grad_accum):
        raise ValueError(f"train.batch_size={batch_size} does not split into {world} process(es) x "
                         f"train.grad_accum={grad_accum} equal micro-batches")
    per_rank = batch_size // world
    return per_rank, per_rank // grad_accum


def _seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (the per-step seeds)."""
    return int(np.random.SeedSequence([p & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0] >> 1)


# ---- checkpoints ---------------------------------------------------------------------------------------------
def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint, loaded on the CPU (memory-mapped), tensors and plain containers only."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - corrupt zip, unpickling refused, ...
        raise CheckpointError(f"{path}: unreadable training checkpoint ({type(e).__name__}: {e})") from e


def _config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted((set(saved) | set(current)) - _RUNTIME_KEYS)
    return [f"{k} (checkpoint {saved.get(k, '<unset>')!r}, now {current.get(k, '<unset>')!r})"
            for k in keys if saved.get(k) != current.get(k)]


# ---- the loop --------------------------------------------------------------------------------------------------
def train(model: AnyOrderModel, codes: Tensor | CodeSource, labels: Tensor | None, cfg: TrainConfig,
          out_dir: str | Path, resume: bool = True, progress: bool = True,
          step_callback: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train ``model`` on ``codes`` (a :class:`~anyorder.data.codes.CodeSource`, or codes ``[N, h, w]`` with
    class ``labels [N]``); checkpoints go to ``out_dir/checkpoints``. ``cfg.batch_size`` is the global batch.

    Returns a summary (steps, final loss, seconds, the logged history). ``step_callback(step, stats)`` is called
    after each optimizer step (``stats`` holds the loss only at logging steps).
    """
    rank, world = dist_info()
    device = model.device
    out_dir = Path(out_dir)
    ckpt_path = out_dir / "checkpoints" / LAST_CKPT
    data = codes if isinstance(codes, CodeSource) else TensorCodes(codes, labels)
    data.check_model(model.codebook_size, model.num_classes, model.seq_len)  # once, here: no per-step checks
    check_order_schedule(model, cfg)
    per_rank, micro = split_batch(cfg.batch_size, world, cfg.grad_accum)
    stream = EpochStream(len(data), data.augmentations, cfg.seed)
    family = model.family
    if rank == 0 and ckpt_path.parent.is_dir():  # temporary files of a write a kill interrupted
        for stale in ckpt_path.parent.glob(f".{LAST_CKPT}.*.tmp"):
            stale.unlink(missing_ok=True)

    loss_module = TrainingLoss(model)
    fsdp = cfg.fsdp and world > 1
    engine = wrap(loss_module, list(model.transformer.blocks), fsdp=fsdp)  # the module itself, DDP or FSDP
    opt = make_optimizer(model, cfg)  # after sharding: FSDP replaces the parameters

    step, seen, history = 0, 0, []
    if resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        if state.get("format") != CKPT_FORMAT:
            raise CheckpointError(f"{ckpt_path}: written by an older anyorder (no format {CKPT_FORMAT}); "
                                  "start afresh (--fresh) or use another output directory")
        diff = _config_differences(state.get("model_config", {}), model.config_dict())
        if diff:
            raise CheckpointError(f"{ckpt_path}: the model config differs from the checkpoint's in "
                                  f"{len(diff)} key(s): " + "; ".join(diff) + ". Resume with the same model "
                                  "config, or start afresh (--fresh / another output directory)")
        try:
            load_full_state(loss_module, opt, state["model"], state["optimizer"], prefix="model.")
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"{ckpt_path}: does not fit this model ({e})") from e
        step, seen = int(state["step"]), int(state["samples_seen"])
        history = list(state.get("history", []))
        if rank == 0:
            tqdm.write(f"resumed from {ckpt_path} at step {step} (epoch {seen / len(data):.3f})")
        del state

    forward = torch.compile(engine) if cfg.compile else engine
    base_order = model.default_order()
    class_dropout = float(getattr(model.config, "class_dropout", 0.0))
    gen = torch.Generator(device=device)
    amp = autocast_context(device, cfg.precision)
    params = [p for p in model.parameters() if p.requires_grad]
    pin = device.type == "cuda"

    def fetch(position: int) -> tuple[Tensor, Tensor]:
        """This rank's share of the global batch at stream ``position``: codes and labels (host, pinned on CUDA)."""
        images, views = stream.take(position + rank * per_rank, per_rank)
        x, y = data.gather(images, views), torch.from_numpy(data.labels[images])
        return (x.pin_memory(), y.pin_memory()) if pin else (x, y)

    loader = ThreadPoolExecutor(max_workers=1)  # reads the next batch while a step runs
    pending = loader.submit(fetch, seen)

    def save(at: int) -> None:
        msd, osd = full_state(loss_module, opt, prefix="model.")  # collective under FSDP
        if rank == 0:
            atomic_torch_save(ckpt_path, {
                "format": CKPT_FORMAT, "model": msd, "optimizer": osd, "step": at, "samples_seen": seen,
                "epoch": seen / len(data), "history": history, "world_size": world,
                "model_config": model.config_dict(), "train_config": config_to_dict(cfg),
            })

    def no_sync(last_micro: bool) -> contextlib.AbstractContextManager:
        if last_micro or world == 1:
            return contextlib.nullcontext()
        if fsdp:
            loss_module.set_requires_gradient_sync(False)  # set back to True before the last micro-batch
            return contextlib.nullcontext()
        return engine.no_sync() if hasattr(engine, "no_sync") else contextlib.nullcontext()

    model.train()
    model.validate_inputs = False
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {family}", disable=not progress or rank != 0,
               dynamic_ncols=True)
    last = history[-1] if history else {}
    loss_val = float(last["loss"]) if last.get("step") == step and "loss" in last else float("nan")
    loss_sum, since = torch.zeros((), device=device), 0
    try:
        while step < cfg.steps:
            torch.manual_seed(_seed(cfg.seed, step, rank, 1))  # the model's dropout
            gen.manual_seed(_seed(cfg.seed, step, 2))  # orders and label dropout of the global batch
            r = permutation_ratio(step, cfg, family)
            lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.end_lr)
            for g in opt.param_groups:
                g["lr"] = lr
            orders = orders_lib.training_orders(cfg.batch_size, base_order, r, generator=gen)
            drop = torch.rand(cfg.batch_size, generator=gen, device=gen.device) < class_dropout
            x_all, y_all = pending.result()
            pending = loader.submit(fetch, seen + cfg.batch_size)
            step_loss = torch.zeros((), device=device)
            for m in range(cfg.grad_accum):
                local = slice(m * micro, (m + 1) * micro)
                glob = slice(rank * per_rank + m * micro, rank * per_rank + (m + 1) * micro)
                x = x_all[local].to(device, non_blocking=True)
                y = y_all[local].to(device, non_blocking=True)
                y = torch.where(drop[glob].to(device), model.null_class, y)
                final = m == cfg.grad_accum - 1
                if fsdp and final and cfg.grad_accum > 1:
                    loss_module.set_requires_gradient_sync(True)
                with no_sync(final), amp:
                    loss = forward(x, y, orders[glob].to(device))
                (loss / cfg.grad_accum).backward()
                step_loss += loss.detach() / cfg.grad_accum
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            seen += cfg.batch_size
            loss_sum += step_loss
            since += 1
            stats: dict[str, float] = {"lr": lr, "r": r}
            log_now = step % max(1, cfg.log_every) == 0 or step == cfg.steps
            save_now = cfg.ckpt_every > 0 and step % cfg.ckpt_every == 0
            if log_now or save_now:  # the only host syncs of the loop
                gn = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
                vals = torch.stack([step_loss, loss_sum / since, gn.to(device=device, dtype=torch.float32)])
                if world > 1:
                    dist.all_reduce(vals[:2], op=dist.ReduceOp.SUM)
                    vals[:2] /= world
                loss_val, loss_avg, gn_val = (float(v) for v in vals.cpu())
                if not all(math.isfinite(v) for v in (loss_val, loss_avg, gn_val)):
                    raise FloatingPointError(
                        f"non-finite training at step {step}: loss {loss_val}, mean loss since the last log "
                        f"{loss_avg}, grad norm {gn_val}; the last checkpoint ({ckpt_path}) predates it")
                stats.update(loss=loss_val, loss_avg=loss_avg, grad_norm=gn_val)
                loss_sum.zero_()
                since = 0
                if log_now:
                    history.append({"step": step, "epoch": seen / len(data), **stats})
                    bar.set_postfix(loss=f"{loss_val:.3f}", r=f"{r:.2f}", epoch=f"{seen / len(data):.2f}")
            bar.update(1)
            if save_now:
                save(step)
            if step_callback is not None:
                step_callback(step, stats)
        bar.close()
        save(step)
    finally:
        model.validate_inputs = True
        loader.shutdown(wait=True, cancel_futures=True)
    seconds = time.perf_counter() - t0
    summary = {"steps": step, "final_loss": loss_val, "seconds": seconds, "epochs": seen / len(data),
               "history": history}
    if rank == 0:
        atomic_write_json(out_dir / "train_log.json", summary)
    return summary
