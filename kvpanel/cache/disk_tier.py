"""Disk tier: one validated file per chunk under ``<root>/<fingerprint hex>/``.

Primitives:
- ``DiskTierError``: the directory cannot be used (not a dir, not writable, locked).
- ``DiskTier``: index + LRU of this fingerprint's chunk files, capacity enforcement,
  a single background writer thread fed by a bounded queue, validated reads.

Nothing here raises into the serving path after construction: write failures turn into a
"full" tier that stops admitting for a while, read failures into misses (the bad file is
deleted so it cannot be served again).

``secret``: a ``CacheSecret`` keys the files' checks and gives the tier its own directory
(``<root>/<namespace digest hex>/``; ``kvpanel.cache.secret`` says why).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from kvpanel.cache import disk_format as fmt
from kvpanel.cache.buffers import Payload, as_byte_view
from kvpanel.cache.disk_lock import DirLock, DirLockBusy
from kvpanel.cache.keys import ChunkKey, Fingerprint
from kvpanel.cache.lru import LruIndex
from kvpanel.cache.secret import CacheSecret, namespace_digest
from kvpanel.cache.stats import TierCounters, TierStats

OnDone = Callable[[bool], None]
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
        self._fsync = fsync
        self._full_retry_s = full_retry_s
        self._capacity = max(0, capacity_bytes)
        self.dir = _prepare_dir(Path(root), fp, self._fp_digest.hex())
        self._dir_lock = DirLock(self.dir)
        try:
            self._dir_lock.acquire()
        except DirLockBusy as e:
            raise DiskTierError(
                f"disk cache dir {self.dir} is in use by another kvpanel process "
                f"(pid {e.holder_pid})"
            ) from None
        self._lock = threading.Lock()
        self._sizes: dict[ChunkKey, int] = {}  # file bytes per chunk
        self._lru: LruIndex[ChunkKey] = LruIndex()
        self._used = 0
        self._reserved = 0  # bytes being written right now
        self._queued: set[ChunkKey] = set()
        self._full_since: float | None = None
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
            note = "disabled" if self._capacity == 0 else "full" if full else ""
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
        return self._read(key, out.numpy().data.cast("B"))

    def _payload_bytes(self, key: ChunkKey) -> int | None:
        with self._lock:
            size = self._sizes.get(key)
        return None if size is None else size - fmt.HEADER_BYTES

    def _read(self, key: ChunkKey, out: memoryview) -> bool:
        path = fmt.chunk_path(self.dir, key)
        with self._lock:
            if key not in self._sizes:
                return False
        try:
            n = fmt.read_chunk(path, self._fp_digest, key, out, secret=self._secret)
        except (fmt.CorruptChunk, OSError):
            # Never serve doubtful bytes: forget the chunk and delete its file. A file evicted
            # under our feet is no error, just a miss.
            if self._forget(key, delete=True):
                self._counters.add(errors=1)
            return False
        with self._lock:
            self._lru.touch(key)
        with contextlib.suppress(OSError):
            os.utime(path)  # mtime carries LRU order across restarts
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
        size = fmt.HEADER_BYTES + payload.nbytes
        with self._lock:
            if key in self._sizes:
                return True
        if not self._enforce_capacity(size):
            return False
        try:
            fmt.write_chunk(
                fmt.chunk_path(self.dir, key),
                self._fp_digest,
                key,
                payload,
                fsync=self._fsync,
                secret=self._secret,
            )
        except OSError:
            with self._lock:
                self._reserved -= size
                self._full_since = time.monotonic()
            self._counters.add(errors=1)
            return False
        with self._lock:
            self._reserved -= size
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
        with self._lock:
            self._full_since = None
        return self._evict_until(lambda: not self._sizes)

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

    def _evict_until(self, done: Callable[[], bool]) -> list[ChunkKey]:
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
            fmt.chunk_path(self.dir, victim).unlink(missing_ok=True)
            evicted.append(victim)
        if evicted:
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
            with contextlib.suppress(OSError):
                fmt.chunk_path(self.dir, key).unlink(missing_ok=True)
        return size is not None

    def _rebuild_index(self) -> None:
        """Index this fingerprint's files from their headers; delete torn and temp files."""
        found: list[tuple[float, ChunkKey, int]] = []
        for sub in self.dir.iterdir():
            if not sub.is_dir():
                continue
            for path in sub.iterdir():
                name = path.name
                if fmt.TMP_MARKER in name:
                    path.unlink(missing_ok=True)  # a writer died mid-write
                    continue
                if not name.endswith(fmt.SUFFIX):
                    continue
                try:
                    key = ChunkKey(bytes.fromhex(name[: -len(fmt.SUFFIX)]))
                    header = fmt.read_header(path, self._fp_digest, key)
                    mtime = path.stat().st_mtime
                except (ValueError, OSError, fmt.CorruptChunk):
                    path.unlink(missing_ok=True)
                    self._counters.add(errors=1)
                    continue
                found.append((mtime, key, header.file_bytes))
        found.sort()
        for _mtime, key, size in found:
            self._add(key, size)


def _prepare_dir(root: Path, fp: Fingerprint, dir_name: str) -> Path:
    if root.exists() and not root.is_dir():
        raise DiskTierError(f"disk cache path {root} exists and is not a directory")
    fp_dir = root / dir_name
    try:
        fp_dir.mkdir(parents=True, exist_ok=True)
        # Prove writability with a real file: os.access lies for root and read-only mounts.
        probe = fp_dir / f".probe{fmt.TMP_MARKER}{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        (fp_dir / "fingerprint.json").write_text(fp.to_json() + "\n")
    except OSError as e:
        raise DiskTierError(f"disk cache path {root} is not usable: {e}") from e
    return fp_dir
