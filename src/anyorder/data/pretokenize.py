"""Image folders / webdataset shards -> pretokenized codes that training memory-maps (``anyorder tokenize``).

Output in ``DIR``:

- ``codes.npy`` ``[N, A, h, w]``: the codes of the ``A`` augmented views of each of the ``N`` images (row
  order of :func:`anyorder.data.augment.view_names`); ``uint16`` when the codebook has at most 65,536 entries,
  else ``int32``. A plain ``.npy``: ``np.load(path, mmap_mode="r")``.
- ``labels.npy`` ``[N]`` int64 class ids; ``classes.json`` (image folders): the class folder names in id order.
- ``meta.json``: tokenizer file and its sha256, grid, augmentation (and ``augmentation_source``: given with
  ``--aug`` or the tokenizer's default), ``A``, ``N``, the skipped files with their reasons, and the
  ``fingerprint`` of the run; written last, so its presence means the output is complete.

The default augmentation follows the tokenizer, as the official recipes built on it
(:func:`default_augmentation`): MaskGIT-VQGAN -> ``ten-crop`` (1d-tokenizer ``scripts/pretokenization.py``,
whose example command passes ``--ten_crop``: RAR); LlamaGen VQ -> ``adm`` (RandAR ``documentation.md`` and
``slurm_scripts/*.sh``: its released checkpoints were trained on ``imagenet-llamagen-adm-256_codes``); any
other tokenizer -> ``ten-crop``.

Work is split into parts (:mod:`anyorder.data.images`). Under ``torchrun`` rank ``r`` encodes parts
``r, r + W, r + 2W, ...`` into ``DIR/parts/part-XXXXX.npz`` (each written atomically), rank 0 merges them in
order. Parts do not depend on the number of processes and are encoded in the same batches, so one process and
``W`` processes write identical files, and a rerun after a kill keeps every finished part and ends with the
same files as an uninterrupted run. The official scripts this replaces: bytedance/1d-tokenizer
``scripts/pretokenization.py`` (RAR; one ``jsonl``) and LlamaGen ``autoregressive/train/extract_codes_c2i.py``
/ RandAR ``tools/extracr_latent_codes.py`` (one ``.npy`` per image).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from anyorder.data.augment import AUGMENTATIONS, CROP_RANGE, num_views, view_names
from anyorder.data.images import ImageSource, Part, Sample, decode_sample, open_source
from anyorder.hub import load_module
from anyorder.io import atomic_write_bytes, atomic_write_json
from anyorder.nn.device import resolve_device
from anyorder.tokenizers.base import ImageTokenizer
from anyorder.tokenizers.llamagen_vq import LlamaGenVQ
from anyorder.tokenizers.maskgit_vqgan import MaskGITVQGAN
from anyorder.tokenizers.official import load_official_tokenizer

__all__ = ["pretokenize", "load_tokenizer_any", "default_augmentation", "codes_dtype", "file_sha256", "FORMAT",
           "FORMAT_VERSION"]

FORMAT, FORMAT_VERSION = "anyorder-pretokenized", 1
DEFAULT_PART_SIZE = 1000


def codes_dtype(codebook_size: int) -> np.dtype:
    """``uint16`` when every code id fits (``codebook_size <= 65536``), else ``int32``."""
    return np.dtype(np.uint16) if int(codebook_size) <= 2**16 else np.dtype(np.int32)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _tokenizer_files(spec: str | os.PathLike) -> tuple[Path, Path]:
    """``(what to load, the weights file to hash)``; a missing tokenizer raises before anything is read."""
    p = Path(spec)
    if not p.exists():
        raise FileNotFoundError(f"tokenizer not found: {p} (give an official MaskGIT-VQGAN .bin / LlamaGen VQ .pt "
                                f"file, or a tokenizer folder with config.json + model.safetensors)")
    if p.is_dir():
        for cand in (p, p / "tokenizer"):  # a tokenizer folder, or a demo / train run that holds one
            if (cand / "config.json").is_file() and (cand / "model.safetensors").is_file():
                return cand, cand / "model.safetensors"
        raise FileNotFoundError(f"{p}: not a tokenizer folder (no config.json + model.safetensors in it or in "
                                f"{p / 'tokenizer'})")
    return p, p


def load_tokenizer_any(spec: str | os.PathLike, device: str | torch.device = "cpu",
                       config: str | os.PathLike | None = None) -> ImageTokenizer:
    """An official tokenizer file (kind and shapes read off the weights, or from ``config``: the official /
    fixture JSON or YAML) or a saved tokenizer folder."""
    target, _ = _tokenizer_files(spec)
    if config is not None and target.is_dir():
        raise ValueError(f"a tokenizer config is only for official files; {target} has its own config.json")
    if config is not None and not Path(config).is_file():
        raise FileNotFoundError(f"tokenizer config not found: {config}")
    tok = load_module(target, device=device) if target.is_dir() else load_official_tokenizer(target, config)
    if not isinstance(tok, ImageTokenizer):
        raise ValueError(f"{target}: holds a {type(tok).__name__}, not an image tokenizer")
    return tok.to(device).eval()


def default_augmentation(tok: ImageTokenizer) -> tuple[str, str]:
    """``(augmentation, why)``: the views the official recipe built on this tokenizer trained on."""
    if isinstance(tok, LlamaGenVQ):
        return "adm", ("default for the LlamaGen VQ: RandAR's released checkpoints were trained on adm codes "
                       "(RandAR documentation.md, slurm_scripts)")
    if isinstance(tok, MaskGITVQGAN):
        return "ten-crop", ("default for the MaskGIT-VQGAN: RAR's pretokenization (1d-tokenizer "
                            "scripts/pretokenization.py --ten_crop)")
    return "ten-crop", f"default for a {type(tok).__name__} tokenizer (no official recipe)"


def _default_resolution(tok: ImageTokenizer) -> int:
    cfg = getattr(tok, "config", None)
    for name in ("image_size", "resolution"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 256


def _dist_env() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _chunks(it: Iterator[Sample], n: int) -> Iterator[list[Sample]]:
    batch: list[Sample] = []
    for s in it:
        batch.append(s)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


class _Encoder:
    """Decode + augment (a thread pool, one batch ahead) and encode (the tokenizer, one batch at a time)."""

    def __init__(self, tok: ImageTokenizer, device: torch.device, aug: str, resolution: int, crop_range: float,
                 batch_size: int, workers: int, dtype: np.dtype) -> None:
        self.tok, self.device, self.aug, self.resolution = tok, device, aug, resolution
        self.crop_range, self.batch_size, self.dtype = crop_range, batch_size, dtype
        self.channels = int(getattr(tok, "in_channels", 3))
        self.pool = ThreadPoolExecutor(workers) if workers > 0 else None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _decode(self, s: Sample) -> tuple[np.ndarray | None, str | None]:
        return decode_sample(s, self.aug, self.resolution, self.channels)

    def _submit(self, batch: list[Sample]) -> list[Future] | list[tuple[np.ndarray | None, str | None]]:
        if self.pool is None:
            return [self._decode(s) for s in batch]
        return [self.pool.submit(self._decode, s) for s in batch]

    @torch.no_grad()
    def encode_views(self, views: np.ndarray) -> np.ndarray:
        """``[B, A, C, R, R]`` uint8 -> codes ``[B, A, h, w]`` (ToTensor's ``/ 255``; tokenizers take [0, 1])."""
        b, a = views.shape[:2]
        x = torch.from_numpy(views).to(self.device).flatten(0, 1).float().div_(255.0)
        codes = self.tok.encode(x)
        k = int(self.tok.codebook_size)
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k):
            raise RuntimeError(f"the tokenizer returned codes outside [0, {k})")
        return codes.reshape(b, a, *codes.shape[1:]).cpu().numpy().astype(self.dtype)

    def run(self, part: Part, bar: tqdm) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
        """Codes, labels and skipped files of one part."""
        codes: list[np.ndarray] = []
        labels: list[int] = []
        skipped: list[dict[str, str]] = []
        batches = _chunks(part.samples(), self.batch_size)
        nxt = next(batches, None)
        pending = self._submit(nxt) if nxt is not None else None
        while nxt is not None:
            batch, results = nxt, pending
            nxt = next(batches, None)
            pending = self._submit(nxt) if nxt is not None else None  # decode the next batch meanwhile
            views: list[np.ndarray] = []
            for s, r in zip(batch, results):
                arr, reason = r.result() if isinstance(r, Future) else r
                if arr is None:
                    skipped.append({"file": s.key, "reason": str(reason)})
                else:
                    views.append(arr)
                    labels.append(s.label)
            if views:
                codes.append(self.encode_views(np.stack(views)))
            bar.update(len(batch))
        if not codes:
            return np.zeros((0,), self.dtype), np.zeros((0,), np.int64), skipped
        return np.concatenate(codes), np.asarray(labels, dtype=np.int64), skipped


