"""Mass sampling for evaluation: samples written as an ADM reference-format ``.npz``.

The papers' FIDs come from 50,000 samples scored by the ADM evaluator (openai/guided-diffusion),
which reads ``arr_0``: uint8 ``[N, H, W, 3]``. This module

- takes the labels laid out by the caller (:mod:`anyorder.sampling.protocol`: class-balanced and
  interleaved as RAR's, in class order as LPD's, uniformly random as RandAR's), and the protocol that
  says how the images are made (dtype path, uint8 conversion, TF32);
- cuts them into chunks of ``batch_size`` labels; chunk ``i`` is sampled with its own
  ``torch.Generator`` seeded by :func:`chunk_seed` ``(seed, i)``. The stream depends on the global
  chunk index only, so **the file is identical for any number of processes** (same seed, batch
  size, device type and thread count), and no two batches share a stream;
- writes every finished chunk atomically to ``OUT.npz.parts/chunk_00012.npz``; a rerun (after a kill,
  or under another world size) skips the chunks already there;
- holds ``OUT.npz.lock`` (:class:`anyorder.io.lock.OutputLock`, rank 0) from the start to the merge: a second
  run on the same file at the same time is refused with the first one's pid and host, instead of both
  sampling every chunk and the later merge finding the chunks deleted under it;
- under ``torchrun`` gives rank ``r`` the chunks ``i % world == r``; rank 0 merges the chunks into the
  final npz, streaming one chunk at a time (50,000 images at 256x256 are 9.8 GB) and byte-for-byte
  deterministic (fixed zip timestamps), then writes a JSON of every setting beside it.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from anyorder.io import atomic_write_json
from anyorder.io.lock import LockedError, OutputLock
from anyorder.io.npz import IMAGE_KEY, LABEL_KEY, array_header, merge_sample_chunks, read_labels, write_samples
from anyorder.io.seeds import check_seed
from anyorder.models.spec import UINT8_CONVERSIONS, EvalProtocol
from anyorder.sampling.generate import generate
from anyorder.sampling.protocol import balanced_labels, precision

__all__ = ["balanced_labels", "chunk_seed", "chunk_generator", "sample_chunk", "images_to_uint8", "UINT8_MODES",
           "parts_dir", "lock_path", "sample_npz"]

_JOB_FILE = "job.json"
UINT8_MODES = tuple(UINT8_CONVERSIONS)  # decoded [0, 1] -> uint8: see images_to_uint8


def chunk_seed(seed: int, chunk: int) -> int:
    """A 63-bit seed for chunk ``chunk`` of a run seeded with ``seed`` (sha256 of both; no stream is reused)."""
    digest = hashlib.sha256(f"anyorder.sample:{int(seed)}:{int(chunk)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def chunk_generator(seed: int, chunk: int, device: torch.device | str) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(chunk_seed(seed, chunk))


def sample_chunk(model, labels: Tensor, seed: int, chunk: int, sampling: dict[str, Any]) -> Tensor:
    """Codes ``[B, h, w]`` for ``labels`` from chunk ``chunk``'s own random stream (orders and tokens)."""
    kw = {k: v for k, v in sampling.items() if k not in ("seed", "generator")}
    gen = chunk_generator(seed, chunk, model.device)
    return generate(model, labels.to(model.device), generator=gen, **kw)


