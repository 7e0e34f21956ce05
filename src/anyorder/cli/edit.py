"""``anyorder inpaint | outpaint | extrapolate | features``: the zero-shot editing commands.

Each needs a model whose family has the capability (``known_tokens`` for inpaint / outpaint, ``extrapolation``,
``features``: RandAR has all, LPD the first); the sampling options are those of the families that have it.

Each command loads a generator (``--model`` run / model directory, preset + ``--checkpoint``, or hub
id) and a tokenizer (``--tokenizer``, or the ``tokenizer/`` directory of a demo run), writes a
before/after PNG to ``--out`` and the settings as JSON next to it (same name, ``.json``).
Token counts (``--left`` ...) are in tokens: one token is ``tokenizer.downsample`` pixels.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anyorder.cli.common import (
    add_device_options,
    add_sampling_options,
    load_generator,
    load_tokenizer,
    on_device,
    parse_classes,
    sampling_values,
)
from anyorder.editing import (
    MASK_RULES,
    SIDES,
    default_feature_layer,
    extrapolate,
    features,
    half_mask,
    inpaint,
    mask_from_image,
    outpaint,
    require_capability,
)
from anyorder.io import atomic_write_json, save_state_dict
from anyorder.io.images import load_image, save_image_grid
from anyorder.io.outputs import ensure_writable
from anyorder.io.seeds import seed_arg
from anyorder.models import families_with, family_of, get_family
from anyorder.sampling.policy import model_sampling

__all__ = ["add_editing_commands"]


# ---- loading --------------------------------------------------------------------------------------------
_NEEDS = {"inpaint": "known_tokens", "outpaint": "known_tokens", "extrapolate": "extrapolation",
          "features": "features"}


def _load(args: argparse.Namespace):
    for name in ("samples", "per_class"):  # counts of images to make
        if getattr(args, name, 1) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    ensure_writable(args.out, what="--out")  # before any model is loaded
    model = load_generator(args.model, args.checkpoint, args.device, config=args.config).eval()
    # a clear error before any work; the library warns where a scan-order-trained model runs in random orders
    require_capability(model, _NEEDS[args.command], f"anyorder {args.command}", random_orders=False)
    tok = load_tokenizer(args.tokenizer, args.model, args.device).eval()
    return model, tok


def _image_size(model, tok) -> int:
    gh, gw = model.grid
    return gh * tok.downsample


def _load_image(path: str, model, tok) -> Tensor:
    """The image as ``[1, C, S, S]`` in [0, 1] with the tokenizer's channels and the model's image size."""
    size = _image_size(model, tok)
    img = load_image(path, size)  # [3, S, S] RGB, centre-cropped and resized to S
    if tok.in_channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        img = (img * w).sum(0, keepdim=True)
    elif tok.in_channels != 3:
        raise ValueError(f"tokenizer expects {tok.in_channels} channels; only 1 (gray) and 3 (RGB) are supported")
    return img[None]


def _class(args: argparse.Namespace, model) -> int:
    if args.cls is None:
        return model.null_class
    return parse_classes([args.cls], model.num_classes)[0]


def _sampling(args: argparse.Namespace, model) -> dict[str, Any]:
    """The model's recorded sampling settings with the options given applied (validated by its policy)."""
    return model_sampling(model, **sampling_values(args)).to_dict()


def _decode(tok, codes: Tensor) -> Tensor:
    return tok.decode(codes.to(next(tok.parameters()).device)).float().cpu().clamp(0, 1)


