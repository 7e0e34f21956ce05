"""Run configuration: typed dataclasses, named presets / YAML files, dotted command-line overrides.

``load_run_config("demo_rar", ["model.depth=2", "train.steps=50"])`` reads a packaged YAML (each family keeps
its run configs in its folder, ``models/<family>/configs/``, e.g. ``demo_rar.yaml``) or any YAML path, applies
the overrides (values parsed as YAML), and validates everything into :class:`RunConfig`. Unknown keys anywhere
are errors that name the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from anyorder.io.config import apply_overrides, config_from_dict, config_to_dict
from anyorder.io.seeds import check_seed
from anyorder.models.registry import FAMILIES, get_preset, model_config
from anyorder.sampling.policy import SamplingPolicy, sampling_config

__all__ = ["RunConfig", "TrainConfig", "SampleConfig", "TokenizerConfig", "DataConfig", "JudgeConfig",
           "load_run_config", "run_config_path",
           "apply_overrides", "config_from_dict", "config_to_dict", "list_run_presets"]


@dataclass
class DataConfig:
    # required by `anyorder train`: a folder written by `anyorder tokenize` (memory-mapped codes.npy [N, A, h, w],
    # labels.npy, meta.json), a .safetensors file with codes [N, h, w] and labels [N], or "mnist" (the bundled
    # digits: the demo's tokenizer is trained first)
    source: str = ""
    test_fraction: float = 0.1
    seed: int = 0
    max_per_class: int = 0  # keep at most this many images per class in each split (0: all); for quick runs

    def __post_init__(self) -> None:
        check_seed(self.seed, "config key 'data.seed'")


@dataclass
class TokenizerConfig:
    codebook_size: int = 128
    hidden: int = 64  # conv width of the demo VQ
    steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3
    path: str = ""  # a trained tokenizer directory to reuse instead of training one


@dataclass
class JudgeConfig:
    steps: int = 800  # the digit classifier that judges samples
    batch_size: int = 128


@dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    end_lr: float = 1e-5
    warmup_steps: int = 100
    weight_decay: float = 0.03
    betas: tuple[float, float] = (0.9, 0.96)
    grad_clip: float = 1.0
    # RAR's annealing: r = 1 before anneal_start, 0 from anneal_end on, linear between; anneal_end < 0: random
    # orders throughout. None (unset): the paper's schedule for RAR (50% -> 75% of the steps), random orders
    # throughout for RandAR
    anneal_start: int | None = None
    anneal_end: int | None = None
    # the cosine decay starts after warm-up, or at this step (LPD's "constant+cosine": constant until it)
    decay_start: int | None = None
    # weights to start from when there is no checkpoint to resume: a model directory or a checkpoint file (ours
    # or official; e.g. LPD's 512-px recipes start from the 256-px model, its position table resized)
    init_from: str = ""
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA with bf16 support), "fp32", "bf16"
    device: str = "auto"
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 500
    compile: bool = False
    grad_accum: int = 1  # micro-batches per optimizer step: each rank runs batch_size / (world * grad_accum)
    fsdp: bool = False  # under torchrun: shard parameters, gradients and optimizer states (FSDP2) instead of DDP
    # RandAR's trainer (train_c2i.py): from optimizer step skip_grad_iter on (0-based), skip the update
    # when the sum of the per-tensor gradient norms after clipping is >= skip_grad_norm (AdamW's state
    # does not move); 0: never skip
    skip_grad_norm: float = 0.0
    skip_grad_iter: int = 100

    def __post_init__(self) -> None:
        check_seed(self.seed, "config key 'train.seed'")
        if not self.skip_grad_norm >= 0:
            raise ValueError("config key 'train.skip_grad_norm' must be >= 0 (0: never skip), got "
                             f"{self.skip_grad_norm}")
        if self.skip_grad_iter < 0:
            raise ValueError("config key 'train.skip_grad_iter' must be >= 0, got "
                             f"{self.skip_grad_iter}")
        for key in ("anneal_start", "anneal_end", "decay_start"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise ValueError(f"config key 'train.{key}' must be an integer step or null, got {v!r}")
        for key in ("steps", "batch_size", "grad_accum"):
            if getattr(self, key) < 1:
                raise ValueError(f"config key 'train.{key}' must be >= 1, got {getattr(self, key)}")


@dataclass
class SampleConfig:
    """What the demo samples after training (how: the run's ``sampling`` settings)."""

    per_class: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        check_seed(self.seed, "config key 'sample.seed'")


@dataclass
class RunConfig:
    model_preset: str = "rar_demo"
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's model fields
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    # the family's sampling settings (anyorder.sampling.policy; unset: the preset's), recorded with the model
    sampling: dict[str, Any] = field(default_factory=dict)
    out_dir: str = "runs/demo"
    threads: int = 0  # torch.set_num_threads; 0 = leave as is

    def sampling_config(self) -> SamplingPolicy:
        """The run's sampling settings: the preset's, with ``sampling`` applied (validated for the family)."""
        preset = get_preset(self.model_preset)
        return sampling_config(preset.family, {**preset.sampling, **self.sampling}, source="sampling")

    def model_dict(self) -> dict[str, Any]:
        """``{"family": ..., **fields}`` for :func:`anyorder.models.build_model` (validated there)."""
        p = get_preset(self.model_preset)
        return {"family": p.family, **p.model, **self.model}

    @property
    def family(self) -> str:
        return get_preset(self.model_preset).family


def _run_config_files() -> dict[str, Path]:
    """Every registered family's packaged run configs by name (``demo_rar``, ``rar_b_imagenet``, ...)."""
    out: dict[str, Path] = {}
    for spec in FAMILIES.values():
        if spec.run_configs is not None and Path(spec.run_configs).is_dir():
            out.update({p.stem: p for p in sorted(Path(spec.run_configs).glob("*.yaml"))})
    return out


def list_run_presets() -> list[str]:
    return sorted(_run_config_files())


def run_config_path(name: str) -> Path:
    """The YAML file of the packaged run config ``name`` (its family's ``configs/`` folder)."""
    files = _run_config_files()
    if name not in files:
        raise FileNotFoundError(f"no packaged run config {name!r}; packaged: {', '.join(sorted(files))}")
    return files[name]


def load_run_config(source: str | Path | None = "demo_rar", overrides: list[str] | None = None) -> RunConfig:
    """A :class:`RunConfig` from a packaged preset name or a YAML file, plus dotted overrides."""
    values: dict[str, Any] = {}
    if source:
        path = _run_config_files().get(str(source)) or Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"config {source!r} is neither a preset ({', '.join(list_run_presets())}) "
                                    f"nor a YAML file")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: invalid YAML ({e})") from e
        if not isinstance(values, dict):
            raise ValueError(f"{path}: top level must be a mapping")
    apply_overrides(values, overrides or [])
    cfg = config_from_dict(RunConfig, values)
    md = cfg.model_dict()
    model_config(md.pop("family"), md, source="model")  # validates model keys early
    cfg.sampling_config()  # validates the sampling settings early (a key of the other family is an error)
    return cfg
