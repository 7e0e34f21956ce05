"""How the tests find the official fixtures and tell CI from a local run (``tests/conftest.py``): one way to
find the fixtures (``fixture_dir``, honouring ``$ANYORDER_FIXTURES``), any truthy ``$CI`` counts as CI, and
outside CI a missing fixture skips with a loud summary at the end of the run naming every skipped test."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import in_ci

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("value,expected", [
    ("1", True), ("true", True), ("TRUE", True), ("yes", True), ("on", True), ("github-actions", True),
    ("", False), ("0", False), ("false", False), ("False", False), ("no", False), (" no ", False), (None, False),
])
def test_any_truthy_ci_value_counts_as_ci(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert in_ci() is expected


def test_no_test_finds_fixtures_or_ci_its_own_way():
    """Fixture paths come from conftest.fixture_dir / FIXTURES and CI from conftest.in_ci, nowhere else."""
    own_way = re.compile(r"""["']shared["']|["']fixtures["']|ANYORDER_FIXTURES|environ[^\n]*["']CI["']""")
    offenders = [f"{p.name}:{i}: {line.strip()}" for p in sorted(TESTS.glob("test_*.py")) if p != Path(__file__)
                 for i, line in enumerate(p.read_text().splitlines(), 1) if own_way.search(line)]
    assert not offenders, "find fixtures with conftest.fixture_dir and CI with conftest.in_ci:\n" + "\n".join(offenders)


INNER = '''
from conftest import fixture_dir

def test_needs_rar():
    fixture_dir("rar")

def test_needs_nothing():
    pass
'''


def _inner_run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["ANYORDER_FIXTURES"] = str(tmp_path / "no_fixtures_here")
    if ci is not None:
        env["CI"] = ci
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rN", str(tmp_path / "test_inner.py")]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_missing_fixtures_skip_with_a_loud_summary_outside_ci(tmp_path):
    done = _inner_run(tmp_path, "false")  # CI=false: not CI
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout[done.stdout.index("FIXTURE TEST(S) SKIPPED"):]
    assert "1 FIXTURE TEST(S) SKIPPED" in done.stdout
    assert "test_inner.py::test_needs_rar" in summary and "test_needs_nothing" not in summary
    assert f"official fixtures not found at {tmp_path / 'no_fixtures_here' / 'rar'}" in summary


def test_missing_fixtures_fail_under_ci(tmp_path):
    done = _inner_run(tmp_path, "1")
    assert done.returncode == 1 and "1 failed, 1 passed" in done.stdout, done.stdout + done.stderr
    assert "official fixtures not found" in done.stdout and "FIXTURE TEST(S) SKIPPED" not in done.stdout