def _write(out: str, images: Tensor, nrow: int, settings: dict[str, Any]) -> Path:
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise ValueError(f"--out must be a .png file, got {out}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image_grid(images, path, nrow=nrow, pad_value=1.0)
    atomic_write_json(path.with_suffix(".json"), settings)
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return path


def _shade(images: Tensor, token_mask: Tensor, ds: int, value: float = 0.5) -> Tensor:
    """Grey out the pixels of masked tokens (``token_mask [h, w]``) for the 'before' view."""
    pix = token_mask.float().repeat_interleave(ds, 0).repeat_interleave(ds, 1).bool()
    out = images.clone()
    out[..., pix] = value
    return out


# ---- commands -------------------------------------------------------------------------------------------
@on_device
def cmd_inpaint(args: argparse.Namespace) -> int:
    if (args.mask is None) == (args.side is None):
        raise ValueError("give exactly one of --mask MASK.png or --side left|right|top|bottom")
    model, tok = _load(args)
    image = _load_image(args.image, model, tok)
    codes = tok.encode(image.to(args.device))
    if tuple(codes.shape[1:]) != tuple(model.grid):
        raise ValueError(f"the tokenizer gives a {tuple(codes.shape[1:])} grid, the model expects {model.grid}")
    size = _image_size(model, tok)
    if args.mask is not None:
        mask = mask_from_image(args.mask, size, model.grid, rule=args.mask_rule)
    else:
        mask = half_mask(model.grid, args.side)
    n = args.samples
    cls = _class(args, model)
    out = inpaint(model, codes.expand(n, -1, -1), mask, cls, _sampling(args, model), seed=args.seed)
    before = _shade(image.cpu().expand(1, -1, -1, -1), mask.cpu(), tok.downsample)
    tiles = torch.cat([image.cpu(), before, _decode(tok, out)])
    settings = {"command": "inpaint", "model": args.model, "checkpoint": args.checkpoint, "image": args.image,
                "mask": args.mask, "side": args.side, "mask_rule": args.mask_rule, "class": cls,
                "samples": n, "seed": args.seed, "sampling": _sampling(args, model), "tf32": args.tf32,
                "regenerated_tokens": int(mask.sum()), "grid": list(model.grid),
                "layout": "input | input with the regenerated tokens greyed | result(s)"}
    _write(args.out, tiles, nrow=tiles.shape[0], settings=settings)
    return 0


@on_device
def cmd_outpaint(args: argparse.Namespace) -> int:
    model, tok = _load(args)
    gh, gw = model.grid
    image = _load_image(args.image, model, tok)
    codes = tok.encode(image.to(args.device))
    pads = {"left": args.left, "right": args.right, "top": args.top, "bottom": args.bottom}
    if args.side is not None:
        if any(pads.values()):
            raise ValueError("give either --side (with --amount) or --left/--right/--top/--bottom, not both")
        along = gw if args.side in ("left", "right") else gh
        amount = args.amount if args.amount is not None else (math.ceil(along / 2) if args.within else along)
        if amount < 1:
            raise ValueError(f"--amount must be a positive number of tokens, got {amount}")
        if args.within and amount >= along:
            raise ValueError(f"--within keeps part of the image: --amount must be < {along} tokens, got {amount}")
        pads[args.side] = amount
        if args.within:  # keep the opposite part of the image, regenerate `amount` tokens on this side
            if args.side == "left":
                codes = codes[:, :, amount:]
            elif args.side == "right":
                codes = codes[:, :, : gw - amount]
            elif args.side == "top":
                codes = codes[:, amount:]
            else:
                codes = codes[:, : gh - amount]
    elif args.within:
        raise ValueError("--within needs --side")
    if not any(pads.values()):
        raise ValueError("nothing to outpaint: give --side or a positive --left/--right/--top/--bottom")
    n = args.samples
    cls = _class(args, model)
    out, unknown = outpaint(model, codes.expand(n, -1, -1), cls, **pads, sampling=_sampling(args, model),
                            seed=args.seed, rope=args.rope, ntk_boundary=args.ntk_boundary, return_mask=True)
    ds = tok.downsample
    H, W = out.shape[1:]
    h, w = codes.shape[1:]
    before = torch.full((1, image.shape[1], H * ds, W * ds), 0.5)
    top, left = pads["top"] * ds, pads["left"] * ds
    known = _decode(tok, codes) if args.within else image.cpu()
    before[..., top : top + h * ds, left : left + w * ds] = known
    tiles = torch.cat([before, _decode(tok, out)])
    settings = {"command": "outpaint", "model": args.model, "checkpoint": args.checkpoint, "image": args.image,
                "class": cls, "padding_tokens": pads, "within_trained_grid": bool(args.within),
                "canvas": [int(H), int(W)], "trained_grid": [gh, gw],
                "rope": args.rope or ("extrapolate" if family_of(model).can("canvas") else "window"),
                "ntk_boundary": args.ntk_boundary, "samples": n, "seed": args.seed, "sampling": _sampling(args, model),
                "tf32": args.tf32,
                "generated_tokens": int(unknown.sum()),
                "layout": "input on the canvas (grey = to generate) | result(s)"}
    _write(args.out, tiles, nrow=tiles.shape[0], settings=settings)
    return 0


@on_device
def cmd_extrapolate(args: argparse.Namespace) -> int:
    model, tok = _load(args)
    classes = parse_classes(args.classes, model.num_classes) if args.classes else [model.null_class]
    classes = [c for c in classes for _ in range(args.per_class)]
    kw = _sampling(args, model)
    out, low = extrapolate(model, classes, kw, factor=args.factor, ntk_boundary=args.ntk_boundary, mode=args.mode,
                           spatial_guidance_scale=args.spatial_guidance_scale,
                           spatial_guidance_start=args.spatial_guidance_start,
                           spatial_mask_ratio=args.spatial_mask_ratio, low_res_steps=args.low_res_steps,
                           seed=args.seed, return_low_res=True)
    high = _decode(tok, out)
    if low is not None:
        f = high.shape[-1] // _image_size(model, tok)
        lowimg = _decode(tok, low).repeat_interleave(f, -2).repeat_interleave(f, -1)
        tiles = torch.stack([lowimg, high], 1).flatten(0, 1)
        nrow, layout = 2, "per row: the trained-size image (nearest-upsampled) | the extrapolated image"
    else:
        tiles, nrow, layout = high, min(8, len(classes)), "extrapolated images"
    settings = {"command": "extrapolate", "model": args.model, "checkpoint": args.checkpoint, "classes": classes,
                "factor": args.factor, "ntk_boundary": args.ntk_boundary, "mode": args.mode,
                "spatial_guidance_scale": args.spatial_guidance_scale,
                "spatial_guidance_start": args.spatial_guidance_start,
                "spatial_mask_ratio": args.spatial_mask_ratio, "low_res_steps": args.low_res_steps,
                "seed": args.seed, "sampling": kw, "tf32": args.tf32, "grid": list(out.shape[1:]), "layout": layout}
    _write(args.out, tiles, nrow=nrow, settings=settings)
    return 0


@on_device
def cmd_features(args: argparse.Namespace) -> int:
    model, tok = _load(args)
    images = torch.cat([_load_image(p, model, tok) for p in args.image])
    codes = tok.encode(images.to(args.device))
    layer = default_feature_layer(model.config.depth) if args.layer is None else args.layer
    cls = None if args.cls is None else _class(args, model)
    per_token, pooled = features(model, codes, cls, layer=layer, mode=args.mode, num_orders=args.num_orders,
                                 seed=args.seed, read=args.read)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must be a .safetensors file, got {args.out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_state_dict(out, {"per_token": per_token, "pooled": pooled, "codes": codes})
    atomic_write_json(out.with_suffix(".json"), {
        "command": "features", "model": args.model, "images": args.image, "layer": layer, "mode": args.mode,
        "read": args.read, "num_orders": args.num_orders, "class": cls, "seed": args.seed, "tf32": args.tf32,
        "per_token_shape": list(per_token.shape), "pooled_shape": list(pooled.shape)})
    print(f"wrote {out} (per_token {tuple(per_token.shape)}, pooled {tuple(pooled.shape)})")
    return 0


# ---- parser ---------------------------------------------------------------------------------------------
def _able(command: str) -> str:
    """`` (RandAR, ...)``: the registered families that can run ``command`` (its capability)."""
    names = [get_family(f).display_name for f in families_with(_NEEDS[command])]
    return f" ({', '.join(names) or 'no registered family'})"


def _common(p: argparse.ArgumentParser, capability: str | None) -> None:
    p.add_argument("--model", required=True, help="run/model directory, preset name (with --checkpoint) or hub id")
    p.add_argument("--checkpoint", help="official or our checkpoint file")
    p.add_argument("--config", help="hyper-parameters of --checkpoint (config.json or an official YAML)")
    p.add_argument("--tokenizer", help="tokenizer file or demo tokenizer dir (default: the run's tokenizer/)")
    add_device_options(p)
    p.add_argument("--seed", type=seed_arg, default=0)
    if capability:  # default: the settings the model was made with (its run's, its release's)
        add_sampling_options(p, capability)


def add_editing_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``inpaint``, ``outpaint``, ``extrapolate`` and ``features`` to the ``anyorder`` CLI."""
    p = subparsers.add_parser("inpaint", help="regenerate a masked region of an image" + _able("inpaint"))
    _common(p, "known_tokens")
    p.add_argument("--image", required=True, help="input image (PNG/JPEG); centre-cropped to the model's size")
    p.add_argument("--mask", help="binary PNG of the image's size, white = regenerate")
    p.add_argument("--side", choices=SIDES, help="regenerate this half of the image instead of --mask")
    p.add_argument("--mask-rule", choices=MASK_RULES, default="any",
                   help="a token is regenerated if any (default) / the majority / all of its pixels are masked")
    p.add_argument("--class", dest="cls", help="class index or name (default: the null class, unconditional)")
    p.add_argument("--samples", type=int, default=1, help="how many inpaintings to draw")
    p.add_argument("--out", default="inpaint.png", help="before/after PNG (settings go to the same name .json)")
    p.set_defaults(func=cmd_inpaint)

    p = subparsers.add_parser("outpaint", help="extend an image beyond its borders" + _able("outpaint"))
    _common(p, "known_tokens")
    p.add_argument("--image", required=True)
    p.add_argument("--side", choices=SIDES, help="extend on this side by --amount tokens (default: one image)")
    p.add_argument("--amount", type=int, default=None, help="tokens to add on --side")
    p.add_argument("--within", action="store_true",
                   help="stay inside the trained grid: keep the rest of the image, regenerate --amount tokens "
                        "(default half) on --side")
    for side in SIDES:
        p.add_argument(f"--{side}", type=int, default=0, help=f"tokens to add on the {side}")
    p.add_argument("--rope", choices=["extrapolate", "ntk", "window"], default=None,
                   help="canvas larger than the trained grid: one decode with a RoPE table of true positions "
                        "(extrapolate, the default where the family has positions beyond its grid: RandAR) or "
                        "NTK-mixed ones (ntk), or sliding trained-size windows (window, the default otherwise)")
    p.add_argument("--ntk-boundary", type=int, default=2, help="frequency pairs per axis that extrapolate (ntk)")
    p.add_argument("--class", dest="cls", help="class index or name (default: the null class)")
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--out", default="outpaint.png")
    p.set_defaults(func=cmd_outpaint)

    p = subparsers.add_parser("extrapolate",
                              help="zero-shot generation at a larger resolution" + _able("extrapolate"))
    _common(p, "extrapolation")
    p.add_argument("--classes", nargs="*", help="class indices or names (default: the null class)")
    p.add_argument("--per-class", type=int, default=1)
    p.add_argument("--factor", type=int, default=2, help="grid scale factor (default 2)")
    p.add_argument("--ntk-boundary", type=int, default=2)
    p.add_argument("--mode", choices=["hierarchical", "random"], default="hierarchical",
                   help="hierarchical (the official default): a trained-size image on the stride-factor sub-grid "
                   "first, then the rest; random: all tokens in one random order")
    p.add_argument("--spatial-guidance-scale", type=float, default=1.0)
    p.add_argument("--spatial-guidance-start", type=float, default=1.0)
    p.add_argument("--spatial-mask-ratio", type=float, default=0.5)
    p.add_argument("--low-res-steps", type=int, default=None, help="steps for the trained-size image")
    p.add_argument("--out", default="extrapolate.png")
    p.set_defaults(func=cmd_extrapolate)

    p = subparsers.add_parser("features", help="bidirectional token features of images" + _able("features"))
    _common(p, None)
    p.add_argument("--image", nargs="+", required=True)
    p.add_argument("--layer", type=int, default=None, help="blocks applied (default: about 2/3 of the depth)")
    p.add_argument("--mode", choices=["bidirectional", "raster"], default="bidirectional")
    p.add_argument("--num-orders", type=int, default=1, help="random order pairs to average (bidirectional)")
    p.add_argument("--read", choices=["instruction", "token"], default="instruction",
                   help="read each position at its position-instruction slot (default) or its image-token slot")
    p.add_argument("--class", dest="cls", help="condition (default: the null class)")
    p.add_argument("--out", default="features.safetensors")
    p.set_defaults(func=cmd_features)
