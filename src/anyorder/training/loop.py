"""The one training loop every family shares: the permuted next-token objective, at any scale.

Per step and per sample: with probability ``r`` a uniformly random generation order, otherwise the model's scan
order; ``r`` follows the family's order schedule (:func:`~anyorder.training.schedules.anneal_bounds`: RAR's
annealing, r = 1 until 50% of the steps and linear to 0 at 75%; random orders throughout for RandAR and LPD);
whatever else a family draws per step (LPD's group plan) comes from the model's ``training_extras``. Class labels
are dropped to the null class with the model's ``class_dropout`` (for guidance). AdamW with each official
trainer's weight-decay groups (:mod:`anyorder.training.optim`), linear warm-up then cosine learning rate
(:func:`~anyorder.training.schedules.lr_at`), grad-norm clipping, bf16 autocast on CUDA, gradient accumulation
(``grad_accum``), activation checkpointing (``model.grad_checkpointing``), DDP or FSDP2 under ``torchrun``
(:mod:`anyorder.training.distributed`). RandAR's step skip (``train.skip_grad_norm``,
:func:`skip_update`): from step ``skip_grad_iter`` on, an update whose summed per-tensor gradient
norms (after clipping) reach ``skip_grad_norm`` is not applied, decided on the device.

**Determinism.** Every random draw of a step comes from seeds that are a function of ``(seed, step)``: the data
stream (:class:`anyorder.data.codes.EpochStream`, by position), the global batch's orders and label dropout (one
generator on the device, the same draws on every rank, each rank taking its slice), and the model's dropout (the
global RNG reseeded per step and global micro-batch). So 2 ranks x 1 micro-batch equal 1 rank x 2 accumulated
micro-batches, dropout included (1 rank at batch 2b in one micro-batch draws other dropout masks, and sums in
another order), and a run killed at any point and rerun with the same command ends bit-identical to an
uninterrupted one: nothing but the step and the position in the stream needs restoring.

**No host syncs inside a step** except at logging / checkpoint steps: the data are validated once at load, the
loss and grad norm are read (and checked for NaN / inf) every ``log_every`` steps and before every checkpoint.

**Checkpoints** (``out_dir/checkpoints/last.pt``, every ``ckpt_every`` steps and at the end): full state dicts
(one file, also from FSDP), the step, the stream position, the model config; written to a temporary file,
fsynced and renamed, so a kill mid-write never replaces the last good one. Resuming loads on the CPU first and
refuses a different model config, naming the keys.

The loop itself (:func:`train`) is a few lines around four named steps: :func:`setup`, :func:`resume_from_checkpoint`,
:func:`train_step` (one optimizer step with gradient accumulation), :func:`log_and_check` and :func:`save`.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor
from tqdm.auto import tqdm

from anyorder.data.codes import CodeSource, EpochStream, TensorCodes
from anyorder.hub import load_weights
from anyorder.io import CheckpointError, atomic_torch_save, atomic_write_json
from anyorder.models.base import AnyOrderModel
from anyorder.nn import orders as orders_lib
from anyorder.nn.device import resolve_device
from anyorder.training.config import TrainConfig, config_to_dict
from anyorder.training.distributed import barrier, dist_info, full_state, init_distributed, load_full_state, wrap
from anyorder.training.optim import make_optimizer
from anyorder.training.schedules import anneal_bounds, lr_at, permutation_ratio

__all__ = ["train", "setup", "resume_from_checkpoint", "train_step", "log_and_check", "save", "Run", "TrainState",
           "resolve_device", "make_optimizer", "permutation_ratio", "anneal_bounds", "init_distributed",
           "load_checkpoint", "LAST_CKPT", "grad_norm_sum", "skip_update", "step_unless"]

LAST_CKPT = "last.pt"
CKPT_FORMAT = 2
# model-config keys that change how a step runs, not what is trained: free to differ on resume
_RUNTIME_KEYS = {"grad_checkpointing"}


def uses_bf16(device: torch.device, precision: str) -> bool:
    """Whether a run of ``precision`` (auto: bf16 on a CUDA device that has it) computes in bf16 autocast."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if uses_bf16(device, precision):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class TrainingLoss(torch.nn.Module):
    """``model.training_loss`` as a module's ``forward``, so DDP, FSDP and ``torch.compile`` can wrap it."""

    def __init__(self, model: AnyOrderModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, codes: Tensor, classes: Tensor, orders: Tensor, **extras: Tensor) -> Tensor:
        return self.model.training_loss(codes, classes, orders, **extras)


