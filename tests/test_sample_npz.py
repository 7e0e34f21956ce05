"""``anyorder sample --num-samples N --npz OUT.npz``: the papers' evaluation protocol in small.

50,000 class-balanced samples (here a few dozen, on the official-format fixtures) in the ADM
evaluator's format, every batch from its own random stream, resumable by chunk, and the same file
from one process or two under ``torchrun``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fixture_dir

import anyorder.sampling.batch as batch_lib
from anyorder.cli.main import main
from anyorder.hub import from_pretrained
from anyorder.io.npz import read_samples, write_samples
from anyorder.sampling.batch import balanced_labels, parts_dir
from anyorder.tokenizers.official import load_official_tokenizer

BATCH = 4


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread beats two contending ones


def rar_args(out: Path, n: int, *extra: str) -> list[str]:
    return ["sample", "--model", str(fixture_dir("rar")),
            "--tokenizer", str(fixture_dir("maskgit_vqgan") / "vqgan_checkpoint.bin"),
            "--num-samples", str(n), "--npz", str(out), "--batch-size", str(BATCH), "--guidance-scale", "2",
            "--device", "cpu", "--quiet", *extra]


def randar_args(out: Path, n: int) -> list[str]:
    return ["sample", "--model", str(fixture_dir("randar")),
            "--tokenizer", str(fixture_dir("llamagen_vq") / "vq_checkpoint.pt"),
            "--num-samples", str(n), "--npz", str(out), "--batch-size", str(BATCH), "--steps", "6",
            "--guidance-scale", "3", "--device", "cpu", "--quiet"]


def num_classes(name: str) -> int:
    cfg = json.loads((fixture_dir(name) / "config.json").read_text())
    return cfg.get("condition_num_classes", cfg.get("num_classes"))


def _decoded_values() -> np.ndarray:
    """float32 values in [0, 1] and around it: every level k / 255, the half-levels (k + 0.5) / 255, a grid
    j / 1024, and out-of-range values."""
    k = np.arange(256, dtype=np.float64)
    vals = np.concatenate([k / 255, (k + 0.5) / 255, np.arange(-100, 1125) / 1024, [-3.0, -1e-6, 1 + 1e-6, 7.5]])
    return vals.astype(np.float32)


def test_uint8_truncate_is_the_rar_scripts_conversion() -> None:
    """1d-tokenizer demo_util.sample_fn (called by sample_imagenet_rar.py): torch.clamp(img, 0.0, 1.0),
    then (img * 255.0) cast to uint8, i.e. truncated; here in numpy float32 arithmetic."""
    x = _decoded_values()
    official = np.floor(np.clip(x, np.float32(0), np.float32(1)) * np.float32(255)).astype(np.uint8)
    got = batch_lib.images_to_uint8(torch.from_numpy(x).reshape(1, 1, 1, -1), "truncate")
    assert got.shape == (1, 1, len(x), 3)
    np.testing.assert_array_equal(got[0, 0, :, 0], official)
    assert got[0, 0, :, 0].tolist() == got[0, 0, :, 2].tolist()  # grayscale replicated


def test_uint8_round_is_randars_conversion() -> None:
    """RandAR tokenizer.py decode_codes_to_img (LlamaGen VQ, decoder output r in [-1, 1]): r * 127.5 + 128,
    clamped to [0, 255], cast to uint8. With r = 2x - 1 that is x * 255 + 0.5: on the j / 1024 grid every
    step is exact in float32, so both must agree to the level, half-levels (round half up) included."""
    x = (np.arange(-100, 1125) / 1024).astype(np.float32)
    r = np.float32(2) * x - np.float32(1)
    official = np.floor(np.clip(r * np.float32(127.5) + np.float32(128), 0, 255)).astype(np.uint8)
    got = batch_lib.images_to_uint8(torch.from_numpy(x).reshape(1, 1, 1, -1).expand(1, 3, 1, -1))[0, 0, :, 0]
    np.testing.assert_array_equal(got, official)
    assert (official == np.round(np.clip(x, 0, 1) * 255 + 1e-9)).all()  # round half up, not to even
    # the two modes: half a level apart (x = 0.5 -> 127.5: 128 rounded, 127 truncated)
    half = torch.full((1, 3, 1, 1), 0.5)
    assert batch_lib.images_to_uint8(half)[0, 0, 0, 0] == 128
    assert batch_lib.images_to_uint8(half, "truncate")[0, 0, 0, 0] == 127
    with pytest.raises(ValueError, match="unknown uint8 conversion 'floor'"):
        batch_lib.images_to_uint8(half, "floor")


def test_balanced_labels_spread_the_remainder_over_the_first_classes() -> None:
    classes = [7, 2, 5]
    y = balanced_labels(11, classes)
    assert y.dtype == torch.int64 and len(y) == 11
    counts = {c: int((y == c).sum()) for c in classes}
    assert counts == {7: 4, 2: 4, 5: 3}
    assert y.tolist() == [7, 2, 5, 7, 2, 5, 7, 2, 5, 7, 2]  # interleaved: sample i has classes[i % C]
    assert balanced_labels(50 * 1000, range(1000)).bincount().eq(50).all()  # the papers' 50 per class
    with pytest.raises(ValueError, match="num-samples"):
        balanced_labels(0, classes)


def test_npz_is_the_adm_format_with_settings_beside_it(tmp_path: Path) -> None:
    C = num_classes("rar")
    n = 2 * C + 3  # a remainder, and a last chunk shorter than the batch
    out = tmp_path / "rar.npz"
    assert main(rar_args(out, n, "--seed", "3")) == 0
    images, labels = read_samples(out)
    model = from_pretrained(fixture_dir("rar"))
    tok = load_official_tokenizer(fixture_dir("maskgit_vqgan") / "vqgan_checkpoint.bin")
    h, w = (g * tok.downsample for g in model.grid)
    assert images.dtype == np.uint8 and images.shape == (n, h, w, 3)
    assert labels.dtype == np.int64 and labels.tolist() == balanced_labels(n, range(C)).tolist()
    with np.load(out) as z:
        assert sorted(z.files) == ["arr_0", "arr_1"]
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["num_samples"] == n and meta["seed"] == 3 and meta["batch_size"] == BATCH
    assert meta["sampling"]["guidance_scale"] == 2.0 and meta["image_shape"] == [h, w, 3]
    assert sum(meta["class_counts"].values()) == n and meta["this_run"]["images_sampled"] == n
    assert not parts_dir(out).exists()  # merged, parts removed


def test_classes_restrict_the_balanced_labels(tmp_path: Path) -> None:
    out = tmp_path / "two.npz"
    assert main(rar_args(out, 5, "--classes", "3", "1")) == 0
    assert read_samples(out)[1].tolist() == [3, 1, 3, 1, 3]
    assert json.loads(out.with_suffix(".json").read_text())["class_counts"] == {"1": 2, "3": 3}


def test_every_batch_has_its_own_stream_and_the_seed_reproduces(tmp_path: Path) -> None:
    C = num_classes("rar")
    # batch = all classes: chunk 0 and chunk 1 ask for exactly the same labels
    args = rar_args(tmp_path / "a.npz", 2 * C)
    args[args.index("--batch-size") + 1] = str(C)
    assert main(args) == 0
    images, labels = read_samples(tmp_path / "a.npz")
    assert labels[:C].tolist() == labels[C:].tolist()
    differ = (images[:C] != images[C:]).reshape(C, -1).any(axis=1)
    assert differ.mean() > 0.5, "the second batch repeats the first: batches share a random stream"

    assert main([*args[:args.index("--npz") + 1], str(tmp_path / "b.npz"), *args[args.index("--npz") + 2:]]) == 0
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    other = [*args, "--seed", "1"]
    other[other.index("--npz") + 1] = str(tmp_path / "c.npz")
    assert main(other) == 0
    assert not np.array_equal(read_samples(tmp_path / "c.npz")[0], images)


class Killed(Exception):
    pass


def test_resume_after_a_kill_gives_the_same_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 5 * BATCH - 1
    assert main(rar_args(tmp_path / "whole.npz", n)) == 0

    out = tmp_path / "resumed.npz"
    real, calls = batch_lib.generate, []

    def dies_at_third_chunk(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise Killed
        return real(*a, **k)

    monkeypatch.setattr(batch_lib, "generate", dies_at_third_chunk)
    with pytest.raises(Killed):
        main(rar_args(out, n))
    parts = parts_dir(out)
    assert sorted(p.name for p in parts.glob("chunk_*.npz")) == ["chunk_00000.npz", "chunk_00001.npz"]
    assert not out.exists()
    (parts / ".chunk_00002.npz.123.tmp").write_bytes(b"half a chunk")  # a write the kill interrupted

    calls.clear()
    monkeypatch.setattr(batch_lib, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(rar_args(out, n)) == 0
    assert len(calls) == 3  # only the 3 missing chunks were sampled
    assert out.read_bytes() == (tmp_path / "whole.npz").read_bytes()
    assert not parts.exists()


def test_parts_of_another_job_are_not_mixed_in(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.npz"
    assert main(rar_args(out, 2 * BATCH, "--keep-parts")) == 0
    assert (parts_dir(out) / "chunk_00000.npz").is_file()
    capsys.readouterr()
    assert main(rar_args(out, 2 * BATCH, "--seed", "9")) == 2
    err = capsys.readouterr().err
    assert str(parts_dir(out)) in err and "seed" in err


def test_bad_npz_options_and_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = rar_args(tmp_path / "x.npz", 4)
    no_npz = args[:args.index("--npz")] + args[args.index("--npz") + 2:]
    assert main(no_npz) == 2 and "--npz" in capsys.readouterr().err
    bad_name = [*args]
    bad_name[bad_name.index("--npz") + 1] = str(tmp_path / "x.png")
    assert main(bad_name) == 2 and ".npz" in capsys.readouterr().err
    bad = tmp_path / "float.npz"
    np.savez(bad, arr_0=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        read_samples(bad)
    gray = tmp_path / "gray.npz"
    write_samples(gray, np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]))
    assert read_samples(gray)[0].shape == (2, 8, 8, 3)
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        write_samples(gray, np.zeros((2, 8, 8), np.uint8), np.array([0, 1]))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_processes_under_torchrun_write_the_one_process_file(tmp_path: Path) -> None:
    n = 3 * BATCH + 1  # 4 chunks: rank 0 takes 0 and 2, rank 1 takes 1 and 3
    assert main(randar_args(tmp_path / "one.npz", n)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "anyorder.cli", *randar_args(tmp_path / "two.npz", n)]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "two.npz").read_bytes() == (tmp_path / "one.npz").read_bytes()
    meta = json.loads((tmp_path / "two.json").read_text())
    assert meta["world_size"] == 2 and meta["this_run"]["images_sampled"] == n


class _Decoder(torch.nn.Module):
    """A stand-in tokenizer: codes [B, h, w] -> grey images [B, 3, h, w]."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes.float() / 64)[:, None].expand(-1, 3, -1, -1)


