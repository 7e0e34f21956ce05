"""Build models from configs, load official checkpoints, ``save_pretrained`` / ``from_pretrained``.

Our format (diffusers/timm style): a directory with ``model.safetensors`` and ``config.json``
(``{"family": <a registered family>, ...model config fields}``). Official formats convert on load, as each
family's spec says (:class:`~anyorder.models.spec.OfficialFormat`): the state-dict key map, the config
sections (an official ``config.json`` or YAML), the sampling settings it records, the release file names
(``rar_b.bin`` loads with the ``rar_b`` preset's hyper-parameters).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anyorder.io import (
    CheckpointError,
    atomic_write_json,
    check_state_dict,
    config_from_dict,
    config_to_dict,
    load_state_dict,
    read_config_file,
    save_state_dict,
)
from anyorder.models.base import AnyOrderModel
from anyorder.models.registry import FAMILIES, MODULE_TYPES, PRESETS, build_model, get_family
from anyorder.models.spec import FamilySpec

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"

__all__ = ["build_model", "load_official", "load_weights", "save_pretrained", "from_pretrained", "load_module",
           "hub_download"]


def _official_family(cfg: dict[str, Any], sd: dict[str, torch.Tensor] | None, source: str) -> FamilySpec:
    """The family whose official config sections or state-dict keys these are."""
    for spec in FAMILIES.values():
        if spec.official is not None and spec.official.section(cfg) is not None:
            return spec
    for spec in FAMILIES.values():
        if spec.official is not None and sd is not None and spec.official.is_state_dict(sd):
            return spec
    raise ValueError(f"{source}: cannot tell the model family from the config or the checkpoint keys (none of "
                     f"{sorted(FAMILIES)} recognises them)")


def _release_preset(checkpoint: Path) -> str | None:
    """The preset of an official release file, by its name (``rar_b.bin`` -> ``rar_b``)."""
    for spec in FAMILIES.values():
        if spec.official is not None and checkpoint.stem in spec.official.release_files:
            return spec.official.release_files[checkpoint.stem]
    return checkpoint.stem if checkpoint.stem in PRESETS else None


def _read_config(config: dict[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """Hyper-parameters from a dict or a file: our / the official ``config.json``, or an official YAML
    (1d-tokenizer's ``configs/.../rar.yaml``, RandAR's ``configs/randar/*.yaml``)."""
    if isinstance(config, dict):
        return config
    return read_config_file(config)


DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``"fp32"`` / ``"bf16"`` / ``"fp16"`` (or a ``torch.dtype``, or None: keep fp32) to a ``torch.dtype``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype) not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[str(dtype)]


def _load_into(model: AnyOrderModel, sd: dict[str, torch.Tensor], source: str,
               dtype: torch.dtype | None = None) -> AnyOrderModel:
    """Load ``sd`` into ``model`` — built on the meta device — by *assigning* the checkpoint's tensors as the
    parameters (no random initialisation before, no second copy of the weights), cast key by key to ``dtype``
    (default: the model's fp32), then recompute the non-persistent buffers (RandAR's RoPE table, fp32)."""
    official = get_family(model.family).official
    if official is not None and official.is_state_dict(sd):
        sd = official.fit(official.convert_state_dict(sd), model)
    check_state_dict(model.state_dict(), sd, source)
    want = {k: v.dtype for k, v in model.state_dict().items()}
    for k in list(sd):  # in place, so each old tensor is freed as its cast replaces it
        target = dtype if (dtype is not None and sd[k].is_floating_point()) else want[k]
        sd[k] = sd[k].to(target)
    model.load_state_dict(sd, strict=True, assign=True)
    model.reset_buffers()
    return model


def load_weights(model: AnyOrderModel, path: str | os.PathLike) -> AnyOrderModel:
    """Load the weights of ``path`` (a model directory or a checkpoint file, ours or official) into an existing
    ``model`` in place — e.g. to start training from another run's or a release's weights. Official names are
    converted and the state dict fitted as the family's official loader does (LPD resizes a position table of
    another grid); every other difference is an error naming the keys."""
    path = Path(path)
    weights = _weights_in_directory(path) if path.is_dir() else path
    sd = load_state_dict(weights)
    official = get_family(model.family).official
    if official is not None and official.is_state_dict(sd):
        sd = official.fit(official.convert_state_dict(sd), model)
    check_state_dict(model.state_dict(), sd, str(weights))
    model.load_state_dict(sd, strict=True)
    model.reset_buffers()
    return model


def load_official(checkpoint: str | os.PathLike, config: dict[str, Any] | str | os.PathLike | None = None,
                  preset: str | None = None, device: torch.device | str = "cpu",
                  dtype: torch.dtype | str | None = None) -> AnyOrderModel:
    """Load a checkpoint (official or ours) given its hyper-parameters (official ``config.json``,
    our ``config.json``, or a preset name). The model is built on the meta device and takes the checkpoint's
    tensors (``assign=True``): peak memory is one copy of the weights. ``dtype`` (``"bf16"``, ...) casts the
    weights for inference; RandAR's RoPE table stays fp32."""
    checkpoint = Path(checkpoint)
    dtype = resolve_dtype(dtype)
    sd = load_state_dict(checkpoint)
    if config is None and preset is None:
        beside = checkpoint.parent / CONFIG_NAME
        if beside.is_file():
            config = beside
        elif _release_preset(checkpoint) is not None:
            preset = _release_preset(checkpoint)
        else:
            raise CheckpointError(f"{checkpoint}: no hyper-parameters: put its config.json beside it or pass a preset "
                                  f"(one of {', '.join(_preset_names())})")
    sampling: dict[str, Any] = {}
    if config is not None:
        cfg = _read_config(config)
        source = "config" if isinstance(config, dict) else str(config)
        if "family" in cfg:
            extra = cfg.get("extra") if isinstance(cfg.get("extra"), dict) else {}
            sampling = dict(extra.get("sampling") or {})
            with torch.device("meta"):  # no random init: every parameter is assigned from the checkpoint
                model = build_model(cfg, source=source)
        else:
            spec = _official_family(cfg, sd, source)
            official = spec.official
            with torch.device("meta"):
                model = spec.model_class(official.config(official.section(cfg), source))
            sampling = official.sampling(cfg)
        release = _release_preset(checkpoint)
        if not sampling and release is not None and PRESETS[release].family == model.family:
            sampling = dict(PRESETS[release].sampling)
    else:
        with torch.device("meta"):
            model = build_model(preset)  # keeps the preset's sampling settings
        sampling = model.sampling_defaults
    model = _load_into(model, sd, str(checkpoint), dtype).to(device).eval()
    model.sampling_defaults = sampling  # what the run / release samples with (anyorder.sampling.model_sampling)
    return model


def _preset_names() -> list[str]:
    return sorted(PRESETS)


def save_pretrained(model: nn.Module, directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (atomically) and return the directory.

    Generators record their ``family`` and config fields; the small modules of :data:`MODULE_TYPES`
    (demo tokenizer, digit judge) their ``model_type`` and config fields. ``extra`` is free-form metadata
    stored under ``"extra"`` (e.g. the tokenizer a generator was trained with); a generator's
    ``sampling_defaults`` are stored as ``extra["sampling"]`` unless ``extra`` gives them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(model, AnyOrderModel):
        config, meta = model.config_dict(), {"family": model.family}
        if model.sampling_defaults and "sampling" not in (extra or {}):  # keep what it samples with
            extra = {**(extra or {}), "sampling": dict(model.sampling_defaults)}
    else:
        model_type = getattr(model, "model_type", None)
        if MODULE_TYPES.get(model_type) is not type(model):
            raise TypeError(f"save_pretrained: {type(model).__name__} is neither a generator nor one of the "
                            f"registered modules ({', '.join(sorted(MODULE_TYPES))})")
        config, meta = {"model_type": model_type, **config_to_dict(model.config)}, {"model_type": model_type}
    save_state_dict(directory / WEIGHTS_NAME, model.state_dict(), metadata={**meta, "format": "pt"})
    atomic_write_json(directory / CONFIG_NAME, {**config, **({"extra": extra} if extra else {})})
    return directory


def load_module(directory: str | os.PathLike, device: torch.device | str = "cpu",
                expected: type[nn.Module] | None = None) -> nn.Module:
    """Load a small module (``config.json`` with a ``model_type``) written by :func:`save_pretrained`, in
    eval mode. ``expected`` checks its class; every error names the file."""
    directory = Path(directory)
    cfg_path = directory / CONFIG_NAME
    raw = read_config_file(cfg_path)
    raw.pop("extra", None)
    model_type = raw.pop("model_type", None)
    if model_type not in MODULE_TYPES:
        raise ValueError(f"{cfg_path}: model_type is {model_type!r}; expected one of {sorted(MODULE_TYPES)}")
    cls = MODULE_TYPES[model_type]
    if expected is not None and cls is not expected:
        raise ValueError(f"{cfg_path}: holds a {model_type!r}, expected a {expected.__name__}")
    model = cls(config_from_dict(cls.config_class, raw, prefix=f"{cfg_path}: "))
    weights = directory / WEIGHTS_NAME
    state = load_state_dict(weights, map_location="cpu")
    check_state_dict(model.state_dict(), state, str(weights))
    model.load_state_dict(state)
    return model.to(device).eval()


def from_pretrained(name_or_path: str | os.PathLike, filename: str | None = None,
                    config: dict[str, Any] | str | os.PathLike | None = None, preset: str | None = None,
                    device: torch.device | str = "cpu", dtype: torch.dtype | str | None = None) -> AnyOrderModel:
    """Load a model from a local directory, a local file, or a hub id (``owner/name`` + ``filename``).

    A directory holds our ``config.json`` + ``model.safetensors`` (or an official checkpoint with its
    ``config.json``). A file is an official or our checkpoint; its hyper-parameters come from
    ``config``, a ``config.json`` beside it, ``preset``, or a preset named like the file (``rar_b.bin``).
    """
    path = Path(name_or_path)
    if path.is_dir() and (path / CONFIG_NAME).is_file() and config is None and preset is None:
        if "model_type" in read_config_file(path / CONFIG_NAME):
            return load_module(path, device)
    if path.is_dir():
        cfg_path = path / CONFIG_NAME
        weights = _weights_in_directory(path)
        if config is None and preset is None and not cfg_path.is_file():
            raise FileNotFoundError(f"{path}: no {CONFIG_NAME}; pass config= or preset=")
        return load_official(weights, config if config is not None else (None if preset else cfg_path), preset, device,
                             dtype)
    if path.is_file():
        return load_official(path, config, preset, device, dtype)
    if not _looks_like_hub_id(str(name_or_path)) or path.suffix in (".bin", ".pt", ".pth", ".safetensors"):
        raise FileNotFoundError(f"{name_or_path}: no such file or directory (nor a hub id like 'owner/name')")
    local = hub_download(str(name_or_path), filename)
    if preset is None and config is None:
        preset = _release_preset(Path(local))
    return load_official(local, config, preset, device, dtype)


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_PREFERRED_STEMS = ("model", "checkpoint", "pytorch_model")


def _safetensors_is_model(path: Path) -> bool:
    """Cheap check (header only) that a ``.safetensors`` file holds generator weights, not e.g. test cases."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
    except Exception:  # unreadable: keep it, loading will report the error with the file name
        return True
    marker = dict.fromkeys(keys)
    return any(k.startswith("transformer.") for k in keys) or any(
        spec.official is not None and spec.official.is_state_dict(marker) for spec in FAMILIES.values())


def _weights_in_directory(path: Path) -> Path:
    """The weights file of a model directory: ``model.safetensors``, else the one checkpoint-like file.

    Official folders may hold other tensor files beside the checkpoint (e.g. ``cases.safetensors``);
    ``.safetensors`` files whose keys are not model weights are skipped (header read only). Among several
    candidates, ``model.*`` / ``checkpoint.*`` / ``pytorch_model.*`` or a preset name wins; otherwise the
    choice is ambiguous and the error lists the files.
    """
    if (path / WEIGHTS_NAME).is_file():
        return path / WEIGHTS_NAME
    cands = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    cands = [p for p in cands if p.suffix != ".safetensors" or _safetensors_is_model(p)]
    if not cands:
        raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME} (or model .bin/.pt/.safetensors) in this directory")
    if len(cands) == 1:
        return cands[0]
    preferred = [p for p in cands if p.stem in _PREFERRED_STEMS or _release_preset(p) is not None]
    if len(preferred) == 1:
        return preferred[0]
    raise FileNotFoundError(f"{path}: several candidate weight files ({', '.join(p.name for p in cands)}); "
                            f"pass the checkpoint file itself")


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/"))


def hub_download(repo_id: str, filename: str | None) -> Path:
    """Fetch ``filename`` from the hub (only when online); offline, say which file to put where."""
    if not filename:
        raise ValueError(f"hub id {repo_id!r} needs a filename (e.g. rar_b.bin)")
    hint = (f"download https://huggingface.co/{repo_id}/resolve/main/{filename} on a machine with internet access "
            f"and pass the local path instead of the hub id")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:
        raise RuntimeError(f"loading {repo_id}/{filename} from the hub needs huggingface_hub "
                           f"(pip install huggingface_hub); or {hint}") from e
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except Exception as e:  # offline, unknown repo, gated ...
        raise RuntimeError(
            f"could not fetch {filename} from hub repo {repo_id} ({type(e).__name__}: {e}); {hint}") from e
