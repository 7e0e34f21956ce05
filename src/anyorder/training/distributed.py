"""Data-parallel training on PyTorch's own engines: DDP, or FSDP2 (``fully_shard``) with ``train.fsdp=true``.

Launch with ``torchrun`` (it sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``); NCCL on CUDA, gloo on CPU.
FSDP shards each transformer block and then the rest (the root), so a block's parameters are gathered only while
it runs. Checkpoints hold *full* (unsharded) state dicts in the plain model's names, written by rank 0 — an FSDP
checkpoint loads in a single process, and a run can resume on another number of ranks or engine.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from anyorder.nn.device import resolve_device

__all__ = ["init_distributed", "dist_info", "wrap", "full_state", "load_full_state", "barrier", "shutdown",
           "collective_timeout"]


def collective_timeout() -> datetime.timedelta:
    """How long a rank waits in a collective before the run is aborted: 60 minutes (``$ANYORDER_DIST_TIMEOUT_MIN``
    changes it). NCCL's default of 10 minutes is shorter than rank 0 writing a large checkpoint while the others
    wait (RAR-XXL's weights and AdamW moments are ~17 GiB; see docs/GPU.md)."""
    minutes = float(os.environ.get("ANYORDER_DIST_TIMEOUT_MIN", "60"))
    if not minutes > 0:
        raise ValueError(f"ANYORDER_DIST_TIMEOUT_MIN must be a positive number of minutes, got {minutes}")
    return datetime.timedelta(minutes=minutes)


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str | torch.device = "auto") -> tuple[int, int]:
    """Initialise the process group under ``torchrun``: NCCL when the run's ``device`` (resolved as
    :func:`~anyorder.nn.device.resolve_device` does) is CUDA, gloo otherwise (a CPU run on a GPU host included).
    A no-op in one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dev = resolve_device(device, "train.device")
        if dev.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", 0)) % max(1, torch.cuda.device_count())
            torch.cuda.set_device(dev.index if dev.index is not None else local)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=collective_timeout())
    return dist_info()


def barrier() -> None:
    if dist_info()[1] > 1:
        dist.barrier()


def shutdown() -> None:
    """Meet at a barrier, then tear the process group down (gloo can abort a rank that exits while its peer
    is still writing)."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def wrap(module: nn.Module, blocks: list[nn.Module], fsdp: bool, compute_dtype: torch.dtype | None = None
         ) -> nn.Module:
    """The module a training step calls: ``module`` itself (one process), DDP around it, or ``module`` sharded
    in place with FSDP2 (each of ``blocks``, then the root). Returns what to call.

    ``compute_dtype`` (bf16 autocast) on an accelerator: FSDP gathers the blocks' parameters in it and reduces
    their gradients in fp32 — half the all-gather traffic, the same gradients; the blocks take the fp32
    residual stream as it comes (no input cast), so the math is autocast's as under DDP, with norm weights
    rounded to bf16 (CUDA autocast runs LayerNorm in fp32; CPU autocast cannot take bf16 weights with an fp32
    input, so CPU runs gather fp32). The root (embeddings, position tables, head: a few percent of the
    parameters) stays fp32. DDP does not broadcast buffers: every family's buffers (RandAR's RoPE table) are
    computed from the config, the same on every rank."""
    rank, world = dist_info()
    if fsdp:
        device = next(module.parameters()).device
        mesh = init_device_mesh(device.type, (world,))
        mixed = compute_dtype not in (None, torch.float32) and device.type != "cpu"
        mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32,
                                  cast_forward_inputs=False) if mixed else MixedPrecisionPolicy()
        for blk in blocks:
            fully_shard(blk, mesh=mesh, mp_policy=mp)
        fully_shard(module, mesh=mesh)
        return module
    if world > 1:
        device = next(module.parameters()).device
        return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                                   gradient_as_bucket_view=True, broadcast_buffers=False)
    return module


_OPTIONS = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state(module: nn.Module, optimizer: torch.optim.Optimizer, prefix: str = "") -> tuple[dict, dict]:
    """Full model and optimizer state dicts on the CPU (collective under FSDP; complete on rank 0), keyed by
    parameter names with ``prefix`` removed (the optimizer's ``state`` and ``param_groups`` by name too)."""
    msd, osd = get_state_dict(module, optimizer, options=_OPTIONS)
    return _strip(msd, prefix), _rename_optim(osd, lambda k: k[len(prefix):] if k.startswith(prefix) else k)


def load_full_state(module: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict[str, Any],
                    optim_sd: dict[str, Any], prefix: str = "") -> None:
    """Inverse of :func:`full_state`: every rank passes the full state dicts (loaded on the CPU)."""
    msd = {prefix + k: v for k, v in model_sd.items()}
    osd = _rename_optim(optim_sd, lambda k: prefix + k)
    set_state_dict(module, optimizer, model_state_dict=msd, optim_state_dict=osd,
                   options=StateDictOptions(full_state_dict=True))
    # how the update runs (fused / foreach) is this run's choice, not the checkpoint's: loading copies the
    # saved groups' flags over the new ones (a checkpoint of the per-tensor loop would turn fusing off)
    for group in optimizer.param_groups:
        for key in ("fused", "foreach"):
            if key in optimizer.defaults:
                group[key] = optimizer.defaults[key]
        if group.get("fused"):  # the fused kernel reads `step` on the parameter's device
            for p in group["params"]:
                st = optimizer.state.get(p, {})
                if torch.is_tensor(st.get("step")) and st["step"].device != p.device:
                    st["step"] = st["step"].to(p.device)


def _strip(sd: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}


def _rename_optim(osd: dict[str, Any], rename) -> dict[str, Any]:
    groups = []
    for g in osd.get("param_groups", []):
        g = dict(g)
        g["params"] = [rename(k) if isinstance(k, str) else k for k in g["params"]]
        groups.append(g)
    state = {(rename(k) if isinstance(k, str) else k): v for k, v in osd.get("state", {}).items()}
    return {"state": state, "param_groups": groups}
