"""Crash safety: a run killed with SIGKILL at a random moment and rerun with the same command ends bit-identical to
an uninterrupted run; a checkpoint write interrupted half-way never replaces the last good one."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from anyorder.cli.main import main
from anyorder.training import loop

STEPS = 300  # long enough that the run is still going when the kill comes


def _args(data: Path, out: Path) -> list[str]:
    return ["train", "--model", "randar", "--out", str(out), "--quiet", "--threads", "1", f"data.source={data}",
            "model.codebook_size=16", "model.num_classes=3", "model.dim=32", "model.depth=2", "model.n_head=2",
            "model.multiple_of=16", "model.dropout=0.1", "train.device=cpu", "train.batch_size=8",
            f"train.steps={STEPS}", "train.ckpt_every=2", "train.log_every=3", "train.warmup_steps=2"]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_run_killed_at_a_random_step_and_rerun_ends_bit_identical(tmp_path):
    g = torch.Generator().manual_seed(0)
    codes, labels = torch.randint(0, 16, (30, 4, 4), generator=g), torch.randint(0, 3, (30,), generator=g)
    save_file({"codes": codes, "labels": labels}, str(tmp_path / "codes.safetensors"))
    data = tmp_path / "codes.safetensors"
    cmd = [sys.executable, "-m", "anyorder.cli", *_args(data, tmp_path / "killed")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoints" / "last.pt"
    target = random.randint(4, 60)  # kill somewhere after this checkpoint: mid-step or mid-write
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        try:
            if torch.load(ckpt, weights_only=True)["step"] >= target:
                break
        except (FileNotFoundError, RuntimeError, EOFError):  # not written yet (writes are atomic renames)
            pass
        time.sleep(0.005)
    time.sleep(random.uniform(0.0, 0.02))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = torch.load(ckpt, weights_only=True)["step"]
    assert killed_at < STEPS

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from {ckpt} at step {killed_at}" in rerun.stdout + rerun.stderr

    threads = torch.get_num_threads()
    try:
        assert main(_args(data, tmp_path / "straight")) == 0  # the uninterrupted run, same settings
    finally:
        torch.set_num_threads(threads)
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert a["step"] == b["step"] == STEPS
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_an_interrupted_checkpoint_write_never_replaces_the_last_good_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / loop.LAST_CKPT
    loop.atomic_torch_save(path, {"step": 2, "w": torch.ones(3)})

    def dies_half_way(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(loop.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        loop.atomic_torch_save(path, {"step": 4, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert loop.load_checkpoint(path)["step"] == 2
    assert [p.name for p in path.parent.iterdir()] == [loop.LAST_CKPT]  # no temporary file left behind
