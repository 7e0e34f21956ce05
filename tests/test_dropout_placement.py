"""Where the official models drop out while training (issue 21).

- RAR (1d-tokenizer ``modeling/rar.py``): each block's MLP is timm's ``Mlp(drop=proj_drop)``, whose
  forward is ``fc1 -> act -> drop1 -> norm (Identity) -> fc2 -> drop2`` with both drops at
  ``proj_drop``: a mask on the hidden activations *and* one on the output. RandAR (LlamaGen's
  ``FeedForward``): ``ffn_dropout(w2(silu(w1 x) * w3 x))``, the output only.
- RandAR (``randar_gpt.py forward_train``): ``tok_dropout`` (``token_dropout_p``) on the image-token
  embeddings only; the position-instruction tokens and the class embedding are not dropped.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from anyorder.models import get_family
from anyorder.models.registry import build_model
from anyorder.nn.transformer import MLP, TransformerConfig

pytestmark = pytest.mark.usefixtures("one_thread")

P = 0.3


def _fc2_inputs(model, run) -> list[torch.Tensor]:
    """The input of every block's ``fc2`` while ``run()`` executes (a pre-forward hook)."""
    seen: list[torch.Tensor] = []
    hooks = [blk.mlp.fc2.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
             for blk in model.transformer.blocks]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen


def _batch(model, b: int = 8):
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, model.codebook_size, (b, *model.grid), generator=g)
    classes = torch.randint(0, model.num_classes, (b,), generator=g)
    return codes, classes


@pytest.mark.parametrize("family, dropped", [("rar", True), ("randar", False)])
def test_mlp_hidden_activations_are_dropped_as_the_official_mlp_does(family: str,
                                                                      dropped: bool) -> None:
    """Train mode, dropout p: about p of fc2's input is zero for RAR (timm's drop1), none for
    RandAR; eval mode never drops."""
    torch.manual_seed(0)
    model = build_model({"family": family, **get_family(family).debug, "dropout": P}).train()
    codes, classes = _batch(model)
    seen = _fc2_inputs(model, lambda: model.logits(codes, classes))
    zeros = torch.cat([s.flatten() for s in seen]).eq(0).float().mean().item()
    if dropped:
        n = sum(s.numel() for s in seen)
        assert abs(zeros - P) < 5 * (P * (1 - P) / n) ** 0.5, f"{zeros:.4f} of fc2's input is zero"
    else:
        assert zeros == 0.0
    model.eval()
    seen = _fc2_inputs(model, lambda: model.logits(codes, classes))
    assert all(s.ne(0).all() for s in seen)


def _timm_mlp_forward(x: torch.Tensor, fc1: torch.nn.Linear, fc2: torch.nn.Linear,
                      p: float) -> torch.Tensor:
    """timm ``layers/mlp.py`` ``Mlp.forward`` with ``act_layer=nn.GELU``, ``drop=p`` (``drop_probs =
    (p, p)``), no norm: ``fc1, act, drop1, norm (Identity), fc2, drop2``, written out with
    functional dropout."""
    h = F.gelu(F.linear(x, fc1.weight, fc1.bias))
    h = F.dropout(h, p, training=True)
    return F.dropout(F.linear(h, fc2.weight, fc2.bias), p, training=True)


def test_rar_mlp_draws_the_same_masks_as_timms_mlp_under_one_seed() -> None:
    """The MLP of RAR's transformer config against a re-implementation of timm's Mlp forward: the
    same two masks in the same order, so the same output bit for bit under one seed."""
    spec = get_family("rar")
    cfg = spec.config_class(**{**spec.debug, "dropout": P}).transformer_config()
    torch.manual_seed(0)
    mlp = MLP(cfg).train()
    x = torch.randn(4, 6, cfg.dim)
    torch.manual_seed(123)
    ours = mlp(x)
    torch.manual_seed(123)
    ref = _timm_mlp_forward(x, mlp.fc1, mlp.fc2, P)
    assert torch.equal(ours, ref)
    # and not LlamaGen's placement (the output mask only)
    torch.manual_seed(123)
    assert not torch.equal(ours, F.dropout(mlp.fc2(F.gelu(mlp.fc1(x))), P, training=True))


def test_mlp_act_dropout_is_off_by_default() -> None:
    cfg = TransformerConfig(dim=8, depth=1, n_head=2, mlp_hidden=16, vocab_out=4, dropout=0.5)
    mlp = MLP(cfg).train()
    seen: list[torch.Tensor] = []
    mlp.fc2.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    mlp(torch.randn(3, 5, 8))
    assert seen[0].ne(0).all()


def _block0_input(model, codes, classes) -> torch.Tensor:
    """The sequence the first block sees, ``[class, instr_0, tok_0, instr_1, tok_1, ...]``."""
    seen: list[torch.Tensor] = []
    blk = model.transformer.blocks[0]
    h = blk.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        model.logits(codes, classes)
    finally:
        h.remove()
    return seen[0]


def test_randar_token_dropout_drops_the_token_embeddings_only() -> None:
    """randar_gpt.py forward_train: ``tok_dropout(tok_embeddings(idx))`` before the interleave; the
    instruction tokens and the class embedding enter as they are. Eval mode drops nothing."""
    torch.manual_seed(0)
    model = build_model({"family": "randar", **get_family("randar").debug, "token_dropout": P})
    codes, classes = _batch(model)
    clean = _block0_input(model.eval(), codes, classes)
    x = _block0_input(model.train(), codes, classes)
    # class row and instruction rows (odd positions) unchanged
    assert torch.equal(x[:, 0], clean[:, 0]) and torch.equal(x[:, 1::2], clean[:, 1::2])
    tok, ref = x[:, 2::2], clean[:, 2::2]
    kept = tok.ne(0)
    assert abs(1 - kept.float().mean().item() - P) < 5 * (P * (1 - P) / tok.numel()) ** 0.5
    # inverted dropout: the kept entries scaled by 1 / (1 - p)
    torch.testing.assert_close(tok[kept], ref[kept] / (1 - P))
    # no token dropout by default (the official config sets 0.1: the recipes do)
    default = build_model({"family": "randar", **get_family("randar").debug})
    assert default.config.token_dropout == 0.0


def test_the_official_token_dropout_key_is_read() -> None:
    official = get_family("randar").official
    section = {"dim": 32, "n_layer": 2, "n_head": 2, "block_size": 16, "vocab_size": 24,
               "num_classes": 5, "token_dropout_p": 0.1}
    assert official.config(section, "randar.yaml").token_dropout == 0.1
    with pytest.raises(ValueError, match="token_dropout_p"):
        official.config({**section, "token_dropout_p": 1.5}, "randar.yaml")
