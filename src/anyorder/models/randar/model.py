"""RandAR: decoder-only autoregressive visual generation in random orders (Pang et al., arXiv 2412.01827).

A LlamaGen-style transformer (RMSNorm, SwiGLU, no biases, 2D RoPE) over the interleaved sequence
``[class, instr(order[0]), tok(order[0]), instr(order[1]), tok(order[1]), ...]``. A *position
instruction token* is one shared learned embedding rotated (RoPE, as ``[heads, head_dim]``) to the
2D position of the token that comes next; an instruction token and its image token share that RoPE
row. Predictions are read at the instruction slots, so any order — random per sample — works, and
several positions can be queried at once (parallel decoding).

Cache layout: slot 0 is the class token, ``instr_k`` sits at ``1 + 2k`` and ``tok_k`` at ``2 + 2k``.
A parallel step feeds the tokens just sampled (with the instruction tokens between them) and the
next queries, written from the slot after the first query of the previous step on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from anyorder.models.base import AnyOrderModel, DecodeState, StepInputs, bucket, check_config
from anyorder.models.spec import KeyMap
from anyorder.nn import orders as orders_lib
from anyorder.nn.kv_cache import CacheStep, attention_window
from anyorder.nn.rope import apply_rope, rope_2d, rope_2d_mixed
from anyorder.nn.transformer import Transformer, TransformerConfig


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


def interleave(first: Tensor, second: Tensor) -> Tensor:
    """``[B, T, ...]`` rows of two streams -> ``[B, 2T, ...]`` as ``first_0, second_0, first_1, ...``
    (instruction tokens first, image tokens second, in RandAR's sequence)."""
    return torch.stack([first, second], dim=2).flatten(1, 2)


def deinterleave(seq: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`interleave`: the instruction rows and the token rows."""
    return seq[:, 0::2], seq[:, 1::2]


@dataclass
class RandARConfig:
    dim: int = 1024
    depth: int = 24
    n_head: int = 16
    seq_len: int = 256  # image tokens T (a square grid)
    codebook_size: int = 16384
    num_classes: int = 1000
    multiple_of: int = 256
    mlp_hidden: int = 0  # 0: LlamaGen's find_multiple(int(2 * 4 * dim / 3), multiple_of)
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0
    attn_dropout: float = 0.0
    class_dropout: float = 0.1
    token_dropout: float = 0.0  # on the image-token embeddings while training (official token_dropout_p)
    order: str = "random"  # training order: random per sample, or a scan order to anneal into
    grad_checkpointing: bool = False  # training only: recompute the blocks' activations in backward

    def __post_init__(self) -> None:
        check_config(self, ("dim", "depth", "n_head", "seq_len", "codebook_size", "num_classes", "multiple_of"),
                     ("dropout", "attn_dropout", "class_dropout", "token_dropout"))
        if self.order != "random":
            orders_lib.scan_order(self.order, 1)
        if not self.mlp_hidden:
            self.mlp_hidden = find_multiple(int(2 * 4 * self.dim / 3), self.multiple_of)

    def transformer_config(self) -> TransformerConfig:
        return TransformerConfig(
            dim=self.dim, depth=self.depth, n_head=self.n_head, mlp_hidden=self.mlp_hidden,
            vocab_out=self.codebook_size, norm="rmsnorm", norm_eps=self.norm_eps, mlp="swiglu", adaln=False,
            bias=False, qk_norm=False, dropout=self.dropout, attn_dropout=self.attn_dropout,
        )


# official names <-> ours (LlamaGen's GPT layout)
OFFICIAL_KEYS = KeyMap([
    ("layers.{i}.attention.wqkv.", "transformer.blocks.{i}.attn.qkv."),
    ("layers.{i}.attention.wo.", "transformer.blocks.{i}.attn.proj."),
    ("layers.{i}.feed_forward.w1.", "transformer.blocks.{i}.mlp.fc1."),
    ("layers.{i}.feed_forward.w2.", "transformer.blocks.{i}.mlp.fc2."),
    ("layers.{i}.feed_forward.w3.", "transformer.blocks.{i}.mlp.fc3."),
    ("layers.{i}.attention_norm.", "transformer.blocks.{i}.norm1."),
    ("layers.{i}.ffn_norm.", "transformer.blocks.{i}.norm2."),
    ("norm.", "transformer.final.norm."),
    ("output.", "transformer.final.head."),
    ("cls_embedding.embedding_table.", "class_embed."),
])


@dataclass(kw_only=True)
class RandARState(DecodeState):
    """What a RandAR generation precomputes once: the class rows, the instruction tokens and RoPE rows per
    generation index, the RoPE row per cache slot and the slot indices."""

    cls: Tensor  # class embeddings [B, 1, D]
    instr: Tensor  # instruction tokens [B, T, D] in generation order
    rope: Tensor  # their RoPE rows [B, T, head_dim / 2, 2]
    rope0: Tensor  # the class token's (zero) row [B, 1, head_dim / 2, 2]
    rope_slots: Tensor  # per cache slot: class, then instr_k / tok_k share row k
    slots: Tensor  # arange(cache length)


class RandAR(AnyOrderModel):
    family = "randar"
    config_class = RandARConfig

    def __init__(self, config: RandARConfig) -> None:
        super().__init__(config)
        c = config
        self.class_embed = nn.Embedding(c.num_classes + 1, c.dim)  # row C: the null class
        self.tok_embeddings = nn.Embedding(c.codebook_size, c.dim)
        self.tok_dropout = nn.Dropout(c.token_dropout)  # randar_gpt.py tok_dropout: the tokens only
        self.pos_instruct_embeddings = nn.Parameter(torch.zeros(1, c.dim))
        self.transformer = Transformer(c.transformer_config())
        self.transformer.grad_checkpointing = c.grad_checkpointing
        self.register_buffer("freqs_cis", self._rope_table(), persistent=False)
        self.init_weights()

    def _rope_table(self, device: torch.device | str | None = None) -> Tensor:
        """The RoPE table, computed on the CPU (as the official code: the same bits whichever device the model
        is built on) and put on ``device`` (None: the default device, e.g. a ``with torch.device(...)``)."""
        c = self.config
        with torch.device("cpu"):
            table = rope_2d(self.grid, c.dim // c.n_head, c.rope_base)
        return table.to(torch.get_default_device() if device is None else device)

    def reset_buffers(self) -> None:
        """Recompute the RoPE table (fp32) on the parameters' device, e.g. after a meta-device build."""
        self.freqs_cis = self._rope_table(self.device)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 (nn.Module's signature)
        """``.to(dtype)`` / ``.half()`` / ``.bfloat16()`` cast parameters but keep the RoPE table in fp32 (its
        angles would lose precision in bf16); device moves apply to it as usual."""
        table = self.freqs_cis
        out = super()._apply(fn, recurse)
        if table.device.type == "meta" or self.freqs_cis.dtype == table.dtype:
            return out
        self.freqs_cis = table.to(self.freqs_cis.device)
        return out

    @torch.no_grad()
    def init_weights(self) -> None:
        """As LlamaGen: normal(0.02) linears and embeddings, zero output head."""
        self.transformer.init_weights(truncated=False, zero_head=True)
        nn.init.normal_(self.class_embed.weight, std=0.02)
        nn.init.normal_(self.tok_embeddings.weight, std=0.02)
        nn.init.normal_(self.pos_instruct_embeddings, std=0.02)

    def default_order(self) -> Tensor:
        order = "raster" if self.config.order == "random" else self.config.order
        return orders_lib.scan_order(order, *self.grid).to(self.device)

    def sampling_orders(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """A random order per sample, as RandAR is trained; a model configured with a scan ``order``
        (trained to anneal into it) decodes in that order."""
        if self.config.order != "random":
            return super().sampling_orders(batch, generator)
        return orders_lib.random_orders(batch, self.seq_len, generator=generator, device=self.device)

    # ---- position instruction tokens ------------------------------------------------------------
    def rope_rows(self, orders: Tensor, table: Tensor | None = None) -> Tensor:
        """RoPE rows ``[B, T, head_dim/2, 2]`` of the raster positions ``orders`` (table row 1 + p)."""
        table = self.freqs_cis if table is None else table
        return table[1 + orders]

    def instruction_tokens(self, orders: Tensor, table: Tensor | None = None) -> Tensor:
        """The shared embedding rotated to each position of ``orders``: ``[B, T, dim]``."""
        B, T = orders.shape
        H = self.config.n_head
        base = self.pos_instruct_embeddings.view(1, 1, H, -1).expand(B, T, H, -1)
        return apply_rope(base, self.rope_rows(orders, table)).reshape(B, T, -1)

    def canvas_table(self, canvas: tuple[int, int], rope: str = "extrapolate", ntk_boundary: int = 2) -> Tensor:
        """The RoPE table of a ``canvas = (H, W)`` token grid (positions beyond the trained grid).

        ``"extrapolate"``: :func:`rope_2d` of the canvas — true positions; rows/columns inside the trained grid
        get exactly the trained rows of the table. ``"ntk"``: per axis, RandAR's NTK mix
        (:func:`rope_2d_mixed`) with the factor ``canvas / trained`` of that axis (an axis no longer than the
        trained one keeps its true positions); the first ``ntk_boundary`` frequency pairs extrapolate, the rest
        interpolate."""
        c = self.config
        head_dim, base = c.dim // c.n_head, c.rope_base
        H, W = canvas
        if rope == "extrapolate":
            table = rope_2d((H, W), head_dim, base)
        elif rope == "ntk":
            gh, gw = self.grid
            fh, fw = max(1.0, H / gh), max(1.0, W / gw)
            F = head_dim // 4
            t_rows = rope_2d_mixed((H, W), head_dim, fh, ntk_boundary, base)
            t_cols = rope_2d_mixed((H, W), head_dim, fw, ntk_boundary, base)
            table = torch.cat([t_rows[:, :F], t_cols[:, F:]], dim=1)
        else:
            raise ValueError(f"rope must be 'extrapolate' or 'ntk', got {rope!r}")
        return table.to(device=self.device, dtype=self.freqs_cis.dtype)

    def extrapolation_table(self, factor: float, ntk_boundary: int = 2) -> Tensor:
        """The RoPE table of the ``factor`` times larger grid of resolution extrapolation: the first
        ``ntk_boundary`` frequency pairs of each axis at true positions, the rest squeezed by ``factor``."""
        c = self.config
        H, W = (int(g * factor) for g in self.grid)
        return rope_2d_mixed((H, W), c.dim // c.n_head, factor, ntk_boundary, c.rope_base).to(
            device=self.device, dtype=self.freqs_cis.dtype)

    def class_embedding(self, classes: Tensor) -> Tensor:
        return self.class_embed(self.check_classes(classes))[:, None]

    def token_embeddings(self, ids: Tensor) -> Tensor:
        """Image-token embeddings; spatial guidance feeds them (some zeroed) in place of ids."""
        return self.tok_embeddings(ids)

    def decays(self, name: str, param: Tensor) -> bool:
        """RandAR's ``configure_optimizer`` (``randar_gpt.py``): every parameter with 2 or more dims decays —
        embeddings and the position-instruction embedding included — the rest does not."""
        return param.dim() >= 2

    # ---- teacher forcing ----------------------------------------------------------------------------
    def _sequence(self, gen_ids: Tensor, classes: Tensor, orders: Tensor,
                  table: Tensor | None = None, drop_tokens: bool = False) -> tuple[Tensor, Tensor]:
        """Inputs ``[class, instr_0, tok_0, instr_1, tok_1, ...]`` and their RoPE rows.
        ``drop_tokens``: the token dropout on the image-token embeddings (in training mode), as
        RandAR's ``forward_train``; the instruction tokens and the class embedding are never
        dropped."""
        B = gen_ids.shape[0]
        instr = self.instruction_tokens(orders, table)
        tok = self.tok_embeddings(gen_ids)
        if drop_tokens:
            tok = self.tok_dropout(tok)
        cls = self.class_embedding(classes).expand(B, -1, -1)
        x = torch.cat([cls, interleave(instr, tok)], dim=1)
        rows = self.rope_rows(orders, table)
        table0 = (self.freqs_cis if table is None else table)[:1].expand(B, -1, -1, -1)
        return x, torch.cat([table0, interleave(rows, rows)], dim=1)

    def forward(self, gen_ids: Tensor, classes: Tensor, orders: Tensor, table: Tensor | None = None) -> Tensor:
        """Logits ``[B, T, V]`` read at the instruction slots for tokens ``gen_ids [B, T]`` already in
        generation order ``orders``; logit ``j`` predicts ``gen_ids[:, j]``. In training mode the
        token embeddings are dropped out with ``token_dropout``."""
        x, rope = self._sequence(gen_ids, classes, orders, table, drop_tokens=True)
        # the head runs on the instruction slots only (1, 3, ..., 2T - 1): the predictions
        return self.transformer(x, rope=rope, rows=slice(1, None, 2))

    def hidden_states(self, gen_ids: Tensor, classes: Tensor, orders: Tensor, layers: tuple[int, ...]) -> list[Tensor]:
        """The residual streams ``[B, 1 + 2L, D]`` after blocks ``layers`` (0-based) for the sequence of
        ``gen_ids [B, L]`` in ``orders`` (feature extraction: no later blocks, no vocabulary head)."""
        x, rope = self._sequence(gen_ids, classes, orders)
        return self.transformer.hidden_states(x, layers, rope=rope)

    def logits(self, codes: Tensor, classes: Tensor, orders: Tensor | None = None) -> Tensor:
        codes = self.check_codes(codes)
        if orders is None:
            orders = self.default_order().expand(codes.shape[0], -1)
        return self.forward(orders_lib.permute(codes, orders), classes, orders)

    # ---- KV-cached (parallel) decoding -----------------------------------------------------------
    def start_decoding(self, classes: Tensor, orders: Tensor, static: bool = False,
                       table: Tensor | None = None) -> RandARState:
        """Set up the cache and precompute, once per generation, what the steps only slice: instruction
        tokens, RoPE rows per generation index and per cache slot, and the slot indices. ``static`` adds
        one scratch slot (``2T + 1``) where the padding rows of a bucketed step are written. ``table``: the
        RoPE table of another grid (a larger canvas)."""
        B, T = orders.shape
        self.transformer.setup_cache(B, 2 * T + 1 + int(static), reuse=static)
        table = self.freqs_cis if table is None else table
        rope, rope0 = self.rope_rows(orders, table), table[:1].expand(B, -1, -1, -1)
        return RandARState(
            orders=orders, classes=classes, static=static, cls=self.class_embedding(classes),
            instr=self.instruction_tokens(orders, table), rope=rope, rope0=rope0,
            # slot 0: class; instr_k (slot 1 + 2k) and tok_k (slot 2 + 2k) share row k
            rope_slots=torch.cat([rope0, rope.repeat_interleave(2, dim=1)], dim=1),
            slots=torch.arange(2 * T + 1 + int(static), device=orders.device))

    def _feed(self, state: RandARState, new_tokens: Tensor | None,
              num_queries: int) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
        """The fed rows (``x``, RoPE ``r``) and the query rows (``q``, ``rq``) of a step; the fed rows start
        at slot ``start`` and the queries follow them."""
        done, m = state.done, num_queries
        instr, rope = state.instr, state.rope
        T = state.orders.shape[1]
        if done + m > T:
            raise ValueError(f"{m} queries after {done} decoded tokens exceed the {T} positions")
        n = 0 if new_tokens is None else new_tokens.shape[1]
        if n == 0:  # prefill: [class, instr_0 .. instr_{m-1}]
            x, r, start = state.cls, state.rope0, 0
        else:  # [tok_a, instr_{a+1}, tok_{a+1}, ..., tok_{done-1}, instr_done .. instr_{done+m-1}]
            a = done - n
            start = 2 + 2 * a
            tok = new_tokens if new_tokens.is_floating_point() else self.tok_embeddings(new_tokens)
            x = torch.cat([interleave(tok[:, :-1], instr[:, a + 1 : done]), tok[:, -1:]], dim=1)
            # the fed tokens sit at their own slots (2 + 2a .. 2 * done); the queries at the provisional
            # slots after them, each with the RoPE row of the position it asks for
            r = state.rope_slots[:, start : 2 * done + 1]
        return x, r, instr[:, done : done + m], rope[:, done : done + m], start

    def decode_one_step(self, state: RandARState, new_tokens: Tensor | None, num_queries: int) -> Tensor:
        """Feed ``new_tokens`` — ids ``[B, n]``, or their embeddings ``[B, n, dim]`` (spatial guidance
        zeroes some) — and return logits ``[B, num_queries, V]`` for the next queries."""
        if state.static:
            return self.static_step(self.step_inputs(state, new_tokens, num_queries))[:, :num_queries]
        x, r, q, rq, start = self._feed(state, new_tokens, num_queries)
        x, r = torch.cat([x, q], dim=1), torch.cat([r, rq], dim=1)
        stop = start + x.shape[1]
        return self.transformer.decode_step(x, CacheStep(state.slots[start:stop], kv_len=stop), rope=r,
                                            last=num_queries)

    def step_inputs(self, state: RandARState, new_tokens: Tensor | None, num_queries: int) -> StepInputs:
        """``[fed rows, padding, queries, padding]`` with both parts padded to :func:`bucket` sizes, so a
        whole parallel-decoding generation compiles to a few shapes. Padding rows are zeros written at the
        scratch slot ``2T + 1`` (no real query sees it; they see everything, so no row is fully masked)."""
        x, r, q, rq, start = self._feed(state, new_tokens, num_queries)
        B, F, m = x.shape[0], x.shape[1], num_queries
        fb, mb = bucket(F), bucket(m)
        slots = state.slots
        scratch = slots[-1:]

        def pad(t: Tensor, rows: int) -> Tensor:
            return t if rows == 0 else torch.cat([t, t.new_zeros(B, rows, *t.shape[2:])], dim=1)

        x = torch.cat([pad(x, fb - F), pad(q, mb - m)], dim=1)
        rope = torch.cat([pad(r, fb - F), pad(rq, mb - m)], dim=1)
        q0 = start + F
        pos = torch.cat([slots[start:q0], scratch.expand(fb - F), slots[q0 : q0 + m], scratch.expand(mb - m)])
        return StepInputs(x=x, rope=rope, input_pos=pos, last=mb, window=attention_window(q0 + m, slots.shape[0]))
