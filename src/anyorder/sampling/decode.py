"""The one decode loop every family shares: KV-cached, batched, with classifier-free guidance.

:func:`decode` runs a :class:`~anyorder.sampling.job.DecodeJob` — the model, the classes, the generation
orders, the step plan (how many tokens each step decodes), the sampling policy, known tokens to teacher-force
first — as a small loop around one step (gpt-fast): feed what was sampled last, read the logits of the next
``plan[i]`` positions from the model's :meth:`~anyorder.models.base.AnyOrderModel.decode_one_step`, mix the
guidance rows (:class:`GuidanceRows`), sample. ``generate``, the editing tasks and the web app's streamed runs
all build a job and call this.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from anyorder.models.base import StepInputs, bucket
from anyorder.models.registry import family_of
from anyorder.nn.schedules import GuidanceSchedule

__all__ = ["sample_logits", "sample_static", "race_noise", "filter_logits", "decode", "GuidanceRows"]

def filter_logits(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """fp32 ``logits [N, V]`` divided by ``max(temperature, 1e-5)``, with every id outside the ``top_k``
    largest and outside the smallest set of cumulative probability ``>= top_p`` set to ``-inf``. On device,
    no host sync (``torch.compile``-able)."""
    if temperature != 1.0:  # (dividing by 1 is exact: skip the pass over [N, V])
        logits = logits / max(temperature, 1e-5)
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum > top_p
        drop[:, 1:] = drop[:, :-1].clone()  # keep the first token that crosses top_p
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(1, sorted_idx, drop), float("-inf"))
    return logits


def is_greedy(temperature: float, top_k: int) -> bool:
    """``top_k == 1`` or ``temperature <= 1e-5`` samples the argmax."""
    return top_k == 1 or temperature <= 1e-5


def sample_logits(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  generator: torch.Generator | None = None) -> Tensor:
    """Sample ids from ``logits [..., V]`` (in fp32): divide by ``max(temperature, 1e-5)``, keep the ``top_k``
    largest and the smallest set with cumulative probability ``>= top_p``, then draw by the exponential race
    (:func:`sample_static` with Exp(1) noise of ``logits``' shape from :func:`race_noise`). ``top_k == 1`` or
    ``temperature <= 1e-5`` is greedy (argmax). The same draw as ``torch.multinomial(p, 1, generator=g)``
    (whose one-sample path is this race on ``empty_like(p).exponential_(generator=g)``) without its input
    checks, which read the device from the host (two syncs a call on CUDA). The noise is drawn on the
    generator's device, so a seed gives the same ids wherever the logits are."""
    if is_greedy(temperature, top_k):
        return logits.float().argmax(-1)
    noise = race_noise(tuple(logits.shape), generator, logits.device)
    return sample_static(logits, temperature, top_k, top_p, noise)


def sample_static(logits: Tensor, temperature: float, top_k: int, top_p: float, noise: Tensor | None) -> Tensor:
    """:func:`sample_logits` without a host sync or a generator inside: ``logits [..., V]``, ``noise`` the
    same shape of Exp(1) draws (``None`` when greedy); ``argmax(p / noise)`` draws from ``p`` (the
    exponential race, as gpt-fast)."""
    shape = logits.shape[:-1]
    logits = logits.reshape(-1, logits.shape[-1]).float()
    if is_greedy(temperature, top_k):
        return logits.argmax(-1).view(shape)
    probs = F.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
    return probs.div_(noise.reshape(probs.shape).clamp_min(1e-30)).argmax(-1).view(shape)  # probs is ours


def race_noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    """Exp(1) noise of ``shape`` for the exponential race, on ``device``, without a host sync.

    Drawn on the generator's device (a seed gives the same noise wherever the model runs; without a generator
    on ``device``). A CPU generator feeding a CUDA model draws into pinned memory and copies it asynchronously:
    a plain host-to-device copy would wait for the GPU to finish its queue, every step."""
    device = torch.device(device)
    where = generator.device if generator is not None else device
    if where.type == device.type and (where.index == device.index or device.index is None):
        return torch.empty(shape, device=where).exponential_(generator=generator)
    pinned = where.type == "cpu" and device.type == "cuda"
    noise = torch.empty(shape, device=where, pin_memory=pinned).exponential_(generator=generator)
    return noise.to(device, non_blocking=pinned or where.type == device.type)


class GuidanceRows:
    """Which conditions the batch is repeated under, and how their logits are mixed.

    Class guidance repeats the batch under the null class; spatial guidance (RandAR's resolution
    extrapolation) repeats it with part of the teacher-forced context's token embeddings zeroed
    (``drop [B, P]``, 1 = zeroed). With ``c`` = (class, full context), ``u_s`` = (null class, full
    context), ``u`` = (null class, dropped context), ``c_d`` = (class, dropped context):

    ============================  ==========================  ===========================================
    on                            rows                        logits
    ============================  ==========================  ===========================================
    neither                       ``c``                       ``c``
    class guidance                ``c, u_s``                  ``u_s + s_c (c - u_s)``
    spatial guidance              ``c, c_d``                  ``c_d + s_s (c - c_d)``
    both                          ``c, u_s, u``               ``u + s_c (c - u_s) + s_s (u_s - u)``
    ============================  ==========================  ===========================================

    (the last is the official combination). Each scale follows its own schedule over the fraction of
    all ``T`` tokens decoded so far — per step, or per token inside a step (LPD).
    """

    def __init__(self, guidance: GuidanceSchedule, spatial: GuidanceSchedule | None = None,
                 drop: Tensor | None = None) -> None:
        self.guidance, self.spatial, self.drop = guidance, spatial, drop
        self.use_c = guidance.enabled
        self.use_s = spatial is not None and spatial.enabled and drop is not None
        # (null class?, context dropped?) per row
        self.rows = [(False, False)] + ([(True, False)] if self.use_c else []) + (
            [(self.use_c, True)] if self.use_s else [])

    def __len__(self) -> int:
        return len(self.rows)

    def classes(self, classes: Tensor, null_class: int) -> Tensor:
        null = torch.full_like(classes, null_class)
        return torch.cat([null if is_null else classes for is_null, _ in self.rows])

    def context(self, model: Any, prefix: Tensor) -> Tensor:
        """What to feed for the teacher-forced ``prefix [B, P]``: its ids repeated per row, or — when a
        row drops context — the token embeddings ``[R*B, P, D]`` with the dropped ones zeroed."""
        if not self.use_s:
            return prefix.repeat(len(self), 1)
        emb = model.token_embeddings(prefix)
        keep = (1.0 - self.drop.to(emb.dtype))[..., None]
        return torch.cat([emb * keep if dropped else emb for _, dropped in self.rows])

    def scales(self, done: int, count: int, total: int) -> tuple[list[float], list[float]]:
        """The class and spatial guidance scales of the ``count`` tokens a step decodes after ``done`` of
        ``total`` (1.0 where off)."""
        return (self.guidance.scales(done, count, total) if self.use_c else [1.0] * count,
                self.spatial.scales(done, count, total) if self.use_s else [1.0] * count)

    def combine(self, logits: Tensor, done: int, total: int) -> Tensor:
        """Mix the rows of a step's logits ``[R*B, n, V]`` decoded after ``done`` of ``total`` tokens."""
        s_c, s_s = self.scales(done, logits.shape[1], total)
        return self.mix(logits, _per_row(s_c, logits.device), _per_row(s_s, logits.device))

    def mix(self, logits: Tensor, s_c: float | Tensor, s_s: float | Tensor) -> Tensor:
        """Mix the rows' logits (in fp32) with the class scale ``s_c`` and spatial scale ``s_s`` — floats, 0-d
        tensors (the compiled step: a new scale is new data, not a recompile) or ``[n, 1]`` per token."""
        logits = logits.float()
        if len(self) == 1:
            return logits
        parts = logits.chunk(len(self))
        if self.use_c and self.use_s:
            c, us, u = parts
            return u + s_c * (c - us) + s_s * (us - u)
        # in place on the one new tensor: the same rounding as ``u + (c - u) * s``, two fewer [B, n, V] buffers
        if self.use_c:
            c, u = parts
            return (c - u).mul_(s_c).add_(u)
        c, cd = parts
        return (c - cd).mul_(s_s).add_(cd)


def _per_row(scales: list[float], device: torch.device) -> float | Tensor:
    """One float when a step's tokens share the scale, else ``[n, 1]`` (one per token)."""
    if all(s == scales[0] for s in scales):
        return scales[0]
    return torch.tensor(scales, dtype=torch.float32, device=device)[:, None]


def _eager_scales(rows: GuidanceRows, plan: list[int], done: int, total: int,
                  device: torch.device) -> list[tuple[float | Tensor, float | Tensor]]:
    """Every eager step's guidance scales, computed on the host before the loop: floats where a step's tokens
    share them, else ``[n, 1]`` tensors (per token, LPD) — all of those in one transfer, since a
    ``torch.tensor(..., device="cuda")`` per step is a blocking copy that waits for the GPU's queue."""
    host: list[tuple[list[float], list[float]]] = []
    for n in plan:
        host.append(rows.scales(done, n, total))
        done += n
    uniform = [[s[0] if all(v == s[0] for v in s) else None for s in pair] for pair in host]
    flat = [v for pair, u in zip(host, uniform) for s, one in zip(pair, u) if one is None for v in s]
    moved = torch.tensor(flat, dtype=torch.float32).to(device) if flat else None
    out, i = [], 0
    for pair, u in zip(host, uniform):
        step = []
        for s, one in zip(pair, u):
            if one is None:
                step.append(moved[i : i + len(s), None])
                i += len(s)
            else:
                step.append(one)
        out.append((step[0], step[1]))
    return out


def _step(model: Any, inputs: StepInputs, rows: GuidanceRows, s_c: Tensor, s_s: Tensor, temperature: float,
          top_k: int, top_p: float, noise: Tensor | None) -> Tensor:
    """One static decode step on device: transformer over a cache window, guidance mixing and sampling in
    fp32 — no host sync, every shape from the step's buckets. Returns ids ``[B, inputs.last]``."""
    logits = rows.mix(model.static_step(inputs), s_c, s_s)
    return sample_static(logits, temperature, top_k, top_p, noise)


_COMPILED: dict[tuple, Callable] = {}


# dynamo's limits on graphs per function, by name: torch >= 2.7's, then torch 2.6's (pyproject allows 2.6)
_RECOMPILE_LIMITS = ((("recompile_limit", "cache_size_limit"), 64),
                     (("accumulated_recompile_limit", "accumulated_cache_size_limit"), 1024))


def _raise_recompile_limits() -> None:
    """Each model shape / batch / bucket is one graph of the same step function: allow more than dynamo's
    default 8 graphs (never lowering a limit the user raised)."""
    cfg = torch._dynamo.config
    for names, floor in _RECOMPILE_LIMITS:
        name = next((n for n in names if hasattr(cfg, n)), None)
        if name is not None:
            setattr(cfg, name, max(getattr(cfg, name), floor))


def compiled_step(backend: str | Callable = "inductor", mode: str | None = None) -> Callable:
    """:func:`_step` under ``torch.compile`` (cached per backend and mode; shapes specialised, never dynamic:
    a parallel generation sees a few bucketed shapes, see :func:`anyorder.models.base.bucket`)."""
    key = (backend, mode)
    if key not in _COMPILED:
        _raise_recompile_limits()
        _COMPILED[key] = torch.compile(_step, backend=backend, mode=mode, dynamic=False)
    return _COMPILED[key]


def _padded(noise: Tensor, rows: int) -> Tensor:
    """``noise [B, n, V]`` padded with ones to ``rows`` rows (a static step's bucketed queries)."""
    return noise if noise.shape[1] == rows else F.pad(noise, (0, 0, 0, rows - noise.shape[1]), value=1.0)


def _resolve_compile(compile: bool | str | Callable, device: torch.device) -> Callable | None:
    if compile is False or compile is None:
        return None
    if compile is True:  # inductor; on CUDA with CUDA graphs (the step is static, so graphs replay)
        return compiled_step("inductor", "reduce-overhead" if device.type == "cuda" else None)
    return compiled_step(compile)


# the (backend, model, batch, plan) shapes a compiled generation ran with: a new one compiles first
_COMPILED_SHAPES: set[tuple] = set()


def _compile_shape(compile: bool | str | Callable, model: Any, rows: int, plan: list[int],
                   device: torch.device) -> tuple:
    dtype = next(model.parameters()).dtype
    return (repr(compile), type(model).__name__, repr(model.config), str(dtype), str(device), rows, tuple(plan))


def _say_compiling(compile: bool | str | Callable, family: str, batch: int, device: torch.device) -> None:
    """Say on stderr that this generation compiles (tens of seconds, minutes for large models): the command
    would otherwise look stuck."""
    how = ("inductor with CUDA graphs" if device.type == "cuda" else "inductor") if compile is True else (
        compile if isinstance(compile, str) else getattr(compile, "__name__", "a custom backend"))
    print(f"anyorder: compiling the {family} decode step ({how}) for batch {batch}: the first generation of a "
          "new model, batch or step plan compiles its step shapes; later ones reuse them", file=sys.stderr,
          flush=True)


def _static_scales(rows: GuidanceRows, plan: list[int], done: int, total: int,
                   device: torch.device) -> list[tuple[Tensor, Tensor]]:
    """Every step's guidance scales for the static step, computed on the host up front, one transfer: 0-d
    tensors where a step's tokens share them, ``[bucket(n), 1]`` where they vary per token (LPD)."""
    per_token = any(s.per_token for s in (rows.guidance, rows.spatial) if s is not None)
    host, spans = [], []
    for n in plan:
        s_c, s_s = rows.scales(done, n, total)
        width = bucket(n) if per_token else 1
        pad = width - len(s_c[:width])
        host += s_c[:width] + [1.0] * pad + s_s[:width] + [1.0] * pad
        spans.append(width)
        done += n
    flat = torch.tensor(host, dtype=torch.float32).to(device)
    out, i = [], 0
    for width in spans:
        pair = flat[i : i + 2 * width].view(2, width)
        out.append((pair[0, 0], pair[1, 0]) if not per_token else (pair[0, :, None], pair[1, :, None]))
        i += 2 * width
    return out


@torch.no_grad()
def decode(job: Any, step_callback: Callable[[int, Tensor], None] | None = None, *,
           compile: bool | str | Callable = False, static: bool = False) -> Tensor:
    """Run a :class:`~anyorder.sampling.job.DecodeJob`; returns its tokens ``[B, T]`` in *generation order*
    (the known prefix first, unchanged).

    ``step_callback(done, tokens)`` runs after every step with the number of tokens decoded so far and the
    ``[B, T]`` output buffer (generation order; ``tokens[:, :done]`` are final) — e.g. to stream images.

    ``compile``: run each step as one ``torch.compile`` d static step (True: inductor, with CUDA graphs —
    ``mode="reduce-overhead"`` — on CUDA; or a backend name / callable). ``static``: the same static step without
    compiling. The static step attends over one of four windows of the cache
    (:func:`~anyorder.nn.kv_cache.attention_window`) under a precomputed mask, pads parallel steps to bucket
    sizes, takes the guidance scales as tensors and samples by the exponential race with noise drawn from the
    job's generator outside the step — the same draws as the eager loop, so a seed gives the same samples eager,
    static or compiled wherever their logits agree (they differ by float rounding only).

    Every path is free of host syncs inside the loop (no ``.item()``, ``nonzero``, ``multinomial`` or blocking
    host-to-device copy per step), and runs under ``torch.no_grad`` (the KV cache would otherwise hold the
    autograd graph of every step).
    """
    model, policy = job.model, job.policy
    B, T = job.orders.shape
    P, plan = job.known, job.plan
    if sum(plan) != T - P or min(plan, default=1) < 1:
        raise ValueError(f"step plan {plan} must be positive and sum to {T - P}")
    if job.drop is not None and tuple(job.drop.shape) != (B, P):
        raise ValueError(f"drop must be [{B}, {P}] (one flag per prefix token), got {tuple(job.drop.shape)}")
    rows = GuidanceRows(policy.guidance(), job.spatial, job.drop if P else None)
    spec = family_of(model)
    if job.table is not None and not spec.can("canvas"):
        raise ValueError(f"a position table for another grid needs a family with the canvas capability; "
                         f"{spec.display_name} has none")
    if rows.use_s and not spec.can("extrapolation"):
        raise ValueError(f"spatial guidance needs a family with the extrapolation capability; "
                         f"{spec.display_name} has none")
    R = len(rows)
    dev = job.orders.device
    step_fn = _resolve_compile(compile, dev)
    static = static or step_fn is not None
    step_fn = step_fn or _step
    shape = _compile_shape(compile, model, R * B, plan, dev) if step_fn is not _step else None
    if shape is not None and shape not in _COMPILED_SHAPES:
        _say_compiling(compile, model.family, B, dev)
        t0 = time.perf_counter()
    temperature, top_k, top_p = policy.temperature, policy.top_k, policy.top_p
    classes = rows.classes(job.classes, model.null_class)
    options = {} if job.table is None else {"table": job.table}
    state = model.start_decoding(classes, job.orders.repeat(R, 1), static=static, **options)
    out = torch.empty(B, T, dtype=torch.long, device=dev)
    new: Tensor | None = None
    # per-step values the loop would otherwise build on the host: computed once, moved once
    scales = _static_scales(rows, plan, P, T, dev) if static else _eager_scales(rows, plan, P, T, dev)
    greedy = is_greedy(temperature, top_k)
    V = model.codebook_size
    try:
        if P:  # teacher-force the known tokens through the cache; their logits are not used
            out[:, :P] = job.prefix
            new = model.feed_prefix(state, rows.context(model, job.prefix))
            state.done = P
        done = P
        for i, n in enumerate(plan):
            if static:
                inputs = model.step_inputs(state, new, n)
                # the eager loop's draws ([B, n, V]); the padding rows' samples are dropped
                noise = None if greedy else _padded(race_noise((B, n, V), job.generator, dev), inputs.last)
                tok = step_fn(model, inputs, rows, *scales[i], temperature, top_k, top_p, noise)[:, :n]
            else:
                logits = rows.mix(model.decode_one_step(state, new, n), *scales[i])  # [B, n, V]
                tok = sample_logits(logits, temperature, top_k, top_p, job.generator)
            out[:, done : done + n] = tok
            done += n
            state.done = done
            new = tok.repeat(R, 1)
            if step_callback is not None:  # e.g. to stream partial images: out[:, :done] is final
                step_callback(done, out)
    finally:
        model.end_decoding(keep_cache=static and dev.type == "cuda" and step_fn is not _step)
    if shape is not None and shape not in _COMPILED_SHAPES:
        _COMPILED_SHAPES.add(shape)
        print(f"anyorder: compiled, and generated, in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return out
