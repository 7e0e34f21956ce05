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
CONFIG_FILES = {"maskgit_vqgan": "vqgan_config.json", "llamagen_vq": "vq_config.json"}  # generators: config.json


def fixture_config(name: str) -> dict:
    """The config JSON of fixture folder ``name`` (skips like :func:`fixture_dir` when absent)."""
    return load_json(fixture_dir(name) / CONFIG_FILES.get(name, "config.json"))


def fixture_geometry(name: str) -> dict[str, int]:
    """The numbers the tests need from a fixture's config, under one naming for every family: generators
    ``seq_len``, ``side`` (the square code grid), ``codebook_size``, ``num_classes`` (read through the family's
    own official-config reader); tokenizers ``codebook_size``, ``downsample`` (pixels per code along a side)."""
    from anyorder.models import FAMILIES

    cfg = fixture_config(name)
    if name not in FAMILIES:
        return {"codebook_size": cfg["codebook_size"], "downsample": cfg["image_size"] // cfg["token_grid"][0]}
    official = FAMILIES[name].official
    model_cfg = official.config(official.section(cfg), f"{name} fixture config.json")
    T = model_cfg.seq_len
    side = math.isqrt(T)
    assert side * side == T, f"{name} fixture: {T} tokens is not a square grid"
    return {"seq_len": T, "side": side, "codebook_size": model_cfg.codebook_size,
            "num_classes": model_cfg.num_classes}


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