def images_to_uint8(images: Tensor, mode: str = "round") -> np.ndarray:
    """Decoded images ``[B, C, H, W]`` in ``[0, 1]`` -> uint8 ``[B, H, W, 3]``; grayscale (C = 1) is
    replicated to three channels. ``mode`` (:data:`UINT8_MODES`) is how a value becomes a level:

    * ``"round"``: ``x * 255 + 0.5``, clamped to ``[0, 255]``, truncated (round half up; PIL's PNGs,
      and RandAR's ``decode_codes_to_img``: ``r * 127.5 + 128`` for ``r = 2x - 1``);
    * ``"truncate"``: ``x`` clamped to ``[0, 1]``, ``* 255``, truncated (1d-tokenizer ``demo_util.sample_fn``,
      which RAR's ``sample_imagenet_rar.py`` calls): about half a level darker than ``"round"``;
    * ``"round-half-even"``: ``x * 255`` in float32, clipped to ``[0, 255]``, rounded half to even
      (LPD's ``engine.py evaluate``: ``np.round(np.clip(x * 255, 0, 255))`` on ``x = (r + 1) / 2``
      cast to float32).

    ``images`` may be bfloat16 (decoded under autocast): the values are converted as they are, in float32.
    """
    if mode not in UINT8_MODES:
        raise ValueError(f"unknown uint8 conversion {mode!r}; expected one of {UINT8_MODES}")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected decoded images [B, C, H, W] with C in (1, 3), got shape {tuple(images.shape)}")
    x = images.detach().float()
    if mode == "round":
        x = x.mul(255.0).add_(0.5).clamp_(0.0, 255.0)
    elif mode == "truncate":
        x = x.clamp(0.0, 1.0).mul_(255.0)
    else:
        x = x.mul(255.0).clamp_(0.0, 255.0).round_()  # torch.round: half to even, as numpy's
    x = x.to(torch.uint8)  # truncates: every value is in [0, 255] here
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).cpu().numpy())


def precision_for(protocol: EvalProtocol | None,
                  device: torch.device) -> contextlib.AbstractContextManager:
    """The protocol's compute settings (:func:`~anyorder.sampling.protocol.precision`), if any."""
    return contextlib.nullcontext() if protocol is None else precision(protocol, device)


def parts_dir(out: str | os.PathLike) -> Path:
    """Where the chunks of ``OUT.npz`` are kept until the merge: ``OUT.npz.parts``."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def lock_path(out: str | os.PathLike) -> Path:
    """The lock of a run writing ``OUT.npz`` (:class:`anyorder.io.lock.OutputLock`): ``OUT.npz.lock``."""
    out = Path(out)
    return out.with_name(out.name + ".lock")


def _chunk_path(parts: Path, i: int) -> Path:
    return parts / f"chunk_{i:05d}.npz"


# ranks wait at the barriers for the slowest one, and rank 0 merges 9.8 GB (50,000 images at 256x256)
_COLLECTIVE_TIMEOUT = datetime.timedelta(hours=6)


def _distributed() -> tuple[int, int, bool, Any]:
    """``(rank, world, created, group)`` under ``torchrun``: joins or creates the process group, and returns a
    gloo group of every rank with a long timeout for this module's barriers (``None`` in one process).

    A group that exists already (NCCL, e.g. a training run's) cannot carry the CPU tensors these barriers
    use, and its default timeout (10 minutes for NCCL) is shorter than rank 0's merge: so the barriers run
    on a gloo group of their own."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    created = False
    if not (dist.is_available() and dist.is_initialized()):
        if world <= 1:
            return 0, 1, False, None
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch has no torch.distributed")
        dist.init_process_group("gloo", timeout=_COLLECTIVE_TIMEOUT)
        created = True
    rank, world = dist.get_rank(), dist.get_world_size()
    if world == 1:
        return rank, world, created, None
    if created:
        return rank, world, created, dist.group.WORLD
    return rank, world, created, dist.new_group(backend="gloo", timeout=_COLLECTIVE_TIMEOUT)


def _take(lock: OutputLock) -> str | None:
    """Take the output's lock: ``None``, or why not (another live run holds it)."""
    try:
        lock.acquire()
    except LockedError as e:
        return str(e)
    if lock.previous:
        print(f"note: {lock.path} was left by a run that ended without finishing (pid {lock.previous.get('pid')} "
              f"on {lock.previous.get('host')}); this run takes over", file=sys.stderr)
    return None


def _check_job(parts: Path, job: dict[str, Any], rank: int, world: int, lock: OutputLock | None,
               group: Any = None) -> None:
    """Rank 0 takes the output's lock (one run at a time writes a file); the chunks in ``parts`` must come from
    the same job: same model, settings, seed, layout."""
    f = parts / _JOB_FILE
    verdict: list[str | None] = [None]
    if rank == 0:
        assert lock is not None
        verdict = [_take(lock)]
        if verdict[0] is None and f.is_file():
            old = json.loads(f.read_text())
            if old != job:
                diff = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k))
                verdict = [f"{parts} holds chunks of another sampling job (differs in {', '.join(diff)}): "
                           f"delete {parts} or rerun with the settings in {f}"]
        elif verdict[0] is None:
            parts.mkdir(parents=True, exist_ok=True)
            atomic_write_json(f, job)
    if world > 1:  # every rank learns rank 0's verdict (and waits for the parts directory)
        dist.broadcast_object_list(verdict, src=0, group=group)
    if verdict[0] is not None:
        raise ValueError(verdict[0])


