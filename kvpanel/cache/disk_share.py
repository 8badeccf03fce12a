"""What several processes sharing one disk cache directory agree on.

Primitives:
- ``EvictorLock``: at most one evictor per fingerprint dir across processes and threads:
  ``flock`` on ``<dir>/.lock``, taken without waiting (a writer that finds it taken leaves the
  work to the holder, who re-checks the usage after letting go).
- ``SharedUsage``: the bytes of chunk files in the dir, one little-endian i64 in
  ``<dir>/.usage``, changed under a short blocking ``flock``: writers add after their rename,
  whoever's unlink succeeded subtracts, so each file is counted in and out once. It can drift
  (a process killed between rename and add, a file removed by hand, two renames of one key);
  the evictor resets it from a scan of the dir now and then (``DiskTier.reconcile_s``).

flock locks belong to the open file description, so two tiers on one dir in one process exclude
each other as two processes do; a thread mutex per object orders the threads sharing one fd. The
kernel drops a dead process's locks. The files are opened with O_NOFOLLOW relative to the
fingerprint dir's fd: a symlink planted at either name is removed, never written through.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
import threading

_I64 = struct.Struct("<q")
LOCK_NAME = ".lock"
USAGE_NAME = ".usage"
_USAGE_MAX = 1 << 62


def _open_nofollow(dir_fd: int, name: str) -> int:
    fd = _open_link_free(dir_fd, name)
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a planted FIFO, device or directory
        os.close(fd)
        raise OSError(errno.EINVAL, f"{name} in the disk cache dir is not a regular file")
    return fd


def _open_link_free(dir_fd: int, name: str) -> int:
    # O_NONBLOCK: opening a planted FIFO must not wait for a writer.
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        return os.open(name, flags, 0o644, dir_fd=dir_fd)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        if not stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise
        # No kvpanel process can lock through a link (it would have failed here too), so
        # removing the link cannot split two processes onto different inodes.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        return os.open(name, flags, 0o644, dir_fd=dir_fd)


class EvictorLock:
    """Exclusive, never waited for in the write path (``wait=True`` for operator actions)."""

    def __init__(self, dir_fd: int) -> None:
        self._fd = _open_nofollow(dir_fd, LOCK_NAME)
        self._mutex = threading.Lock()

    def acquire(self, *, wait: bool = False) -> bool:
        if not self._mutex.acquire(blocking=wait):
            return False
        if self._fd < 0:  # closed: a write finishing after close() evicts nothing
            self._mutex.release()
            return False
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BaseException as e:
            self._mutex.release()
            if isinstance(e, BlockingIOError):
                return False
            raise
        return True

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._mutex.release()

    def close(self) -> None:
        # Waits for a running eviction: the fd number must not be reused under it. The file
        # stays: unlinking it would let two processes lock different inodes.
        with self._mutex:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


class SharedUsage:
    """The dir's chunk bytes as every process sharing it sees them (never below 0)."""

    def __init__(self, dir_fd: int) -> None:
        self._fd = _open_nofollow(dir_fd, USAGE_NAME)
        self._mutex = threading.Lock()

    def read(self) -> int:
        return self.add(0)

    def add(self, delta: int) -> int:
        """Add ``delta`` bytes and return the new total."""
        with self._mutex:
            if self._fd < 0:
                return 0  # closed; the next reconcile counts what a late write left
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                raw = os.pread(self._fd, _I64.size, 0)
                total = _I64.unpack(raw)[0] if len(raw) == _I64.size else 0
                # Clamped: a hostile or torn value must not overflow the pack (the next
                # reconcile counts the files again).
                new = min(max(0, total + delta), _USAGE_MAX)
                if delta:
                    os.pwrite(self._fd, _I64.pack(new), 0)
                return new
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._mutex:  # never pwrite into an fd number reused by another file
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
