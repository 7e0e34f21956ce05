"""What every family's model has in common: class handling, the training loss, decoding state, hooks.

Every family predicts ``codebook_size`` codes on an ``h x w`` grid, conditioned on one of ``num_classes``
classes. Class id ``num_classes`` is the *null class* used for classifier-free guidance and class-label
dropout. Token ids, orders and the cache layout are family details behind a few methods:
:meth:`AnyOrderModel.logits` (teacher forcing), :meth:`~AnyOrderModel.start_decoding` and
:meth:`~AnyOrderModel.decode_one_step` (KV-cached decoding, driven by :func:`anyorder.sampling.decode`),
:meth:`~AnyOrderModel.decays` (the official trainer's weight-decay rule, next to the parameters it names).
A hook a family does not define is an error naming the family, never another family's behaviour.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anyorder.nn import orders as orders_lib
from anyorder.nn.kv_cache import CacheStep


@dataclass(kw_only=True)
class DecodeState:
    """Bookkeeping of one KV-cached decode: orders, classes, how many tokens are decoded so far. Each family
    subclasses it with what its steps precompute once per generation.

    ``static``: the step uses the fixed-shape layout of :meth:`AnyOrderModel.step_inputs` (cache windows,
    precomputed mask, bucketed lengths) that ``torch.compile`` and CUDA graphs need."""

    orders: Tensor  # [B, T] (batch already repeated for guidance)
    classes: Tensor  # [B]
    done: int = 0  # tokens decoded (and, after the next step, fed) so far
    static: bool = False


@dataclass
class StepInputs:
    """One static decode step's transformer inputs: rows ``x [B, L, D]`` written at cache slots
    ``input_pos [L]`` (padding rows at a scratch slot nobody reads), adaLN conditions ``c`` or their
    precomputed outputs ``mods`` (RAR) or RoPE rows ``rope`` (RandAR); the step's queries are the first of the
    ``last`` final rows (the rest padding). Attention reads the cache's first ``window`` slots, causally or up to
    ``visible`` (LPD). ``L``, ``last`` and ``window`` come from a few sizes (:func:`bucket`,
    :func:`~anyorder.nn.kv_cache.attention_window`), so a compiled step sees a handful of shapes."""

    x: Tensor
    input_pos: Tensor
    last: int
    c: Tensor | None = None
    rope: Tensor | None = None
    mods: list[Tensor] | None = None
    window: int | None = None
    visible: Tensor | None = None


def check_config(config: Any, positive: tuple[str, ...] = (), probabilities: tuple[str, ...] = ()) -> None:
    """Value rules shared by the families' configs: shape fields are positive integers, dropouts in [0, 1),
    ``dim`` splits into ``n_head`` heads and ``seq_len`` is a square grid. Errors name the field and value."""
    for name in positive:
        v = getattr(config, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    for name in probabilities:
        v = getattr(config, name)
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {v!r}")
    if config.dim % config.n_head:
        raise ValueError(f"dim {config.dim} is not divisible by n_head {config.n_head}")
    if math.isqrt(config.seq_len) ** 2 != config.seq_len:
        raise ValueError(f"seq_len must be a square number of tokens, got {config.seq_len}")


def check_token_ids(codes: Tensor, codebook_size: int) -> None:
    """Token ids must lie in ``[0, codebook_size)`` (one host sync); the error gives the range found."""
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= codebook_size):
        raise ValueError(f"token ids must be in [0, {codebook_size}), got [{int(codes.min())}, {int(codes.max())}]")


def bucket(n: int) -> int:
    """The padded size of ``n`` rows in a static step: the next power of two (1, 2, 4, 8, ...)."""
    return 1 << max(0, n - 1).bit_length()


class AnyOrderModel(nn.Module):
    """The model interface every family implements (subclass it in the family's ``model.py``)."""

    family: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    # value checks of classes and codes (a host sync each); the training loop validates its data once at load
    # and turns them off for its steps
    validate_inputs: bool = True

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        # the sampling settings the model was made / released with (set by anyorder.hub on load; a plain dict
        # validated by anyorder.sampling.policy when used)
        self.sampling_defaults: dict[str, Any] = {}

    # ---- shape facts ---------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    @property
    def grid(self) -> tuple[int, int]:
        side = math.isqrt(self.seq_len)
        return side, side

    @property
    def null_class(self) -> int:
        return self.num_classes

    def default_order(self) -> Tensor:
        """The scan order used for sampling (and the non-random branch of training)."""
        return orders_lib.scan_order(getattr(self.config, "order", "raster"), *self.grid).to(self.device)

    def sampling_orders(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """The orders ``[batch, T]`` sampling decodes in when the caller gives none: the scan order."""
        return self.default_order().expand(batch, -1)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_classes(self, classes: Tensor, allow_null: bool = True) -> Tensor:
        classes = torch.as_tensor(classes, dtype=torch.long, device=self.device).reshape(-1)
        if not self.validate_inputs:
            return classes
        hi = self.num_classes if allow_null else self.num_classes - 1
        bad = (classes < 0) | (classes > hi)
        if bad.any():
            raise ValueError(
                f"class id {int(classes[bad][0])} out of range: this model has {self.num_classes} classes "
                f"(0..{self.num_classes - 1}; {self.num_classes} is the null class for guidance)"
            )
        return classes

    def check_codes(self, codes: Tensor) -> Tensor:
        codes = codes.reshape(codes.shape[0], -1).long()
        if codes.shape[1] != self.seq_len:
            raise ValueError(f"expected {self.seq_len} tokens per image ({self.grid}), got {codes.shape[1]}")
        if self.validate_inputs:
            check_token_ids(codes, self.codebook_size)
        return codes

    # ---- teacher forcing -----------------------------------------------------------------------
    def logits(self, codes: Tensor, classes: Tensor, orders: Tensor | None = None, **extras: Tensor) -> Tensor:
        """Teacher-forced logits ``[B, T, V]``: entry ``j`` predicts the token at raster position
        ``orders[:, j]`` given the class and the tokens before it in the order. ``codes`` in raster order."""
        raise NotImplementedError(f"family {self.family!r} defines no logits")

    def training_loss(self, codes: Tensor, classes: Tensor, orders: Tensor, **extras: Tensor) -> Tensor:
        """Mean next-token cross-entropy in the given generation orders (labels follow the orders). ``extras``:
        what :meth:`training_extras` drew for this step (LPD's group plan)."""
        codes = self.check_codes(codes)
        logits = self.logits(codes, classes, orders, **extras)
        labels = orders_lib.permute(codes, orders)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))

    def training_extras(self, batch: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per-step training inputs besides codes, classes and orders, drawn from ``generator`` (LPD: the group
        plan of the step). None for most families."""
        return {}

    def decays(self, name: str, param: Tensor) -> bool:
        """Whether parameter ``name`` (ours) takes weight decay, by the family's official trainer."""
        raise NotImplementedError(f"family {self.family!r} defines no weight-decay rule (AnyOrderModel.decays)")

    # ---- KV-cached decoding --------------------------------------------------------------------
    def start_decoding(self, classes: Tensor, orders: Tensor, static: bool = False, **options: Any) -> DecodeState:
        """Set up the cache for ``orders`` (``static``: the fixed-shape layout, see :class:`DecodeState`)."""
        raise NotImplementedError(f"family {self.family!r} defines no start_decoding")

    def feed_prefix(self, state: DecodeState, context: Tensor) -> Tensor | None:
        """Teacher-force an edit's known tokens (``context``: ids ``[B, P]`` in generation order, or their
        embeddings) into the cache before the first decoding step, *as if they had been decoded one per step*:
        the logits a step then gives equal the teacher-forced logits of the whole known-first order. Returns what
        the first step must still feed (by default: the prefill here, the known tokens with the first queries)."""
        self.decode_one_step(state, None, 1)
        return context

    def decode_one_step(self, state: DecodeState, new_tokens: Tensor | None, num_queries: int) -> Tensor:
        """Feed the tokens sampled last step (``[B, n]``, generation order), return logits
        ``[B, num_queries, V]`` for the next ``num_queries`` positions of ``state.orders``."""
        raise NotImplementedError(f"family {self.family!r} defines no decode_one_step")

    def step_inputs(self, state: DecodeState, new_tokens: Tensor | None, num_queries: int) -> StepInputs:
        """The static step's inputs for the same feed as :meth:`decode_one_step` (no host sync: only
        host-known counts pick slices; the shapes come from :func:`bucket`)."""
        raise NotImplementedError(f"family {self.family!r} defines no static step (step_inputs)")

    def static_step(self, inputs: StepInputs) -> Tensor:
        """The transformer part of a static step: logits ``[B, inputs.last, V]`` (compiled by the decode loop)."""
        step = CacheStep(inputs.input_pos, window=inputs.window, visible=inputs.visible)
        return self.transformer.decode_step(inputs.x, step, inputs.c, inputs.rope, last=inputs.last,
                                            mods=inputs.mods)

    def end_decoding(self, keep_cache: bool = False) -> None:
        """Drop the KV cache (``keep_cache``: keep it for the next generation of the same shape, so a
        CUDA-graph-compiled step replays on the same buffers)."""
        if not keep_cache:
            self.transformer.clear_cache()

    # ---- dtype / device ------------------------------------------------------------------------------
    def reset_buffers(self) -> None:
        """Recompute non-persistent buffers (after building on the meta device and loading with
        ``assign=True``); families with such buffers override this."""

    # ---- configs -------------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {"family": self.family, **asdict(self.config)}