def check_order_schedule(model: AnyOrderModel, cfg: TrainConfig) -> None:
    """A model whose config records the scan ``order`` training ends in (RandAR's ``order``) decodes in it by
    default: a scan order needs annealing into it; ``"random"`` with annealing ends in raster order while the
    model would decode in random orders (warned)."""
    order = getattr(model.config, "order", None)
    _, end = anneal_bounds(cfg, model.family)
    if order is None or (order != "random" and end >= 0):
        return
    if order != "random":
        raise ValueError(f"model.order={order!r} means training anneals into the {order!r} scan order, but "
                         f"train.anneal_end={cfg.anneal_end} keeps every order random: set train.anneal_start/"
                         "anneal_end (>= 0) or model.order=random")
    if end >= 0:
        warnings.warn(f"train.anneal_end={end} anneals this {model.family} model into raster order, but with "
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


# ---- what the steps share ------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """Where training is: the optimizer steps taken, the images seen (the stream position), the log."""

    step: int = 0
    seen: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Run:
    """Everything the named steps share: the model and its wrappers, the optimizer, the data, the layout of a
    global batch over processes and micro-batches, and the per-step generator."""

    model: AnyOrderModel
    cfg: TrainConfig
    data: CodeSource
    stream: EpochStream
    loss_module: TrainingLoss
    engine: torch.nn.Module  # the loss module itself, DDP or FSDP
    forward: Callable[..., Tensor]  # engine, compiled or not
    opt: torch.optim.Optimizer
    ckpt_path: Path
    rank: int
    world: int
    per_rank: int
    micro: int
    fsdp: bool
    gen: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.device = self.model.device
        self.gen = torch.Generator(device=self.device)  # orders, label dropout, extras of the global batch
        self.base_order = self.model.default_order()
        self.class_dropout = float(getattr(self.model.config, "class_dropout", 0.0))
        self.amp = autocast_context(self.device, self.cfg.precision)
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def fetch(self, position: int) -> tuple[Tensor, Tensor]:
        """This rank's share of the global batch at stream ``position``: codes and labels (host, pinned on
        CUDA)."""
        images, views = self.stream.take(position + self.rank * self.per_rank, self.per_rank)
        x, y = self.data.gather(images, views), torch.from_numpy(self.data.labels[images])
        return (x.pin_memory(), y.pin_memory()) if self.device.type == "cuda" else (x, y)

    def no_sync(self, last_micro: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on all but the last micro-batch."""
        if last_micro or self.world == 1:
            return contextlib.nullcontext()
        if self.fsdp:
            self.loss_module.set_requires_gradient_sync(False)  # set back to True before the last micro-batch
            return contextlib.nullcontext()
        return self.engine.no_sync() if hasattr(self.engine, "no_sync") else contextlib.nullcontext()


# ---- RandAR's step skip ---------------------------------------------------------------------------
def grad_norm_sum(params: list[Tensor]) -> Tensor:
    """The sum over parameters of each gradient's L2 norm (RandAR's ``train_c2i.py``: ``grad_norm +=
    p.grad.data.norm(2)`` for every parameter), a float32 device tensor: no host sync. Sharded (FSDP)
    gradients: each tensor's norm over all its shards (one all-reduce of the squared local norms)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    sharded = any(isinstance(g, DTensor) for g in grads)
    local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
    norms = torch.stack([n.float() for n in torch._foreach_norm(local)])
    if sharded and dist.is_initialized():
        squares = norms.square()
        dist.all_reduce(squares)
        norms = squares.sqrt()
    return norms.sum()


def skip_update(run: Run, step: int) -> Tensor | None:
    """RandAR's rule for optimizer step ``step`` (0-based): None (step) before ``skip_grad_iter`` or
    with the rule off, else a device bool: skip when the summed per-tensor gradient norms are ``>=
    skip_grad_norm`` (``train_c2i.py`` steps when ``grad_norm < skip_grad_norm or train_steps <
    skip_grad_iter``)."""
    cfg = run.cfg
    if cfg.skip_grad_norm <= 0 or step < cfg.skip_grad_iter:
        return None
    return grad_norm_sum(run.params) >= cfg.skip_grad_norm


def step_unless(opt: torch.optim.Optimizer, skip: Tensor) -> None:
    """``opt.step()`` unless the device bool ``skip`` is true, decided on the device (no host sync):
    the fused AdamW kernel's ``found_inf`` (what ``GradScaler`` uses to skip steps) leaves the
    parameters, the moments and the step count untouched when it is 1, as if ``step()`` had not been
    called."""
    if not all(g.get("fused") for g in opt.param_groups):
        raise RuntimeError("train.skip_grad_norm needs the fused AdamW (parameters on cpu / cuda / mps "
                           "/ xpu, floating point); this optimizer is not fused")
    opt.found_inf = skip.to(torch.float32)  # type: ignore[attr-defined]
    try:
        opt.step()
    finally:
        del opt.found_inf  # type: ignore[attr-defined]


# ---- the named steps -----------------------------------------------------------------------------------------
def setup(model: AnyOrderModel, codes: Tensor | CodeSource, labels: Tensor | None, cfg: TrainConfig,
          out_dir: str | Path) -> Run:
    """Check the data against the model once (no per-step checks), wrap the loss for DDP / FSDP / compile, make
    the optimizer (after sharding: FSDP replaces the parameters)."""
    rank, world = dist_info()
    ckpt_path = Path(out_dir) / "checkpoints" / LAST_CKPT
    data = codes if isinstance(codes, CodeSource) else TensorCodes(codes, labels)
    data.check_model(model.codebook_size, model.num_classes, model.seq_len)
    check_order_schedule(model, cfg)
    per_rank, micro = split_batch(cfg.batch_size, world, cfg.grad_accum)
    if rank == 0 and ckpt_path.parent.is_dir():  # temporary files of a write a kill interrupted
        for stale in ckpt_path.parent.glob(f".{LAST_CKPT}.*.tmp"):
            stale.unlink(missing_ok=True)
    loss_module = TrainingLoss(model)
    fsdp = cfg.fsdp and world > 1
    compute = torch.bfloat16 if uses_bf16(model.device, cfg.precision) else None
    engine = wrap(loss_module, list(model.transformer.blocks), fsdp=fsdp, compute_dtype=compute)
    opt = make_optimizer(model, cfg)
    if cfg.skip_grad_norm > 0 and not all(g.get("fused") for g in opt.param_groups):
        raise ValueError(f"train.skip_grad_norm={cfg.skip_grad_norm} skips steps inside the fused "
                         f"AdamW kernel, which {model.device} parameters do not have: set "
                         "train.skip_grad_norm=0")
    forward = torch.compile(engine) if cfg.compile else engine
    return Run(model, cfg, data, EpochStream(len(data), data.augmentations, cfg.seed), loss_module, engine,
               forward, opt, ckpt_path, rank, world, per_rank, micro, fsdp)


def resume_from_checkpoint(run: Run) -> TrainState:
    """The state of ``run``'s last checkpoint (model and optimizer loaded into place), or a fresh one. A
    checkpoint of another model config is refused, naming the keys."""
    path = run.ckpt_path
    if not path.is_file():
        return TrainState()
    state = load_checkpoint(path)
    if state.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path}: written by an older anyorder (no format {CKPT_FORMAT}); "
                              "start afresh (--fresh) or use another output directory")
    diff = _config_differences(state.get("model_config", {}), run.model.config_dict())
    if diff:
        raise CheckpointError(f"{path}: the model config differs from the checkpoint's in {len(diff)} key(s): "
                              + "; ".join(diff) + ". Resume with the same model config, or start afresh "
                              "(--fresh / another output directory)")
    try:
        load_full_state(run.loss_module, run.opt, state["model"], state["optimizer"], prefix="model.")
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: does not fit this model ({e})") from e
    out = TrainState(int(state["step"]), int(state["samples_seen"]), list(state.get("history", [])))
    if run.rank == 0:
        tqdm.write(f"resumed from {path} at step {out.step} (epoch {out.seen / len(run.data):.3f})")
    return out


