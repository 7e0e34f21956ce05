"""Zero-shot editing with a demo RandAR on the bundled digits: inpainting, outpainting, extrapolation, probing.

    python benchmarks/editing_digits.py --run runs/demo_randar [--out DIR] [--n 200] [--threads 1]

Needs a trained demo run directory (``anyorder demo --model randar``: ``model/``, ``tokenizer/``,
``judge/``). Writes figures (PNG) and ``editing.json`` into ``--out`` (default ``RUN/editing``):

1. Inpainting: the left (and top) half of ``n`` test digits is regenerated conditioned on the digit's
   class; the judge's accuracy w.r.t. the conditioning class is the headline number (target >= 0.9).
   Also: conditioned on another class (class+1 mod 10: does the class steer the edit?) and with the null
   class and no guidance (how much the kept half alone determines the digit).
2. Outpainting: digits on a 2x wider canvas (7x7 -> 7x14 tokens) in one decode with a RoPE table for the
   canvas ("extrapolate": true positions, "ntk": NTK-mixed) and with sliding trained-size windows
   ("window"); the judge reads the original half and the new half separately. Also "outpainting" inside
   the trained grid (keep the left 3 columns, generate 4).
3. Resolution extrapolation to 14x14 tokens (56x56 pixels), with and without spatial guidance, for the
   official ``ntk_boundary=2`` and for 0 (all frequency pairs interpolated); judged after 2x average pooling.
4. Linear probe (multinomial logistic regression, L-BFGS, L2 picked on a validation split; 5-fold
   cross-validation over all 5,000 digits) on the pooled features of every layer: RandAR's bidirectional
   features (two passes, averaged over ``--probe-orders`` random order pairs) vs. the raster single pass,
   pooled over all positions and over the top two rows of positions only (where the raster features
   have not seen the rest of the digit). ``--probe-token-slots`` adds both read at the image-token
   instead of the instruction slots. ``--raster-run DIR`` adds the paper's other baseline: a RandAR of
   the same size trained in raster order only (``anyorder demo --model randar --out DIR model.order=raster
   train.anneal_start=0 train.anneal_end=0 tokenizer.path=RUN/tokenizer``), read in raster order. The
   same probe on the raw pixels is reported as the input-level reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from anyorder import editing as E
from anyorder.data.mnist import load_mnist
from anyorder.demo.run import decode_batched, encode_batched, load_demo_model
from anyorder.hub import load_module
from anyorder.io import atomic_write_json
from anyorder.models.digit_judge import DigitClassifier


# ---- helpers --------------------------------------------------------------------------------------------
def judge_predictions(judge: DigitClassifier, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([judge(images[i : i + batch]).argmax(-1) for i in range(0, len(images), batch)])


def stratified(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    return torch.cat([(labels == c).nonzero().flatten()[:per_class] for c in range(10)])


def labeled_grid(rows: list[torch.Tensor], names: list[str], path: Path, title: str) -> None:
    """Rows of images ``[n, 1, H, W]`` (same n and size) as one figure with row labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = rows[0].shape[0]
    h, w = rows[0].shape[-2:]
    fig, axes = plt.subplots(len(rows), 1, figsize=(max(6.0, n * w / 28 * 0.9), 1.1 * len(rows) * h / 28 + 0.6))
    axes = [axes] if len(rows) == 1 else axes
    for ax, row, name in zip(axes, rows, names):
        pad = torch.ones(n, 1, h, 2)
        strip = torch.cat([torch.cat([img, p], -1) for img, p in zip(row, pad)], -1)[0]
        ax.imshow(strip.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def shade(images: torch.Tensor, mask: torch.Tensor, ds: int) -> torch.Tensor:
    pix = mask.repeat_interleave(ds, 0).repeat_interleave(ds, 1)
    out = images.clone()
    out[..., pix] = 0.5
    return out


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 l2_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2), iters: int = 200) -> dict[str, float]:
    """Multinomial logistic regression on standardised features; L2 chosen on a 10% validation split."""
    mu, sd = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xtr, xte = (train_x - mu) / sd, (test_x - mu) / sd
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(xtr), generator=gen)
    n_val = len(xtr) // 10
    val, fit = perm[:n_val], perm[n_val:]

    def train(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
        W = torch.zeros(x.shape[1], 10, requires_grad=True)
        b = torch.zeros(10, requires_grad=True)
        opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(x @ W + b, y) + l2 * W.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return W.detach(), b.detach()

    def acc(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(((x @ W + b).argmax(-1) == y).float().mean())

    val_acc = {l2: acc(*train(xtr[fit], train_y[fit], l2), xtr[val], train_y[val]) for l2 in l2_grid}
    best = max(val_acc, key=lambda k: val_acc[k])
    W, b = train(xtr, train_y, best)
    return {"test_accuracy": acc(W, b, xte, test_y), "train_accuracy": acc(W, b, xtr, train_y), "l2": best,
            "val_accuracy": val_acc[best]}


# ---- the experiments ------------------------------------------------------------------------------------
def run_inpainting(model, tok, judge, codes, labels, images, kw, out: Path, seed: int) -> dict[str, Any]:
    ds = tok.downsample
    res: dict[str, Any] = {}
    show = stratified(labels, 1)
    for side in ("left", "top"):
        mask = E.half_mask(model.grid, side)
        r: dict[str, Any] = {"regenerated_tokens": int(mask.sum())}
        rows = [images[show], shade(images[show], mask, ds)]
        for name, cls, gkw in (("true_class", labels, kw),
                               ("other_class", (labels + 1) % 10, kw),
                               ("null_class_no_guidance", torch.full_like(labels, model.null_class),
                                {**kw, "guidance_scale": 1.0})):
            t = time.perf_counter()
            edited = E.inpaint(model, codes, mask, cls, seed=seed, **gkw)
            secs = time.perf_counter() - t
            assert torch.equal(edited[:, ~mask], codes[:, ~mask]), "known tokens changed"
            imgs = decode_batched(tok, edited)
            pred = judge_predictions(judge, imgs)
            target = labels if name == "null_class_no_guidance" else cls
            r[name] = {"judge_agrees_with_" + ("original_class" if name.startswith("null") else "conditioning_class"):
                       float((pred == target).mean(dtype=torch.float)),
                       "judge_says_original_class": float((pred == labels).mean(dtype=torch.float)),
                       "seconds": secs}
            if name != "null_class_no_guidance":
                rows.append(imgs[show])
        r["known_tokens_unchanged"] = True
        res[side] = r
        labeled_grid(rows, ["original", f"{side} half\nmasked", "inpainted\n(class c)", "inpainted\n(class c+1)"],
                     out / f"inpaint_{side}.png",
                     f"RandAR zero-shot inpainting of the {side} half (one test digit per class)")
    return res


def run_outpainting(model, tok, judge, codes, labels, kw, out: Path, seed: int) -> dict[str, Any]:
    gh, gw = model.grid
    res: dict[str, Any] = {"canvas": [gh, 2 * gw]}
    show = stratified(labels, 1)
    rows, names = [], []
    for rope in ("extrapolate", "ntk", "window"):
        t = time.perf_counter()
        wide = E.outpaint(model, codes, labels, right=gw, rope=rope, seed=seed, **kw)
        secs = time.perf_counter() - t
        assert torch.equal(wide[:, :, :gw], codes), "known tokens changed"
        imgs = decode_batched(tok, wide)  # [N, 1, 28, 56]
        s = imgs.shape[-1] // 2
        left_pred = judge_predictions(judge, imgs[..., :s])
        new_pred = judge_predictions(judge, decode_batched(tok, wide[:, :, gw:]))
        res[rope] = {"judge_on_original_half_is_class": float((left_pred == labels).mean(dtype=torch.float)),
                     "judge_on_new_half_is_class": float((new_pred == labels).mean(dtype=torch.float)),
                     "seconds": secs}
        rows.append(imgs[show])
        names.append(f"7x14 canvas\n{rope}")
    base = decode_batched(tok, codes[show])
    canvas = torch.full_like(rows[0], 0.5)
    canvas[..., : base.shape[-1]] = base
    labeled_grid([canvas, *rows], ["input", *names], out / "outpaint_2x_wider.png",
                 "RandAR zero-shot outpainting: each digit (left) extended to a 2x wider canvas (right)")
    # within the trained grid: keep the left 3 columns, generate the other 4
    keep = codes[:, :, : gw // 2]
    within = E.outpaint(model, keep, labels, right=gw - gw // 2, seed=seed, **kw)
    pred = judge_predictions(judge, decode_batched(tok, within))
    res["within_trained_grid_keep_left_3_columns"] = {"judge_is_class": float((pred == labels).mean(dtype=torch.float))}
    return res


def run_extrapolation(model, tok, judge, kw, out: Path, seed: int, per_class: int,
                      ntk_boundaries: tuple[int, ...] = (2, 0)) -> dict[str, Any]:
    classes = torch.arange(10).repeat_interleave(per_class)
    res: dict[str, Any] = {"note": "judge on the 56px result after 2x average pooling; the low-res stage is the "
                                   "model's own trained-size sample (same seed, so the same for every setting)"}
    rows, names = [], []
    first = torch.arange(0, len(classes), per_class)
    for nb in ntk_boundaries:
        for sg in (1.0, 2.0):
            t = time.perf_counter()
            high, low = E.extrapolate(model, classes, factor=2, ntk_boundary=nb, spatial_guidance_scale=sg,
                                      seed=seed, return_low_res=True, **kw)
            secs = time.perf_counter() - t
            imgs = decode_batched(tok, high)  # [N, 1, 56, 56]
            pred = judge_predictions(judge, F.avg_pool2d(imgs, 2))
            low_pred = judge_predictions(judge, decode_batched(tok, low))
            res[f"ntk_boundary_{nb}_spatial_guidance_{sg:g}"] = {
                "judge_on_downsampled_is_class": float((pred == classes).mean(dtype=torch.float)),
                "judge_on_low_res_is_class": float((low_pred == classes).mean(dtype=torch.float)),
                "seconds": secs}
            if not rows:
                rows.append(decode_batched(tok, low[first]).repeat_interleave(2, -2).repeat_interleave(2, -1))
                names.append("trained size\n(7x7, upsampled)")
            rows.append(imgs[first])
            names.append(f"14x14 tokens\nntk_boundary={nb}\nspatial g={sg:g}")
    labeled_grid(rows, names, out / "extrapolate_2x.png",
                 "RandAR zero-shot resolution extrapolation 28px -> 56px (hierarchical order, NTK-mixed RoPE)")
    return res


def pooled_features(model, codes: torch.Tensor, layers: list[int], mode: str, num_orders: int, seed: int,
                    read: str = "instruction", chunk: int = 500) -> dict[str, dict[int, torch.Tensor]]:
    """Per layer: the mean feature over all positions (``"all"``) and over the top two rows of positions
    only (``"top_rows"``), chunk by chunk (the per-token features of all digits would not fit)."""
    gw = model.grid[1]
    parts: dict[str, dict[int, list[torch.Tensor]]] = {k: {la: [] for la in layers} for k in ("all", "top_rows")}
    for k, i in enumerate(range(0, len(codes), chunk)):
        feats = E.features_by_layer(model, codes[i : i + chunk], layers=layers, mode=mode, num_orders=num_orders,
                                    seed=seed + k, read=read)
        for la in layers:
            parts["all"][la].append(feats[la][1])
            parts["top_rows"][la].append(feats[la][0][:, : 2 * gw].mean(1))
    return {k: {la: torch.cat(v) for la, v in d.items()} for k, d in parts.items()}


def cross_validated_probe(x: torch.Tensor, y: torch.Tensor, folds: int = 5) -> dict[str, float]:
    """:func:`linear_probe` in ``folds``-fold cross-validation (fixed random folds): mean and spread of the
    held-out accuracy. Every digit is tested once, so the estimate is ~sqrt(folds) times steadier than
    one train/test split."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    accs = []
    for i in range(folds):
        test = perm[i::folds]
        train = torch.cat([perm[j::folds] for j in range(folds) if j != i])
        accs.append(linear_probe(x[train], y[train], x[test], y[test])["test_accuracy"])
    acc = torch.tensor(accs)
    return {"accuracy": float(acc.mean()), "fold_std": float(acc.std()), "folds": folds, "fold_accuracies": accs}


def paired_difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """``a - b`` fold by fold (the same folds): mean, std over folds, and in how many folds ``a`` won."""
    d = torch.tensor(a["fold_accuracies"]) - torch.tensor(b["fold_accuracies"])
    return {"mean": float(d.mean()), "fold_std": float(d.std()), "folds_better": int((d > 0).sum()),
            "folds": len(d)}


def run_probe(model, codes: torch.Tensor, labels: torch.Tensor, out: Path, num_orders: int,
              token_slots: bool = False, folds: int = 5, raster_model: Any = None,
              pixels: torch.Tensor | None = None) -> dict[str, Any]:
    """Linear probes (``folds``-fold cross-validation over ``codes``) on pooled features of every layer.

    ``raster_model``: a raster-order-trained counterpart of ``model`` (same tokenizer, same grid), probed
    on its raster features as ``"raster_trained_model"``. ``pixels``: the digits, probed as they are."""
    layers = list(range(1, model.config.depth + 1))
    res: dict[str, Any] = {
        "default_layer": E.default_feature_layer(model.config.depth), "layers": layers, "digits": len(labels),
        "features": "null class, read at the position-instruction slots; 'per_layer': mean over all positions, "
                    "'top_rows_per_layer': mean over the positions of the top two token rows only (raster "
                    "features there have seen only those rows, bidirectional ones the whole digit)",
        "probe": f"multinomial logistic regression on standardised features, {folds}-fold cross-validation"}
    if pixels is not None:
        res["pixels"] = cross_validated_probe(pixels.reshape(len(pixels), -1).float(), labels, folds)
    runs = [("bidirectional", "bidirectional", num_orders, "instruction"), ("raster", "raster", 1, "instruction")]
    if raster_model is not None:
        if tuple(raster_model.grid) != tuple(model.grid) or raster_model.config.depth != model.config.depth:
            raise ValueError(f"the raster-trained model must match the RandAR's grid and depth: {raster_model.grid}"
                             f" x {raster_model.config.depth} vs {model.grid} x {model.config.depth}")
        runs.append(("raster_trained_model", "raster", 1, "instruction"))
    if token_slots:
        runs += [("bidirectional_token_slots", "bidirectional", num_orders, "token"),
                 ("raster_token_slots", "raster", 1, "token")]
    for name, mode, n_ord, read in runs:
        t = time.perf_counter()
        source = raster_model if name == "raster_trained_model" else model
        feats = pooled_features(source, codes, layers, mode, n_ord, seed=0, read=read)
        secs = time.perf_counter() - t
        res[name] = {"num_orders": n_ord, "read": read, "feature_seconds": secs,
                     "per_layer": {la: cross_validated_probe(feats["all"][la], labels, folds) for la in layers},
                     "top_rows_per_layer": {la: cross_validated_probe(feats["top_rows"][la], labels, folds)
                                            for la in layers}}
    res["bidirectional_minus_raster"] = {
        key: {la: paired_difference(res["bidirectional"][key][la], res["raster"][key][la]) for la in layers}
        for key in ("per_layer", "top_rows_per_layer")}
    if raster_model is not None:
        res["bidirectional_minus_raster_trained_model"] = {
            key: {la: paired_difference(res["bidirectional"][key][la], res["raster_trained_model"][key][la])
                  for la in layers} for key in ("per_layer", "top_rows_per_layer")}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    names = {"bidirectional": f"bidirectional (two passes, {num_orders} order pair(s))", "raster": "raster (one pass)",
             "raster_trained_model": "raster-trained model, raster",
             "bidirectional_token_slots": "bidirectional, image-token slots",
             "raster_token_slots": "raster, image-token slots"}
    for ax, key, title in zip(axes, ("per_layer", "top_rows_per_layer"),
                              ("mean over all positions", "mean over the top two rows of positions")):
        for (name, *_), style in zip(runs, ("o-", "s--", "^-.", "o:", "s:")):
            acc = [res[name][key][la]["accuracy"] for la in layers]
            err = [res[name][key][la]["fold_std"] for la in layers]
            ax.errorbar(layers, acc, yerr=err, fmt=style, capsize=3, label=names[name])
        if pixels is not None and key == "per_layer":
            ax.axhline(res["pixels"]["accuracy"], color="gray", lw=1, ls=":", label="raw pixels (same probe)")
        ax.set_xticks(layers)
        ax.set_xlabel("layer (blocks applied)")
        ax.set_ylabel(f"linear-probe accuracy ({folds}-fold CV)")
        ax.set_title(f"RandAR digit features: {title}", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "probe_layers.png", dpi=110)
    plt.close(fig)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/demo_randar", help="demo RandAR run directory")
    ap.add_argument("--out", default=None, help="output directory (default: RUN/editing)")
    ap.add_argument("--n", type=int, default=200, help="test digits to inpaint / outpaint (stratified by class)")
    ap.add_argument("--guidance-scale", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=None, help="parallel-decoding steps (default: one token per step)")
    ap.add_argument("--extrapolate-per-class", type=int, default=5)
    ap.add_argument("--ntk-boundaries", default="2,0",
                    help="comma-separated ntk_boundary values to try (2 is the official default)")
    ap.add_argument("--probe-orders", type=int, default=8, help="random order pairs averaged for the features")
    ap.add_argument("--probe-folds", type=int, default=5, help="cross-validation folds of the linear probe")
    ap.add_argument("--skip-probe", action="store_true")
    ap.add_argument("--probe-only", action="store_true", help="run the linear probe only (editing.json keeps the "
                    "other sections of an earlier run in --out)")
    ap.add_argument("--raster-run", default=None,
                    help="a demo RandAR run trained in raster order only (model.order=raster, r=0), probed as the "
                         "raster-trained baseline")
    ap.add_argument("--probe-token-slots", action="store_true",
                    help="also probe features read at the image-token slots (an ablation; doubles the probe time)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    for sub in ("model", "judge"):  # the tokenizer: RUN/tokenizer or the path the model's config recorded
        if not (run / sub).is_dir():
            print(f"error: {run / sub} not found: train the demo first (anyorder demo --model randar)", file=sys.stderr)
            return 2
    out = Path(args.out) if args.out else run / "editing"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        model, tok = load_demo_model(run)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model.eval()
    tok.eval()
    E.require_capability(model, "extrapolation", "this benchmark")
    judge = load_module(run / "judge", expected=DigitClassifier).eval()
    train_x, train_y, test_x, test_y = load_mnist(0.1, 0)
    kw = {"guidance_scale": args.guidance_scale, "guidance_start": 1.0, "temperature": 1.0, "steps": args.steps}

    idx = stratified(test_y, max(1, args.n // 10))
    images, labels = test_x[idx], test_y[idx]
    codes = encode_batched(tok, images)
    recon = decode_batched(tok, codes)
    results: dict[str, Any] = {
        "run": str(run), "n_digits": len(idx), "sampling": kw, "seed": args.seed,
        "model": {"parameters": sum(p.numel() for p in model.parameters()), **model.config_dict()},
        "judge_accuracy_on_test_digits": float((judge_predictions(judge, images) == labels).float().mean()),
        "judge_accuracy_on_reconstructions": float((judge_predictions(judge, recon) == labels).float().mean()),
    }
    print(f"{len(idx)} test digits; judge on reconstructions {results['judge_accuracy_on_reconstructions']:.3f}")
    if args.probe_only and (out / "editing.json").is_file():
        earlier = json.loads((out / "editing.json").read_text())
        results.update({k: earlier[k] for k in ("inpainting", "outpainting", "extrapolation") if k in earlier})
    if not args.probe_only:
        results["inpainting"] = run_inpainting(model, tok, judge, codes, labels, recon, kw, out, args.seed)
        for side in ("left", "top"):
            r = results["inpainting"][side]
            true_acc = r["true_class"]["judge_agrees_with_conditioning_class"]
            print(f"inpaint {side}: judge = conditioning class {true_acc:.3f}"
                  f" (class+1: {r['other_class']['judge_agrees_with_conditioning_class']:.3f}; null class, no guidance:"
                  f" original class {r['null_class_no_guidance']['judge_agrees_with_original_class']:.3f})")
        results["outpainting"] = run_outpainting(model, tok, judge, codes, labels, kw, out, args.seed)
        print("outpaint 2x wider:", json.dumps({k: v for k, v in results["outpainting"].items() if k != "canvas"}))
        results["extrapolation"] = run_extrapolation(model, tok, judge, kw, out, args.seed, args.extrapolate_per_class,
                                                     tuple(int(x) for x in args.ntk_boundaries.split(",")))
        print("extrapolate:", json.dumps(results["extrapolation"]))
    if not args.skip_probe:
        raster_model = None
        if args.raster_run:
            try:
                raster_model, raster_tok = load_demo_model(args.raster_run)
            except FileNotFoundError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            if getattr(raster_model.config, "order", None) != "raster":
                print(f"error: {args.raster_run} is not a raster-trained RandAR (model.order="
                      f"{getattr(raster_model.config, 'order', None)!r}); train it with model.order=raster "
                      "train.anneal_start=0 train.anneal_end=0", file=sys.stderr)
                return 2
            if raster_tok.state_dict().keys() != tok.state_dict().keys() or any(
                    not torch.equal(a, b) for a, b in zip(raster_tok.state_dict().values(), tok.state_dict().values())):
                print(f"error: {args.raster_run} was trained with another tokenizer than {run}", file=sys.stderr)
                return 2
            raster_model.eval()
        all_x = torch.cat([train_x, test_x])
        results["linear_probe"] = run_probe(model, encode_batched(tok, all_x), torch.cat([train_y, test_y]), out,
                                            args.probe_orders, args.probe_token_slots, args.probe_folds,
                                            raster_model, all_x)
        for name, v in results["linear_probe"].items():
            if isinstance(v, dict) and "num_orders" in v:
                for key in ("per_layer", "top_rows_per_layer"):
                    accs = {la: round(r["accuracy"], 4) for la, r in v[key].items()}
                    print(f"probe {name} {key}: cross-validated accuracy {accs}")
        print(f"probe on raw pixels: {results['linear_probe']['pixels']['accuracy']:.4f}")
        for diff in ("bidirectional_minus_raster", "bidirectional_minus_raster_trained_model"):
            for key, per in results["linear_probe"].get(diff, {}).items():
                print(f"probe {diff}, {key}: " + ", ".join(
                    f"layer {la}: {d['mean']:+.4f} ± {d['fold_std']:.4f} ({d['folds_better']}/{d['folds']} folds)"
                    for la, d in per.items()))
    results["seconds"] = time.perf_counter() - t0
    atomic_write_json(out / "editing.json", results)
    print(f"wrote {out}/editing.json and figures in {results['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
