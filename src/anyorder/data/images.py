"""Image sources for pretokenization: an image-folder tree or webdataset ``.tar`` shards.

Both are cut into *parts* — the unit of work a process encodes and writes, and the unit a rerun resumes
from. The global order of images (and so the row order of ``codes.npy``) depends only on the data, never on
the number of processes:

- **Image folder** ``SRC/<class>/<file>``, as torchvision's ``ImageFolder``: class ids are the sorted class
  folder names (``classes[i]`` is the folder of id ``i``); inside a class the files come in
  ``sorted(os.walk(...))`` order with sorted file names; only files with an image extension
  (:data:`IMG_EXTENSIONS`, case-insensitive) are samples. Other files, files directly under ``SRC`` and
  class folders without images are reported (skipped / ``empty_classes``), never a crash. Symbolic links
  are followed, but every real folder and every real file is listed once: a link that loops back up, or a
  second path to a folder or file listed already, is skipped and reported with its reason. Parts are runs
  of ``part_size`` consecutive images.
- **webdataset shards**: a ``.tar`` file, a folder of ``.tar`` files (sorted by name) or a brace pattern
  (``imagenet-train-{000000..000146}.tar``). A sample needs an image (``jpg``/``jpeg``/``png``/``webp``/...)
  and ``cls`` (the class id as text). Each shard is one part; they are read with the ``webdataset`` library.
  A member that is not an image, a sample without ``cls`` and a shard cut short (``SHARD#truncated``:
  :func:`tar_truncation`) are reported as skipped; the samples before the cut are kept.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from anyorder.data.augment import augment_array
from anyorder.io.images import PixelRangeError

__all__ = [
    "IMG_EXTENSIONS",
    "WDS_IMAGE_KEYS",
    "Sample",
    "Part",
    "ImageSource",
    "ImageFolderSource",
    "WebDatasetSource",
    "open_source",
    "decode_sample",
    "tar_truncation",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
WDS_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff")


@dataclass
class Sample:
    """One image to encode: ``key`` names it in reports (relative path, or ``shard.tar/__key__``).

    The bytes come from ``path`` (read by the worker) or ``data`` (already read from a tar). ``error`` set
    means the sample is skipped with that reason (e.g. no ``cls`` in a webdataset sample)."""

    key: str
    label: int
    path: Path | None = None
    data: bytes | None = None
    error: str | None = None


@dataclass
class Part:
    """A unit of work: ``index`` in the global order, ``size`` images if known up front (``None`` for shards)."""

    index: int
    name: str
    size: int | None
    samples: Callable[[], Iterator[Sample]] = field(repr=False)


class ImageSource:
    """What the pipeline needs from a source."""

    kind: str
    root: str
    classes: list[str] | None  # class names in id order (image folders only)
    listing_skipped: list[dict[str, str]]  # files rejected while listing (not images / outside class folders)
    empty_classes: list[str]

    def parts(self, part_size: int) -> list[Part]:  # pragma: no cover - interface
        raise NotImplementedError

    def digest(self) -> str:  # pragma: no cover - interface
        """A hash of what will be read (names and labels), so a resumed run can tell the data changed."""
        raise NotImplementedError

    def num_images(self) -> int | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.root}


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


class ImageFolderSource(ImageSource):
    """``SRC/<class>/<file>``; see the module docstring for the order and the class ids."""

    kind = "image_folder"

    def __init__(self, root: str | os.PathLike) -> None:
        root_path = Path(root)
        self.root = str(root_path.resolve())
        self.listing_skipped = []
        self.empty_classes = []
        with os.scandir(root_path) as it:
            entries = sorted(it, key=lambda e: e.name)
        self.classes = [e.name for e in entries if e.is_dir()]
        for e in entries:
            if not e.is_dir():
                self.listing_skipped.append({"file": e.name, "reason": "not inside a class folder"})
        self.items: list[tuple[str, int]] = []
        # real folder -> where it is listed: the root and every class folder are taken up front, so a link
        # back up (``a/loop -> ..``) or into another class is skipped instead of listed again
        seen_dirs: dict[str, str] = {os.path.realpath(root_path): "the data folder itself"}
        for name in self.classes:
            seen_dirs.setdefault(os.path.realpath(root_path / name), name)
        seen_files: dict[str, str] = {}  # real file -> the first relative path that listed it
        for label, name in enumerate(self.classes):
            n_before = len(self.items)
            owner = seen_dirs[os.path.realpath(root_path / name)]
            if owner != name:
                self.listing_skipped.append({"file": f"{name}/", "reason": f"the same folder as class {owner} "
                                             "(a symbolic link); its images are listed there once"})
            else:
                self._list_class(root_path, name, label, seen_dirs, seen_files)
            if len(self.items) == n_before:
                self.empty_classes.append(name)
        if not self.classes:
            raise ValueError(f"{self.root}: no class folders: expected an image-folder tree SRC/<class>/<image> "
                             f"(or webdataset .tar shards)")
        if set(self.classes) <= {"train", "val", "validation", "test"}:  # ImageNet's root instead of its train/
            raise ValueError(f"{self.root}: its folders {self.classes} look like dataset splits, not classes: pass "
                             f"the split itself, e.g. --data {root_path / self.classes[0]}")
        if not self.items:
            raise ValueError(f"{self.root}: no image files ({', '.join(IMG_EXTENSIONS)}) in its "
                             f"{len(self.classes)} class folder(s)")

    def _list_class(self, root: Path, name: str, label: int, seen_dirs: dict[str, str],
                    seen_files: dict[str, str]) -> None:
        """Append the images of class folder ``name`` to ``items``, each real file once; symbolic links are
        followed, but one that leads to a folder listed already (a loop, or a second path to it) is skipped
        and reported."""
        walked: list[tuple[str, list[str]]] = []
        for dirpath, dirnames, fnames in os.walk(root / name, followlinks=True):
            here = os.path.realpath(dirpath)
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            keep = []
            for d in sorted(dirnames):  # sorted: which of two paths to one folder is kept does not vary
                real = os.path.realpath(os.path.join(dirpath, d))
                if real in seen_dirs:
                    first = seen_dirs[real]
                    loop = here == real or here.startswith(real.rstrip(os.sep) + os.sep)
                    why = (f"symbolic link loop: leads back to {first}" if loop
                           else f"the same folder as {first}, listed there")
                    self.listing_skipped.append({"file": f"{rel_dir}/{d}", "reason": why + "; not followed"})
                else:
                    seen_dirs[real] = f"{rel_dir}/{d}"
                    keep.append(d)
            dirnames[:] = keep  # os.walk descends only into these
            walked.append((dirpath, fnames))
        for dirpath, fnames in sorted(walked):  # the order of the plain sorted(os.walk(...)) listing
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            for fname in sorted(fnames):
                rel = f"{rel_dir}/{fname}"
                if not _is_image_name(fname):
                    ext = Path(fname).suffix or "(none)"
                    self.listing_skipped.append({"file": rel, "reason": f"not an image file (extension {ext})"})
                    continue
                real = os.path.realpath(os.path.join(dirpath, fname))
                if real in seen_files:
                    self.listing_skipped.append({"file": rel, "reason": f"the same file as {seen_files[real]} "
                                                 "(a symbolic link); listed once"})
                    continue
                seen_files[real] = rel
                self.items.append((rel, label))

    def num_images(self) -> int:
        return len(self.items)

    def digest(self) -> str:
        h = hashlib.sha256()
        for rel, label in self.items:
            h.update(f"{rel}\t{label}\n".encode())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.root, "num_classes": len(self.classes),
                "empty_classes": list(self.empty_classes)}

    def parts(self, part_size: int) -> list[Part]:
        root = Path(self.root)

        def make(lo: int, hi: int) -> Callable[[], Iterator[Sample]]:
            return lambda: (Sample(rel, label, path=root / rel) for rel, label in self.items[lo:hi])

        n = len(self.items)
        return [Part(i, f"images {lo}..{min(lo + part_size, n) - 1}", min(part_size, n - lo), make(lo, lo + part_size))
                for i, lo in enumerate(range(0, n, part_size))]


def _expand_shards(spec: str) -> list[Path]:
    if "{" in spec:
        import braceexpand  # installed with webdataset

        return [Path(p) for p in braceexpand.braceexpand(spec)]
    p = Path(spec)
    if p.is_dir():
        return sorted(q for q in p.iterdir() if q.is_file() and q.name.endswith(".tar"))
    return [p]


class WebDatasetSource(ImageSource):
    """webdataset ``.tar`` shards with an image and a ``cls`` per sample; one part per shard."""

    kind = "webdataset"

    def __init__(self, spec: str | os.PathLike) -> None:
        self.root = str(spec) if "{" in str(spec) else str(Path(spec).resolve())
        self.classes = None
        self.listing_skipped = []
        self.empty_classes = []
        self.shards = _expand_shards(str(spec))
        if not self.shards:
            raise ValueError(f"{spec}: no .tar shards found")
        missing = [str(s) for s in self.shards if not s.is_file()]
        if missing:
            raise FileNotFoundError(f"webdataset shard(s) not found: {', '.join(missing[:5])}"
                                    + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
        empty = [str(s) for s in self.shards if s.stat().st_size == 0]
        if len(empty) == len(self.shards):
            raise ValueError(f"{spec}: every .tar shard is empty ({', '.join(empty[:5])})")

    def digest(self) -> str:
        h = hashlib.sha256()
        for s in self.shards:
            h.update(f"{s.name}\t{s.stat().st_size}\n".encode())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.root, "shards": [str(s.resolve()) for s in self.shards]}

    def parts(self, part_size: int) -> list[Part]:
        return [Part(i, s.name, None, lambda s=s: self._read(s)) for i, s in enumerate(self.shards)]

    @staticmethod
    def _read(shard: Path) -> Iterator[Sample]:
        import webdataset as wds

        errors: list[str] = []

        def keep_going(exn: Exception) -> bool:  # a broken member or a truncated tar: report, go on
            errors.append(f"{type(exn).__name__}: {exn}")
            return True

        ds = wds.WebDataset(str(shard), shardshuffle=False, handler=keep_going, nodesplitter=_all_urls,
                            workersplitter=_all_urls, empty_check=False)
        for rec in ds:
            key = f"{shard.name}/{rec.get('__key__', '?')}"
            image_key = next((k for k in WDS_IMAGE_KEYS if k in rec), None)
            error, label = None, -1
            if image_key is None:
                fields = sorted(k for k in rec if not k.startswith("__"))
                error = f"no image field ({'/'.join(WDS_IMAGE_KEYS[:3])}...); fields: {fields}"
            elif "cls" not in rec:
                error = "no cls field (class id)"
            else:
                try:
                    label = int(bytes(rec["cls"]).decode().strip())
                    if label < 0:
                        raise ValueError(f"negative class id {label}")
                except (ValueError, UnicodeDecodeError) as e:
                    error = f"bad cls field {bytes(rec['cls'])[:20]!r} ({e})"
            yield Sample(key, label, data=rec[image_key] if image_key else None, error=error)
        for i, message in enumerate(errors):
            yield Sample(f"{shard.name}#error{i}", -1, error=f"unreadable tar content ({message})")
        cut = tar_truncation(shard)
        if cut is not None:
            yield Sample(f"{shard.name}#truncated", -1, error=cut)


def tar_truncation(path: Path) -> str | None:
    """``None`` if the tar file ends properly (every member's data present, then the end-of-archive zero
    block), else what is wrong. tarfile (and so webdataset) ends quietly when a shard is cut at or inside a
    member header, so the samples after the cut would be lost without a word; this walks the headers."""
    import tarfile

    size = path.stat().st_size
    offset, last = 0, None
    with open(path, "rb") as f:
        while True:
            f.seek(offset)
            block = f.read(512)
            if len(block) < 512:
                after = f" after member {last}" if last else ""
                return (f"truncated tar: it ends at byte {size}{after} without the end-of-archive block; the "
                        f"samples after that point are missing")
            if block == bytes(512):
                return None
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as e:
                return f"not a tar header at byte {offset} ({e}); the samples from there on are missing"
            if offset + 512 + info.size > size:
                return (f"truncated tar: member {info.name} needs {info.size} bytes at byte {offset + 512}, the "
                        f"file ends at {size}; it and the samples after it are missing")
            last = info.name
            offset += 512 + -(-info.size // 512) * 512


def _all_urls(urls: Any) -> Any:
    return urls


def open_source(spec: str | os.PathLike) -> ImageSource:
    """An :class:`ImageFolderSource` or a :class:`WebDatasetSource` for ``spec``; clear errors for a missing,
    empty or unrecognised source."""
    s = str(spec)
    if "{" in s or s.endswith(".tar"):
        return WebDatasetSource(s)
    p = Path(s)
    if not p.exists():
        raise FileNotFoundError(f"data not found: {s}")
    if not p.is_dir():
        raise ValueError(f"{s}: expected an image-folder tree SRC/<class>/<image>, a .tar shard or a folder of them")
    with os.scandir(p) as it:
        names = [(e.name, e.is_dir()) for e in it]
    if not names:
        raise ValueError(f"{s}: the folder is empty (expected SRC/<class>/<image> or .tar shards)")
    has_dirs = any(d for _, d in names)
    if not has_dirs and any(n.endswith(".tar") for n, _ in names):
        return WebDatasetSource(s)
    return ImageFolderSource(p)


def decode_sample(sample: Sample, aug: str, resolution: int, channels: int) -> tuple[np.ndarray | None, str | None]:
    """``(views [A, C, R, R] uint8, None)``, or ``(None, reason)`` for a file that cannot be used."""
    if sample.error is not None:
        return None, sample.error
    try:
        src = io.BytesIO(sample.data) if sample.data is not None else sample.path
        with Image.open(src) as img:
            img.load()  # decode now: a truncated file fails here, not later
            return augment_array(img, aug, resolution, channels), None
    except FileNotFoundError:
        return None, "file disappeared"
    except UnidentifiedImageError:
        return None, "not an image (PIL cannot identify the format)"
    except PixelRangeError as e:  # a float / 32-bit image with no known white level
        return None, e.reason
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        message = re.sub(r" at 0x[0-9a-fA-F]+", "", str(e))[:200]  # reasons go to meta.json: keep them reproducible
        return None, f"unreadable or truncated ({type(e).__name__}: {message})"
