"""Disk tier: one validated file per chunk under ``<root>/<fingerprint hex>/``.

Primitives:
- ``DiskTierError``: the directory cannot be used (not a dir, not writable, locked).
- ``DiskTier``: index + LRU of this fingerprint's chunk files, capacity enforcement,
  a single background writer thread fed by a bounded queue, validated reads.

Nothing here raises into the serving path after construction: a full filesystem (ENOSPC,
EDQUOT) turns into a "full" tier that stops admitting for a while, other write failures into
an error for that chunk alone, read failures into misses (the bad file is deleted so it cannot
be served again). Files are reached through disk_dirs.ShardDirs, never through a symlink.

``secret``: a ``CacheSecret`` keys the files' checks and gives the tier its own directory
(``<root>/<namespace digest hex>/``; ``kvpanel.cache.secret`` says why).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from kvpanel.cache import disk_format as fmt
from kvpanel.cache.buffers import Payload, as_byte_view
from kvpanel.cache.disk_dirs import ShardDirs, prepare_fp_dir, scan_chunks
from kvpanel.cache.disk_lock import DirLock, DirLockBusy
from kvpanel.cache.keys import ChunkKey, Fingerprint
from kvpanel.cache.lru import LruIndex
from kvpanel.cache.secret import CacheSecret, namespace_digest
from kvpanel.cache.stats import TierCounters, TierStats

log = logging.getLogger("kvpanel")

OnDone = Callable[[bool], None]
# Only these mean the filesystem is out of room; any other write error is about one chunk path.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_MAX_FAILED_WRITES = 3
_Job = tuple[ChunkKey, Payload, OnDone | None]


class DiskTierError(Exception):
    """The disk cache directory is unusable."""


class DiskTier:
    def __init__(
        self,
        root: str | Path,
        fp: Fingerprint,
        capacity_bytes: int,
        *,
        max_queue: int = 256,
        fsync: bool = False,
        full_retry_s: float = 30.0,
        secret: CacheSecret | None = None,
    ) -> None:
        self._secret = secret
        self._fp_digest = namespace_digest(fp.digest(), secret)
        # Exactly what the store writes (one whole CPU slot), so a valid checksum over fewer
        # bytes can never leave the rest of a slot holding another chunk's KV.
        self._payload_len = fp.chunk_bytes
        self._fsync = fsync
        self._full_retry_s = full_retry_s
        self._capacity = max(0, capacity_bytes)
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise DiskTierError(f"disk cache path {root} exists and is not a directory")
        dir_name = self._fp_digest.hex()
        try:
            self._shards = ShardDirs(prepare_fp_dir(root, fp, dir_name))
        except OSError as e:
            raise DiskTierError(f"disk cache path {root} is not usable: {e}") from e
        self.dir = root / dir_name
        self._dir_lock = DirLock(self.dir, dir_fd=self._shards.fp_fd)
        try:
            self._dir_lock.acquire()
        except DirLockBusy as e:
            self._shards.close()
            raise DiskTierError(
                f"disk cache dir {self.dir} is in use by another kvpanel process "
                f"(pid {e.holder_pid})"
            ) from None
        except OSError as e:
            self._shards.close()
            raise DiskTierError(f"disk cache dir {self.dir} cannot be locked: {e}") from e
        self._warned = False
        self._lock = threading.Lock()
        self._sizes: dict[ChunkKey, int] = {}  # file bytes per chunk
        self._lru: LruIndex[ChunkKey] = LruIndex()
        self._used = 0
        self._reserved = 0  # bytes being written right now
        self._queued: set[ChunkKey] = set()
        self._full_since: float | None = None
        self._stop_note = "full"  # why writes are refused while _full_since is set
        self._failed_writes = 0  # in a row, ENOSPC/EDQUOT aside
        self._counters = TierCounters("disk")
        self._closed = False
        self._rebuild_index()
        self._enforce_capacity(0)
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._writer = threading.Thread(
            target=self._writer_loop, name="kvpanel-disk-writer", daemon=True
        )
        self._writer.start()

    # ----- queries ----------------------------------------------------------------------------

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._used

    def contains(self, key: ChunkKey) -> bool:
        with self._lock:
            return key in self._sizes

    def lookup(self, key: ChunkKey, count: bool = True) -> bool:
        with self._lock:
            hit = key in self._sizes
            if hit:
                self._lru.touch(key)
        if count:
            self._counters.add(hits=int(hit), misses=int(not hit))
        return hit

    def keys(self) -> list[ChunkKey]:
        with self._lock:
            return list(self._lru.victims())

    def stats(self) -> TierStats:
        with self._lock:
            full = self._is_full()
            note = "disabled" if self._capacity == 0 else self._stop_note if full else ""
            return self._counters.snapshot(
                self._capacity, self._used, len(self._sizes), healthy=not full, note=note
            )

    # ----- reads ------------------------------------------------------------------------------

    def get(self, key: ChunkKey) -> bytes | None:
        buf = bytearray(self._payload_bytes(key) or 0)
        if not buf or not self._read(key, memoryview(buf)):
            return None
        return bytes(buf)

    def read_into(self, key: ChunkKey, out: torch.Tensor) -> bool:
        """Read into a contiguous CPU uint8 tensor of at least the payload length."""
        if out.dtype != torch.uint8 or not out.is_contiguous() or out.device.type != "cpu":
            raise ValueError("read_into needs a contiguous CPU uint8 tensor")
        n = self._payload_bytes(key)
        if n is None:
            return False
        if out.numel() < n:
            raise ValueError(f"read_into: destination holds {out.numel()} bytes, chunk is {n}")
        return self._read(key, out.numpy().data.cast("B")[:n])

    def _payload_bytes(self, key: ChunkKey) -> int | None:
        with self._lock:
            size = self._sizes.get(key)
        return None if size is None else size - fmt.HEADER_BYTES

    def _read(self, key: ChunkKey, out: memoryview) -> bool:
        with self._lock:
            if key not in self._sizes:
                return False
        try:
            with self._shards.opened(key) as (dir_fd, name):
                n = fmt.read_chunk(
                    name, self._fp_digest, key, out, dir_fd=dir_fd, secret=self._secret
                )
                if n != self._payload_len:
                    raise fmt.CorruptChunk(f"payload of {n} bytes, chunks are {self._payload_len}")
                with contextlib.suppress(OSError):  # mtime carries LRU order across restarts
                    os.utime(name, dir_fd=dir_fd, follow_symlinks=False)
        except (fmt.CorruptChunk, OSError, ValueError):
            # Never serve doubtful bytes: forget the chunk and delete its file. A file evicted
            # under our feet is no error, just a miss. (ValueError: the file grew past a slot.)
            if self._forget(key, delete=True):
                self._counters.add(errors=1)
            return False
        with self._lock:
            self._lru.touch(key)
        self._counters.add(bytes_out=n)
        return True

    # ----- writes -----------------------------------------------------------------------------

    def put_async(self, key: ChunkKey, data: Payload, on_done: OnDone | None = None) -> bool:
        """Queue a write; False if refused (full, disabled, queue full, closed).

        ``data`` is read later by the writer thread, so it must stay unchanged until
        ``on_done(ok)`` runs (on the writer thread, or inline if the chunk is already stored).
        ``on_done`` is not called when this returns False.
        """
        with self._lock:
            if self._closed or self._capacity == 0 or self._is_full():
                return False
            duplicate = key in self._sizes or key in self._queued
            if not duplicate:
                try:
                    self._queue.put_nowait((key, data, on_done))
                except queue.Full:
                    self._counters.add(dropped=1)
                    return False
                self._queued.add(key)
        if duplicate and on_done is not None:
            on_done(True)
        return True

    def put(self, key: ChunkKey, data: Payload) -> bool:
        """Write synchronously; False on refusal or failure (never raises on I/O errors)."""
        with self._lock:
            if self._closed or self._capacity == 0 or self._is_full():
                return False
        return self._write(key, data)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued write finished; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if not self._queued:
                    return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.002)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)  # the writer drains everything queued before the sentinel
        self._writer.join()
        self._dir_lock.release()
        self._shards.close()

    def _writer_loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            key, data, on_done = job
            ok = False
            try:
                ok = self._write(key, data)
            finally:
                with self._lock:
                    self._queued.discard(key)
                if on_done is not None:
                    with contextlib.suppress(Exception):  # a bad callback must not kill us
                        on_done(ok)

    def _write(self, key: ChunkKey, data: Payload) -> bool:
        try:
            payload = as_byte_view(data)
        except (ValueError, TypeError):
            self._counters.add(errors=1)
            return False
        if payload.nbytes != self._payload_len:
            self._counters.add(errors=1)  # would be refused when read back: never store it
            return False
        size = fmt.HEADER_BYTES + payload.nbytes
        with self._lock:
            if key in self._sizes:
                return True
        if not self._enforce_capacity(size):
            return False
        try:
            with self._shards.opened(key, create=True) as (dir_fd, name):
                fmt.write_chunk(
                    name,
                    self._fp_digest,
                    key,
                    payload,
                    fsync=self._fsync,
                    dir_fd=dir_fd,
                    secret=self._secret,
                )
        except OSError as e:
            full = e.errno in _FULL_ERRNOS
            with self._lock:
                self._reserved -= size
                self._failed_writes = 0 if full else self._failed_writes + 1
                # A failing disk (EIO, EROFS, EACCES) must not evict a good chunk per refused
                # write: after a few in a row it stops admitting like a full one, for a while.
                if full or self._failed_writes >= _MAX_FAILED_WRITES:
                    self._full_since = time.monotonic()
                    self._stop_note = "full" if full else "write errors"
            if not full:
                self._warn_once("cannot write chunk %s: %s", key.hex(), e)
            self._counters.add(errors=1)
            return False
        with self._lock:
            self._reserved -= size
            self._failed_writes = 0
            self._add(key, size)
        self._counters.add(bytes_in=payload.nbytes)
        return True

    # ----- eviction and sizing ----------------------------------------------------------------

    def evict(self, key: ChunkKey) -> bool:
        if not self._forget(key, delete=True):
            return False
        self._counters.add(evictions=1)
        return True

    def resize(self, capacity_bytes: int) -> list[ChunkKey]:
        with self._lock:
            self._capacity = max(0, capacity_bytes)
            self._full_since = None
        return self._evict_until(lambda: self._used + self._reserved <= self._capacity)

    def clear(self) -> list[ChunkKey]:
        """Delete every chunk; not counted as evictions (see CpuTier.clear)."""
        with self._lock:
            self._full_since = None
        return self._evict_until(lambda: not self._sizes, count=False)

    def _enforce_capacity(self, incoming: int) -> bool:
        """Make room for ``incoming`` bytes and reserve them; False if they can never fit."""
        with self._lock:
            if incoming > self._capacity:
                return False
        self._evict_until(lambda: self._used + self._reserved + incoming <= self._capacity)
        with self._lock:
            if self._used + self._reserved + incoming > self._capacity:
                return False  # the rest is being written right now
            self._reserved += incoming
            return True

    def _evict_until(self, done: Callable[[], bool], count: bool = True) -> list[ChunkKey]:
        evicted: list[ChunkKey] = []
        while True:
            with self._lock:
                if done():
                    break
                victim = self._lru.pop_oldest()
                if victim is None:
                    break
                self._used -= self._sizes.pop(victim)
                self._full_since = None  # space freed: try admitting again
            self._shards.unlink(victim)
            evicted.append(victim)
        if evicted and count:
            self._counters.add(evictions=len(evicted))
        return evicted

    # ----- index ------------------------------------------------------------------------------

    def _is_full(self) -> bool:
        if self._full_since is None:
            return False
        if time.monotonic() - self._full_since >= self._full_retry_s:
            self._full_since = None
            return False
        return True

    def _add(self, key: ChunkKey, size: int) -> None:
        if key in self._sizes:
            self._used -= self._sizes[key]
        self._sizes[key] = size
        self._used += size
        self._lru.add(key)

    def _forget(self, key: ChunkKey, *, delete: bool) -> bool:
        with self._lock:
            size = self._sizes.pop(key, None)
            self._lru.remove(key)
            if size is not None:
                self._used -= size
                self._full_since = None
        if delete:
            self._shards.unlink(key)
        return size is not None

    def count_error(self) -> None:
        """An error found outside the tier (a promotion given up on)."""
        self._counters.add(errors=1)

    def _warn_once(self, msg: str, *args: object) -> None:
        # Per-chunk errors are counted in the stats; the log says what the first one was.
        if not self._warned:
            self._warned = True
            log.warning("disk cache %s: " + msg, self.dir, *args)

    def _rebuild_index(self) -> None:
        """Index this fingerprint's files from their headers; delete torn and temp files."""
        scan = scan_chunks(self._shards.fp_fd, self._fp_digest, self._payload_len, self.dir)
        self._counters.add(errors=scan.errors)
        scan.found.sort()
        for _mtime, key, size in scan.found:
            self._add(key, size)
