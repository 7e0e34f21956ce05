"""The decoder-only transformer every family shares.

One block type with a few switches, set by :class:`TransformerConfig`:

- ``norm``: ``"layernorm"`` (RAR, LPD) or ``"rmsnorm"`` (RandAR / LlamaGen, computed in fp32);
- ``mlp``: ``"gelu"`` (``fc1 -> GELU -> fc2``: RAR, LPD) or ``"swiglu"`` (``w2(silu(w1 x) * w3 x)``: RandAR);
- ``mlp_act_dropout``: dropout on the MLP's hidden activations too, before ``fc2`` (timm's
  ``Mlp(drop=p)``, which RAR and LPD use, drops after the activation and after the output
  projection; LlamaGen's FFN, RandAR's, only after the output projection);
- ``adaln``: DiT-style adaptive LayerNorm conditioning (RAR) — each block regresses shift/scale/gate for
  attention and MLP from a conditioning vector ``c``; the final layer regresses scale and shift;
- qk-norm (RAR), 2D RoPE (RandAR), biases (RAR, LPD; LPD's head has none).

Three entry points, one per mode:

- :meth:`Transformer.forward` — training and teacher forcing: logits over a whole sequence, causal or under
  a given attention mask (LPD's group-causal mask);
- :meth:`Transformer.decode_step` — one KV-cached decoding step (:class:`~anyorder.nn.kv_cache.CacheStep`);
- :meth:`Transformer.hidden_states` — residual streams after some blocks (feature extraction: no later blocks,
  no head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from anyorder.nn.kv_cache import CacheStep, KVCache
from anyorder.nn.rope import apply_rope

__all__ = ["TransformerConfig", "RMSNorm", "make_norm", "modulate", "Attention", "MLP", "Block", "FinalLayer",
           "Transformer"]


@dataclass
class TransformerConfig:
    dim: int
    depth: int
    n_head: int
    mlp_hidden: int
    vocab_out: int
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    norm_eps: float = 1e-6
    mlp: str = "gelu"  # "gelu" | "swiglu"
    adaln: bool = True
    bias: bool = True  # biases in qkv / proj / mlp
    head_bias: bool | None = None  # bias in the output head (None: as ``bias``)
    qk_norm: bool = True
    dropout: float = 0.0
    attn_dropout: float = 0.0
    mlp_act_dropout: bool = False  # also drop the MLP's hidden activations (timm Mlp: RAR, LPD)

    def __post_init__(self) -> None:
        if self.dim % self.n_head:
            raise ValueError(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        if self.mlp not in ("gelu", "swiglu"):
            raise ValueError(f"mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")
        if self.head_bias is None:
            self.head_bias = self.bias

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        out = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)
        return out * self.weight if self.weight is not None else out


def make_norm(cfg: TransformerConfig, dim: int | None = None, affine: bool = True) -> nn.Module:
    dim = cfg.dim if dim is None else dim
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps, affine)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, elementwise_affine=affine)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=cfg.bias)
        self.q_norm = make_norm(cfg, cfg.head_dim) if cfg.qk_norm else nn.Identity()
        self.k_norm = make_norm(cfg, cfg.head_dim) if cfg.qk_norm else nn.Identity()
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=cfg.bias)
        self.attn_dropout = cfg.attn_dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.kv_cache: KVCache | None = None

    def forward(self, x: Tensor, rope: Tensor | None = None, mask: Tensor | None = None,
                step: CacheStep | None = None) -> Tensor:
        """Self-attention over ``x [B, L, D]``: causal, or under ``mask`` (bool, True = attend); with
        ``step``, a cached decode step that writes this block's keys and values into its cache."""
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_head, self.head_dim).unbind(2)  # [B, L, H, D]
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, D]
        if step is not None:
            k, v = self.kv_cache.update(step, k, v)
            y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=self.kv_cache.mask(step))
        else:
            drop = self.attn_dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=drop)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, L, -1)))


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.gated = cfg.mlp == "swiglu"
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_hidden, bias=cfg.bias)
        self.fc3 = nn.Linear(cfg.dim, cfg.mlp_hidden, bias=cfg.bias) if self.gated else None
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.dim, bias=cfg.bias)
        # timm's Mlp: fc1 -> act -> drop1 -> fc2 -> drop2 (masks drawn in that order); LlamaGen: no drop1
        self.act_dropout = nn.Dropout(cfg.dropout) if cfg.mlp_act_dropout else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.fc3 is not None:
            h = F.silu(self.fc1(x)) * self.fc3(x)
        else:
            h = F.gelu(self.fc1(x))
        return self.dropout(self.fc2(self.act_dropout(h)))


