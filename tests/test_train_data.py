"""Training on pretokenized folders: memory-mapped codes, epochs over images, rank shares, resume position,
refusals that name both numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anyorder.data.codes import EpochStream, PretokenizedCodes, open_codes
from anyorder.hub import build_model
from anyorder.training.config import TrainConfig
from anyorder.training.loop import train

TINY = {"family": "randar", "dim": 32, "depth": 1, "n_head": 2, "seq_len": 16, "codebook_size": 16,
        "num_classes": 3, "multiple_of": 16}


def write_folder(d, n=30, a=2, grid=(4, 4), k=16, classes=3, dtype=np.uint16, meta=None):
    """A folder as `anyorder tokenize` writes it: codes.npy [N, A, h, w], labels.npy [N], meta.json."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, k, (n, a, *grid)).astype(dtype)
    np.save(d / "codes.npy", codes)
    np.save(d / "labels.npy", rng.integers(0, classes, n).astype(np.int64))
    (d / "meta.json").write_text(json.dumps(meta or {"codebook_size": k, "grid": list(grid), "augmentations": a,
                                                     "num_images": n}))
    return codes


def _rss_anon_kb() -> int:
    """The process's private (anonymous) resident memory. Pages of a memory-mapped file count in VmRSS while
    mapped, but they are the kernel's page cache (shared, dropped under pressure), not memory the process holds."""
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    pytest.skip("no RssAnon in /proc/self/status (not Linux)")


def test_each_epoch_visits_every_image_once_and_ranks_split_it_without_loss_or_repeat():
    n, batch, world = 23, 8, 2  # 23 is no multiple of 8: batches cross epoch ends
    stream = EpochStream(n, augmentations=3, seed=5)
    visits = [stream.take(s * batch + r * (batch // world), batch // world) for s in range(9) for r in range(world)]
    images = np.concatenate([v[0] for v in visits])
    views = np.concatenate([v[1] for v in visits])
    for e in range(3):  # 72 visits = 3 epochs + 3: each full epoch is a permutation of the images
        assert sorted(images[e * n : (e + 1) * n].tolist()) == list(range(n))
    assert not np.array_equal(images[:n], images[n : 2 * n])  # a new order each epoch
    assert set(views.tolist()) == {0, 1, 2}
    # the same positions give the same visits (resume), whatever the split into ranks
    again = EpochStream(n, augmentations=3, seed=5).take(0, 9 * batch)
    assert np.array_equal(again[0], images) and np.array_equal(again[1], views)


def test_a_folder_is_memory_mapped_not_read_into_ram(tmp_path):
    d = tmp_path / "big"
    n, a, grid = 200_000, 2, (16, 16)  # 205 MB of uint16 codes
    d.mkdir()
    mm = np.lib.format.open_memmap(d / "codes.npy", mode="w+", dtype=np.uint16, shape=(n, a, *grid))
    rng = np.random.default_rng(0)
    for i in range(0, n, 20_000):
        mm[i : i + 20_000] = rng.integers(0, 1024, (min(20_000, n - i), a, *grid), dtype=np.uint16)
    mm.flush()
    del mm
    np.save(d / "labels.npy", rng.integers(0, 1000, n))
    (d / "meta.json").write_text(json.dumps({"codebook_size": 1024, "grid": list(grid), "augmentations": a,
                                             "num_images": n}))
    size_kb = (d / "codes.npy").stat().st_size // 1024
    before = _rss_anon_kb()
    src = open_codes(d)
    src.check_model(1024, 1000, 256)
    stream = EpochStream(len(src), src.augmentations, seed=0)
    for step in range(20):
        images, views = stream.take(step * 256, 256)
        batch = src.gather(images, views)
        assert batch.shape == (256, 256)
        assert torch.equal(batch[3], torch.from_numpy(src.codes[images[3], views[3]].astype(np.int64).ravel()))
    growth = _rss_anon_kb() - before
    assert growth < size_kb / 8, f"RSS grew by {growth} kB for a {size_kb} kB codes.npy"


def test_codes_of_another_codebook_or_labels_outside_the_classes_are_refused(tmp_path):
    write_folder(tmp_path / "a", k=1024)
    with pytest.raises(ValueError, match="codebook of 1024 but the model predicts 16 codes"):
        open_codes(tmp_path / "a").check_model(16, 3, 16)
    write_folder(tmp_path / "b", classes=10)
    with pytest.raises(ValueError, match=r"label 9 but the model has 3 classes"):
        open_codes(tmp_path / "b").check_model(16, 3, 16)
    write_folder(tmp_path / "c", grid=(2, 3))
    with pytest.raises(ValueError, match=r"2x3 grid \(6 tokens\) but the model takes 16"):
        open_codes(tmp_path / "c").check_model(16, 3, 16)
    write_folder(tmp_path / "d", meta={"codebook_size": 16, "grid": [4, 4], "augmentations": 5, "num_images": 30})
    with pytest.raises(ValueError, match="says 5 augmentations"):
        PretokenizedCodes(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="no codes.npy"):
        PretokenizedCodes(tmp_path / "nothing")


def test_the_tokenize_spelling_of_meta_is_read(tmp_path):
    """`anyorder tokenize` records the codebook under tokenizer.codebook_size and the counts as A / N."""
    write_folder(tmp_path, k=32, meta={"tokenizer": {"codebook_size": 32}, "grid": [4, 4], "A": 2, "N": 30})
    src = open_codes(tmp_path)
    assert (src.codebook_size, src.augmentations, len(src), src.grid) == (32, 2, 30, (4, 4))


def test_training_on_a_folder_resumes_at_its_position_inside_the_epoch(tmp_path):
    write_folder(tmp_path / "codes", n=30, dtype=np.int32)
    cfg = TrainConfig(steps=5, batch_size=8, lr=3e-3, warmup_steps=1, ckpt_every=3, log_every=1)
    torch.manual_seed(0)
    straight = build_model(TINY)
    train(straight, open_codes(tmp_path / "codes"), None, cfg, tmp_path / "a", progress=False)

    def crash(step, _stats):
        if step == 4:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train(build_model(TINY), open_codes(tmp_path / "codes"), None, cfg, tmp_path / "b", progress=False,
              step_callback=crash)
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["samples_seen"] == 24 and ckpt["epoch"] == pytest.approx(24 / 30)
    resumed = build_model(TINY)
    summary = train(resumed, open_codes(tmp_path / "codes"), None, cfg, tmp_path / "b", progress=False)
    assert summary["epochs"] == pytest.approx(40 / 30)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