def test_under_an_existing_nccl_group_the_barriers_run_on_a_gloo_group_of_their_own(tmp_path, monkeypatch):
    """Rank 1 of 2 inside a process group that exists already with NCCL (a training run's): NCCL cannot carry
    the CPU tensors of the barriers, and its 10-minute default timeout is shorter than rank 0's merge. Every
    collective must run on a gloo group created for it, with a timeout of hours."""
    dist = batch_lib.dist
    made, calls = [], []

    def new_group(backend=None, timeout=None, **_):
        made.append({"backend": backend, "timeout": timeout})
        return "sampling-group"

    def collective(name):
        def run(obj, *args, group=None, **kw):
            if group != "sampling-group":  # the default (NCCL) group: CPU tensors are refused
                raise RuntimeError(f"{name} on the NCCL group: No backend type associated with device type cpu")
            calls.append(name)
            if name == "all_reduce":
                obj *= 2  # rank 0 sampled as many
        return run

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(dist, "new_group", new_group)
    monkeypatch.setattr(dist, "broadcast_object_list", collective("broadcast_object_list"))
    monkeypatch.setattr(dist, "all_reduce", collective("all_reduce"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda group=None: calls.append(f"destroy {group}"))
    model = from_pretrained(fixture_dir("rar")).eval()
    out = tmp_path / "s.npz"
    batch_lib.parts_dir(out).mkdir()  # rank 0's work
    labels = balanced_labels(2 * BATCH, range(2))
    record = batch_lib.sample_npz(model, _Decoder(), out, labels, batch_size=BATCH, seed=0, sampling={},
                                  progress=False)
    assert record is None  # rank 1 does not merge
    assert made == [{"backend": "gloo", "timeout": batch_lib._COLLECTIVE_TIMEOUT}]
    assert batch_lib._COLLECTIVE_TIMEOUT.total_seconds() >= 3600
    assert calls == ["broadcast_object_list", "all_reduce", "broadcast_object_list", "destroy sampling-group"]
    assert (batch_lib.parts_dir(out) / "chunk_00001.npz").is_file()  # rank 1's chunk of the two
