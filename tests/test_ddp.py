"""Data-parallel training on CPU (gloo): ``torchrun --nproc_per_node 2 -m anyorder.cli train`` with DDP and with
FSDP (``train.fsdp=true``) gives the parameters of one process at twice the per-process batch; an FSDP checkpoint
loads in a single process.

One ``torchrun`` launch runs both engines: this file is also the script it runs (see ``__main__``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")

STEPS, BATCH = 3, 8  # global batch 8: 4 per process with 2 processes
MODEL = ["model.dim=32", "model.depth=2", "model.n_head=2", "model.mlp_hidden=64", "model.pos_extra=2",
         "model.timestep_extra=2", "model.num_classes=3", "model.codebook_size=16"]


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "rar", "--out", str(out), "--quiet", f"data.source={data}", *MODEL,
            "train.device=cpu", f"train.batch_size={BATCH}", f"train.steps={STEPS}", "train.ckpt_every=2",
            "train.log_every=1", "train.warmup_steps=1", "train.lr=0.003", *extra]


def _write_codes(d: Path) -> None:
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    n = 21  # no multiple of the batch: batches cross epoch ends
    np.save(d / "codes.npy", rng.integers(0, 16, (n, 2, 4, 4)).astype(np.uint16))
    np.save(d / "labels.npy", rng.integers(0, 3, n))
    (d / "meta.json").write_text('{"codebook_size": 16, "grid": [4, 4], "augmentations": 2, "num_images": 21}')


def _params(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_two_processes_equal_one_at_twice_the_batch_for_ddp_and_fsdp(tmp_path):
    from anyorder.cli.main import main
    from anyorder.hub import from_pretrained

    data = tmp_path / "codes"
    _write_codes(data)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
           str(data), str(tmp_path)]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]

    assert main(_args(data, tmp_path / "one")) == 0  # one process, the whole batch
    one = _params(tmp_path / "one")
    for engine in ("ddp", "fsdp"):
        two = _params(tmp_path / engine)
        assert two.keys() == one.keys()
        for k in one:
            torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=0, msg=f"{engine}: {k}")
    first = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)
    assert first["world_size"] == 2 and first["samples_seen"] == STEPS * BATCH

    # the FSDP run's checkpoint and model load in a single process; its run resumes there
    fsdp_model = from_pretrained(tmp_path / "fsdp" / "model")
    for k, v in fsdp_model.state_dict().items():
        assert torch.equal(v, _params(tmp_path / "fsdp")[k]), k
    assert main(_args(data, tmp_path / "fsdp", "train.fsdp=true", f"train.steps={STEPS + 1}")) == 0
    assert torch.load(tmp_path / "fsdp" / "checkpoints" / "last.pt", weights_only=True)["step"] == STEPS + 1


if __name__ == "__main__":  # under torchrun: the DDP run, then the FSDP run, both through the CLI
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from anyorder.cli.main import main
    from anyorder.training.distributed import init_distributed, shutdown

    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    init_distributed("cpu")  # one process group for both runs (gloo: the runs say train.device=cpu)
    rc = main(_args(data, out / "ddp"))
    rc = rc or main(_args(data, out / "fsdp", "train.fsdp=true"))
    shutdown()
    sys.exit(rc)
