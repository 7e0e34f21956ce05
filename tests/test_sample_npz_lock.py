"""Two ``anyorder sample --npz`` runs on one file at once (issue 22): the second is refused while the first
lives, naming it; a lock left by a killed run is taken over."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from test_app import GRID, TINY

import anyorder.sampling.batch as batch_lib
from anyorder.hub import build_model
from anyorder.io.lock import LockedError, OutputLock
from anyorder.io.npz import read_samples
from anyorder.sampling.batch import lock_path, parts_dir, sample_npz
from anyorder.tokenizers.demo_vq import DemoVQ, DemoVQConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_model(TINY["randar"]).eval()
    tok = DemoVQ(DemoVQConfig(codebook_size=TINY["randar"]["codebook_size"], image_size=GRID * 4, code_dim=8,
                              hidden=16)).eval()
    return model, tok


def _run(tiny, out: Path) -> dict:
    model, tok = tiny
    return sample_npz(model, tok, out, torch.arange(6) % 3, batch_size=2, seed=0, sampling={"steps": 4},
                      progress=False)


def test_a_second_run_on_the_same_file_is_refused_while_the_first_runs(tiny, tmp_path, monkeypatch):
    out = tmp_path / "s.npz"
    started, finish = threading.Event(), threading.Event()
    real = batch_lib.sample_chunk

    def slow_first_run(*args, **kwargs):  # the first run stops inside its first chunk until told to go on
        if threading.current_thread().name == "first":
            started.set()
            assert finish.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(batch_lib, "sample_chunk", slow_first_run)
    result = {}
    first = threading.Thread(target=lambda: result.update(record=_run(tiny, out)), name="first")
    first.start()
    try:
        assert started.wait(60)
        with pytest.raises(ValueError, match=rf"--npz {out} is being written by another run \(pid {os.getpid()} "
                                             rf"on .*\): wait for it to finish"):
            _run(tiny, out)
    finally:
        finish.set()
        first.join(60)
    assert result["record"]["num_samples"] == 6 and len(read_samples(out)[0]) == 6
    assert not lock_path(out).exists() and not parts_dir(out).exists()
    assert _run(tiny, tmp_path / "again.npz")["num_samples"] == 6  # and the lock is free again


_HOLDER = """
import sys, time
from anyorder.io.lock import OutputLock
lock = OutputLock(sys.argv[1], "test").acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_a_lock_left_by_a_killed_run_is_taken_over(tiny, tmp_path, capsys):
    out = tmp_path / "s.npz"
    env = {**os.environ, "PYTHONPATH": str(Path(batch_lib.__file__).parents[2])}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock_path(out))], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=f"pid {holder.pid} on"):
            OutputLock(lock_path(out), "x").acquire()
    finally:
        holder.kill()
        holder.wait(30)
    assert lock_path(out).exists()  # killed: the file stays behind, its flock is gone with the process
    assert _run(tiny, out)["num_samples"] == 6
    assert f"pid {holder.pid} on" in capsys.readouterr().err and not lock_path(out).exists()
    images, labels = read_samples(out)
    assert images.shape[0] == 6 and np.array_equal(labels, np.arange(6) % 3)