def train_step(run: Run, state: TrainState, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, dict]:
    """One optimizer step on the global batch (this rank's share ``batch``, in ``grad_accum`` micro-batches).

    Every draw comes from seeds of ``(seed, step)``: the orders, label dropout and extras of the whole global
    batch from one generator (each rank takes its slice), the model's dropout from the global RNG per global
    micro-batch.
    Returns the step's mean loss and the grad norm (device tensors: no host sync) and the schedules' values."""
    cfg, model, step = run.cfg, run.model, state.step
    run.gen.manual_seed(_seed(cfg.seed, step, 2))  # orders, label dropout and extras of the global batch
    r = permutation_ratio(step, cfg, model.family)
    lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.end_lr, cfg.decay_start)
    for g in run.opt.param_groups:
        g["lr"] = lr
    orders = orders_lib.training_orders(cfg.batch_size, run.base_order, r, generator=run.gen)
    drop = torch.rand(cfg.batch_size, generator=run.gen, device=run.gen.device) < run.class_dropout
    extras = {k: v.to(run.device) for k, v in model.training_extras(cfg.batch_size, run.gen).items()}
    x_all, y_all = batch
    step_loss = torch.zeros((), device=run.device)
    for m in range(cfg.grad_accum):
        # the model's dropout: one stream per global micro-batch, so K processes x A micro-batches draw the
        # same masks as any other split of the global batch into K * A micro-batches
        torch.manual_seed(_seed(cfg.seed, step, run.rank * cfg.grad_accum + m, 1))
        local = slice(m * run.micro, (m + 1) * run.micro)
        first = run.rank * run.per_rank + m * run.micro
        glob = slice(first, first + run.micro)
        x = x_all[local].to(run.device, non_blocking=True)
        y = y_all[local].to(run.device, non_blocking=True)
        y = torch.where(drop[glob].to(run.device), model.null_class, y)  # class-label dropout
        final = m == cfg.grad_accum - 1
        if run.fsdp and final and cfg.grad_accum > 1:
            run.loss_module.set_requires_gradient_sync(True)
        with run.no_sync(final), run.amp:
            loss = run.forward(x, y, orders[glob].to(run.device), **extras)
        (loss / cfg.grad_accum).backward()
        step_loss += loss.detach() / cfg.grad_accum
    grad_norm = torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    skip = skip_update(run, step)  # RandAR's rule, after clipping as the official trainer
    if skip is None:
        run.opt.step()
    else:
        step_unless(run.opt, skip)
    run.opt.zero_grad(set_to_none=True)
    state.step += 1
    state.seen += cfg.batch_size
    stats: dict[str, Any] = {"lr": lr, "r": r}
    if skip is not None:
        stats["skipped"] = skip  # a device bool; the loop counts skipped steps without reading it
    return step_loss, grad_norm, stats


