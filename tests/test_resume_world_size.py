"""Resuming on another number of processes: a run stopped at a checkpoint with 2 processes and resumed with 1
(and the reverse) ends bit-identical to an uninterrupted 2-process run — parameters and optimizer state.

What makes it exact: every draw of a step is a function of (seed, step) — the data stream by position, the
orders and label dropout of the *global* batch — and the global batch is cut into the same micro-batches: 2
processes x ``grad_accum=1`` and 1 process x ``grad_accum=2`` both run micro-batches of 4, so each matmul has
the same shape, and DDP's average of two gradients equals accumulating two halves (division by 2 is exact).
Changing the micro-batch size instead (1 process, ``grad_accum=1``: one batch of 8) changes the reduction
order: equal to ~1e-7, not bit for bit. The processes run with one thread each, as this process (a CPU
kernel's reduction order depends on its thread count).

The stop: a run with ``train.steps=2`` ends at the step-2 checkpoint and a rerun with ``train.steps=4``
resumes there — the same state a kill after that checkpoint leaves (``test_train_crash.py`` kills one). The
learning rate is constant after its warm-up and the annealing bounds are given, so the first two steps of a
2-step and a 4-step run are the same steps. One ``torchrun`` launch runs every 2-process part: this file is
also the script it runs (see ``__main__``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built"),
              pytest.mark.usefixtures("one_thread")]

BATCH, STOP, STEPS = 8, 2, 4
MODEL = ["model.dim=32", "model.depth=2", "model.n_head=2", "model.mlp_hidden=64", "model.pos_extra=2",
         "model.timestep_extra=2", "model.num_classes=3", "model.codebook_size=16", "model.class_dropout=0.25"]


def _args(data: Path, out: Path, steps: int, dropout: str, *extra: str) -> list[str]:
    return ["train", "--model", "rar", "--out", str(out), "--quiet", f"data.source={data}", *MODEL,
            f"model.dropout={dropout}", f"model.attn_dropout={dropout}", "train.device=cpu",
            f"train.batch_size={BATCH}", f"train.steps={steps}", f"train.ckpt_every={STOP}", "train.log_every=1",
            "train.warmup_steps=2", "train.lr=0.003", "train.end_lr=0.003",  # constant after the warm-up
            "train.anneal_start=1", "train.anneal_end=3", *extra]


def _write_codes(d: Path) -> None:
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    n = 21  # no multiple of the batch: step 3 crosses the epoch end after the resume
    np.save(d / "codes.npy", rng.integers(0, 16, (n, 2, 4, 4)).astype(np.uint16))
    np.save(d / "labels.npy", rng.integers(0, 3, n))
    (d / "meta.json").write_text('{"codebook_size": 16, "grid": [4, 4], "augmentations": 2, "num_images": 21}')


def _last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def _assert_bit_identical(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        if isinstance(a[k], dict):
            _assert_bit_identical(a[k], b[k], f"{what}.{k}")
        elif isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), f"{what}.{k}: max |diff| {(a[k] - b[k]).abs().max().item():.3g}"
        elif isinstance(a[k], (list, tuple)) and a[k] and isinstance(a[k][0], dict):
            for i, (x, y) in enumerate(zip(a[k], b[k], strict=True)):
                _assert_bit_identical(x, y, f"{what}.{k}[{i}]")
        else:  # a resumed optimizer holds its betas as a list, a fresh one as a tuple
            same = list(a[k]) == list(b[k]) if isinstance(a[k], (list, tuple)) else a[k] == b[k]
            assert same, f"{what}.{k}: {a[k]!r} != {b[k]!r}"


@pytest.mark.parametrize("dropout", ["0.0", "0.1"])
def test_resume_on_another_number_of_processes_is_bit_identical(tmp_path, capsys, dropout):
    from anyorder.cli.main import main

    data = tmp_path / "codes"
    _write_codes(data)
    one = ("train.grad_accum=2",)  # 1 process: the 2 processes' micro-batches one after the other
    assert main(_args(data, tmp_path / "one_two", STOP, dropout, *one)) == 0  # stopped at step 2 by 1 process
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
           str(data), str(tmp_path), dropout]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert f"resumed from {tmp_path / 'one_two' / 'checkpoints' / 'last.pt'} at step {STOP}" in done.stdout
    capsys.readouterr()
    assert main(_args(data, tmp_path / "two_one", STEPS, dropout, *one)) == 0  # resumed by 1 process
    assert f"at step {STOP}" in capsys.readouterr().out

    straight = _last(tmp_path / "two")  # 2 processes, uninterrupted
    assert straight["step"] == STEPS and straight["world_size"] == 2
    for run, world in (("two_one", 1), ("one_two", 2)):
        resumed = _last(tmp_path / run)
        assert resumed["step"] == STEPS and resumed["world_size"] == world
        assert resumed["samples_seen"] == straight["samples_seen"] == STEPS * BATCH
        _assert_bit_identical(resumed["model"], straight["model"], f"{run} model")
        _assert_bit_identical(resumed["optimizer"], straight["optimizer"], f"{run} optimizer")


if __name__ == "__main__":  # under torchrun: every 2-process part, through the CLI
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from anyorder.cli.main import main
    from anyorder.training.distributed import init_distributed, shutdown

    data, out, dropout = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    init_distributed("cpu")
    rc = main(_args(data, out / "two", STEPS, dropout))  # uninterrupted
    rc = rc or main(_args(data, out / "two_one", STOP, dropout))  # stopped at step 2, resumed by 1 process
    rc = rc or main(_args(data, out / "one_two", STEPS, dropout))  # resumed from 1 process's step 2
    shutdown()
    sys.exit(rc)
