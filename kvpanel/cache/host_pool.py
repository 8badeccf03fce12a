"""Memory for the CPU tier's segments: private to one process, or shared with vLLM's workers.

With tensor parallelism each rank's worker is a process of its own, while the store's index
(keys, pins, LRU, disk and Redis I/O) lives in the scheduler's process. The segments are then
files in a directory under /dev/shm that the scheduler's store creates and each worker maps by
name (``host_pool_map.SegmentMapper``). A slot holds the chunk of every rank, rank r's shard at
``r * shard_bytes`` (the layout of vLLM's own SharedOffloadRegion): disk and Redis keep one
contiguous payload and one checksum per chunk, and the fingerprint names the TP size, so a TP=2
chunk is never taken for a TP=1 one.

Segment indices are never reused within one pool, so ``seg-7`` always means the same memory; a
freed segment's file is unlinked at once and the workers drop their mappings of it. Segment
files are fully allocated when made (``posix_fallocate``): a /dev/shm too small for the tier
is a MemoryError at that moment, never a SIGBUS at a later copy.

What is trusted: the pool directory is made 0700 by the engine's user; workers map only a
directory that is a real directory of their own user with no group/other access, and open
segments below it without following links or creating files. The owner holds an exclusive
``flock`` on ``owner.lock`` for its whole life: a pool whose lock can be taken belongs to a
dead engine (even one in another pid namespace sharing /dev/shm) and is removed by the next
engine that starts; a live one is never touched.

Primitives:
    SegmentMemory           - allocate(index, nbytes) -> tensor; free(index); close()
    PrivateSegments(pin)    - torch.empty in this process (TP=1)
    SharedSegments(dir, slot_bytes, slots_per_segment) - files the workers map (TP>1)
    pool_directory(engine_id); segment_slots(slot_bytes); remove_stale_pools(root)
    remove_pools_after_stop(before, engine_alive) - a force-killed engine's pool, once it is dead
    open_private_dir(path) -> fd; map_segment(dir_fd, name, create_bytes=0) -> tensor
    write_rank_report / read_rank_reports - what each worker tells the scheduler's store (its
                              engine KV bytes, its copy totals): small JSON files in the pool
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import mmap
import os
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

log = logging.getLogger("kvpanel")

SHM_ROOT = Path("/dev/shm")
LAYOUT = "layout.json"
_LOCK = "owner.lock"
_UNLOCKED_GRACE_S = 60.0  # a pool dir without its lock file yet: being made, unless this old
SEGMENT_BYTES = 256 << 20


def segment_slots(slot_bytes: int, segment_bytes: int = SEGMENT_BYTES) -> int:
    """Slots per segment (at least one slot, however large)."""
    return max(1, segment_bytes // slot_bytes)


def pool_directory(engine_id: str, root: Path = SHM_ROOT) -> Path:
    # A readable prefix and a digest of the whole id: two long ids never share a pool.
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in engine_id)[:64]
    digest = hashlib.sha256(engine_id.encode()).hexdigest()[:16]
    return root / f"kvpanel-pool-{safe}-{digest}"


class SegmentMemory(Protocol):
    def allocate(self, index: int, nbytes: int) -> torch.Tensor: ...

    def free(self, index: int) -> None: ...

    def close(self) -> None: ...


class PrivateSegments:
    """Segments in this process's memory, page-locked for DMA when ``pin`` (TP=1)."""

    def __init__(self, pin: bool = False) -> None:
        self.pin = pin

    def allocate(self, index: int, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin)

    def free(self, index: int) -> None:
        pass  # the tensor goes with the tier's last reference

    def close(self) -> None:
        pass


def open_private_dir(path: Path) -> int:
    """An fd of ``path`` if it is a directory (not a link) of this user, mode 0700 or tighter."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        os.close(fd)
        raise PermissionError(f"{path} is not a private directory of this user")
    return fd


def map_segment(dir_fd: int, name: str, create_bytes: int = 0) -> torch.Tensor:
    """Map ``name`` below ``dir_fd`` (shared, read-write); with ``create_bytes`` make it first
    (exclusively, fully allocated). Links are never followed, a missing file never created."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    if create_bytes:
        flags |= os.O_CREAT | os.O_EXCL
    fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    try:
        if create_bytes:
            try:
                os.posix_fallocate(fd, 0, create_bytes)
            except OSError as e:
                os.unlink(name, dir_fd=dir_fd)
                if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.ENOMEM):
                    raise MemoryError(str(e)) from e
                raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size <= 0:
            raise FileNotFoundError(f"{name} is not a segment file")
        mm = mmap.mmap(fd, st.st_size, flags=mmap.MAP_SHARED)
    finally:
        os.close(fd)
    return torch.frombuffer(mm, dtype=torch.uint8)  # keeps the mapping alive


