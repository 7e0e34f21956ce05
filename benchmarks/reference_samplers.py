"""Samplers that mimic the *per-step behaviour* of the official RAR and RandAR implementations.

They exist only as timing baselines for ``kv_cache_speed.py`` and ``parallel_decoding_speed.py``. They
run on the weights of an :class:`anyorder.models.rar.RAR` / :class:`anyorder.models.randar.RandAR` (so both sides do
the same arithmetic) but follow what the official ``generate`` loops do at every step, written here
from a description of those loops (not copied):

RAR (bytedance/1d-tokenizer ``modeling/rar.py``), one token per step:
  - the whole id sequence so far goes back into the model every step; it embeds the condition and all
    ids, builds raster orders for the batch, repeats the *full* ``pos_embed`` and ``target_aware_pos_embed``
    tables (``T + 1024`` rows) over the batch, shuffles them by the orders, adds them, and adds timestep
    embeddings for the full length — then keeps only the last position;
  - each attention layer grows its key/value cache with ``torch.cat``;
  - guidance scale is computed with tensor ops per step; sampling is ``softmax`` + ``multinomial`` on
    ``logits / temperature`` and the ids grow by ``torch.cat``.

RandAR (ziqipang/RandAR ``RandAR/model/randar_gpt.py``), parallel decoding:
  - a static gpt-fast cache, but every step builds its index tensors anew (``input_pos`` from the
    previous one, a ``[B, L, max_len]`` causal-mask gather, the slice bound read back with ``max()``
    in every layer), assembles the step's inputs and RoPE rows in zero-filled buffers with strided
    writes, rotates queries and keys separately, and runs the output head on every fed position;
  - guidance mixes the logits of every fed position; then a **Python loop samples one query at a time**
    (``logits / max(temperature, 1e-5)``, optional top-k / top-p filtering, ``softmax``, ``multinomial``).

Greedy decoding (temperature ~0 for RAR, ``top_k=1`` for RandAR) gives the same ids as
:func:`anyorder.sampling.generate`; the benchmarks assert it before timing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from anyorder.nn.rope import apply_rope
from anyorder.nn.schedules import parallel_decoding_schedule
from anyorder.nn.transformer import modulate

__all__ = ["official_style_rar_generate", "official_style_randar_generate", "official_style_sample"]


# ---- RAR ------------------------------------------------------------------------------------------
class _CatCache:
    """Per-layer key/value cache that grows by concatenation (a new tensor every step)."""

    def __init__(self, depth: int) -> None:
        self.k: list[Tensor | None] = [None] * depth
        self.v: list[Tensor | None] = [None] * depth

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.k[layer] is None:
            self.k[layer], self.v[layer] = k, v
        else:
            self.k[layer] = torch.cat([self.k[layer], k], dim=-2)
            self.v[layer] = torch.cat([self.v[layer], v], dim=-2)
        return self.k[layer], self.v[layer]

    @property
    def empty(self) -> bool:
        return self.k[0] is None


def _rar_block(blk, x: Tensor, c: Tensor, cache: _CatCache, layer: int, attn_mask: Tensor | None) -> Tensor:
    attn = blk.attn
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = blk.adaLN_modulation(c).chunk(6, dim=-1)
    h = modulate(blk.norm1(x), shift_msa, scale_msa)
    B, N, C = h.shape
    q, k, v = attn.qkv(h).reshape(B, N, 3, attn.n_head, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    k, v = cache.append(layer, k, v)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    x = x + gate_msa * attn.proj(y.transpose(1, 2).reshape(B, N, C))
    return x + gate_mlp * blk.mlp(modulate(blk.norm2(x), shift_mlp, scale_mlp))


def _rar_forward_fn(model, ids: Tensor, condition: Tensor, cache: _CatCache, causal: Tensor) -> Tensor:
    """One sampling call of the official ``forward_fn`` with its KV cache on: rebuilds everything for the
    whole sequence, then runs the blocks on the new position(s) only."""
    B, T, prefix = ids.shape[0], model.seq_len, 2
    orders = torch.stack([torch.arange(T, device=ids.device) for _ in range(B)])  # raster, per call
    labels = ids.clone()  # noqa: F841 (the official call always prepares labels)
    seq = torch.cat([condition.view(B, -1), ids.view(B, -1)], dim=1)
    emb = model.embeddings(seq)
    cond_emb = emb[:, 0]

    def shuffle(t: Tensor) -> Tensor:
        rows = torch.arange(t.shape[0], device=t.device).unsqueeze(1).expand(-1, t.shape[1])
        return t[rows, orders]

    pos = model.pos_embed.repeat(B, 1, 1)  # the full T + 1024 rows, every step
    pos_post = shuffle(pos[:, prefix : prefix + T])
    ta = model.target_aware_pos_embed.repeat(B, 1, 1)
    ta_post = shuffle(ta[:, prefix : prefix + T])
    x = torch.cat([model.cls_token.expand(B, -1, -1), emb], dim=1)
    x = x + torch.cat([pos[:, :prefix], pos_post], dim=1)[:, : x.shape[1]]
    ta_full = torch.cat([torch.zeros_like(x[:, : prefix - 1]), ta_post, torch.zeros_like(x[:, -1:])], dim=1)
    x = x + ta_full[:, : x.shape[1]]
    attn_mask = causal[: x.shape[1], : x.shape[1]]
    c = cond_emb.unsqueeze(1) + model.timesteps_embeddings[:, : x.shape[1]]  # full length, every step
    if not cache.empty:  # only the newest position goes through the blocks
        x, c, attn_mask = x[:, -1:], c[:, -1:], None
    for i, blk in enumerate(model.transformer.blocks):
        x = _rar_block(blk, x, c, cache, i, attn_mask)
    return model.transformer.final(x, c)


@torch.no_grad()
def official_style_rar_generate(model, classes: Tensor, guidance_scale: float, guidance_power: float,
                                temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Tokens ``[B, T]`` in generation (raster) order, decoded the way the official RAR loop does it."""
    model.eval()
    dev = model.device
    condition = model.condition_tokens(torch.as_tensor(classes, device=dev))
    B, T = condition.shape[0], model.seq_len
    none_id = int(model.condition_tokens(torch.tensor([model.null_class]))[0])
    causal = torch.full((T + 1024, T + 1024), float("-inf"), device=dev).triu_(1)
    cache = _CatCache(len(model.transformer.blocks))
    ids = torch.full((B, 0), -1, dtype=torch.long, device=dev)
    for step in range(T):
        scale_pow = torch.ones(1, device=dev) * guidance_power
        scale_step = (1 - torch.cos(((step / T) ** scale_pow) * math.pi)) * 1 / 2
        cfg_scale = (guidance_scale - 1) * scale_step + 1
        if guidance_scale != 0:
            none = torch.full_like(condition, none_id)  # rebuilt every step, as the official loop does
            logits = _rar_forward_fn(model, torch.cat([ids, ids]), torch.cat([condition, none]), cache, causal)
            cond_logits, uncond_logits = logits[:B], logits[B:]
            logits = uncond_logits + (cond_logits - uncond_logits) * cfg_scale
        else:
            logits = _rar_forward_fn(model, ids, condition, cache, causal)
        logits = logits[:, -1] / temperature
        probs = F.softmax(logits, dim=-1)
        ids = torch.cat([ids, torch.multinomial(probs, 1, generator=generator)], dim=-1)
    return ids


