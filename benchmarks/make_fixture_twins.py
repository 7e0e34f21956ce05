"""Make "twins" of ../shared/fixtures: the same four folders, file names, formats, config keys and tensor names,
with other seeds, grids, vocabularies, class counts, widths and depths.

Reviewers run the suite on hidden twins like these; a test that hard-codes a number of the public fixtures
(16 tokens, 10 classes, 32 codes, 16x16 images) fails on them while the port itself is right. Run the suite on
the twins to find such tests::

    python3 benchmarks/make_fixture_twins.py --official /tmp/official --out /tmp/fixture_twins
    ANYORDER_FIXTURES=/tmp/fixture_twins/a python3 -m pytest -q -p no:cacheprovider
    ANYORDER_FIXTURES=/tmp/fixture_twins/b python3 -m pytest -q -p no:cacheprovider

Every expected tensor is computed by the **official code**, imported at run time from checkouts of
bytedance/1d-tokenizer and ziqipang/RandAR under ``--official`` (``<dir>/bytedance+1d-tokenizer`` and
``<dir>/ziqipang+RandAR``; only their Python sources are needed), e.g.::

    git clone https://github.com/bytedance/1d-tokenizer /tmp/official/bytedance+1d-tokenizer
    git clone https://github.com/ziqipang/RandAR /tmp/official/ziqipang+RandAR

Nothing of theirs is copied here; torch and safetensors are all that must be installed. The twins take about
30 s on one CPU thread. Where the official import chain needs packages that cannot be installed here:

- RAR (``modeling/rar.py``) imports ``timm.layers.Mlp`` (timm needs torchvision, which would replace torch). If
  timm does not import, ``_TimmMlp`` stands in: fc1 -> GELU -> fc2 with the same parameter names; with dropout 0
  that is all timm's ``Mlp`` computes. ``modeling/modules/__init__.py`` pulls in the losses (open_clip, ...), so
  only ``modeling/modules/base_model.py`` is loaded to provide ``BaseModel``, and the OmegaConf config is a small
  attribute dict.
- MaskGIT-VQGAN: the ``PretrainedTokenizer`` wrapper of ``modeling/titok.py`` needs omegaconf, einops and
  huggingface_hub and hard-codes the released sizes; its three modules (``Encoder``, ``Decoder``,
  ``VectorQuantizer`` of ``modeling/modules/maskgit_vqgan.py``) are built with the twin's config and called as
  the wrapper calls them (encode: quantize(encoder(x)) indices; decode: decoder(codebook[codes]) clamped to
  [0, 1]).
- RAR weight-decay groups: ``utils/train_utils.py`` imports open_clip and the data pipeline, so its
  ``create_optimizer`` exclusion rule (as the fixture README states it) is applied to the official model's
  ``named_parameters()``. RandAR's groups come from its own ``configure_optimizer``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import save_file

# ------------------------------------------------------------------------------------------- twin shapes
# Each generator shares its codebook size with its family's tokenizer (RAR with MaskGIT-VQGAN, RandAR with
# LlamaGen VQ), as in the public fixtures, so that `anyorder sample` can pair them.
TWINS: dict[str, dict[str, dict[str, Any]]] = {
    "a": {
        "rar": dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=3, intermediate_size=128,
                    image_seq_len=36, codebook_size=37, condition_num_classes=7, seed=11),
        "randar": dict(dim=48, n_layer=3, n_head=3, vocab_size=50, num_classes=13, block_size=36,
                       multiple_of=64, parallel_steps=9, seed=12),
        "maskgit_vqgan": dict(channel_mult=[1, 2], hidden_channels=32, num_res_blocks=2, z_channels=32,
                              codebook_size=37, image_size=24, seed=13),
        "llamagen_vq": dict(ch=32, ch_mult=[1, 1, 2], z_channels=32, codebook_size=50, codebook_embed_dim=4,
                            num_res_blocks=1, image_size=32, seed=14),
    },
    "b": {
        "rar": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=96,
                    image_seq_len=64, codebook_size=19, condition_num_classes=3, seed=21),
        "randar": dict(dim=32, n_layer=1, n_head=2, vocab_size=23, num_classes=3, block_size=64,
                       multiple_of=48, parallel_steps=20, seed=22),
        "maskgit_vqgan": dict(channel_mult=[1, 1, 2, 2], hidden_channels=32, num_res_blocks=1, z_channels=64,
                              codebook_size=19, image_size=32, seed=23),
        "llamagen_vq": dict(ch=32, ch_mult=[1, 2, 2], z_channels=32, codebook_size=23, codebook_embed_dim=6,
                            num_res_blocks=2, image_size=24, seed=24),
    },
}
NOISE = 0.02  # seeded noise on every parameter, so no layer is trivially zero (as the public fixtures)
BATCH = 4
CODEBOOK_SPREAD = 20.0  # MaskGIT codebook scale-up (official init is U(-1/n, 1/n), plus the noise)
MIN_MARGIN = 1e-3  # smallest gap between the two nearest codebook distances of a MaskGIT twin's images


class AttrDict(dict):
    """Enough of OmegaConf for the official constructors: attribute access and ``.get``."""

    def __getattr__(self, name: str) -> Any:
        try:
            value = self[name]
        except KeyError as e:
            raise AttributeError(name) from e
        return AttrDict(value) if isinstance(value, dict) else value


class _TimmMlp(nn.Module):
    """Stand-in for ``timm.layers.Mlp`` (same parameter names; dropout is 0 in the twins)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0, **_: Any) -> None:
        super().__init__()
        hidden, out = hidden_features or in_features, out_features or in_features
        self.fc1, self.act, self.fc2 = nn.Linear(in_features, hidden), act_layer(), nn.Linear(hidden, out)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def _load_module(name: str, path: Path) -> types.ModuleType:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass --official with checkouts of the official repositories")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def official_modules(root: Path) -> dict[str, Any]:
    tok1d, randar = root / "bytedance+1d-tokenizer", root / "ziqipang+RandAR"
    try:
        import timm.layers  # noqa: F401
    except Exception:  # noqa: BLE001 - timm absent or broken (no torchvision): use the stand-in
        timm = types.ModuleType("timm")
        layers = types.ModuleType("timm.layers")
        layers.Mlp = _TimmMlp
        timm.layers = layers
        sys.modules.update({"timm": timm, "timm.layers": layers})
    pkg, mods = types.ModuleType("modeling"), types.ModuleType("modeling.modules")
    pkg.__path__, mods.__path__ = [str(tok1d / "modeling")], [str(tok1d / "modeling" / "modules")]
    sys.modules.update({"modeling": pkg, "modeling.modules": mods})
    mods.BaseModel = _load_module("modeling.modules.base_model", tok1d / "modeling/modules/base_model.py").BaseModel
    rar = _load_module("modeling.rar", tok1d / "modeling/rar.py")
    vqgan = _load_module("modeling.modules.maskgit_vqgan", tok1d / "modeling/modules/maskgit_vqgan.py")
    sys.path.insert(0, str(randar))
    from RandAR.model import randar_gpt, tokenizer, utils  # type: ignore[import-not-found]

    return {"rar": rar, "vqgan": vqgan, "randar_gpt": randar_gpt, "llamagen": tokenizer, "randar_utils": utils}