def log_and_check(run: Run, state: TrainState, step_loss: Tensor, loss_sum: Tensor, since: int,
                  grad_norm: Tensor, skipped: Tensor | None = None) -> dict[str, float]:
    """The loop's only host sync: the step's loss, the mean loss since the last log and the grad norm (averaged
    over processes), refused when not finite (the last checkpoint predates it); with ``skipped``
    (the steps skipped since the last log, a device count) also that count."""
    gn = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    parts = [step_loss, loss_sum / since, gn.to(device=run.device, dtype=torch.float32)]
    if skipped is not None:
        parts.append(skipped.to(device=run.device, dtype=torch.float32))
    vals = torch.stack(parts)
    if run.world > 1:
        dist.all_reduce(vals[:2], op=dist.ReduceOp.SUM)
        vals[:2] /= run.world
    host = vals.cpu().tolist()
    loss, loss_avg, gn_val = host[:3]
    if not all(math.isfinite(v) for v in (loss, loss_avg, gn_val)):
        raise FloatingPointError(
            f"non-finite training at step {state.step}: loss {loss}, mean loss since the last log {loss_avg}, "
            f"grad norm {gn_val}; the last checkpoint ({run.ckpt_path}) predates it")
    out = {"loss": loss, "loss_avg": loss_avg, "grad_norm": gn_val}
    if skipped is not None:
        out["skipped_steps"] = int(host[3])  # the same on every rank: the gradients are
    return out


