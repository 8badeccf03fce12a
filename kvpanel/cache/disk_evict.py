"""Keeping a disk cache directory that several processes share under one size cap.

Primitives:
- ``SharedEviction``: trims the directory (oldest files first) while holding the one evictor
  lock (disk_share.EvictorLock), measuring it by the shared usage count (disk_share.SharedUsage),
  which it resets from a scan of names and sizes (disk_dirs.measure_chunks) at most every
  ``reconcile_s`` and whenever its own index runs out of victims while the count says "over".

The scan also teaches this process the files others wrote, ordered by mtime (every process's
reads refresh it), so the victims are the directory's least recently used, not only its own.
Between scans no write pays for a walk of the directory: it reads and adds to one counter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from kvpanel.cache.disk_dirs import ShardDirs, measure_chunks
from kvpanel.cache.disk_index import ChunkIndex
from kvpanel.cache.disk_share import EvictorLock, SharedUsage
from kvpanel.cache.keys import ChunkKey
from kvpanel.cache.stats import TierCounters


class SharedEviction:
    """``index`` and ``lock`` are the owning tier's (the lock guards the index)."""

    def __init__(
        self,
        shards: ShardDirs,
        index: ChunkIndex,
        lock: threading.Lock,
        file_bytes: int,
        reconcile_s: float,
        on_freed: Callable[[], None],
        counters: TierCounters,
    ) -> None:
        self._shards = shards
        self._index = index
        self._lock = lock
        self._file_bytes = file_bytes
        self._reconcile_s = reconcile_s
        self._on_freed = on_freed  # called with ``lock`` held when a file was removed
        self._counters = counters
        self._next_reconcile = 0.0  # monotonic
        self._evictor = EvictorLock(shards.fp_fd)
        try:
            self.usage = SharedUsage(shards.fp_fd)
        except BaseException:
            self._evictor.close()
            raise
        self.reserved = 0  # bytes this process is writing right now (guarded by ``lock``)

    def reserve(self, incoming: int, capacity: int) -> bool:
        """Make room for ``incoming`` bytes and reserve them; False if they do not fit now
        (the rest is being written, here or by another process)."""
        if incoming > capacity:
            return False

        def fits(total: int) -> bool:
            return total + self.reserved + incoming <= capacity

        if not fits(self.usage.read()):
            self.trim(fits)
        total = self.usage.read()
        with self._lock:
            if not fits(total):
                return False
            self.reserved += incoming
            return True

    def unreserve(self, n: int) -> None:
        with self._lock:
            self.reserved -= n

    def reconcile_due(self) -> bool:
        return time.monotonic() >= self._next_reconcile

    def unlink(self, key: ChunkKey) -> bool:
        """Remove ``key``'s file, uncounting it only if this call removed it (so each file
        leaves the shared count once, whichever process removes it)."""
        if not self._shards.unlink(key):
            return False
        self.usage.add(-self._file_bytes)
        return True

    def trim(
        self,
        done: Callable[[int], bool],
        *,
        wait: bool = False,
        reconcile: bool = False,
        count: bool = True,
    ) -> list[ChunkKey]:
        """Evict until ``done(directory bytes)``; the keys whose files this call removed.

        Without ``wait`` a held evictor lock means another evictor is at work: it re-reads the
        count after letting go, so bytes added meanwhile are never left over the cap."""
        evicted: list[ChunkKey] = []
        while self._evictor.acquire(wait=wait):
            try:
                removed, satisfied = self._evict_locked(done, reconcile)
            finally:
                self._evictor.release()
            evicted += removed
            reconcile = False
            if not satisfied or done(self.usage.read()):
                break
        if evicted and count:
            self._counters.add(evictions=len(evicted))
        return evicted

    def _evict_locked(self, done: Callable[[int], bool], reconcile: bool) -> tuple[list, bool]:
        if reconcile or self.reconcile_due():
            self._reconcile()
        evicted: list[ChunkKey] = []
        rescanned = False
        while not done(self.usage.read()):
            with self._lock:
                victim = self._index.pop_oldest()
            if victim is None:
                if rescanned:
                    return evicted, False  # the rest is being written, or is not ours to see
                self._reconcile()
                rescanned = True
                continue
            if self.unlink(victim):  # else another process removed it first
                evicted.append(victim)
                with self._lock:
                    self._on_freed()
        return evicted, True

    def _reconcile(self) -> None:
        # A delta, not an overwrite: bytes other writers add during the scan are kept (a file
        # renamed during the scan may be counted twice until the next one: an over-count only
        # evicts early, never lets the directory grow past the cap).
        with self._lock:
            self._index.scan_started()
        before = self.usage.read()
        measured = measure_chunks(self._shards.fp_fd, self._file_bytes)
        self.usage.add(measured.total - before)
        measured.found.sort()
        with self._lock:
            self._index.replace(key for _mtime, key in measured.found)
        if measured.removed:  # files of a size we never write: foreign or damaged
            self._counters.add(errors=measured.removed)
        self._next_reconcile = time.monotonic() + self._reconcile_s

    def close(self) -> None:
        self._evictor.close()
        self.usage.close()
