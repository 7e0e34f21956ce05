"""An exclusive lock on an output for the length of a run: one writer at a time, and a clear message for the
second one instead of two runs deleting each other's parts.

The lock is a small file (``OUT.lock``) holding the pid, host and start time of its holder, locked with
``flock``: the kernel releases it when the holder ends in any way (a kill, a crash), so a lock file left behind
is stale by construction and the next run simply takes it (and says so). On a platform without ``fcntl`` the
file is created with ``O_CREAT | O_EXCL`` instead, and a file whose holder's pid no longer runs on this host
is taken over. Network file systems honour ``flock`` only when they implement it (NFSv4 does on Linux).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

__all__ = ["LockedError", "OutputLock"]


class LockedError(ValueError):
    """The output is being written by another run that is still alive."""


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "holder unknown"
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}"


def _read(fd: int) -> dict[str, Any] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 4096)
    try:
        holder = json.loads(data) if data else None
    except (ValueError, UnicodeDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # another user's process, or no pid to test: assume it runs
    return True


class OutputLock:
    """``with OutputLock(path, what):`` holds ``path`` (:class:`LockedError` naming ``what`` and the holder if a
    live run has it). ``previous`` is the holder recorded in a stale lock file that was taken over, else None."""

    def __init__(self, path: str | os.PathLike, what: str) -> None:
        self.path, self.what = Path(path), what
        self.fd: int | None = None
        self.previous: dict[str, Any] | None = None

    def _me(self) -> bytes:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": now}).encode()

    def _busy(self, holder: dict[str, Any] | None) -> LockedError:
        return LockedError(f"{self.what} is being written by another run ({_describe(holder)}): wait for it to "
                           f"finish, or write another file (its lock: {self.path})")

    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):  # a retry only when the holder removed the file between our open and our lock
            if fcntl is None:  # pragma: no cover - not POSIX
                if self._acquire_exclusive():
                    return self
                continue
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                raise self._busy(holder) from None
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if not current:  # we locked a file its holder had just unlinked: lock the one now there
                os.close(fd)
                continue
            self.previous = _read(fd)  # a holder that ended without releasing (killed): stale
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, self._me())
            self.fd = fd
            return self
        raise RuntimeError(f"{self.path}: could not take the lock (it keeps being replaced)")

    def _acquire_exclusive(self) -> bool:  # pragma: no cover - not POSIX
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(self.path.read_text())
            except (OSError, ValueError):
                holder = None
            if holder and holder.get("host") == socket.gethostname() and not _alive(holder.get("pid")):
                self.path.unlink(missing_ok=True)  # its holder is gone: stale
                self.previous = holder
                return False
            raise self._busy(holder) from None
        os.write(fd, self._me())
        self.fd = fd
        return True

    def release(self) -> None:
        """Remove the lock file and let go (a no-op when not held)."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # closing releases the flock
            self.fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
