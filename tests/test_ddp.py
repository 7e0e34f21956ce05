"""Data-parallel training: ``torchrun --nproc_per_node 2 -m anyorder.cli train`` on CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from anyorder.hub import from_pretrained

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")


def _torchrun(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "anyorder.cli", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_two_processes_train_one_model_and_resume_each_rank_stream(tmp_path):
    codes = torch.randint(0, 16, (40, 4, 4), generator=torch.Generator().manual_seed(0))
    save_file({"codes": codes, "labels": torch.arange(40) % 3}, str(tmp_path / "codes.safetensors"))
    args = ["train", "--model", "randar", "--out", str(tmp_path / "run"), "--quiet",
            f"data.source={tmp_path / 'codes.safetensors'}", "model.codebook_size=16", "model.num_classes=3",
            "model.dim=32", "model.depth=1", "model.n_head=2", "model.multiple_of=16", "train.device=cpu",
            "train.batch_size=8", "train.ckpt_every=2", "train.log_every=1"]
    done = _torchrun([*args, "train.steps=4"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 4
    # one data stream per rank is kept, and the two ranks drew different batches
    assert len(ckpt["generators"]) == 2 and not torch.equal(ckpt["generators"][0], ckpt["generators"][1])
    first = from_pretrained(tmp_path / "run" / "model")
    assert torch.equal(first.state_dict()["tok_embeddings.weight"], ckpt["model"]["tok_embeddings.weight"])

    done = _torchrun([*args, "train.steps=6"], tmp_path)  # resumes at step 4 on both ranks
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout + done.stderr
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert log["steps"] == 6 and [h["step"] for h in log["history"]] == [1, 2, 3, 4, 5, 6]
    moved = from_pretrained(tmp_path / "run" / "model")
    assert not torch.equal(moved.state_dict()["tok_embeddings.weight"], first.state_dict()["tok_embeddings.weight"])
