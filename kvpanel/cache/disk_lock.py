"""Exclusive ownership of a disk cache directory across processes.

Primitives:
- ``DirLock``: ``fcntl.flock`` on ``<dir>/.lock`` held for the owner's lifetime, with the
  owner's pid written in the file so a refusal can say who holds it.

flock locks belong to the open file description, so a second ``DirLock`` on the same
directory conflicts even inside one process; the kernel drops the lock if the process dies.
The lock file is opened with O_NOFOLLOW (relative to ``dir_fd`` when given): a symlink planted
at ``.lock`` is removed rather than followed, so the pid is never written into another file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path


class DirLockBusy(Exception):
    def __init__(self, path: Path, holder_pid: int | None) -> None:
        self.path = path
        self.holder_pid = holder_pid
        super().__init__(f"{path} is locked by pid {holder_pid}")


class DirLock:
    __slots__ = ("path", "_dir_fd", "_fd")

    def __init__(self, directory: Path, *, dir_fd: int | None = None) -> None:
        self.path = directory / ".lock"
        self._dir_fd = dir_fd
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise DirLockBusy(self.path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def _open(self) -> int:
        name = self.path if self._dir_fd is None else self.path.name
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(name, flags, 0o644, dir_fd=self._dir_fd)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            if not stat.S_ISLNK(os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False).st_mode):
                raise
            # No kvpanel process can hold a lock through a link (it would have failed here
            # too), so removing the link cannot split two owners onto different inodes.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=self._dir_fd)
            return os.open(name, flags, 0o644, dir_fd=self._dir_fd)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        # The file stays: unlinking it would let two processes lock different inodes.
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
