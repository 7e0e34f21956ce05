"""``benchmarks/device_check.sh`` / ``device_check.py``, the first GPU run: it must fail loudly (the old script
exited 0 after two ``ModuleNotFoundError``s) and keep to its budget with each configuration in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.sh"


def _sh(tmp_path: Path, python: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": python, "OUT": str(tmp_path / "out")}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120)


def test_a_python_without_the_project_stops_the_run_with_a_clear_failure(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named torch' >&2\nexit 1\n")
    fake.chmod(0o755)
    done = _sh(tmp_path, str(fake), "--smoke")
    assert done.returncode != 0
    assert "device_check: FAILED: preflight" in done.stderr and str(fake) in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_a_gpu_run_on_a_machine_without_cuda_stops_at_the_preflight(tmp_path):
    done = _sh(tmp_path, sys.executable)
    assert done.returncode != 0 and "no CUDA device visible" in done.stderr


def _bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict, float]:
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--smoke", "--device", "cpu",
                           "--json", str(out), *args], env=env, capture_output=True, text=True, timeout=120)
    return done, json.loads(out.read_text()), time.perf_counter() - t0


def test_a_configuration_past_the_budget_is_killed_and_listed_as_skipped(tmp_path):
    """The budget ends a configuration by ending its process (never a signal inside a compile or a CUDA-graph
    capture): the run keeps to the budget and lists what it could not finish."""
    done, result, seconds = _bench(tmp_path, "--budget-s", "3", "--min-row-s", "0.5")
    assert done.returncode == 0, done.stderr
    finished = [f"{r['model']} {r['dtype']} {'compiled' if r['compiled'] else 'eager'}"
                for r in [*result["rar"], *result["randar"].values(), *result["lpd"]]]
    assert len(finished) + len(result["skipped"]) == 13 and not result["failed"]  # every row accounted for
    assert result["skipped"] and result["total_seconds"] < 3 + 2  # 13 processes cannot start in 3 s
    assert seconds < 3 + 15  # the budget, the driver's own start and the JSON


def test_a_configuration_that_crashes_costs_its_row_and_fails_the_run(tmp_path):
    done, result, _ = _bench(tmp_path, "--sizes", "rar_nonexistent", "--budget-s", "8", "--min-row-s", "0.5")
    assert done.returncode == 1
    assert "rar_nonexistent fp32 eager" in result["failed"] and "FAILED: rar_nonexistent" in done.stderr


def test_an_lpd_row_times_the_release_policy_at_batch_1_and_64_after_a_warm_up(tmp_path):
    """LPD's protocol: its release policy (steps, guidance, locality orders), batch-1 latency and batch-64
    throughput, every generation after the first timed."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import device_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    row = device_check.run_one("lpd_l fp32 eager b1+3", torch.device("cpu"), batch=0, smoke=True)
    assert row["policy"]["order"] == "locality" and row["steps"] == 20
    assert len(row["batch1"]["seconds"]) == len(row["batch3"]["seconds"]) == 2  # the warm-up is not timed
    assert row["batch3"]["img_per_s"] == pytest.approx(3 / row["batch3"]["median_s"])
    assert row["paper_a100"]["latency_s"] == 0.28