def save(run: Run, state: TrainState) -> None:
    """Write ``last.pt`` atomically (full state dicts: a collective under FSDP; rank 0 writes). The other ranks
    wait for the write at a barrier (under the process group's timeout,
    :func:`~anyorder.training.distributed.collective_timeout`), not inside the next step's gradient reduction."""
    msd, osd = full_state(run.loss_module, run.opt, prefix="model.")
    if run.rank == 0:
        atomic_torch_save(run.ckpt_path, {
            "format": CKPT_FORMAT, "model": msd, "optimizer": osd, "step": state.step, "samples_seen": state.seen,
            "epoch": state.seen / len(run.data), "history": state.history, "world_size": run.world,
            "model_config": run.model.config_dict(), "train_config": config_to_dict(run.cfg),
        })
    if run.world > 1:
        barrier()


# ---- the loop --------------------------------------------------------------------------------------------------
def train(model: AnyOrderModel, codes: Tensor | CodeSource, labels: Tensor | None, cfg: TrainConfig,
          out_dir: str | Path, resume: bool = True, progress: bool = True,
          step_callback: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train ``model`` on ``codes`` (a :class:`~anyorder.data.codes.CodeSource`, or codes ``[N, h, w]`` with
    class ``labels [N]``); checkpoints go to ``out_dir/checkpoints``. ``cfg.batch_size`` is the global batch.

    Returns a summary (steps, final loss, seconds, the logged history). ``step_callback(step, stats)`` is called
    after each optimizer step (``stats`` holds the loss only at logging steps)."""
    if cfg.init_from and not (resume and (Path(out_dir) / "checkpoints" / LAST_CKPT).is_file()):
        load_weights(model, cfg.init_from)  # a fresh run starting from other weights (before any sharding)
    run = setup(model, codes, labels, cfg, out_dir)
    state = resume_from_checkpoint(run) if resume else TrainState()
    loader = ThreadPoolExecutor(max_workers=1)  # reads the next batch while a step runs
    pending: Future = loader.submit(run.fetch, state.seen)
    bar = tqdm(total=cfg.steps, initial=state.step, desc=f"train {model.family}", dynamic_ncols=True,
               disable=not progress or run.rank != 0)
    last = state.history[-1] if state.history else {}
    loss = float(last["loss"]) if last.get("step") == state.step and "loss" in last else float("nan")
    loss_sum, since = torch.zeros((), device=run.device), 0
    skipped: Tensor | None = None  # steps skipped (train.skip_grad_norm) since the last log
    model.train()
    model.validate_inputs = False  # the data were checked once in setup
    t0 = time.perf_counter()
    try:
        while state.step < cfg.steps:
            batch, pending = pending.result(), loader.submit(run.fetch, state.seen + cfg.batch_size)
            step_loss, grad_norm, stats = train_step(run, state, batch)
            loss_sum, since = loss_sum + step_loss, since + 1
            if "skipped" in stats:
                flag = stats.pop("skipped").to(torch.int64)
                skipped = flag if skipped is None else skipped + flag
            log_now = state.step % max(1, cfg.log_every) == 0 or state.step == cfg.steps
            save_now = cfg.ckpt_every > 0 and state.step % cfg.ckpt_every == 0
            if log_now or save_now:
                stats.update(log_and_check(run, state, step_loss, loss_sum, since, grad_norm,
                                           skipped))
                loss, loss_sum, since, skipped = stats["loss"], torch.zeros_like(loss_sum), 0, None
            if log_now:
                epoch = state.seen / len(run.data)
                state.history.append({"step": state.step, "epoch": epoch, **stats})
                bar.set_postfix(loss=f"{loss:.3f}", r=f"{stats['r']:.2f}", epoch=f"{epoch:.2f}")
            bar.update(1)
            if save_now:
                save(run, state)
            if step_callback is not None:
                step_callback(state.step, stats)
        bar.close()
        save(run, state)
    finally:
        model.validate_inputs = True
        loader.shutdown(wait=True, cancel_futures=True)
    summary = {"steps": state.step, "final_loss": loss, "seconds": time.perf_counter() - t0,
               "epochs": state.seen / len(run.data), "history": state.history}
    if run.rank == 0:
        atomic_write_json(Path(out_dir) / "train_log.json", summary)
    return summary
