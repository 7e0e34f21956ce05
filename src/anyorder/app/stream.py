"""Decode jobs that report every step, for the web app to draw while it samples.

The library prepares the job (:func:`anyorder.sampling.generation_job`, :func:`anyorder.sampling.edit_job`:
policy, checks, orders, plan) and this module runs it on the shared decode loop with a ``step_callback``, so a
streamed result equals the library's for the same seed — tests check that id for id. The loop runs in a
worker thread and its steps come back as :class:`Frame` objects through an iterator, which a Gradio generator
can consume.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from anyorder.sampling import DecodeJob, decode

__all__ = ["Frame", "stream"]


@dataclass
class Frame:
    """One decoding step, in raster layout.

    ``codes [B, H, W]``: token ids where ``placed`` (elsewhere 0, a filler); ``placed [B, H, W]``: final
    tokens (given or generated so far); ``step [B, H, W]``: the step that placed each token (0 = given,
    teacher-forced; ``1..steps`` = generated; -1 = not yet); ``done``/``total``: tokens final / all tokens.
    ``final`` marks the last frame (the finished result).
    """

    codes: Tensor
    placed: Tensor
    step: Tensor
    done: int
    total: int
    steps: int
    final: bool = False


class _Cancelled(Exception):
    pass


def _step_index(job: DecodeJob) -> Tensor:
    """The step that places each generation-order slot: 0 for the prefix, then 1, 1, 2, ... from the plan."""
    steps = [torch.zeros(job.known, dtype=torch.long)]
    steps += [torch.full((n,), i + 1, dtype=torch.long) for i, n in enumerate(job.plan)]
    return torch.cat(steps).to(job.orders.device)


def _frame(job: DecodeJob, gen: Tensor, done: int, step_idx: Tensor, final: bool = False) -> Frame:
    B, T = job.orders.shape
    H, W = job.canvas
    pos = job.orders[:, :done]
    codes = torch.zeros(B, T, dtype=torch.long, device=gen.device).scatter_(1, pos, gen[:, :done])
    placed = torch.zeros(B, T, dtype=torch.bool, device=gen.device).scatter_(1, pos, True)
    step = torch.full((B, T), -1, dtype=torch.long, device=gen.device)
    step.scatter_(1, pos, step_idx[:done].expand(B, -1))
    shape = (B, H, W)
    return Frame(codes.view(shape).cpu(), placed.view(shape).cpu(), step.view(shape).cpu(), done, T,
                 len(job.plan), final)


def stream(job: DecodeJob, lock: threading.Lock | None = None, coalesce: bool = False) -> Iterator[Frame]:
    """Run ``job`` on the shared decode loop in a worker thread; yield a :class:`Frame` before the first
    step (the known tokens only), after every step, and a last one with ``final=True``.

    ``coalesce``: when several steps are waiting (the consumer is slower than the decode), yield only the
    newest of them (the final frame is always yielded).

    ``lock`` (held for the whole decode) serialises models that share a KV cache. Closing the iterator
    early (a user left) stops the decode at its next step. Errors in the worker are raised here.
    """
    out: queue.SimpleQueue = queue.SimpleQueue()
    cancel = threading.Event()
    step_idx = _step_index(job)
    P = job.known

    def callback(done: int, tokens: Tensor) -> None:
        if cancel.is_set():
            raise _Cancelled
        out.put(("step", done, tokens[:, :done].clone()))

    def work() -> None:
        try:
            with lock or contextlib.nullcontext(), torch.no_grad():  # grad mode is per thread
                gen = decode(job, callback)
            out.put(("end", gen))
        except _Cancelled:
            out.put(("cancelled",))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            out.put(("error", e))

    worker = threading.Thread(target=work, name="anyorder-decode", daemon=True)
    if P:
        yield _frame(job, job.prefix, P, step_idx)
    else:
        yield _frame(job, job.orders[:, :0], 0, step_idx)
    worker.start()
    try:
        while True:
            msg = out.get()
            while coalesce and msg[0] == "step":
                try:
                    msg = out.get_nowait()
                except queue.Empty:
                    break
            if msg[0] == "step":
                _, done, gen = msg
                yield _frame(job, gen, done, step_idx)
            elif msg[0] == "end":
                yield _frame(job, msg[1], msg[1].shape[1], step_idx, final=True)
                return
            elif msg[0] == "error":
                raise msg[1]
            else:
                return
    finally:
        cancel.set()