class Block(nn.Module):
    """Pre-norm transformer block; with ``adaln`` the DiT/RAR adaLN-modulated variant."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = Attention(cfg)
        self.norm2 = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim)) if cfg.adaln else None

    def forward(self, x: Tensor, c: Tensor | None = None, rope: Tensor | None = None, mask: Tensor | None = None,
                step: CacheStep | None = None, mod: Tensor | None = None) -> Tensor:
        """``mod``: this block's adaLN output ``adaLN_modulation(c)`` computed ahead (see
        :meth:`Transformer.modulations`); ``c`` is then not read."""
        if self.adaLN_modulation is None:
            x = x + self.attn(self.norm1(x), rope, mask, step)
            return x + self.mlp(self.norm2(x))
        mod = self.adaLN_modulation(c) if mod is None else mod
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope, mask, step)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """Final norm (+ adaLN scale/shift, scale first, as RAR orders the chunks) and the output head."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm = make_norm(cfg, affine=not cfg.adaln)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 2 * cfg.dim)) if cfg.adaln else None
        self.head = nn.Linear(cfg.dim, cfg.vocab_out, bias=cfg.head_bias)

    def forward(self, x: Tensor, c: Tensor | None = None, mod: Tensor | None = None) -> Tensor:
        x = self.norm(x)
        if self.adaLN_modulation is not None:
            scale, shift = (self.adaLN_modulation(c) if mod is None else mod).chunk(2, dim=-1)
            x = modulate(x, shift, scale)
        return self.head(x)


def _rows(t: Tensor | None, keep: slice, length: int) -> Tensor | None:
    """Per-position tensors (``[B, length, ...]``) sliced to the kept rows; per-sequence ones unchanged."""
    return t[:, keep] if t is not None and t.dim() == 3 and t.shape[1] == length else t