# ---- RandAR ---------------------------------------------------------------------------------------
def official_style_sample(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                          generator: torch.Generator | None = None) -> Tensor:
    """LlamaGen-style sampling of one position ``logits [B, V]`` -> ids ``[B, 1]``."""
    logits = logits / max(temperature, 1e-5)
    if top_k > 0 or top_p < 1.0:
        if top_k > 0:
            kth = torch.topk(logits, min(top_k, logits.shape[-1]))[0][..., -1, None]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p < 1.0:
            sorted_logits, sorted_idx = torch.sort(logits, descending=True)
            remove = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1) > top_p
            remove[..., 1:] = remove[..., :-1].clone()
            remove[..., 0] = False
            logits = logits.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


class _StaticCache:
    def __init__(self, B: int, H: int, max_len: int, D: int, device) -> None:
        self.k = torch.zeros(B, H, max_len, D, device=device)
        self.v = torch.zeros(B, H, max_len, D, device=device)

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.k[:, :, input_pos] = k
        self.v[:, :, input_pos] = v
        return self.k, self.v


def _randar_forward_inference(model, x: Tensor, freqs: Tensor, input_pos: Tensor, caches: list[_StaticCache],
                              causal: Tensor) -> Tensor:
    B = x.shape[0]
    mask = causal[:B, None, input_pos]  # [B, 1, L, max_len], gathered every step
    h = x
    for blk, cache in zip(model.transformer.blocks, caches):
        attn = blk.attn
        hn = blk.norm1(h)
        L = hn.shape[1]
        q, k, v = attn.qkv(hn).split([attn.n_head * attn.head_dim] * 3, dim=-1)
        q = apply_rope(q.view(B, L, attn.n_head, attn.head_dim), freqs)  # queries and keys rotated apart
        k = apply_rope(k.view(B, L, attn.n_head, attn.head_dim), freqs)
        v = v.view(B, L, attn.n_head, attn.head_dim)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        keys, values = cache.update(input_pos, k, v)
        max_pos = torch.max(input_pos) + 1  # read back in every layer
        keys, values, m = keys[:, :, :max_pos], values[:, :, :max_pos], mask[:, :, :, :max_pos]
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=m)
        h = h + attn.proj(y.transpose(1, 2).contiguous().view(B, L, -1))
        h = h + blk.mlp(blk.norm2(h))
    final = model.transformer.final
    return final.head(final.norm(h)).float()  # the head on every fed position


