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


TINY = {"family": "rar", "dim": 32, "depth": 2, "n_head": 2, "mlp_hidden": 64, "seq_len": 16, "codebook_size": 16,
        "num_classes": 3, "pos_extra": 2, "timestep_extra": 2}


def test_the_process_group_waits_longer_than_rank_0_writes_the_largest_checkpoint(monkeypatch):
    """NCCL's default 10 minutes is shorter than rank 0 writing RAR-XXL's ~17 GiB checkpoint at network-disk
    speed (17 GiB / 30 MB/s = 10 minutes) while the other ranks wait: the group is made with the longer
    timeout, which the environment can change."""
    from anyorder.training import distributed

    got = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda b, **kw: got.update(kw, backend=b))
    distributed.init_distributed("cpu")
    assert got["timeout"].total_seconds() >= 30 * 60 > 17 * 2**30 / 30e6
    monkeypatch.setenv("ANYORDER_DIST_TIMEOUT_MIN", "90")
    distributed.init_distributed("cpu")
    assert got["timeout"].total_seconds() == 90 * 60
    monkeypatch.setenv("ANYORDER_DIST_TIMEOUT_MIN", "0")
    with pytest.raises(ValueError, match="ANYORDER_DIST_TIMEOUT_MIN"):
        distributed.init_distributed("cpu")


@pytest.mark.parametrize("rank", [0, 1])
def test_every_rank_waits_for_rank_0s_checkpoint_at_a_barrier(rank, tmp_path, monkeypatch):
    """Rank 0 writes, then every rank meets at a barrier: the others do not wait for the write inside the
    next step's gradient all-reduce."""
    from types import SimpleNamespace

    from anyorder.models import build_model
    from anyorder.training import loop
    from anyorder.training.config import TrainConfig

    events = []
    monkeypatch.setattr(loop, "full_state", lambda module, opt, prefix: ({}, {}))
    monkeypatch.setattr(loop, "atomic_torch_save", lambda path, obj: events.append("write"))
    monkeypatch.setattr(loop, "barrier", lambda: events.append("barrier"))
    run = SimpleNamespace(loss_module=None, opt=None, rank=rank, world=2, ckpt_path=tmp_path / "last.pt",
                          data=[0] * 4, model=build_model(TINY), cfg=TrainConfig())
    loop.save(run, loop.TrainState(step=1, seen=4))
    assert events == (["write", "barrier"] if rank == 0 else ["barrier"])


def test_ddp_does_not_broadcast_the_deterministic_buffers(monkeypatch):
    """RandAR's RoPE table is computed from the config on every rank: DDP need not broadcast it each forward."""
    from anyorder.models import build_model
    from anyorder.training import distributed

    made = {}
    monkeypatch.setattr(distributed, "dist_info", lambda: (0, 2))
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda module, **kw: made.update(kw))
    model = build_model({"family": "randar", "dim": 32, "depth": 1, "n_head": 2, "seq_len": 16,
                         "codebook_size": 16, "num_classes": 3, "multiple_of": 16})
    assert [name for name, _ in model.named_buffers()] == ["freqs_cis"]  # the only buffer: deterministic
    distributed.wrap(model, list(model.transformer.blocks), fsdp=False)
    assert made["broadcast_buffers"] is False


@pytest.mark.parametrize("compute", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_fsdp_gathers_the_blocks_in_the_autocast_dtype_on_an_accelerator(compute, monkeypatch):
    """Under bf16 autocast on an accelerator (here the meta device stands for one), each block is sharded with
    a policy that gathers bf16 parameters, reduces fp32 gradients and leaves the fp32 residual stream uncast;
    the root keeps fp32; an fp32 run gathers fp32 (the real thing runs in tests/test_cuda_paths.py)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from anyorder.models import build_model
    from anyorder.training import distributed

    policies = []
    monkeypatch.setattr(distributed, "dist_info", lambda: (0, 2))
    monkeypatch.setattr(distributed, "init_device_mesh", lambda kind, shape: (kind, shape))
    monkeypatch.setattr(distributed, "fully_shard", lambda mod, mesh, mp_policy=None: policies.append(mp_policy))
    model = build_model(TINY, device="meta")
    distributed.wrap(model, list(model.transformer.blocks), fsdp=True, compute_dtype=compute)
    *blocks, root = policies
    plain = MixedPrecisionPolicy()
    assert len(blocks) == TINY["depth"] and root in (None, plain)
    expected = plain if compute is None else MixedPrecisionPolicy(
        param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)
    assert all(b == expected for b in blocks)


def test_a_model_is_built_and_initialised_on_its_device(monkeypatch):
    """``build_model(device=...)`` makes the parameters there (every rank used to build the whole model on the
    CPU and move it): on the meta device, every initialiser sees meta tensors and no CPU parameter is made."""
    from anyorder.models import build_model

    devices = set()

    def spy(real):
        def init(tensor, *args, **kw):
            devices.add(tensor.device.type)
            return real(tensor, *args, **kw)
        return init

    for name in ("trunc_normal_", "normal_", "zeros_", "ones_"):
        monkeypatch.setattr(torch.nn.init, name, spy(getattr(torch.nn.init, name)))
    for cfg in (TINY, {"family": "randar", "dim": 32, "depth": 1, "n_head": 2, "seq_len": 16, "codebook_size": 16,
                       "num_classes": 3, "multiple_of": 16}):
        model = build_model(cfg, device="meta")
        assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}
    assert devices == {"meta"}


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
