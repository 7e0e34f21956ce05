"""LPD: Locality-aware Parallel Decoding (Zhang et al., arXiv 2507.01957; code mit-han-lab/lpd).

A plain pre-norm transformer (LayerNorm, GELU MLP, no adaLN, no RoPE) over a learned absolute position table.
Generation happens in *groups*: a step asks for the tokens of several positions at once with *position-query
tokens* — the shared ``mask_token`` plus the target position's embedding — and the queries of one step see
each other (not only what came before), so tokens decoded together are decoded jointly. The KV cache holds
image tokens only: a step's query rows are written at the slots of the tokens they produce and overwritten by
those tokens at the next step.

Sequence slots: slot 0 is the class (its embedding, or ``fake_latent`` — our null class — for guidance and
label dropout), slot ``j = 1..T`` the token generated ``j``-th, at raster position ``order[j - 1]``. Every
entry adds its position row (class: row 0, position ``p``: row ``p + 1``) and goes through ``z_proj_ln``.

Training (teacher forcing with a *group plan*, sizes ``g_0 = 1, g_1, ...`` summing to ``T``): the sequence is
``[class, tokens in generation order, T queries]`` under a group-causal mask: a token of group ``k`` sees the
class and the tokens of groups ``<= k`` (bidirectional inside its group), a query of group ``k`` sees the class,
the tokens of groups ``< k`` and the other queries of group ``k``. The logits of the queries are the
predictions. (The official code drops the last group's tokens from the context: no query sees them, so keeping
them changes no logit and gives every plan the same sequence length.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from anyorder.models.base import AnyOrderModel, DecodeState, StepInputs, bucket, check_config
from anyorder.models.lpd.plans import training_plans
from anyorder.models.spec import KeyMap
from anyorder.nn import orders as orders_lib
from anyorder.nn.kv_cache import CacheStep, attention_window
from anyorder.nn.transformer import Transformer, TransformerConfig

__all__ = ["LPDConfig", "LPD", "LPDState", "OFFICIAL_KEYS", "group_ids", "group_causal_mask"]


@dataclass
class LPDConfig:
    dim: int = 1024
    depth: int = 24
    n_head: int = 16
    mlp_hidden: int = 0  # 0: 4 * dim (the official mlp_ratio 4)
    seq_len: int = 256  # image tokens T (a square grid)
    codebook_size: int = 16384
    num_classes: int = 1000
    norm_eps: float = 1e-6
    dropout: float = 0.0  # the official proj_dropout (after the attention projection and in the MLP)
    attn_dropout: float = 0.0  # official attn_dropout: never applied on its fused-attention path
    class_dropout: float = 0.1  # label_drop_prob
    # decoding-step counts whose group plans training draws from, one per step (empty: the official list for
    # 256 / 1024 tokens, or the same fractions of T for other grids: anyorder.models.lpd.plans)
    train_steps: list[int] = field(default_factory=list)
    grad_checkpointing: bool = False  # training only: recompute the blocks' activations in backward

    def __post_init__(self) -> None:
        check_config(self, ("dim", "depth", "n_head", "seq_len", "codebook_size", "num_classes"),
                     ("dropout", "attn_dropout", "class_dropout"))
        if not self.mlp_hidden:
            self.mlp_hidden = 4 * self.dim
        bad = [s for s in self.train_steps if not 1 <= int(s) <= self.seq_len]
        if bad:
            raise ValueError(f"train_steps must be step counts in 1..{self.seq_len}, got {bad}")

    def transformer_config(self) -> TransformerConfig:
        return TransformerConfig(
            dim=self.dim, depth=self.depth, n_head=self.n_head, mlp_hidden=self.mlp_hidden,
            vocab_out=self.codebook_size, norm="layernorm", norm_eps=self.norm_eps, mlp="gelu", adaln=False,
            bias=True, head_bias=False, qk_norm=False, dropout=self.dropout, attn_dropout=self.attn_dropout,
            mlp_act_dropout=True,  # timm Mlp(drop=proj_drop) in the official models/block.py
        )


# official names <-> ours (the blocks' own names already match: norm1, attn.qkv, attn.proj, norm2, mlp.fc1/fc2)
OFFICIAL_KEYS = KeyMap([
    ("blocks.", "transformer.blocks."),
    ("norm.", "transformer.final.norm."),
    ("head.", "transformer.final.head."),
])


def group_ids(plan: list[int] | Tensor, device: torch.device | str | None = None) -> Tensor:
    """The group of every generation index, ``[T]`` int64, from a plan of group sizes (or the ids themselves)."""
    if isinstance(plan, Tensor):
        return plan.to(device=device, dtype=torch.long)
    sizes = torch.as_tensor(list(plan), dtype=torch.long, device=device)
    return torch.repeat_interleave(torch.arange(len(sizes), device=device), sizes)


def group_causal_mask(groups: Tensor) -> Tensor:
    """LPD's training mask (True = attend) over ``[class, T tokens, T queries]`` for the group ids ``[T]``
    of the generation indices: a token sees the class and the tokens of its own and earlier groups; a query
    sees the class, the tokens of earlier groups and the queries of its own group."""
    T = groups.shape[0]
    g = groups[:, None]
    tok_tok = groups[None, :] <= g  # token row j sees token column i when group(i) <= group(j)
    qry_tok = groups[None, :] < g  # query row j sees token i of an earlier group
    qry_qry = groups[None, :] == g  # ... and the queries of its own group
    ones = torch.ones(T, 1, dtype=torch.bool, device=groups.device)
    top = torch.cat([ones[:1], torch.zeros(1, 2 * T, dtype=torch.bool, device=groups.device)], dim=1)  # class
    toks = torch.cat([ones, tok_tok, torch.zeros_like(tok_tok)], dim=1)
    qrys = torch.cat([ones, qry_tok, qry_qry], dim=1)
    return torch.cat([top, toks, qrys], dim=0)


@dataclass(kw_only=True)
class LPDState(DecodeState):
    """What an LPD generation precomputes once: the class row and, per generation index, the position rows
    of the tokens and the finished query rows."""

    cls: Tensor  # z_proj_ln(class vector + pos row 0), [B, 1, D]
    pos: Tensor  # position rows of the generation order, [B, T, D]
    queries: Tensor  # z_proj_ln(mask_token + pos), [B, T, D]
    slots: Tensor  # arange(cache length)


class LPD(AnyOrderModel):
    family = "lpd"
    config_class = LPDConfig

    def __init__(self, config: LPDConfig) -> None:
        super().__init__(config)
        c = config
        self.class_emb = nn.Embedding(c.num_classes, c.dim)
        self.fake_latent = nn.Parameter(torch.zeros(1, c.dim))  # the null class: guidance and label dropout
        self.token_emb = nn.Embedding(c.codebook_size, c.dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, c.seq_len + 1, c.dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.z_proj_ln = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.transformer = Transformer(c.transformer_config())
        self.transformer.grad_checkpointing = c.grad_checkpointing
        self._plan_ids: tuple | None = None  # the training plans as group ids, cached per device
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """As the official code: normal(0.02) tables and tokens, xavier-uniform linears, zero biases, unit norms."""
        for t in (self.class_emb.weight, self.fake_latent, self.mask_token, self.pos_embed, self.token_emb.weight):
            nn.init.normal_(t, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def decays(self, name: str, param: Tensor) -> bool:
        """The official ``add_weight_decay``: no decay for 1-D parameters and biases; everything else decays —
        the position table, ``mask_token`` and ``fake_latent`` included."""
        return param.dim() >= 2 and not name.endswith(".bias")

    def sampling_orders(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """A random order per sample, as LPD is trained (locality-aware orders come from the policy)."""
        return orders_lib.random_orders(batch, self.seq_len, generator=generator, device=self.device)

    # ---- embeddings ---------------------------------------------------------------------------------
    def class_vectors(self, classes: Tensor) -> Tensor:
        """``[B, 1, D]``: the class embedding, or ``fake_latent`` for the null class ``num_classes``."""
        table = torch.cat([self.class_emb.weight, self.fake_latent], dim=0)
        return table[self.check_classes(classes)][:, None]

    def positions(self, orders: Tensor) -> Tensor:
        """The position rows of raster positions ``orders [B, T]``: ``[B, T, D]``."""
        return self.pos_embed[0, 1:][orders]

    def token_embeddings(self, ids: Tensor) -> Tensor:
        return self.token_emb(ids)

    # ---- teacher forcing -----------------------------------------------------------------------------
    def forward(self, gen_ids: Tensor, classes: Tensor, orders: Tensor, groups: Tensor | list[int]) -> Tensor:
        """Logits ``[B, T, V]`` of the queries for tokens ``gen_ids [B, T]`` in generation order ``orders`` under
        the group plan ``groups`` (sizes, or group ids per generation index); logit ``j`` predicts
        ``gen_ids[:, j]``."""
        B, T = gen_ids.shape
        pos = self.positions(orders)
        cls = self.class_vectors(classes).expand(B, -1, -1) + self.pos_embed[:, :1]
        x = torch.cat([cls, self.token_emb(gen_ids) + pos, self.mask_token + pos], dim=1)
        mask = group_causal_mask(group_ids(groups, gen_ids.device))
        return self.transformer(self.z_proj_ln(x), mask=mask, rows=slice(T + 1, None))

    def logits(self, codes: Tensor, classes: Tensor, orders: Tensor | None = None,
               groups: Tensor | list[int] | None = None) -> Tensor:
        """Teacher-forced logits ``[B, T, V]`` in generation order. ``groups``: the group plan (default: one
        token per group — plain next-token prediction, what one token per decoding step computes)."""
        codes = self.check_codes(codes)
        if orders is None:
            orders = self.default_order().expand(codes.shape[0], -1)
        groups = [1] * self.seq_len if groups is None else groups
        return self.forward(orders_lib.permute(codes, orders), classes, orders, groups)

    def training_extras(self, batch: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The step's group plan: one of the training plans (:func:`anyorder.models.lpd.plans.training_plans`),
        drawn uniformly from ``generator`` and shared by the whole global batch, as group ids ``[T]`` (picked on
        the generator's device: no host sync)."""
        dev = generator.device if generator is not None else self.device
        key = (self.seq_len, tuple(self.config.train_steps), str(dev))
        if self._plan_ids is None or self._plan_ids[0] != key:
            plans = training_plans(self.seq_len, self.config.train_steps)
            self._plan_ids = (key, torch.stack([group_ids(p) for p in plans]).to(dev))
        ids = self._plan_ids[1]
        return {"groups": ids[torch.randint(ids.shape[0], (1,), generator=generator, device=dev)][0]}

    # ---- KV-cached decoding (image tokens only) -----------------------------------------------------------
    def start_decoding(self, classes: Tensor, orders: Tensor, static: bool = False) -> LPDState:
        """Set up the cache (slot 0 the class, slot ``1 + j`` the ``j``-th token; ``static`` adds a scratch slot
        ``T + 1`` for the padding rows of bucketed steps) and precompute the class row, the position rows and
        the query rows of the whole generation order."""
        B, T = orders.shape
        self.transformer.setup_cache(B, T + 1 + int(static), reuse=static)
        pos = self.positions(orders)
        return LPDState(orders=orders, classes=classes, static=static,
                        cls=self.z_proj_ln(self.class_vectors(classes) + self.pos_embed[:, :1]), pos=pos,
                        queries=self.z_proj_ln(self.mask_token + pos),
                        slots=torch.arange(T + 1 + int(static), device=orders.device))

    def feed_prefix(self, state: LPDState, context: Tensor) -> None:
        """The class and an edit's known tokens into the cache (slots ``0 .. P``), each seeing the class and the
        known tokens before it in the order — as if decoded one per step, so a step's logits equal the
        teacher-forced ones of the known-first order; the first step then feeds its queries only."""
        P = context.shape[1]
        tok = context if context.is_floating_point() else self.token_emb(context)
        x = torch.cat([state.cls, self.z_proj_ln(tok + state.pos[:, :P])], dim=1)
        step = CacheStep(state.slots[: P + 1], kv_len=P + 1, visible=state.slots[: P + 1] + 1)  # causal
        self.transformer.decode_step(x, step, last=0)
        return None

    def _feed(self, state: LPDState, new_tokens: Tensor | None, num_queries: int) -> tuple[Tensor, Tensor, int, int]:
        """The fed rows (the tokens sampled last step, the class at the prefill, or none after an edit's known
        tokens) starting at slot ``start``, and the step's query rows ``q``; the fed rows see the slots below
        ``see`` (their own group included)."""
        done, m = state.done, num_queries
        T = state.orders.shape[1]
        if done + m > T:
            raise ValueError(f"{m} queries after {done} decoded tokens exceed the {T} positions")
        n = 0 if new_tokens is None else new_tokens.shape[1]
        if n == 0 and done > 0:  # after feed_prefix: the known tokens are in the cache, only queries now
            x, start = state.cls[:, :0], 1 + done
        elif n == 0:  # prefill: the class at slot 0
            x, start = state.cls, 0
        else:  # the tokens of generation indices done - n .. done - 1 at slots 1 + index
            start = 1 + done - n
            tok = new_tokens if new_tokens.is_floating_point() else self.token_emb(new_tokens)
            x = self.z_proj_ln(tok + state.pos[:, done - n : done])
        return x, state.queries[:, done : done + m], start, start + x.shape[1]

    def decode_one_step(self, state: LPDState, new_tokens: Tensor | None, num_queries: int) -> Tensor:
        """Feed the tokens sampled last step (ids ``[B, n]`` or embeddings) and ask ``num_queries`` positions at
        once: the queries see each other and every token fed so far; returns their logits ``[B, m, V]``."""
        if state.static:
            return self.static_step(self.step_inputs(state, new_tokens, num_queries))[:, :num_queries]
        x, q, start, see = self._feed(state, new_tokens, num_queries)
        stop = see + num_queries
        visible = torch.cat([state.slots.new_full((x.shape[1],), see), state.slots.new_full((num_queries,), stop)])
        step = CacheStep(state.slots[start:stop], kv_len=stop, visible=visible)
        return self.transformer.decode_step(torch.cat([x, q], dim=1), step, last=num_queries)

    def step_inputs(self, state: LPDState, new_tokens: Tensor | None, num_queries: int) -> StepInputs:
        """``[fed rows, padding, queries, padding]`` padded to :func:`bucket` sizes; padding rows are zeros written
        at the scratch slot ``T + 1``, which no real row sees (padding rows see every slot: none fully masked)."""
        x, q, start, see = self._feed(state, new_tokens, num_queries)
        B, F, m = x.shape[0], x.shape[1], num_queries
        fb, mb = bucket(F), bucket(m)
        slots = state.slots
        S = slots.shape[0]

        def pad(t: Tensor, rows: int) -> Tensor:
            return t if rows == 0 else torch.cat([t, t.new_zeros(B, rows, *t.shape[2:])], dim=1)

        def full(n: int, value: int) -> Tensor:
            return slots.new_full((n,), value)

        q0 = start + F
        pos = torch.cat([slots[start:q0], full(fb - F, S - 1), slots[q0 : q0 + m], full(mb - m, S - 1)])
        visible = torch.cat([full(F, see), full(fb - F, S), full(m, q0 + m), full(mb - m, S)])
        return StepInputs(x=torch.cat([pad(x, fb - F), pad(q, mb - m)], dim=1), input_pos=pos, last=mb,
                          window=attention_window(q0 + m, S), visible=visible)