@torch.no_grad()
def official_style_randar_generate(model, classes: Tensor, orders: Tensor, steps: int,
                                   guidance_start: float = 1.0, guidance_scale: float = 1.0,
                                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                                   generator: torch.Generator | None = None) -> Tensor:
    """Tokens ``[B, T]`` in **generation order** for ``orders``, decoded the way the official RandAR loop
    does it (step sizes from the same cosine schedule)."""
    model.eval()
    dev = model.device
    cond = torch.as_tensor(classes, device=dev).long()
    B, T, D = cond.shape[0], model.seq_len, model.config.dim
    H = model.config.n_head
    plan = parallel_decoding_schedule(steps, T)
    instr = model.instruction_tokens(orders)
    tok_freqs = model.freqs_cis[1:].clone()[orders]
    cfg = guidance_scale > 1.0
    if cfg:
        cond = torch.cat([cond, torch.ones_like(cond) * model.null_class])
        tok_freqs, instr = torch.cat([tok_freqs, tok_freqs]), torch.cat([instr, instr])
    bs = cond.shape[0]
    cls_tokens = model.class_embed(cond)[:, None]
    max_len = 8 * math.ceil((1 + 2 * T) / 8)
    caches = [_StaticCache(bs, H, max_len, D // H, dev) for _ in model.transformer.blocks]
    causal = torch.tril(torch.ones(max_len, max_len, dtype=torch.bool, device=dev)).unsqueeze(0).repeat(bs, 1, 1)
    result = torch.zeros(B, T, dtype=torch.long, device=dev)

    n_cur, q_idx, step = plan[0], 0, 0
    x = torch.cat([cls_tokens, instr[:, q_idx : q_idx + n_cur]], dim=1)
    freqs = torch.cat([model.freqs_cis[:1].unsqueeze(0).repeat(bs, 1, 1, 1), tok_freqs[:, q_idx : q_idx + n_cur]], 1)
    input_pos = torch.arange(0, x.shape[1], device=dev)
    while q_idx <= T - n_cur and q_idx <= T - 1:
        logits = _randar_forward_inference(model, x, freqs, input_pos, caches, causal)
        if cfg:
            scale = guidance_start + (guidance_scale - guidance_start) * q_idx / T
            c, u = torch.chunk(logits, 2, dim=0)
            logits = u + scale * (c - u)
        logits = logits[:, -n_cur:]
        indices = torch.zeros(B, n_cur, dtype=torch.long, device=dev)
        for i in range(n_cur):  # one query at a time
            indices[:, i : i + 1] = official_style_sample(logits[:, i], temperature, top_k, top_p, generator)
        result[:, q_idx : q_idx + n_cur] = indices.clone()
        img = model.tok_embeddings(indices)
        if cfg:
            img = torch.cat([img, img])
        step += 1
        n_next = plan[step] if step < len(plan) else 0  # nothing left after the last step
        L = 2 * n_cur - 1 + n_next
        # [img_0, query_1, img_1, ..., query_{n-1}, img_{n-1}, next_query_0 .. next_query_{m-1}]
        x = torch.zeros(bs, L, D, dtype=x.dtype, device=dev)
        x[:, :1] = img[:, :1]
        x[:, 1 : 2 * n_cur - 1][:, ::2] = instr[:, q_idx + 1 : q_idx + n_cur]
        x[:, 1 : 2 * n_cur - 1][:, 1::2] = img[:, 1:n_cur]
        nxt = q_idx + n_cur
        x[:, 2 * n_cur - 1 :] = instr[:, nxt : nxt + n_next]
        new_freqs = torch.zeros(bs, L, *model.freqs_cis.shape[-2:], dtype=freqs.dtype, device=dev)
        new_freqs[:, :1] = tok_freqs[:, q_idx : q_idx + 1]
        cur = tok_freqs[:, q_idx + 1 : q_idx + n_cur]
        new_freqs[:, 1 : 2 * n_cur - 1][:, ::2] = cur
        new_freqs[:, 1 : 2 * n_cur - 1][:, 1::2] = cur
        new_freqs[:, 2 * n_cur - 1 :] = tok_freqs[:, nxt : nxt + n_next]
        freqs = new_freqs
        q_idx = nxt
        if q_idx > T:
            break
        last = input_pos[input_pos.shape[0] - n_cur]  # slot of this step's first query
        input_pos = torch.arange(L, device=dev, dtype=torch.long) + last + 1
        n_cur = n_next
    return result


def check_against_official_fixtures(root: str = "../shared/fixtures") -> None:
    """The mimics must reproduce the official greedy fixtures id for id (run this file to check)."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    from anyorder.hub import load_official
    from anyorder.nn.orders import unpermute

    d = Path(root) / "rar"
    model = load_official(d / "checkpoint.bin", d / "config.json").eval()
    cases, cfg = load_file(str(d / "cases.safetensors")), json.loads((d / "config.json").read_text())
    for name, (scale, power) in cfg["greedy_settings"].items():
        ids = official_style_rar_generate(model, cases[f"greedy_{name}_condition"], scale, power,
                                          temperature=cfg.get("greedy_temperature", 1e-6))
        assert torch.equal(ids, cases[f"greedy_{name}_ids"]), f"rar {name}"
        print(f"rar {name}: ids equal to the official fixture")
    d = Path(root) / "randar"
    model = load_official(d / "checkpoint.safetensors", d / "config.json").eval()
    cases, cfg = load_file(str(d / "cases.safetensors")), json.loads((d / "config.json").read_text())
    for name, run in cfg["runs"].items():
        start, end = run["cfg_scales"]
        ids = official_style_randar_generate(model, cases["greedy_cond"], cases["greedy_orders"], run["steps"],
                                             start, end, top_k=1)
        assert torch.equal(unpermute(ids, cases["greedy_orders"]), cases[f"greedy_{name}_ids"]), f"randar {name}"
        print(f"randar {name}: ids equal to the official fixture")


if __name__ == "__main__":
    import sys

    check_against_official_fixtures(*sys.argv[1:2])