def add_noise(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * NOISE)


def random_orders(batch: int, n: int, g: torch.Generator, first_raster: bool = True) -> torch.Tensor:
    rows = [torch.randperm(n, generator=g) for _ in range(batch)]
    if first_raster:
        rows[0] = torch.arange(n)
    return torch.stack(rows)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path))


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


# ----------------------------------------------------------------------------------------------------- RAR


def make_rar(off: dict, spec: dict, out: Path) -> None:
    seed = spec["seed"]
    torch.manual_seed(seed)
    gen_cfg = {k: spec[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                    "image_seq_len", "condition_num_classes")}
    conf = AttrDict(model={"generator": {**gen_cfg, "dropout": 0.0, "attn_drop": 0.0},
                           "vq_model": {"codebook_size": spec["codebook_size"]}})
    model = off["rar"].RAR(conf)
    add_noise(model, seed)
    model.eval()
    T, V, C = spec["image_seq_len"], spec["codebook_size"], spec["condition_num_classes"]
    g = torch.Generator().manual_seed(seed)
    cases: dict[str, torch.Tensor] = {}
    ids = torch.randint(0, V, (BATCH, T), generator=g)
    cond = torch.randint(0, C, (BATCH,), generator=g)
    cond_tokens = model.preprocess_condition(cond.clone(), cond_drop_prob=0.0)
    orders = random_orders(BATCH, T, g)
    with torch.no_grad():
        logits, labels = model.forward_fn(ids, cond_tokens, return_labels=True, orders=orders)
        cases.update(train_input_ids=ids, train_condition=cond, train_condition_tokens=cond_tokens,
                     train_orders=orders, train_logits=logits, train_labels=labels,
                     none_condition_token=model.get_none_condition(cond[:1]))
        for L in sorted({0, 1, T // 3, T - 1}):
            cases[f"sample_prefix{L}_logits"] = model.forward_fn(ids[:, :L], cond_tokens, is_sampling=True)
        # KV cache, rows [conditional; none-condition], one token per step
        both = torch.cat([ids, ids])
        both_cond = torch.cat([cond_tokens, model.get_none_condition(cond_tokens)])
        model.enable_kv_cache()
        steps = [model.forward_fn(both[:, :s], both_cond, is_sampling=True)[:, -1] for s in range(T)]
        model.disable_kv_cache()
        cases["kv_step_logits"] = torch.stack(steps)
    g8, p = 8.0, 2.75
    cases[f"cfg_schedule_g{g8:g}_p{p:g}"] = torch.tensor(
        [1 + (g8 - 1) * (1 - math.cos(math.pi * (s / T) ** p)) / 2 for s in range(T)], dtype=torch.float32)
    settings = {"nocfg": [0.0, 0.0], "cfg4_const": [4.0, 0.0], "cfg8_pow2.75": [8.0, 2.75]}
    temperature = 1e-6
    for name, (scale, power) in settings.items():
        c = torch.randint(0, C, (BATCH,), generator=g)
        cases[f"greedy_{name}_condition"] = c
        cases[f"greedy_{name}_ids"] = model.generate(c, guidance_scale=scale, randomize_temperature=temperature,
                                                     guidance_scale_pow=power)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / "checkpoint.bin")
    save_tensors(out / "cases.safetensors", cases)
    write_json(out / "config.json", {**gen_cfg, "codebook_size": V, "dropout": 0.0, "attn_drop": 0.0, "seed": seed,
                                     "greedy_temperature": temperature, "greedy_settings": settings})

    def excluded(n: str, p: torch.Tensor) -> bool:  # 1d-tokenizer create_optimizer's rule (see docstring)
        return p.ndim < 2 or any(s in n for s in ("ln", "bias", "norm", "gamma", "embed", "embedding",
                                                   "latent_tokens", "mask_token"))

    named = list(model.named_parameters())
    write_json(out / "decay_groups.json", {
        "source": "bytedance/1d-tokenizer utils/train_utils.py create_optimizer",
        "decay": [n for n, p in named if not excluded(n, p)],
        "no_decay": [n for n, p in named if excluded(n, p)]})


# -------------------------------------------------------------------------------------------------- RandAR


def parallel_schedule(utils: Any, steps: int, total: int) -> list[int]:
    """Tokens decoded per step, by running the official generate loop's bookkeeping."""
    done, n, step, plan = 0, 1, 0, []
    while done <= total - n and done <= total - 1:
        plan.append(n)
        step += 1
        nxt = utils.calculate_num_query_tokens_for_parallel_decoding(step, steps, total, done, n)
        done += n
        if done > total:
            break
        n = nxt
    return plan


def make_randar(off: dict, spec: dict, out: Path) -> None:
    seed = spec["seed"]
    torch.manual_seed(seed)
    model = off["randar_gpt"].RandARTransformer(
        dim=spec["dim"], n_layer=spec["n_layer"], n_head=spec["n_head"], multiple_of=spec["multiple_of"],
        vocab_size=spec["vocab_size"], num_classes=spec["num_classes"], block_size=spec["block_size"],
        token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0, attn_dropout_p=0.0, class_dropout_prob=0.1,
        cls_token_num=1, rope_base=10000, norm_eps=1e-5, grad_checkpointing=False)
    add_noise(model, seed)
    model.eval()
    # the weights as released: no caches (generate() registers kv caches as buffers) and no RoPE table
    sd = {k: v.detach().clone() for k, v in model.state_dict().items() if "kv_cache" not in k and "freqs_cis" not in k}
    T, V, C, S = spec["block_size"], spec["vocab_size"], spec["num_classes"], spec["parallel_steps"]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, V, (BATCH, T), generator=g)
    cond = torch.randint(0, C, (BATCH,), generator=g)
    orders = random_orders(BATCH, T, g)
    cases: dict[str, torch.Tensor] = {"train_idx": idx, "train_cond": cond, "train_orders": orders}
    runs = {"seq_nocfg": {"steps": T, "cfg_scales": [1.0, 1.0]},
            "par_nocfg": {"steps": S, "cfg_scales": [1.0, 1.0]},
            "par_cfg1to4": {"steps": S, "cfg_scales": [1.0, 4.0]}}
    with torch.no_grad():
        logits, loss, _ = model(idx, cond, token_order=orders, targets=idx)
        cases.update(train_logits=logits, train_loss=loss.reshape(1),
                     instruction_tokens=model.get_position_instruction_tokens(orders),
                     freqs_cis=model.freqs_cis.clone())
        cases["greedy_cond"] = torch.randint(0, C, (BATCH,), generator=g)
        cases["greedy_orders"] = random_orders(BATCH, T, g, first_raster=False)
        for name, run in runs.items():
            cases[f"greedy_{name}_ids"] = model.generate(
                cases["greedy_cond"], cases["greedy_orders"], cfg_scales=tuple(run["cfg_scales"]),
                num_inference_steps=run["steps"], temperature=1.0, top_k=1, top_p=1.0)
    for steps, total in {(88, 256), (S, T), (20, 64)}:
        cases[f"schedule_{steps}_{total}"] = torch.tensor(parallel_schedule(off["randar_utils"], steps, total))
    out.mkdir(parents=True, exist_ok=True)
    save_tensors(out / "checkpoint.safetensors", sd)
    save_tensors(out / "cases.safetensors", cases)
    write_json(out / "config.json", {
        "dim": spec["dim"], "n_layer": spec["n_layer"], "n_head": spec["n_head"], "vocab_size": V,
        "num_classes": C, "block_size": T, "multiple_of": spec["multiple_of"], "parallel_steps": S,
        "cls_token_num": 1, "rope_base": 10000, "norm_eps": 1e-5, "class_dropout_prob": 0.1, "null_class_id": C,
        "ffn_hidden": int(sd["layers.0.feed_forward.w1.weight"].shape[0]), "seed": seed,
        "greedy": "top_k=1, temperature=1.0", "runs": runs})
    optim = model.configure_optimizer(lr=1e-4, weight_decay=0.05, beta1=0.9, beta2=0.95, max_grad_norm=1.0)
    name_of = {id(p): n for n, p in model.named_parameters()}
    decay = {id(p) for grp in optim.param_groups if grp["weight_decay"] > 0 for p in grp["params"]}
    write_json(out / "decay_groups.json", {
        "source": "ziqipang/RandAR RandAR/model/randar_gpt.py configure_optimizer",
        "decay": [name_of[i] for i in name_of if i in decay],
        "no_decay": [name_of[i] for i in name_of if i not in decay]})


