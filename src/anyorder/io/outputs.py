"""Output paths: checked writable before long work, and operating-system errors described in one line.

A command that will run for minutes or hours calls :func:`ensure_writable` on its output first, so a
read-only folder, a path under a regular file or a missing permission is reported before the work instead
of after it. :func:`describe_os_error` turns any :class:`OSError` (a full disk, a read-only file system, ...)
into one line naming the path and the cause; the CLI prints it instead of a traceback.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

__all__ = ["ensure_writable", "describe_os_error"]

_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is used up: free some space or write elsewhere",
    errno.EROFS: "a read-only file system: write elsewhere",
    errno.EACCES: "no permission to write there: write elsewhere or change the folder's permissions",
    errno.EPERM: "no permission to write there: write elsewhere or change the folder's permissions",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
}


def describe_os_error(e: OSError) -> str:
    """One line: ``PATH: cause (what it means)``. An error raised with a message only (no errno) is its
    message; the system's own wording of an errno gets a few words on what to do."""
    if e.strerror is None:
        return str(e)
    cause = e.strerror
    hint = _HINTS.get(e.errno or 0)
    if hint and e.errno is not None and cause == os.strerror(e.errno):
        cause = f"{cause} ({hint})"
    if e.filename is None:
        return cause
    where = os.fsdecode(e.filename) + (f" -> {os.fsdecode(e.filename2)}" if e.filename2 is not None else "")
    return f"{where}: {cause}"


def ensure_writable(path: str | os.PathLike, *, folder: bool = False, what: str = "output") -> Path:
    """Check that ``path`` can be written before any long work: its folder (``path`` itself with ``folder``,
    else its parent) is created if missing (as the command would create it anyway; under ``torchrun`` every
    rank may check at once) and a temporary file is written and removed there. Raises :class:`OSError`
    naming ``what`` and the path otherwise (including a ``folder`` output that is a file, and a file output
    that is a folder). Returns ``path``."""
    path = Path(path)
    target = path if folder else path.parent
    if folder and path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{what} must be a folder, and a file is there", str(path))
    if not folder and path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{what} must be a file, and a folder is there", str(path))
    try:
        target.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target, prefix=".anyorder-write-check-", suffix=".tmp")
    except OSError as e:
        blocker = next((p for p in [target, *target.parents] if p.exists() and not p.is_dir()), None)
        cause = f"{blocker} is a file, not a folder" if blocker is not None else (e.strerror or str(e))
        raise type(e)(e.errno, f"{what} cannot be written ({cause})", str(path)) from e
    os.close(fd)
    os.unlink(tmp)
    return path
