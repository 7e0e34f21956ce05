"""Generation and editing that report every decoding step, for the web app to draw while it samples.

The work is the shared decode loop (:func:`anyorder.sampling.decode`) with its ``step_callback``; this module
only sets it up exactly as :func:`anyorder.sampling.generate` and :func:`anyorder.editing.inpaint` /
:func:`anyorder.editing.outpaint` do (same policy, same orders from the same generator), so a streamed result
equals the library's for the same seed — tests check that id for id. The loop runs in a worker thread and
its steps come back as :class:`Frame` objects through an iterator, which a Gradio generator can consume.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from anyorder.editing import known_first_orders, outpaint_table, require_randar
from anyorder.nn import orders as orders_lib
from anyorder.sampling import decode, sampling_config

__all__ = ["Frame", "DecodeJob", "generation_job", "edit_job", "stream"]


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


@dataclass
class DecodeJob:
    """Everything one decode needs: the loop's arguments, plus the canvas geometry for drawing.

    ``orders [B, T]`` (generation order -> raster position), ``plan`` (tokens per step, over the ``T - P``
    unknown ones), ``prefix [B, P]`` (known tokens in generation order), ``table`` (RoPE for a canvas larger
    than the trained grid). ``canvas``: the raster ``(H, W)``; ``base [B, H, W]``: the known codes.
    """

    model: Any
    classes: Tensor
    orders: Tensor
    plan: list[int]
    policy: Any
    generator: torch.Generator | None
    canvas: tuple[int, int]
    prefix: Tensor | None = None
    table: Tensor | None = None
    base: Tensor | None = None

    @property
    def known(self) -> int:
        return 0 if self.prefix is None else int(self.prefix.shape[1])


def _seeded(model: Any, seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator(device=model.device).manual_seed(int(seed))


def generation_job(model: Any, classes: Any, seed: int | None = None, **settings: Any) -> DecodeJob:
    """Class-conditional sampling set up as :func:`anyorder.sampling.generate` does: the family's policy
    (``settings`` are its fields: RAR guidance_scale/guidance_power/..., RandAR .../steps), the model's
    sampling orders drawn from the seeded generator."""
    policy = sampling_config(model.family, {k: v for k, v in settings.items() if v is not None})
    classes = model.check_classes(torch.as_tensor(classes, device=model.device), allow_null=True)
    B, T = classes.shape[0], model.seq_len
    generator = _seeded(model, seed)
    orders = torch.as_tensor(model.sampling_orders(B, generator), device=model.device).long()
    if orders.dim() == 1:
        orders = orders.expand(B, -1)
    return DecodeJob(model, classes, orders, policy.plan(T), policy, generator, tuple(model.grid))


def edit_job(model: Any, codes: Tensor, unknown: Tensor, classes: Any, seed: int | None = None,
             **settings: Any) -> DecodeJob:
    """Known-first decoding of a code canvas, set up as :func:`anyorder.editing.inpaint` (canvas = the
    trained grid) and :func:`anyorder.editing.outpaint` (``rope="extrapolate"``, a larger canvas) do.

    ``codes [B, H, W]``: the canvas (values under ``unknown`` are ignored); ``unknown [H, W]`` bool (True =
    generate), shared by the batch. ``settings``: RandAR sampling fields (``steps`` is clamped to the number
    of unknown tokens). RandAR only (RAR's fixed scan order cannot condition on arbitrary known tokens).
    """
    require_randar(model, "editing", random_orders=False)
    codes = torch.as_tensor(codes, device=model.device).long()
    if codes.dim() == 2:
        codes = codes[None]
    B, H, W = codes.shape
    unknown = torch.as_tensor(unknown, device=model.device).bool()
    if tuple(unknown.shape) != (H, W):
        raise ValueError(f"mask has shape {tuple(unknown.shape)}, the canvas is {H}x{W} tokens")
    m = int(unknown.sum())
    if m == 0:
        raise ValueError("the mask is empty: nothing to generate")
    V = model.codebook_size
    if int(codes.min()) < 0 or int(codes.max()) >= V:
        raise ValueError(f"token ids must be in [0, {V}), got [{int(codes.min())}, {int(codes.max())}]")
    settings = {k: v for k, v in settings.items() if v is not None}
    policy = sampling_config("randar", {**settings, "steps": int(settings.get("steps") or 0)}, source="editing")
    cls = model.check_classes(torch.as_tensor(classes, device=model.device), allow_null=True)
    if cls.numel() == 1 and B > 1:
        cls = cls.expand(B).clone()
    if cls.numel() != B:
        raise ValueError(f"got {cls.numel()} classes for {B} images (pass one class, or one per image)")
    generator = _seeded(model, seed)
    T = H * W
    flat = codes.reshape(B, T)
    unk = unknown.reshape(1, T).expand(B, -1)
    orders = known_first_orders(orders_lib.random_orders(B, T, generator=generator, device=model.device), unk)
    P = T - m
    prefix = orders_lib.permute(flat, orders)[:, :P] if P else None
    table = None if (H, W) == tuple(model.grid) else outpaint_table(model, (H, W), "extrapolate")
    return DecodeJob(model, cls, orders, policy.plan_clamped(m), policy, generator, (H, W), prefix, table,
                     base=codes.masked_fill(unknown, 0))


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
                gen = decode(job.model, job.classes, job.orders, job.plan, job.policy.guidance(),
                             job.policy.temperature, job.policy.top_k, job.policy.top_p, job.generator,
                             prefix=job.prefix, step_callback=callback, table=job.table)
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

