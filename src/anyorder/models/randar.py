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

import math
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from anyorder.models.base import AnyOrderModel, DecodeState
from anyorder.nn import orders as orders_lib
from anyorder.nn.rope import apply_rope, rope_2d
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
    order: str = "random"  # training order: random per sample, or a scan order to anneal into

    def __post_init__(self) -> None:
        if math.isqrt(self.seq_len) ** 2 != self.seq_len:
            raise ValueError(f"seq_len must be a square number of tokens, got {self.seq_len}")
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


_OFFICIAL_KEYS = [
    (r"^layers\.(\d+)\.attention\.wqkv\.", r"transformer.blocks.\1.attn.qkv."),
    (r"^layers\.(\d+)\.attention\.wo\.", r"transformer.blocks.\1.attn.proj."),
    (r"^layers\.(\d+)\.feed_forward\.w1\.", r"transformer.blocks.\1.mlp.fc1."),
    (r"^layers\.(\d+)\.feed_forward\.w2\.", r"transformer.blocks.\1.mlp.fc2."),
    (r"^layers\.(\d+)\.feed_forward\.w3\.", r"transformer.blocks.\1.mlp.fc3."),
    (r"^layers\.(\d+)\.attention_norm\.", r"transformer.blocks.\1.norm1."),
    (r"^layers\.(\d+)\.ffn_norm\.", r"transformer.blocks.\1.norm2."),
    (r"^norm\.", "transformer.final.norm."),
    (r"^output\.", "transformer.final.head."),
    (r"^cls_embedding\.embedding_table\.", "class_embed."),
]


