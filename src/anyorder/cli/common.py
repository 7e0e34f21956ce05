"""What the commands share: the device and TF32 options, loading a generator and a tokenizer, parsing classes."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from anyorder.data.classes import class_index
from anyorder.demo.run import recorded_tokenizer
from anyorder.hub import _looks_like_hub_id, from_pretrained, load_module
from anyorder.models import FAMILIES, PRESETS, SettingInfo, families_with
from anyorder.nn.device import describe_device, resolve_device, tf32_mode
from anyorder.tokenizers.demo_vq import DemoVQ
from anyorder.tokenizers.official import load_official_tokenizer

__all__ = ["parse_classes", "load_generator", "load_tokenizer", "check_tokenizer_fits", "sampling_settings",
           "add_sampling_options", "sampling_values", "add_device_options", "pick_device", "on_device"]


def add_device_options(p: argparse.ArgumentParser, tf32: bool = True, tf32_default: bool | None = True) -> None:
    """``--device`` (default auto) and, for the commands that run a generator, ``--tf32 / --no-tf32``
    (``tf32_default`` None: on, unless the command's evaluation protocol says otherwise)."""
    p.add_argument("--device", default="auto",
                   help="auto (default): CUDA when present (cuda:LOCAL_RANK under torchrun), else the CPU; or cpu, "
                   "cuda, cuda:1, ...")
    if tf32:
        p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=tf32_default,
                       help="TF32 matmuls and convolutions for fp32 work on CUDA (default: on, as the official "
                       "samplers run; --no-tf32: full fp32, slower). Recorded with the settings; no effect on a CPU")


def pick_device(spec: str, what: str = "--device") -> torch.device:
    """The device ``spec`` names (a missing CUDA is one line naming ``what``); ``auto`` says what it picked
    (rank 0 only under torchrun)."""
    device = resolve_device(spec, what)
    if str(spec) == "auto" and os.environ.get("RANK", "0") == "0":
        print(f"{what} auto: running on {describe_device(device)}", flush=True)
    return device


