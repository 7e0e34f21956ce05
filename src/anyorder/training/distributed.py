"""Data-parallel training on PyTorch's own engines: DDP, or FSDP2 (``fully_shard``) with ``train.fsdp=true``.

Launch with ``torchrun`` (it sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``); NCCL on CUDA, gloo on CPU.
FSDP shards each transformer block and then the rest (the root), so a block's parameters are gathered only while
it runs. Checkpoints hold *full* (unsharded) state dicts in the plain model's names, written by rank 0 — an FSDP
checkpoint loads in a single process, and a run can resume on another number of ranks or engine.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from anyorder.nn.device import resolve_device

__all__ = ["init_distributed", "dist_info", "wrap", "full_state", "load_full_state", "barrier", "shutdown"]


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
        dev = resolve_device(device)
        if dev.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", 0)) % max(1, torch.cuda.device_count())
            torch.cuda.set_device(dev.index if dev.index is not None else local)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
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


def wrap(module: nn.Module, blocks: list[nn.Module], fsdp: bool) -> nn.Module:
    """The module a training step calls: ``module`` itself (one process), DDP around it, or ``module`` sharded
    in place with FSDP2 (each of ``blocks``, then the root). Returns what to call."""
    rank, world = dist_info()
    if fsdp:
        device = next(module.parameters()).device
        mesh = init_device_mesh(device.type, (world,))
        for blk in blocks:
            fully_shard(blk, mesh=mesh)
        fully_shard(module, mesh=mesh)
        return module
    if world > 1:
        device = next(module.parameters()).device
        return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                                   gradient_as_bucket_view=True)
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