class RandAR(AnyOrderModel):
    family = "randar"
    config_class = RandARConfig

    def __init__(self, config: RandARConfig) -> None:
        super().__init__(config)
        c = config
        self.class_embed = nn.Embedding(c.num_classes + 1, c.dim)  # row C: the null class
        self.tok_embeddings = nn.Embedding(c.codebook_size, c.dim)
        self.pos_instruct_embeddings = nn.Parameter(torch.zeros(1, c.dim))
        self.transformer = Transformer(c.transformer_config())
        self.register_buffer("freqs_cis", rope_2d(self.grid, c.dim // c.n_head, c.rope_base), persistent=False)
        self.init_weights()

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

    def class_embedding(self, classes: Tensor) -> Tensor:
        return self.class_embed(self.check_classes(classes))[:, None]

    # ---- teacher forcing ----------------------------------------------------------------------------
    def forward(self, gen_ids: Tensor, classes: Tensor, orders: Tensor, table: Tensor | None = None,
                hidden_layers: tuple[int, ...] = ()) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Logits ``[B, T, V]`` read at the instruction slots for tokens ``gen_ids [B, T]`` already in
        generation order ``orders``; logit ``j`` predicts ``gen_ids[:, j]``."""
        B, T = gen_ids.shape
        instr = self.instruction_tokens(orders, table)
        toks = self.tok_embeddings(gen_ids)
        x = torch.cat([self.class_embedding(classes).expand(B, -1, -1), interleave(instr, toks)], dim=1)
        rows = self.rope_rows(orders, table)
        table0 = (self.freqs_cis if table is None else table)[:1].expand(B, -1, -1, -1)
        rope = torch.cat([table0, interleave(rows, rows)], dim=1)
        out = self.transformer(x, rope=rope, hidden_layers=hidden_layers)
        if hidden_layers:
            logits, hidden = out
            return deinterleave(logits[:, 1:])[0], hidden
        return deinterleave(out[:, 1:])[0]

    def logits(self, codes: Tensor, classes: Tensor, orders: Tensor | None = None) -> Tensor:
        codes = self.check_codes(codes)
        if orders is None:
            orders = self.default_order().expand(codes.shape[0], -1)
        return self.forward(orders_lib.permute(codes, orders), classes, orders)

    # ---- KV-cached (parallel) decoding -----------------------------------------------------------
    def start_decoding(self, classes: Tensor, orders: Tensor, table: Tensor | None = None) -> DecodeState:
        """Set up the cache and precompute, once per generation, what the steps only slice: instruction
        tokens, RoPE rows per generation index and per cache slot, and the slot indices."""
        B, T = orders.shape
        self.transformer.setup_cache(B, 2 * T + 1)
        table = self.freqs_cis if table is None else table
        rope, rope0 = self.rope_rows(orders, table), table[:1].expand(B, -1, -1, -1)
        return DecodeState(orders=orders, classes=classes, extra={
            "cls": self.class_embedding(classes), "instr": self.instruction_tokens(orders, table),
            "rope": rope, "rope0": rope0,
            # slot 0: class; instr_k (slot 1 + 2k) and tok_k (slot 2 + 2k) share row k
            "rope_slots": torch.cat([rope0, rope.repeat_interleave(2, dim=1)], dim=1),
            "slots": torch.arange(2 * T + 1, device=orders.device),
        })

    def decode_one_step(self, state: DecodeState, new_tokens: Tensor | None, num_queries: int) -> Tensor:
        """Feed ``new_tokens`` — ids ``[B, n]``, or their embeddings ``[B, n, dim]`` (spatial guidance
        zeroes some) — and return logits ``[B, num_queries, V]`` for the next queries."""
        ex, done, m = state.extra, state.done, num_queries
        instr, rope = ex["instr"], ex["rope"]
        B, T = state.orders.shape
        if done + m > T:
            raise ValueError(f"{m} queries after {done} decoded tokens exceed the {T} positions")
        n = 0 if new_tokens is None else new_tokens.shape[1]
        if n == 0:  # prefill: [class, instr_0 .. instr_{m-1}]
            x = torch.cat([ex["cls"], instr[:, :m]], dim=1)
            r = torch.cat([ex["rope0"], rope[:, :m]], dim=1)
            start = 0
        else:  # [tok_a, instr_{a+1}, tok_{a+1}, ..., tok_{done-1}, instr_done .. instr_{done+m-1}]
            a = done - n
            start = 2 + 2 * a
            tok = new_tokens if new_tokens.is_floating_point() else self.tok_embeddings(new_tokens)
            fed = interleave(tok[:, :-1], instr[:, a + 1 : done])
            x = torch.cat([fed, tok[:, -1:], instr[:, done : done + m]], dim=1)
            # the fed tokens sit at their own slots (2 + 2a .. 2 * done); the queries at the provisional
            # slots after them, each with the RoPE row of the position it asks for
            r = torch.cat([ex["rope_slots"][:, start : 2 * done + 1], rope[:, done : done + m]], dim=1)
        stop = start + x.shape[1]
        return self.transformer(x, rope=r, input_pos=ex["slots"][start:stop], kv_len=stop, last=m)

    # ---- official format -------------------------------------------------------------------------
    @classmethod
    def convert_official_state_dict(cls, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for k, v in sd.items():
            if k == "freqs_cis":
                continue
            for pat, rep in _OFFICIAL_KEYS:
                k = re.sub(pat, rep, k)
            out[k] = v
        return out

    @classmethod
    def is_official_state_dict(cls, sd: dict[str, Tensor]) -> bool:
        return "output.weight" in sd and "pos_instruct_embeddings" in sd

    @classmethod
    def config_from_official(cls, official: dict[str, Any]) -> RandARConfig:
        """From the official hyper-parameters (``config.json`` or the ``model`` section of its YAML)."""
        g = official.get("model", {}).get("params", official.get("model", official))
        if not isinstance(g, dict) or "dim" not in g:
            g = official
        cfg = RandARConfig(
            dim=int(g["dim"]), depth=int(g["n_layer"]), n_head=int(g["n_head"]), seq_len=int(g["block_size"]),
            codebook_size=int(g["vocab_size"]), num_classes=int(g["num_classes"]),
            multiple_of=int(g.get("multiple_of", 256)), rope_base=float(g.get("rope_base", 10000)),
            norm_eps=float(g.get("norm_eps", 1e-5)), class_dropout=float(g.get("class_dropout_prob", 0.1)),
            mlp_hidden=int(g.get("ffn_hidden", 0) or 0),
        )
        if int(g.get("cls_token_num", 1)) != 1:
            raise ValueError(f"cls_token_num={g['cls_token_num']} is not supported (class-conditional RandAR uses 1)")
        return cfg
