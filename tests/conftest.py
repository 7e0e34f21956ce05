"""Shared test fixtures. The official-output fixtures are read at test time from ../shared/fixtures
(relative to the project root), or from $ANYORDER_FIXTURES."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("ANYORDER_FIXTURES", ROOT.parent / "shared" / "fixtures"))


def fixture_dir(name: str) -> Path:
    d = FIXTURES / name
    if not d.is_dir():
        msg = f"official fixtures not found at {d} (set ANYORDER_FIXTURES)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return d


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