def sample_npz(model, tokenizer, out: str | os.PathLike, labels: Tensor, *, batch_size: int, seed: int,
               sampling: dict[str, Any], settings: dict[str, Any] | None = None, progress: bool = True,
               keep_parts: bool = False, uint8: str = "round",
               protocol: EvalProtocol | None = None) -> dict[str, Any] | None:
    """Sample codes for ``labels`` chunk by chunk, decode them with ``tokenizer``, write ``out`` (ADM npz).

    ``sampling`` are :func:`~anyorder.sampling.generate` keywords (a ``seed`` in it is ignored: each
    chunk has its own stream from ``seed``). ``settings`` (model, tokenizer, ...) are recorded in the
    JSON beside ``out`` and, with everything that determines the samples, in the parts directory: a
    rerun with other settings refuses to mix its chunks with the old ones. Under ``torchrun`` every rank
    calls this; rank 0 merges and returns the record (other ranks return ``None``). ``uint8`` is the
    conversion of the decoded images (:func:`images_to_uint8`), recorded with the settings.
    ``protocol`` (:class:`~anyorder.models.spec.EvalProtocol`) replaces ``uint8`` by its own, samples
    and decodes under its dtype path and TF32 setting (the model already in its weights dtype:
    :func:`~anyorder.sampling.protocol.prepare_model`) and is recorded; the labels are the caller's.
    """
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if protocol is not None:
        uint8 = protocol.uint8
        weights = next(model.parameters()).dtype
        if (weights == torch.bfloat16) != (protocol.dtype == "bf16-weights"):
            raise ValueError(f"protocol {protocol.name!r} ({protocol.dtype}) but the model's weights "
                             f"are {weights}: prepare it with anyorder.sampling.protocol.prepare_model")
    if uint8 not in UINT8_MODES:
        raise ValueError(f"unknown uint8 conversion {uint8!r}; expected one of {UINT8_MODES}")
    seed = check_seed(seed, "--seed")
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"--npz {out}: the file name must end in .npz")
    labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
    sampling = {k: v for k, v in sampling.items() if k not in ("seed", "generator")}
    rank, world, created, group = _distributed()
    lock = OutputLock(lock_path(out), f"--npz {out}") if rank == 0 else None  # held until the merge is done
    try:
        parts = parts_dir(out)
        n_chunks = -(-len(labels) // batch_size)
        job = {"num_samples": len(labels), "batch_size": batch_size, "seed": seed, "sampling": sampling,
               "labels_sha256": hashlib.sha256(labels.numpy().tobytes()).hexdigest(),
               "device_type": model.device.type, "uint8": uint8, **(settings or {})}
        if protocol is not None:
            job["protocol"] = protocol.to_dict()
        job = json.loads(json.dumps(job, default=str))
        _check_job(parts, job, rank, world, lock, group)
        mine = [i for i in range(rank, n_chunks, world) if not _chunk_path(parts, i).is_file()]
        todo = sum(min(batch_size, len(labels) - i * batch_size) for i in mine)
        tok_dev = next(tokenizer.parameters()).device
        t0 = time.perf_counter()
        with tqdm(total=todo, unit="img", desc=f"sampling {out.name}", disable=not progress or rank != 0,
                  dynamic_ncols=True) as bar:
            for i in mine:
                y = labels[i * batch_size : (i + 1) * batch_size]
                with precision_for(protocol, model.device), torch.no_grad():
                    codes = sample_chunk(model, y, seed, i, sampling)
                    images = images_to_uint8(tokenizer.decode(codes.to(tok_dev)), uint8)
                write_samples(_chunk_path(parts, i), images, y.numpy())
                bar.update(len(y))
        seconds = time.perf_counter() - t0
        sampled = todo
        if world > 1:
            count = torch.tensor([todo], dtype=torch.int64)
            dist.all_reduce(count, group=group)  # also the barrier: every rank has written its chunks
            sampled = int(count.item())
        record = None
        error = [None]
        if rank == 0:
            try:
                record = _merge(out, parts, labels, n_chunks, job, sampled, seconds, world, keep_parts)
            except Exception as e:  # every rank learns of it, none hangs at the barrier
                error = [f"{type(e).__name__}: {e}"]
                if world == 1:
                    raise
        if world > 1:
            dist.broadcast_object_list(error, src=0, group=group)
            if error[0] is not None:
                raise RuntimeError(f"merging {out} failed: {error[0]}")
        return record
    finally:
        if lock is not None:
            lock.release()
        if created:
            dist.destroy_process_group()
        elif group is not None:
            dist.destroy_process_group(group)


def _merge(out: Path, parts: Path, labels: Tensor, n_chunks: int, job: dict[str, Any], sampled: int,
           seconds: float, world: int, keep_parts: bool) -> dict[str, Any]:
    chunks = [_chunk_path(parts, i) for i in range(n_chunks)]
    missing = [c.name for c in chunks if not c.is_file()]
    if missing:
        raise RuntimeError(f"{len(missing)} chunks missing in {parts} ({', '.join(missing[:3])} ...): under "
                           "torchrun on several nodes, --npz must be on a file system that every rank shares")
    bs = job["batch_size"]
    for i, c in enumerate(chunks):  # the labels only: cheap
        try:
            chunk_labels = read_labels(c)
        except ValueError as e:
            raise RuntimeError(f"{c}: unreadable sample chunk ({e}); delete it and rerun to sample it again") from e
        if chunk_labels is None or not np.array_equal(chunk_labels, labels[i * bs : (i + 1) * bs].numpy()):
            raise RuntimeError(f"{c}: its labels are not this job's; delete it and rerun to sample it again")
    merge_sample_chunks(out, chunks)
    shape, _, _ = array_header(out, IMAGE_KEY)
    counts = torch.bincount(labels)
    record = {**job, "format": f"ADM sample batch: {IMAGE_KEY} uint8 [N, H, W, 3], {LABEL_KEY} int64 labels",
              "file": str(out.resolve()), "image_shape": list(shape[1:]),
              "class_counts": {str(c): int(counts[c]) for c in torch.nonzero(counts).flatten().tolist()},
              "seed_stream": "chunk i (labels[i*batch_size:(i+1)*batch_size]) samples from "
                             "torch.Generator(device_type).manual_seed(anyorder.sampling.batch.chunk_seed(seed, i)); "
                             "the file does not depend on the number of processes",
              "world_size": world, "torch": torch.__version__,
              "this_run": {"images_sampled": sampled, "seconds": round(seconds, 3),
                           "images_per_s": round(sampled / seconds, 3) if seconds > 0 else None}}
    atomic_write_json(out.with_suffix(".json"), record)
    if not keep_parts:
        for c in chunks:
            c.unlink()
        (parts / _JOB_FILE).unlink(missing_ok=True)
        for leftover in parts.glob(".*.tmp"):
            leftover.unlink()
        try:
            parts.rmdir()
        except OSError:
            pass
    return record