class Transformer(nn.Module):
    """A stack of :class:`Block` s and a :class:`FinalLayer` over input embeddings ``[B, L, dim]``.

    ``c`` (adaLN conditions) is ``[B, 1, dim]`` or per position ``[B, L, dim]``; ``rope`` is a RoPE table
    ``[B, L, head_dim / 2, 2]`` of the positions' rows."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.final = FinalLayer(cfg)
        # activation checkpointing of the blocks while training (recomputed in backward; saves memory)
        self.grad_checkpointing = False

    # ---- training / teacher forcing ------------------------------------------------------------
    def forward(self, x: Tensor, c: Tensor | None = None, rope: Tensor | None = None, mask: Tensor | None = None,
                rows: slice | None = None) -> Tensor:
        """Logits for a whole sequence: causal attention, or ``mask`` (bool ``[L, L]`` or ``[B, 1, L, L]``,
        True = attend). ``rows`` (a slice of positions) runs the final layer and head on those only (RandAR
        reads its logits at every other slot: the head, its backward and the loss skip the rest)."""
        ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        L = x.shape[1]
        for blk in self.blocks:
            x = checkpoint(blk, x, c, rope, mask, use_reentrant=False) if ckpt else blk(x, c, rope, mask)
        if rows is not None:
            x, c = x[:, rows], _rows(c, rows, L)
        return self.final(x, c)

    def hidden_states(self, x: Tensor, layers: tuple[int, ...], c: Tensor | None = None,
                      rope: Tensor | None = None, mask: Tensor | None = None) -> list[Tensor]:
        """The residual streams after blocks ``layers`` (0-based), in that order; the blocks after the deepest
        of them, the final layer and the head do not run (feature extraction)."""
        if not layers or not all(0 <= i < len(self.blocks) for i in layers):
            raise ValueError(f"layers must be block indices in 0..{len(self.blocks) - 1}, got {layers}")
        hidden: dict[int, Tensor] = {}
        for i, blk in enumerate(self.blocks[: max(layers) + 1]):
            x = blk(x, c, rope, mask)
            hidden[i] = x
        return [hidden[i] for i in layers]

    # ---- KV-cached decoding ----------------------------------------------------------------------
    def decode_step(self, x: Tensor, step: CacheStep, c: Tensor | None = None, rope: Tensor | None = None,
                    last: int = 1, mods: list[Tensor] | None = None) -> Tensor:
        """One cached step: the rows ``x [B, L, dim]`` are written at ``step.input_pos`` in every block's cache
        and attend as ``step`` says; returns the logits of the last ``last`` rows. ``mods``: the adaLN outputs
        of :meth:`modulations` for these rows, used in place of ``c``."""
        L = x.shape[1]
        for i, blk in enumerate(self.blocks):
            x = blk(x, c, rope, None, step, None if mods is None else mods[i])
        keep = slice(L - last, None)
        final_mod = None if mods is None else _rows(mods[-1], keep, L)
        return self.final(x[:, keep], _rows(c, keep, L), final_mod)

    def modulations(self, c: Tensor) -> list[Tensor]:
        """Every block's adaLN output for conditions ``c`` and the final layer's last (``depth + 1`` tensors
        ``[..., 6 * dim]`` / ``[..., 2 * dim]``), to pass as ``mods``. They depend on ``c`` only, not on the
        tokens: RAR's sampler computes them for many cache slots in one matmul per block, ahead of the steps
        that read them, instead of a ``rows x dim`` matmul per block per step."""
        return [blk.adaLN_modulation(c) for blk in self.blocks] + [self.final.adaLN_modulation(c)]

    def setup_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None, reuse: bool = False) -> None:
        """Allocate a :class:`KVCache` per block. ``reuse`` keeps caches of the same layout from an earlier
        generation (the static compiled step: same buffers, so no recompilation or CUDA-graph re-capture;
        stale entries are never read, the mask hides every slot not yet written). Caches of another layout
        (e.g. the smaller last batch of a run) are freed before the new ones are allocated: never two caches."""
        ref = next(self.parameters())
        dtype, device = dtype or ref.dtype, device or ref.device
        shape = (batch, self.cfg.n_head, max_len, self.cfg.head_dim)
        old = [blk.attn.kv_cache for blk in self.blocks]
        if reuse and all(c is not None and c.matches(*shape, dtype, device) for c in old):
            return
        del old
        self.clear_cache()
        for blk in self.blocks:
            blk.attn.kv_cache = KVCache(*shape, dtype, device)

    def clear_cache(self) -> None:
        for blk in self.blocks:
            blk.attn.kv_cache = None

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, truncated: bool = True, zero_head: bool = False) -> None:
        """Normal (std 0.02; truncated as RAR's ``trunc_normal_``, plain as LlamaGen's) linears, zero
        biases, unit norms, zero adaLN (DiT/RAR); ``zero_head`` zero-initialises the head (LlamaGen)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                if truncated:
                    nn.init.trunc_normal_(m.weight, std=std)
                else:
                    nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, RMSNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for mod in [*(b.adaLN_modulation for b in self.blocks), self.final.adaLN_modulation]:
            if mod is not None:
                nn.init.zeros_(mod[-1].weight)
                nn.init.zeros_(mod[-1].bias)
        if zero_head:
            nn.init.zeros_(self.final.head.weight)
