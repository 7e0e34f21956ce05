"""RAR: Randomized AutoRegressive visual generation (Yu et al., arXiv 2411.00776).

A plain causal transformer with adaLN class conditioning over the sequence
``[cls, condition, x_1 ... x_T]``. Image tokens come in generation order (``x_j`` sits at raster
position ``order[j]``). Every slot gets ``pos_embed`` of the position it *is*, plus a
*target-aware* embedding of the position it *predicts* — so a model trained on random
permutations knows which token comes next. Each slot's adaLN input is the condition token's
embedding plus a learned per-slot timestep embedding.

Token ids follow the official layout: codes ``0..V-1``, ``V`` a mask id (unused), class ``c`` is
``V + 1 + c``, and ``V + 1 + C`` is the none-condition id (our null class ``C``).

For inference the two position tables can be merged into one for the final order
(:meth:`RAR.merge_position_embeddings`): the same logits from one table and less work per step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from anyorder.models.base import AnyOrderModel, DecodeState, StepInputs, check_config
from anyorder.models.spec import KeyMap
from anyorder.nn import orders as orders_lib
from anyorder.nn.kv_cache import CacheStep, attention_window
from anyorder.nn.transformer import Transformer, TransformerConfig


@dataclass
class RARConfig:
    dim: int = 768
    depth: int = 24
    n_head: int = 16
    mlp_hidden: int = 3072
    seq_len: int = 256  # image tokens T (a square grid)
    codebook_size: int = 1024
    num_classes: int = 1000
    dropout: float = 0.0
    attn_dropout: float = 0.0
    class_dropout: float = 0.1
    order: str = "raster"  # the scan order annealing ends in; sampling uses it
    pos_extra: int = 1024  # official tables carry T + 1024 position rows
    timestep_extra: int = 100  # and T + 100 timestep rows
    merged_pos_embed: bool = False  # exported: one position table for ``order``
    grad_checkpointing: bool = False  # training only: recompute the blocks' activations in backward

    def __post_init__(self) -> None:
        check_config(self, ("dim", "depth", "n_head", "mlp_hidden", "seq_len", "codebook_size", "num_classes"),
                     ("dropout", "attn_dropout", "class_dropout"))
        orders_lib.scan_order(self.order, 1)  # validates the name
        if self.pos_extra < 2 or self.timestep_extra < 2:
            raise ValueError("pos_extra and timestep_extra must be >= 2 (the cls and condition slots)")

    def transformer_config(self) -> TransformerConfig:
        return TransformerConfig(
            dim=self.dim, depth=self.depth, n_head=self.n_head, mlp_hidden=self.mlp_hidden,
            vocab_out=self.codebook_size, norm="layernorm", norm_eps=1e-6, mlp="gelu", adaln=True,
            bias=True, qk_norm=True, dropout=self.dropout, attn_dropout=self.attn_dropout,
            mlp_act_dropout=True,  # timm Mlp(drop=proj_drop) in 1d-tokenizer's rar.py Block
        )


# official names <-> ours (the transformer lives under ``transformer.``; the final adaLN and the head under
# ``transformer.final``); 1d-tokenizer's weight-decay rule reads the official names
OFFICIAL_KEYS = KeyMap([
    ("blocks.", "transformer.blocks."),
    ("lm_head.", "transformer.final.head."),
    ("adaln_before_head.", "transformer.final."),
])
# 1d-tokenizer's trainer (utils/train_utils.py, create_optimizer): no decay for names containing these
_NO_DECAY = ("ln", "bias", "norm", "gamma", "embed", "embedding", "latent_tokens", "mask_token")


@dataclass(kw_only=True)
class RARState(DecodeState):
    """What a RAR generation precomputes once: the condition ids and embedding, the merged position table,
    the per-slot adaLN inputs, the slot indices; and the adaLN outputs computed ahead (:meth:`RAR._modulations`)."""

    cond: Tensor  # condition token ids [B]
    cond_emb: Tensor  # [B, 1, D]
    table: Tensor  # merged position embeddings [B, T + 2, D]
    adaln_in: Tensor  # [B, T + 2, D]
    slots: Tensor  # arange(T + 2)
    ahead: int  # slots whose adaLN outputs are computed at once (< 2: off)
    mods: list[Tensor] | None = None
    mods_span: tuple[int, int] = (0, 0)


class RAR(AnyOrderModel):
    family = "rar"
    config_class = RARConfig
    # memory for adaLN outputs computed ahead while sampling (see _modulations); 0 turns it off
    adaln_ahead_bytes: int = 64 * 2**20

    def __init__(self, config: RARConfig) -> None:
        super().__init__(config)
        c = config
        T, D = c.seq_len, c.dim
        self.embeddings = nn.Embedding(c.codebook_size + 1 + c.num_classes + 1, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        if c.merged_pos_embed:
            self.pos_embed = nn.Parameter(torch.zeros(1, T + 2, D))
            self.target_aware_pos_embed = None
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, T + c.pos_extra, D))
            self.target_aware_pos_embed = nn.Parameter(torch.zeros(1, T + c.pos_extra, D))
        self.timesteps_embeddings = nn.Parameter(torch.zeros(1, T + c.timestep_extra, D))
        self.transformer = Transformer(c.transformer_config())
        self.transformer.grad_checkpointing = c.grad_checkpointing
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """As the official code: trunc-normal(0.02) for linears, embeddings and position tables,
        zero-initialised adaLN, zero cls token."""
        self.transformer.init_weights(truncated=True)
        nn.init.trunc_normal_(self.embeddings.weight, std=0.02)
        for p in (self.pos_embed, self.target_aware_pos_embed, self.timesteps_embeddings):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        nn.init.zeros_(self.cls_token)

    def decays(self, name: str, param: Tensor) -> bool:
        """1d-tokenizer's rule, read on the official name: matrices decay unless the name holds ``ln``,
        ``bias``, ``norm``, ``gamma``, ``embed`` ... So the position / target-aware / timestep tables and the
        token embedding do not decay, ``cls_token`` does; the blocks' adaLN weights decay, the final layer's
        (``adaln_before_head``) do not."""
        official = OFFICIAL_KEYS.to_official(name)
        return param.dim() >= 2 and not any(s in official for s in _NO_DECAY)

    # ---- ids --------------------------------------------------------------------------------------
    def condition_tokens(self, classes: Tensor) -> Tensor:
        """Class ids (``num_classes`` = null) to the official condition token ids."""
        return self.check_classes(classes) + self.codebook_size + 1

    # ---- per-slot tables --------------------------------------------------------------------------
    def position_table(self, orders: Tensor) -> Tensor:
        """Merged position embeddings ``[B, T + 2, D]`` for slots ``[cls, cond, x_1 .. x_T]``:
        ``pos_embed`` of the slot's own position plus the target-aware row of the position it predicts
        (condition -> ``order[0]``, ``x_j`` -> ``order[j+1]``; cls and the last token get none)."""
        T = self.seq_len
        if self.target_aware_pos_embed is None:  # exported model: one table, one order
            if not torch.equal(orders, self.default_order().expand_as(orders)):
                raise ValueError(f"this RAR has merged position embeddings for the {self.config.order!r} "
                                 "order only; other orders need the unmerged model")
            return self.pos_embed[:, : T + 2].expand(orders.shape[0], -1, -1)
        B = orders.shape[0]
        pe, ta = self.pos_embed[0], self.target_aware_pos_embed[0]
        own = torch.cat([pe[:2].expand(B, -1, -1), pe[2 + orders]], dim=1)  # [B, T+2, D]
        zero = pe.new_zeros(B, 1, pe.shape[-1])
        target = torch.cat([zero, ta[2 + orders], zero], dim=1)  # slot 1 + j predicts order[j]
        return own + target

    def _embed(self, gen_ids: Tensor, cond: Tensor, table: Tensor, slots: slice) -> tuple[Tensor, Tensor]:
        """Input embeddings and adaLN conditions for ``slots`` (a contiguous range of slot indices, a host
        ``slice``: no device sync). ``gen_ids`` are the image tokens for the image slots among them, in order."""
        B = cond.shape[0]
        cond_emb = self.embeddings(cond)[:, None]  # [B, 1, D]
        parts = []
        first = slots.start
        if first == 0:
            parts.append(self.cls_token.expand(B, -1, -1))
        if first <= 1 <= slots.stop - 1:
            parts.append(cond_emb)
        if gen_ids is not None and gen_ids.shape[1]:
            parts.append(self.embeddings(gen_ids))
        x = torch.cat(parts, dim=1) + table[:, slots]
        c = cond_emb + self.timesteps_embeddings[:, slots]
        return x, c

    # ---- teacher forcing (official training and no-cache sampling paths) -------------------------
    def forward(self, gen_ids: Tensor, classes: Tensor, orders: Tensor | None = None,
                rows: slice = slice(1, None)) -> Tensor:
        """Official ``forward_fn`` without cache: ``gen_ids [B, L]`` (``L <= T``) in generation order,
        returns ``[B, L + 1, V]`` (the cls slot dropped); logit ``k`` predicts generation index ``k``.
        ``rows``: the slots of ``[cls, cond, x_1 .. x_L]`` the head runs on."""
        B, L = gen_ids.shape
        if orders is None:
            orders = self.default_order().expand(B, -1)
        cond = self.condition_tokens(classes).expand(B)
        table = self.position_table(orders)
        x, c = self._embed(gen_ids, cond, table, slice(0, L + 2))
        return self.transformer(x, c, rows=rows)

    def logits(self, codes: Tensor, classes: Tensor, orders: Tensor | None = None) -> Tensor:
        codes = self.check_codes(codes)
        if orders is None:
            orders = self.default_order().expand(codes.shape[0], -1)
        # the head on the T slots that predict tokens only (not cls, not the last token): no slicing copy
        return self.forward(orders_lib.permute(codes, orders), classes, orders, rows=slice(1, -1))

    # ---- KV-cached decoding ----------------------------------------------------------------------
    def start_decoding(self, classes: Tensor, orders: Tensor, static: bool = False) -> RARState:
        """Set up the cache and precompute, once per generation, everything a step only slices: the merged
        position table, the condition embedding, the per-slot adaLN inputs and the slot indices."""
        B, S = orders.shape[0], self.seq_len + 2
        self.transformer.setup_cache(B, S, reuse=static)
        cond = self.condition_tokens(classes)
        cond_emb = self.embeddings(cond)[:, None]  # [B, 1, D]
        per_slot = B * (6 * self.config.depth + 2) * self.config.dim * self.cls_token.element_size()  # adaLN bytes
        return RARState(orders=orders, classes=classes, static=static, cond=cond, cond_emb=cond_emb,
                        table=self.position_table(orders), adaln_in=cond_emb + self.timesteps_embeddings[:, :S],
                        slots=torch.arange(S, device=orders.device), ahead=min(S, self.adaln_ahead_bytes // per_slot))

    def _modulations(self, state: RARState, start: int, stop: int) -> list[Tensor] | None:
        """The adaLN outputs of slots ``start:stop``, from blocks computed ahead for up to ``ahead`` slots.

        A one-row step multiplies every block's ``D x 6D`` adaLN weight (a third of the block) by ``B`` rows;
        the outputs depend on the class and the slot only, so one matmul per block for the next ``ahead``
        slots reads those weights once per ``ahead`` steps (``adaln_ahead_bytes`` bounds the buffer; ``None``
        where not even two slots fit: the step then computes them itself, as large batches on a GPU do)."""
        if state.ahead < 2:
            return None
        lo, hi = state.mods_span
        if not (lo <= start and stop <= hi):
            # every chunk holds exactly `ahead` slots (the last one starts earlier): same strides for the
            # slices a compiled step reads, so no recompilation at the last chunk
            lo = min(start, self.seq_len + 2 - state.ahead)
            hi = lo + state.ahead
            state.mods, state.mods_span = self.transformer.modulations(state.adaln_in[:, lo:hi]), (lo, hi)
        return [m[:, start - lo : stop - lo] for m in state.mods]

    def _feed(self, state: RARState, new_tokens: Tensor | None,
              num_queries: int) -> tuple[Tensor, Tensor, int, int]:
        if num_queries != 1:
            raise ValueError("RAR decodes one token per step (its target-aware embeddings fix the next position)")
        if new_tokens is None or new_tokens.shape[1] == 0:  # prefill: [cls, condition] at slots 0, 1
            start, stop = 0, 2
            x = torch.cat([self.cls_token.expand(state.cond_emb.shape[0], -1, -1), state.cond_emb], dim=1)
        else:  # tokens with generation index done - n .. done - 1 sit at slots 2 + index
            start, stop = 2 + state.done - new_tokens.shape[1], 2 + state.done
            x = self.embeddings(new_tokens)
        return x + state.table[:, start:stop], state.adaln_in[:, start:stop], start, stop

    def decode_one_step(self, state: RARState, new_tokens: Tensor | None, num_queries: int = 1) -> Tensor:
        if state.static:
            return self.static_step(self.step_inputs(state, new_tokens, num_queries))
        x, c, start, stop = self._feed(state, new_tokens, num_queries)
        step = CacheStep(state.slots[start:stop], kv_len=stop)
        return self.transformer.decode_step(x, step, c, last=1, mods=self._modulations(state, start, stop))

    def step_inputs(self, state: RARState, new_tokens: Tensor | None, num_queries: int = 1) -> StepInputs:
        """One token in, one query out (two rows at the prefill): RAR's step is static without padding."""
        x, c, start, stop = self._feed(state, new_tokens, num_queries)
        mods = self._modulations(state, start, stop)
        return StepInputs(x=x, c=c if mods is None else None, mods=mods, last=1, input_pos=state.slots[start:stop],
                          window=attention_window(stop, self.seq_len + 2))

    # ---- export ------------------------------------------------------------------------------------
    @torch.no_grad()
    def merge_position_embeddings(self) -> RAR:
        """A copy for inference whose single position table already holds the target-aware
        embeddings of the final (``config.order``) order. Its outputs equal this model's in that order.
        The copy keeps each tensor's device and dtype (a bf16 model gives a bf16 copy) and the sampling
        settings; it is built on the meta device and takes copies of the tensors (no random init)."""
        with torch.device("meta"):
            merged = RAR(replace(self.config, merged_pos_embed=True))
        sd = {k: v.clone() for k, v in self.state_dict().items() if k not in ("pos_embed", "target_aware_pos_embed")}
        sd["pos_embed"] = self.position_table(self.default_order()[None]).clone()  # the model's dtype
        merged.load_state_dict(sd, strict=True, assign=True)
        merged.sampling_defaults = dict(self.sampling_defaults)
        return merged
