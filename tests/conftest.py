"""Shared test fixtures. The official-output fixtures are read at test time from ../shared/fixtures
(relative to the project root), or from $ANYORDER_FIXTURES; every test finds them through :func:`fixture_dir`.
Absent, a fixture test fails under CI (:func:`in_ci`) and otherwise skips, and the run ends with a summary
listing every fixture test it skipped."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from anyorder.models import build_model, family_names, get_family

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("ANYORDER_FIXTURES", ROOT.parent / "shared" / "fixtures"))


FIXTURE_MISSING = "official fixtures not found at"  # the start of a missing fixture's skip reason


def in_ci() -> bool:
    """Whether the tests run under CI: ``$CI`` set to anything but empty, ``0``, ``false`` or ``no`` (any case),
    so ``CI=1``, ``CI=true`` and ``CI=yes`` all count. Under CI nothing that a test needs may be missing."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def fixture_dir(name: str) -> Path:
    """The official-output fixture folder ``name``; absent, the test fails under CI and skips otherwise."""
    d = FIXTURES / name
    if not d.is_dir():
        msg = f"{FIXTURE_MISSING} {d} (set ANYORDER_FIXTURES)"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return d


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Outside CI a missing fixture skips its test: say so loudly at the end, naming every such test."""
    missing = []
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if FIXTURE_MISSING in reason:
            missing.append((report.nodeid, reason.removeprefix("Skipped: ")))
    if not missing:
        return
    terminalreporter.section(f"{len(missing)} FIXTURE TEST(S) SKIPPED: NOT RUN, NOT PASSED", sep="!", red=True,
                             bold=True)
    for nodeid, reason in missing:
        terminalreporter.line(f"SKIPPED {nodeid}: {reason}", red=True)
    terminalreporter.line(f"Point ANYORDER_FIXTURES at the fixtures (now {FIXTURES}); under CI these fail.",
                          red=True, bold=True)


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


# every fixture folder's hyper-parameter file (tests take shapes, class counts and codebook sizes from it:
# reviewers run the suite on twins of the fixtures with other shapes)
CONFIG_FILES = {"rar": "config.json", "randar": "config.json", "maskgit_vqgan": "vqgan_config.json",
                "llamagen_vq": "vq_config.json"}
# the official generator fixtures, one line each (folder = family name): the keys of their config.json that hold
# the token count, codebook size and class count, and the tokenizer fixture their codes decode with. Tests over
# "every generator fixture" are parametrised by GENERATOR_FIXTURES (those of registered families).
GENERATOR_GEOMETRY = {"rar": ("image_seq_len", "codebook_size", "condition_num_classes"),
                      "randar": ("block_size", "vocab_size", "num_classes"),
                      "lpd": ("seq_len", "vqgan_vocab_size", "class_num")}
FIXTURE_TOKENIZER = {"rar": "maskgit_vqgan/vqgan_checkpoint.bin", "randar": "llamagen_vq/vq_checkpoint.pt",
                     "lpd": "llamagen_vq/vq_checkpoint.pt"}


GENERATOR_FIXTURES = [name for name in GENERATOR_GEOMETRY if name in family_names()]


def fixture_config(name: str) -> dict:
    """The config JSON of fixture folder ``name`` (skips like :func:`fixture_dir` when absent)."""
    return load_json(fixture_dir(name) / CONFIG_FILES.get(name, "config.json"))


def fixture_geometry(name: str) -> dict[str, int]:
    """The numbers the tests need from a fixture's config, under one naming for every family: generators
    ``seq_len``, ``side`` (the square code grid), ``codebook_size``, ``num_classes``; tokenizers
    ``codebook_size``, ``downsample`` (pixels per code along a side)."""
    cfg = fixture_config(name)
    if name not in GENERATOR_GEOMETRY:
        return {"codebook_size": cfg["codebook_size"], "downsample": cfg["image_size"] // cfg["token_grid"][0]}
    T, V, C = (cfg[key] for key in GENERATOR_GEOMETRY[name])
    side = math.isqrt(T)
    assert side * side == T, f"{name} fixture: {T} tokens is not a square grid"
    return {"seq_len": T, "side": side, "codebook_size": V, "num_classes": C}


def fixture_checkpoint(name: str) -> Path:
    """The official checkpoint file of generator fixture ``name`` (``checkpoint.bin``, ``.safetensors``, ...)."""
    found = sorted(fixture_dir(name).glob("checkpoint.*"))
    assert len(found) == 1, f"{name} fixture: expected one checkpoint.* file, found {[p.name for p in found]}"
    return found[0]


def fixture_tokenizer(name: str) -> Path:
    """The official tokenizer checkpoint that generator fixture ``name``'s codes decode with."""
    folder, file = FIXTURE_TOKENIZER[name].split("/")
    return fixture_dir(folder) / file


def debug_model(family: str, seed: int = 0, noise: float = 0.1, **changes):
    """The family's debug model (its spec's ``debug`` config with ``changes``), with ``noise`` times a normal draw
    added to every weight (official inits zero some layers, which would hide a wrong load or a wrong step), in
    eval mode."""
    torch.manual_seed(seed)
    model = build_model({"family": family, **get_family(family).debug, **changes})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * noise)
    return model.eval()


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread than on two contending ones on a shared machine (module-wide)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def decode_job(model, classes, orders, policy, generator=None, plan=None, **parts):
    """A :class:`~anyorder.sampling.DecodeJob` built by hand from its parts (the decode loop's own inputs): the
    policy's plan over the model's tokens unless ``plan`` is given."""
    from anyorder.sampling import DecodeJob

    plan = policy.plan(orders.shape[1]) if plan is None else plan
    return DecodeJob(model, classes, orders, plan, policy, generator, tuple(model.grid), **parts)


def adm_center_crop(image, size: int) -> np.ndarray:
    """Independent reference for :func:`anyorder.io.images.center_crop_arr`: the ADM centre crop
    (guided-diffusion ``image_datasets.center_crop_arr``) spelled out with PIL's own operations — halve
    with the BOX filter while the short side is at least ``2 * size``, resize with BICUBIC so the short side
    is ``size`` (each side rounded), then crop the central ``size x size`` box (offsets rounded down).
    Returns the crop as a uint8 array."""
    from PIL import Image

    img = image
    while min(img.width, img.height) >= 2 * size:
        img = img.resize((img.width // 2, img.height // 2), Image.Resampling.BOX)
    scale = size / min(img.width, img.height)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))