# ---------------------------------------------------------------------------------------------- tokenizers


class _MaskGITContainer(nn.Module):
    """The attribute layout of ``PretrainedTokenizer`` (encoder / decoder / quantize), so keys match."""

    def __init__(self, vqgan: Any, conf: AttrDict, codebook_size: int) -> None:
        super().__init__()
        self.encoder, self.decoder = vqgan.Encoder(conf), vqgan.Decoder(conf)
        self.quantize = vqgan.VectorQuantizer(num_embeddings=codebook_size, embedding_dim=conf.z_channels,
                                              commitment_cost=0.25)


def make_maskgit(off: dict, spec: dict, out: Path) -> None:
    seed = spec["seed"]
    torch.manual_seed(seed)
    mult = list(spec["channel_mult"])
    conf = AttrDict(channel_mult=mult, num_resolutions=len(mult), dropout=0.0, hidden_channels=spec["hidden_channels"],
                    num_channels=3, num_res_blocks=spec["num_res_blocks"], resolution=spec["image_size"],
                    z_channels=spec["z_channels"])
    tok = _MaskGITContainer(off["vqgan"], conf, spec["codebook_size"])
    add_noise(tok, seed)
    with torch.no_grad():  # a spread-out codebook, so that nearest entries are well separated (no near-ties)
        tok.quantize.embedding.weight.mul_(CODEBOOK_SPREAD)
    tok.eval()
    size, down = spec["image_size"], 2 ** (len(mult) - 1)
    grid = [size // down, size // down]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(50):  # images whose nearest codebook entries have no near-ties (as the public fixture)
            images = torch.rand(2, 3, size, size, generator=g)
            feats = tok.encoder(images)
            d = tok.quantize.compute_distances(feats.permute(0, 2, 3, 1)).sort(-1).values
            margin = float((d[:, 1] - d[:, 0]).min())
            if margin > MIN_MARGIN:
                break
        _, codes, _ = tok.quantize(feats)
        codes = codes.reshape(2, *grid)
        decoded = tok.decoder(tok.quantize.get_codebook_entry(codes)).clamp(0.0, 1.0)
        random_codes = torch.randint(0, spec["codebook_size"], codes.shape, generator=g)
        random_decoded = tok.decoder(tok.quantize.get_codebook_entry(random_codes)).clamp(0.0, 1.0)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in tok.state_dict().items()}, out / "vqgan_checkpoint.bin")
    save_tensors(out / "vqgan_cases.safetensors", {"images": images, "encoder_out": feats, "codes": codes,
                                                   "decoded": decoded, "random_codes": random_codes,
                                                   "random_decoded": random_decoded})
    write_json(out / "vqgan_config.json", {
        "channel_mult": mult, "num_resolutions": len(mult), "dropout": 0.0, "hidden_channels": conf.hidden_channels,
        "num_channels": 3, "num_res_blocks": conf.num_res_blocks, "resolution": size, "z_channels": conf.z_channels,
        "codebook_size": spec["codebook_size"], "image_size": size, "seed": seed, "commitment_cost": 0.25,
        "token_grid": grid, "min_code_margin": margin})


