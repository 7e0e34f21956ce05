"""The decoder-only transformer that RAR and RandAR share.

One block type with three switches, set by :class:`TransformerConfig`:

- ``norm``: ``"layernorm"`` (RAR, eps 1e-6, affine) or ``"rmsnorm"`` (RandAR / LlamaGen, computed in fp32);
- ``mlp``: ``"gelu"`` (``fc1 -> GELU -> fc2``, RAR) or ``"swiglu"`` (``w2(silu(w1 x) * w3 x)``, RandAR);
- ``adaln``: DiT-style adaptive LayerNorm conditioning (RAR) — each block regresses
  shift/scale/gate for attention and MLP from a conditioning vector ``c``; the final layer regresses
  scale and shift.

Attention is causal through ``F.scaled_dot_product_attention``, optionally with qk-norm (RAR) and
2D RoPE (RandAR), and optionally reads/writes a static :class:`~anyorder.nn.kv_cache.KVCache`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from anyorder.nn.kv_cache import KVCache
from anyorder.nn.rope import apply_rope


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
    bias: bool = True  # biases in qkv / proj / mlp / head
    qk_norm: bool = True
    dropout: float = 0.0
    attn_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.dim % self.n_head:
            raise ValueError(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        if self.mlp not in ("gelu", "swiglu"):
            raise ValueError(f"mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")

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

    def forward(self, x: Tensor, rope: Tensor | None = None, input_pos: Tensor | None = None,
                kv_len: int | None = None, window: int | None = None) -> Tensor:
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_head, self.head_dim).unbind(2)  # [B, L, H, D]
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, D]
        if self.kv_cache is not None and input_pos is not None:
            k, v = self.kv_cache.update(input_pos, k, v, kv_len, window)
            # one query at the last filled slot sees every slot: no mask needed; the static step (kv_len
            # None) reads the rows of the cache's precomputed causal mask (over its first `window` slots)
            mask = None if (L == 1 and kv_len is not None) else self.kv_cache.mask(input_pos, kv_len, window)
            y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask)
        else:
            drop = self.attn_dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, L, -1)))


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.gated = cfg.mlp == "swiglu"
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_hidden, bias=cfg.bias)
        self.fc3 = nn.Linear(cfg.dim, cfg.mlp_hidden, bias=cfg.bias) if self.gated else None
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.dim, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.fc3 is not None:
            h = F.silu(self.fc1(x)) * self.fc3(x)
        else:
            h = F.gelu(self.fc1(x))
        return self.dropout(self.fc2(h))


class Block(nn.Module):
    """Pre-norm transformer block; with ``adaln`` the DiT/RAR adaLN-modulated variant."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = Attention(cfg)
        self.norm2 = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim)) if cfg.adaln else None

    def forward(self, x: Tensor, c: Tensor | None = None, rope: Tensor | None = None,
                input_pos: Tensor | None = None, kv_len: int | None = None, mod: Tensor | None = None,
                window: int | None = None) -> Tensor:
        """``mod``: this block's adaLN output ``adaLN_modulation(c)`` computed ahead (see
        :meth:`Transformer.modulations`); ``c`` is then not read."""
        if self.adaLN_modulation is None:
            x = x + self.attn(self.norm1(x), rope, input_pos, kv_len, window)
            return x + self.mlp(self.norm2(x))
        mod = self.adaLN_modulation(c) if mod is None else mod
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope, input_pos, kv_len, window)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """Final norm (+ adaLN scale/shift, scale first, as RAR orders the chunks) and the output head."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm = make_norm(cfg, affine=not cfg.adaln)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 2 * cfg.dim)) if cfg.adaln else None
        self.head = nn.Linear(cfg.dim, cfg.vocab_out, bias=cfg.bias)

    def forward(self, x: Tensor, c: Tensor | None = None, mod: Tensor | None = None) -> Tensor:
        x = self.norm(x)
        if self.adaLN_modulation is not None:
            scale, shift = (self.adaLN_modulation(c) if mod is None else mod).chunk(2, dim=-1)
            x = modulate(x, shift, scale)
        return self.head(x)


class Transformer(nn.Module):
    """A stack of :class:`Block` s and a :class:`FinalLayer` over input embeddings ``[B, L, dim]``."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.final = FinalLayer(cfg)
        # activation checkpointing of the blocks while training (recomputed in backward; saves memory)
        self.grad_checkpointing = False

    def forward(self, x: Tensor, c: Tensor | None = None, rope: Tensor | None = None,
                input_pos: Tensor | None = None, return_hidden: bool = False,
                hidden_layers: tuple[int, ...] = (), kv_len: int | None = None,
                last: int | None = None, stop_after: int | None = None,
                rows: slice | None = None, mods: list[Tensor] | None = None,
                window: int | None = None) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Logits for every input position. ``input_pos`` (cache slots) switches to cached decoding;
        ``kv_len`` (a host int: one past the highest slot written, with ``input_pos`` the ``L`` slots just
        below it) limits attention to the filled part of the cache; without it (the static, compilable
        step) attention runs over the whole cache, or its first ``window`` slots, under its precomputed causal
        mask (:func:`~anyorder.nn.kv_cache.attention_window`). ``last`` computes the
        output head for the last ``last`` positions only; ``rows`` (a slice of positions) for those only
        (RandAR reads its logits at every other slot: the head, its backward and the loss skip the rest).
        ``hidden_layers`` additionally returns the residual stream after those blocks (0-based).
        ``stop_after``: run only the first ``stop_after`` blocks and return their residual stream in place
        of the logits (no later blocks, no final layer or vocabulary head: feature extraction).
        ``mods``: the adaLN outputs of :meth:`modulations` for these positions, used in place of ``c``."""
        hidden: list[Tensor] = []
        if stop_after is not None and not 0 <= stop_after <= len(self.blocks):
            raise ValueError(f"stop_after must be in 0..{len(self.blocks)} blocks, got {stop_after}")
        blocks = self.blocks if stop_after is None else self.blocks[:stop_after]
        ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled() and input_pos is None
        for i, blk in enumerate(blocks):
            mod = None if mods is None else mods[i]
            if ckpt:
                x = checkpoint(blk, x, c, rope, input_pos, kv_len, mod, window, use_reentrant=False)
            else:
                x = blk(x, c, rope, input_pos, kv_len, mod, window)
            if i in hidden_layers:
                hidden.append(x)
        if stop_after is not None:
            return (x, hidden) if (return_hidden or hidden_layers) else x
        final_mod = None if mods is None else mods[-1]
        for keep in ([slice(-last, None)] if last is not None else []) + ([rows] if rows is not None else []):
            if c is not None and c.dim() == 3 and c.shape[1] == x.shape[1]:  # per-position conditions
                c = c[:, keep]
            if final_mod is not None and final_mod.dim() == 3 and final_mod.shape[1] == x.shape[1]:
                final_mod = final_mod[:, keep]
            x = x[:, keep]
        logits = self.final(x, c, final_mod)
        return (logits, hidden) if (return_hidden or hidden_layers) else logits

    def modulations(self, c: Tensor) -> list[Tensor]:
        """Every block's adaLN output for conditions ``c`` and the final layer's last (``depth + 1`` tensors
        ``[..., 6 * dim]`` / ``[..., 2 * dim]``), to pass as ``mods``. They depend on ``c`` only, not on the
        tokens: RAR's sampler computes them for many cache slots in one matmul per block, ahead of the steps
        that read them, instead of a ``rows x dim`` matmul per block per step."""
        return [blk.adaLN_modulation(c) for blk in self.blocks] + [self.final.adaLN_modulation(c)]

    # ---- KV cache -------------------------------------------------------------------------------
    def setup_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None, reuse: bool = False) -> None:
        """Allocate a :class:`KVCache` per block. ``reuse`` keeps caches of the same layout from an earlier
        generation (the static compiled step: same buffers, so no recompilation or CUDA-graph re-capture;
        stale entries are never read, the causal mask hides every slot not yet written)."""
        ref = next(self.parameters())
        dtype, device = dtype or ref.dtype, device or ref.device
        shape = (batch, self.cfg.n_head, max_len, self.cfg.head_dim)
        for blk in self.blocks:
            old = blk.attn.kv_cache
            if not (reuse and old is not None and old.matches(*shape, dtype, device)):
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