def _part_path(parts_dir: Path, index: int) -> Path:
    return parts_dir / f"part-{index:05d}.npz"


def _write_part(path: Path, codes: np.ndarray, labels: np.ndarray, skipped: list[dict[str, str]],
                fingerprint: dict[str, Any]) -> None:
    buf = io.BytesIO()
    np.savez(buf, codes=codes, labels=labels, skipped=np.array(json.dumps(skipped)),
             fingerprint=np.array(json.dumps(fingerprint, sort_keys=True)))
    atomic_write_bytes(path, buf.getvalue())


def _part_state(path: Path, fingerprint: dict[str, Any]) -> bool:
    """True if ``path`` holds a finished part of this run; raises if it belongs to another run."""
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            theirs = json.loads(str(z["fingerprint"]))
    except Exception:  # noqa: BLE001 - an unreadable part is simply redone
        return False
    if theirs != fingerprint:
        differs = ", ".join(_diff(theirs, fingerprint))
        raise ValueError(f"{path} was written by a different tokenize run (differs in: {differs}); "
                         f"delete {path.parent} or choose another --out")
    return True


def _merge(out: Path, parts: list[Part], parts_dir: Path, fingerprint: dict[str, Any], meta: dict[str, Any],
           source: ImageSource) -> dict[str, Any]:
    """Rank 0: concatenate the parts in order into ``codes.npy`` / ``labels.npy`` (memory-mapped, never all in
    RAM), then ``classes.json`` and, last, ``meta.json``; then remove the parts."""
    sizes, skipped = [], list(source.listing_skipped)
    for p in parts:
        path = _part_path(parts_dir, p.index)
        if not _part_state(path, fingerprint):
            raise RuntimeError(f"{path} is missing or unreadable after every rank finished (did a rank fail?); rerun")
        with np.load(path, allow_pickle=False) as z:
            sizes.append(int(z["labels"].shape[0]))
            skipped += json.loads(str(z["skipped"]))
    n = sum(sizes)
    a, (h, w) = meta["A"], meta["grid"]
    if n == 0:
        first = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:3])
        raise ValueError(f"{source.root}: none of the {len(skipped)} files could be used ({first} ...)")
    dtype = np.dtype(fingerprint["dtype"])
    tmp = out / "codes.npy.tmp"
    codes = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(n, a, h, w))
    labels = np.empty((n,), dtype=np.int64)
    at = 0
    for p, size in zip(parts, sizes):
        if size:
            with np.load(_part_path(parts_dir, p.index), allow_pickle=False) as z:
                codes[at : at + size] = z["codes"]
                labels[at : at + size] = z["labels"]
        at += size
    codes.flush()
    del codes
    os.replace(tmp, out / "codes.npy")
    buf = io.BytesIO()
    np.save(buf, labels)
    atomic_write_bytes(out / "labels.npy", buf.getvalue())
    if source.classes is not None:
        atomic_write_json(out / "classes.json", list(source.classes))
    skipped.sort(key=lambda s: s["file"])
    meta = {**meta, "N": n, "num_skipped": len(skipped), "skipped": skipped,
            "labels": {"min": int(labels.min()), "max": int(labels.max())}}
    atomic_write_json(out / "meta.json", meta)
    shutil.rmtree(parts_dir, ignore_errors=True)
    return meta