def make_llamagen(off: dict, spec: dict, out: Path) -> None:
    seed = spec["seed"]
    torch.manual_seed(seed)
    lg, mult = off["llamagen"], list(spec["ch_mult"])
    model = lg.VQModel(codebook_size=spec["codebook_size"], codebook_embed_dim=spec["codebook_embed_dim"],
                       codebook_l2_norm=True, encoder_ch_mult=mult, decoder_ch_mult=mult,
                       z_channels=spec["z_channels"])
    # VQModel fixes ch=128 and 2 res blocks; the shrunk twin passes them to the official Encoder / Decoder
    model.encoder = lg.Encoder(ch=spec["ch"], ch_mult=mult, num_res_blocks=spec["num_res_blocks"],
                               z_channels=spec["z_channels"])
    model.decoder = lg.Decoder(ch=spec["ch"], ch_mult=mult, num_res_blocks=spec["num_res_blocks"],
                               z_channels=spec["z_channels"])
    add_noise(model, seed)
    model.eval()
    size, down = spec["image_size"], 2 ** (len(mult) - 1)
    h = size // down
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, size, size, generator=g) * 2 - 1
    shape = (2, spec["codebook_embed_dim"], h, h)
    with torch.no_grad():
        codes = model.encode_indices(images).reshape(2, h, h)
        decoded = model.decode_code(codes.flatten(), shape)
        random_codes = torch.randint(0, spec["codebook_size"], (2, h, h), generator=g)
        random_decoded = model.decode_code(random_codes.flatten(), shape)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {k: v.detach().clone() for k, v in model.state_dict().items()}}, out / "vq_checkpoint.pt")
    save_tensors(out / "vq_cases.safetensors", {"images": images, "codes": codes, "decoded": decoded,
                                                "random_codes": random_codes, "random_decoded": random_decoded})
    write_json(out / "vq_config.json", {
        "ch": spec["ch"], "ch_mult": mult, "z_channels": spec["z_channels"], "codebook_size": spec["codebook_size"],
        "codebook_embed_dim": spec["codebook_embed_dim"], "image_size": size, "seed": seed,
        "codebook_l2_norm": True, "num_res_blocks": spec["num_res_blocks"], "token_grid": [h, h],
        "checkpoint_format": "torch.save({'model': state_dict})", "image_range": [-1, 1]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", type=Path, default=Path("/tmp/official"),
                    help="folder with bytedance+1d-tokenizer/ and ziqipang+RandAR/ checkouts")
    ap.add_argument("--out", type=Path, default=Path("/tmp/fixture_twins"))
    ap.add_argument("--twins", nargs="*", default=sorted(TWINS), choices=sorted(TWINS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    off = official_modules(args.official)
    for name in args.twins:
        spec, root = TWINS[name], args.out / name
        make_rar(off, spec["rar"], root / "rar")
        make_randar(off, spec["randar"], root / "randar")
        make_maskgit(off, spec["maskgit_vqgan"], root / "maskgit_vqgan")
        make_llamagen(off, spec["llamagen_vq"], root / "llamagen_vq")
        print(f"wrote {root}: " + ", ".join(f"{k} {v}" for k, v in spec.items()))


if __name__ == "__main__":
    main()