@contextlib.contextmanager
def device_context(args: argparse.Namespace) -> Iterator[torch.device]:
    """Resolve ``args.device`` (:func:`pick_device`), bind a CUDA device, and run with TF32 as ``--tf32`` says
    (the flags restored after). Sets ``args.device`` to the resolved device's name and ``args.tf32`` to whether
    TF32 is in effect (never on a CPU): what the settings record."""
    device = pick_device(args.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    tf32 = getattr(args, "tf32", False)
    with tf32_mode(True if tf32 is None else tf32, device) as on:
        args.device, args.tf32 = str(device), on
        yield device


def on_device(cmd: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run the command ``cmd`` inside :func:`device_context`."""

    @functools.wraps(cmd)
    def run(args: argparse.Namespace) -> int:
        with device_context(args):
            return cmd(args)

    return run


def sampling_settings(capability: str | None = None) -> dict[str, tuple[SettingInfo, list[str]]]:
    """Every sampling field of the registered families' policies (those with ``capability``), once, with the
    families that have it, in the order the policies declare them."""
    names = families_with(capability) if capability else sorted(FAMILIES)
    out: dict[str, tuple[SettingInfo, list[str]]] = {}
    for name in names:
        for info in FAMILIES[name].policy_class.settings():
            out.setdefault(info.name, (info, []))[1].append(FAMILIES[name].display_name)
    return out


def add_sampling_options(p: argparse.ArgumentParser, capability: str | None = None) -> None:
    """One ``--option`` per policy field (help text from the field), all defaulting to "what the model was made
    with" (``None``); an option the model's family does not have is an error when given."""
    infos = sampling_settings(capability)
    every = {FAMILIES[n].display_name for n in (families_with(capability) if capability else FAMILIES)}
    g = p.add_argument_group("sampling (default: the settings the model was made / released with)")
    for name, (info, fams) in infos.items():
        who = "" if set(fams) == every else f" [{', '.join(fams)}]"
        flag = f"--{name.replace('_', '-')}"
        if info.type is bool:  # --x / --no-x (``type=bool`` would read "False" as True)
            g.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                           help=f"{info.help}{who}")
            continue
        g.add_argument(flag, dest=name, type=info.type, default=None, choices=info.choices, help=f"{info.help}{who}")


def sampling_values(args: argparse.Namespace) -> dict:
    """The sampling options given on the command line (``None`` = unset)."""
    return {name: getattr(args, name, None) for name in sampling_settings()}


def parse_classes(items: list[str], num_classes: int) -> list[int]:
    return [class_index(c, num_classes) for c in items]


def load_generator(model: str, checkpoint: str | None, device: str, dtype: str | None = None,
                   config: str | None = None):
    """A generator from a run/model directory, a checkpoint file (+ preset name), or a hub id.

    ``--model rar_b --checkpoint rar_b.bin`` (preset + file), ``--model DIR`` (our or an official
    folder), ``--model owner/name --checkpoint rar_b.bin`` (hub repo + file name; offline, the error says
    which file to download and where from). ``dtype``: ``"fp32"`` or ``"bf16"`` inference weights. ``config``:
    the checkpoint's hyper-parameters (a config.json or an official YAML) when no file beside it says them.
    """
    if checkpoint:
        if not Path(checkpoint).exists() and not Path(model).exists() and _looks_like_hub_id(model):
            return from_pretrained(model, filename=checkpoint, device=device, dtype=dtype)
        preset = model if model in PRESETS and config is None else None
        return from_pretrained(checkpoint, config=config, preset=preset, device=device, dtype=dtype)
    if config is not None:
        raise ValueError("--config gives the hyper-parameters of a --checkpoint file: pass the checkpoint too")
    if model in PRESETS:
        raise ValueError(f"--model {model} is a preset: give its weights with --checkpoint FILE (e.g. {model}.bin)")
    path = Path(model)
    if (path / "model").is_dir():  # a demo / train run directory
        path = path / "model"
    return from_pretrained(path, device=device, dtype=dtype)


def load_tokenizer(spec: str | None, model_path: str, device: str):
    """A tokenizer from a file (official MaskGIT-VQGAN / LlamaGen VQ) or a demo tokenizer directory."""
    if spec is None:
        run = Path(model_path)
        for cand in (run / "tokenizer", run.parent / "tokenizer"):
            if (cand / "config.json").is_file():
                return load_module(cand, device=device, expected=DemoVQ)
        recorded = recorded_tokenizer(run / "model" if (run / "model").is_dir() else run)
        if recorded is not None:  # a run trained on another run's tokenizer (tokenizer.path=...)
            return load_module(recorded, device=device, expected=DemoVQ)
        raise ValueError("no tokenizer given: pass --tokenizer FILE_OR_DIR")
    p = Path(spec)
    if p.is_dir() and (p / "config.json").is_file() and (p / "model.safetensors").is_file():
        return load_module(p, device=device, expected=DemoVQ)
    return load_official_tokenizer(p).to(device)


def check_tokenizer_fits(model, tok, source: str) -> None:
    """The generator's codes must be the tokenizer's codes: same codebook size.

    The code grid needs no check: the tokenizers' decoders are convolutional, so a ``h x w`` grid decodes
    to an ``h*f x w*f`` image (``f`` the tokenizer's downsampling) whatever grid the tokenizer was built for.
    """
    k = getattr(tok, "codebook_size", None)
    if k is not None and int(k) != model.codebook_size:
        known = ", ".join(f"{s.display_name}: {s.default_tokenizer}" for s in FAMILIES.values() if s.default_tokenizer)
        raise ValueError(f"the generator predicts {model.codebook_size} codes but the tokenizer {source} has a "
                         f"codebook of {int(k)}: use the tokenizer the generator was trained with ({known})")