def _remove_if_dead(path: Path) -> bool:
    try:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            return False  # a link, a file, another user's: not ours to judge
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        try:
            lock_fd = os.open(_LOCK, os.O_RDWR | os.O_NOFOLLOW, dir_fd=dir_fd)
        except FileNotFoundError:
            if time.time() - st.st_mtime < _UNLOCKED_GRACE_S:
                return False  # being made right now
        else:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # its engine is alive
            finally:
                os.close(lock_fd)
        shutil.rmtree(path, ignore_errors=True)
        return True
    except OSError:
        return False
    finally:
        os.close(dir_fd)


def remove_stale_pools(root: Path = SHM_ROOT) -> list[Path]:
    """Remove this user's pool directories whose engine is gone (killed with SIGKILL)."""
    return [p for p in sorted(pool_dirs(root)) if _remove_if_dead(p)]


def pool_dirs(root: Path = SHM_ROOT) -> set[Path]:
    return set(root.glob("kvpanel-pool-*"))


def remove_pools_after_stop(
    before: set[Path],
    engine_alive: Callable[[], bool],
    timeout_s: float = 10.0,
    root: Path = SHM_ROOT,
) -> list[Path]:
    """Remove the pools that appeared since ``before`` once their engine has died.

    vLLM force-kills an engine core whose workers are slow to exit, before its store removes
    the pool, and does not wait for the kill: the pool's lock frees a moment later. A pool
    still locked once ``engine_alive()`` is false belongs to another engine and stays.
    """
    removed: list[Path] = []
    deadline = time.monotonic() + timeout_s
    while True:
        alive = engine_alive()  # sampled before the sweep, so a just-dead engine's pool goes
        removed += remove_stale_pools(root)
        if not pool_dirs(root) - before or not alive or time.monotonic() >= deadline:
            return removed
        time.sleep(0.1)


def write_rank_report(directory: Path, rank: int, report: dict[str, object]) -> None:
    """Replace this rank's report (atomically: a reader never sees half of it)."""
    tmp = directory / f".rank-{rank}.json.tmp"
    try:
        tmp.write_text(json.dumps(report))
        os.replace(tmp, directory / f"rank-{rank}.json")
    except OSError:  # the pool is gone (the engine is stopping): nothing to tell
        pass


def read_rank_reports(directory: Path) -> list[dict[str, object]]:
    """Every rank's last report; unreadable ones are left out (figures, never KV)."""
    reports = []
    for path in sorted(directory.glob("rank-*.json")):
        with contextlib.suppress(OSError, ValueError):
            report = json.loads(path.read_text())
            if isinstance(report, dict):
                reports.append(report)
    return reports


class SharedSegments:
    """Segment files in ``directory`` (made here, 0700); the scheduler's store owns them."""

    def __init__(self, directory: Path, slot_bytes: int, slots_per_segment: int) -> None:
        self.directory = Path(directory)
        remove_stale_pools(self.directory.parent)
        try:
            self.directory.mkdir(mode=0o700)
        except FileExistsError:
            raise RuntimeError(
                f"{self.directory} is in use by a running engine with the same engine_id"
            ) from None
        self._dir_fd = open_private_dir(self.directory)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        self._lock_fd = os.open(_LOCK, flags, 0o600, dir_fd=self._dir_fd)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # held while this engine lives
        layout = {"slot_bytes": slot_bytes, "slots_per_segment": slots_per_segment}
        tmp = self.directory / f".{LAYOUT}.tmp"
        tmp.write_text(json.dumps(layout))
        os.replace(tmp, self.directory / LAYOUT)
        self._closed = False

    def allocate(self, index: int, nbytes: int) -> torch.Tensor:
        try:
            return map_segment(self._dir_fd, f"seg-{index}", create_bytes=nbytes)
        except MemoryError:
            free = shutil.disk_usage(self.directory).free
            raise MemoryError(
                f"{self.directory.parent} has {free / 2**30:.2f} GiB free, a CPU-tier segment "
                f"needs {nbytes / 2**30:.2f} GiB (raise the shm size or lower --cpu-cache-gb)"
            ) from None

    def free(self, index: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"seg-{index}", dir_fd=self._dir_fd)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _remove_pool(self.directory)
            os.close(self._lock_fd)
            os.close(self._dir_fd)


def _remove_pool(directory: Path) -> None:
    # A worker's report timer may write into the pool while it is removed (rmtree would then
    # fail on a non-empty directory and leave it): the pool is first renamed away, so no new
    # file appears under its name, and a write that began before the rename is swept by the
    # retry. A leftover ".closing" pool has no lock and goes with the next engine's sweep.
    gone = directory.with_name(directory.name + ".closing")
    try:
        os.rename(directory, gone)
    except OSError:
        gone = directory
    for _ in range(20):
        shutil.rmtree(gone, ignore_errors=True)
        if not os.path.lexists(gone):
            return
        time.sleep(0.05)
    log.warning("kvpanel: could not remove the host pool %s", gone)