def pretokenize(tokenizer: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike,
                aug: str | None = None, resolution: int | None = None, batch_size: int = 8, device: str = "auto",
                workers: int | None = None, part_size: int = DEFAULT_PART_SIZE, crop_range: float = CROP_RANGE,
                tokenizer_config: str | os.PathLike | None = None, progress: bool = True) -> dict[str, Any]:
    """Encode every image of ``data`` with ``tokenizer`` into ``out`` (see the module docstring); returns the meta.

    ``aug=None`` takes the tokenizer's default (:func:`default_augmentation`); the choice is printed (with
    ``progress``) and recorded in ``meta.json`` as ``augmentation`` and ``augmentation_source``.

    Every check that can fail (missing tokenizer, missing / empty data, a resolution the tokenizer cannot take,
    an ``out`` holding another run) fails before any image is encoded. Under ``torchrun`` (``WORLD_SIZE > 1``)
    the process group is set up here (gloo, used only for barriers) unless one exists already.
    """
    if aug is not None and aug not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {aug!r}; expected one of {list(AUGMENTATIONS)}")
    if batch_size < 1 or part_size < 1:
        raise ValueError(f"batch_size and part_size must be >= 1, got {batch_size} and {part_size}")
    if resolution is not None and resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    workers = min(8, os.cpu_count() or 1) if workers is None else int(workers)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    target, weights = _tokenizer_files(tokenizer)
    source = open_source(data)
    dev = resolve_device(device)
    tok = load_tokenizer_any(target, dev, tokenizer_config)
    aug, aug_source = (aug, "given (--aug)") if aug is not None else default_augmentation(tok)
    rank, world = _dist_env()
    if progress and rank == 0:
        print(f"tokenize: augmentation {aug} ({aug_source})", file=sys.stderr)
    ds = int(tok.downsample)
    res = _default_resolution(tok) if resolution is None else int(resolution)
    if res % ds:
        raise ValueError(f"resolution {res} is not a multiple of the tokenizer's downsampling factor {ds} "
                         f"({target}); use e.g. {max(ds, res // ds * ds)} or {(res // ds + 1) * ds}")
    a, grid = num_views(aug), [res // ds, res // ds]
    dtype = codes_dtype(tok.codebook_size)
    tok_kind = getattr(tok, "model_type", None) or type(tok).__name__
    fingerprint = {
        "format_version": FORMAT_VERSION, "tokenizer_sha256": file_sha256(weights), "tokenizer_kind": tok_kind,
        "tokenizer_config_sha256": file_sha256(tokenizer_config) if tokenizer_config is not None else None,
        "codebook_size": int(tok.codebook_size), "downsample": ds, "channels": int(tok.in_channels),
        "resolution": res, "augmentation": aug, "crop_range": crop_range if aug == "ten-crop" else None,
        "dtype": dtype.name, "data_digest": source.digest(), "part_size": part_size,
    }
    meta: dict[str, Any] = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "tokenizer": {"path": str(Path(tokenizer).resolve()), "weights": str(weights.resolve()),
                      "sha256": fingerprint["tokenizer_sha256"], "kind": tok_kind,
                      "config": str(Path(tokenizer_config).resolve()) if tokenizer_config is not None else None,
                      "codebook_size": int(tok.codebook_size), "downsample": ds},
        "codebook_size": int(tok.codebook_size), "source": source.describe(), "resolution": res, "grid": grid,
        "augmentation": aug, "augmentation_source": aug_source,
        "crop_range": fingerprint["crop_range"], "A": a, "views": view_names(aug), "N": None,
        "codes": {"file": "codes.npy", "shape": "[N, A, h, w]", "dtype": dtype.name},
        "labels": None, "classes": "classes.json" if source.classes is not None else None,
        "fingerprint": fingerprint,
        "official": "bytedance/1d-tokenizer scripts/pretokenization.py; LlamaGen autoregressive/train/"
                    "extract_codes_c2i.py; RandAR tools/extracr_latent_codes.py",
    }
    done = out / "meta.json"
    if done.is_file():
        old = json.loads(done.read_text())
        differs = _diff(old.get("fingerprint", {}), fingerprint)
        if differs:
            raise ValueError(f"{out} already holds pretokenized codes of another run (differs in: {', '.join(differs)})"
                             f"; choose another --out or delete it")
        if all((out / f).is_file() for f in ("codes.npy", "labels.npy")):
            if progress:
                print(f"tokenize: {out} is complete already ({old.get('N')} images); nothing to do", file=sys.stderr)
            return old

    own_group = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(hours=24))
        own_group = True
    try:
        parts_dir = out / "parts"
        parts_dir.mkdir(parents=True, exist_ok=True)
        parts = source.parts(part_size)
        mine = [p for p in parts if p.index % world == rank]
        todo = [p for p in mine if not _part_state(_part_path(parts_dir, p.index), fingerprint)]
        known = [p.size for p in todo]
        total = None if None in known else sum(known)
        if rank == 0 and len(todo) < len(mine):
            print(f"tokenize: resuming, {len(mine) - len(todo)} of {len(mine)} parts of rank 0 already done",
                  file=sys.stderr)
        encoder = _Encoder(tok, dev, aug, res, crop_range, batch_size, workers, dtype)
        desc = f"tokenize {aug} x{a}" + (f" (rank 0 of {world})" if world > 1 else "")
        bar = tqdm(total=total, unit="img", desc=desc,
                   disable=not progress or rank != 0, dynamic_ncols=True)
        start = time.time()
        try:
            for p in todo:
                codes, labels, skipped = encoder.run(p, bar)
                if codes.ndim == 1:
                    codes = codes.reshape(0, a, *grid)
                _write_part(_part_path(parts_dir, p.index), codes, labels, skipped, fingerprint)
        finally:
            bar.close()
            encoder.close()
        if rank == 0 and progress and todo and bar.n:
            took = max(time.time() - start, 1e-9)
            print(f"tokenize: rank 0 read {bar.n} files in {took:.1f} s ({bar.n / took:.1f} images/s)",
                  file=sys.stderr)
        _barrier(world)
        if rank == 0:
            meta = _merge(out, parts, parts_dir, fingerprint, meta, source)
        _barrier(world)
        if rank != 0:
            meta = json.loads(done.read_text())
    finally:
        if own_group:
            dist.destroy_process_group()
    return meta
