"""Safe checkpoint I/O: safetensors or ``torch.load(weights_only=True)``, atomic writes, clear errors.

Nothing here ever unpickles arbitrary objects. A pickle that carries code is refused with a
:class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import pickle
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

__all__ = [
    "CheckpointError",
    "load_state_dict",
    "save_state_dict",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_torch_save",
    "check_state_dict",
]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, unsafe, or does not fit the model."""


_PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt"}
# classes a release file may hold beside its tensors that only carry plain values: torch's weights-only loader
# rebuilds them without running their code (LPD's training checkpoints keep the run's argparse.Namespace)
INERT_GLOBALS = [argparse.Namespace]


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    """Official files wrap the state dict in various ways ({'model': sd}, {'state_dict': sd})."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "module", "ema"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                return dict(inner)
        tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(f"{path}: no state dict of tensors found (top-level type {type(obj).__name__})")


def load_state_dict(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Load a state dict from ``.safetensors`` or a pickle (``.bin/.pt/.pth``) without running code (a pickle
    holding more than tensors — an optimizer state, an ``argparse.Namespace`` of the run — is read with torch's
    weights-only loader; only the state dict of tensors is kept).

    Raises :class:`FileNotFoundError` for a missing file and :class:`CheckpointError` for a
    corrupt file or a pickle that would need to execute code to load.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(map_location))
        except Exception as e:  # safetensors raises its own SafetensorError (not always importable)
            raise CheckpointError(f"{path}: corrupt or unreadable safetensors file ({e})") from e
    try:
        with torch.serialization.safe_globals(INERT_GLOBALS):
            obj = torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: the pickle holds objects other than tensors and plain containers "
            f"(loading it would run code). Convert it to safetensors in a trusted environment. Details: {e}"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: {e})") from e
    return _unwrap(obj, path)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Stream ``write(file)`` into a temporary file beside ``path``, fsync it, rename it over ``path`` and fsync the
    directory: ``path`` is either the old file or the complete new one, never half-written (a crash mid-write
    leaves the last good file in place and no temporary file behind)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        if e.filename is None:
            raise _naming(e, path) from e
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a failed write (a full disk) names no file
            raise _naming(e, path) from e
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _naming(e: OSError, path: Path) -> OSError:
    """A copy of ``e`` (which names no file) naming ``path``; the same errno, so the same OSError subclass."""
    return OSError(e.errno, e.strerror or str(e), str(path))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def save_state_dict(path: str | os.PathLike, state_dict: Mapping[str, Tensor], metadata: dict | None = None) -> None:
    """Atomically save tensors as safetensors (contiguous CPU copies; shared storage is cloned)."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` streamed atomically to ``path`` (:func:`atomic_write`; no copy in memory). Use only plain
    containers of tensors / numbers / strings, so the file loads again with ``weights_only=True``."""
    try:
        atomic_write(path, lambda f: torch.save(obj, f))
    except RuntimeError as e:
        # torch.save reports a failed write (e.g. a full disk) as "[enforce fail at inline_container.cc] ...
        # unexpected pos": the OSError it hit, if any, is its context
        cause = e.__context__
        if isinstance(cause, OSError):
            raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from e
        if "inline_container" in str(e):
            raise OSError(errno.EIO, f"torch.save could not write the file ({e})", str(path)) from e
        raise


def check_state_dict(
    expected: Mapping[str, Tensor], given: Mapping[str, Tensor], source: str, max_report: int = 12
) -> None:
    """Raise :class:`CheckpointError` naming every missing / unexpected key and mismatched shape."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    lines = [f"{source} does not fit the model config:"]
    for title, items in (("shape mismatches", shapes), ("missing keys", missing), ("unexpected keys", unexpected)):
        if items:
            more = f" … and {len(items) - max_report} more" if len(items) > max_report else ""
            lines.append(f"  {len(items)} {title}: " + "; ".join(items[:max_report]) + more)
    raise CheckpointError("\n".join(lines))
