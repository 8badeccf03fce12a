"""Disk tier: one validated file per chunk under ``<root>/<fingerprint hex>/``.

Primitives:
- ``DiskTierError``: the directory cannot be used (not a dir, not writable).
- ``DiskTier``: this process's index of the fingerprint's chunk files (disk_index.py), the
  shared size cap, synchronous thread-safe writes (several writers at once:
  ``write_behind.WriteBehind`` drives them), validated reads.

Replicas: several processes (or tiers) may share one directory. Files are immutable and appear
only by rename, so readers open only whole files (one unlinked while read stays whole). The index
is a cache of the directory (disk_index.py): a miss asks the directory, a file another process
deleted is a plain miss (no error, nothing else deleted). disk_evict.py keeps the shared cap
(the smallest among the processes wins), within one chunk in flight per other writing process.

Durability (no fsync by default): a file is written to a temp name and renamed, so readers see
nothing or a whole file; after a power loss a file whose data never reached the disk fails its
size or checksum check and is deleted on the next start, never served. ``fsync=True`` trades
write speed for keeping such files.

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
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from kvpanel.cache import disk_format as fmt
from kvpanel.cache.buffers import Payload, as_byte_view
from kvpanel.cache.disk_dirs import ShardDirs, prepare_fp_dir, read_note, scan_chunks, write_note
from kvpanel.cache.disk_evict import SharedEviction
from kvpanel.cache.disk_index import ChunkIndex
from kvpanel.cache.disk_probe import probe_read_rate
from kvpanel.cache.keys import ChunkKey, Fingerprint
from kvpanel.cache.secret import CacheSecret, namespace_digest
from kvpanel.cache.stats import TierCounters, TierStats

log = logging.getLogger("kvpanel")

# Only these mean the filesystem is out of room; any other write error is about one chunk path.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_MAX_FAILED_WRITES = 3


class DiskTierError(Exception):
    """The disk cache directory is unusable."""


class DiskTier:
    name = "disk"
    batch_bytes = 0  # one file per write call

    def __init__(
        self,
        root: str | Path,
        fp: Fingerprint,
        capacity_bytes: int,
        *,
        fsync: bool = False,
        full_retry_s: float = 30.0,
        secret: CacheSecret | None = None,
        negative_ttl_s: float = 1.0,
        reconcile_s: float = 5.0,
    ) -> None:
        self._secret = secret
        self._fp_digest = namespace_digest(fp.digest(), secret)
        # Exactly what the store writes (one whole CPU slot), so a valid checksum over fewer
        # bytes can never leave the rest of a slot holding another chunk's KV.
        self._payload_len = fp.chunk_bytes
        self._file_bytes = fmt.HEADER_BYTES + fp.chunk_bytes  # every file we index has this size
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
        self._warned = False
        self._lock = threading.Lock()
        self._index = ChunkIndex(negative_ttl_s)
        self._counters = TierCounters("disk")
        try:
            self._eviction = SharedEviction(
                self._shards,
                self._index,
                self._lock,
                self._file_bytes,
                reconcile_s,
                self._freed,
                self._counters,
            )
        except OSError as e:
            self._shards.close()
            raise DiskTierError(f"disk cache dir {self.dir} cannot be shared: {e}") from e
        self._usage = self._eviction.usage
        self._full_since: float | None = None
        self._stop_note = "full"  # why writes are refused while _full_since is set
        self._failed_writes = 0  # in a row, ENOSPC/EDQUOT aside
        self._closed = False
        self._rebuild_index()
        self._eviction.trim(lambda total: total <= self._capacity, wait=True, reconcile=True)

    # ----- queries ----------------------------------------------------------------------------

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    @property
    def used_bytes(self) -> int:
        """Bytes of chunk files in the directory, all processes sharing it together."""
        return self._usage.read()

    def contains(self, key: ChunkKey) -> bool:
        """In the index, or (not asked about in the last ``negative_ttl_s``) found in the
        directory, written there by another process."""
        with self._lock:
            if key in self._index:
                return True
            if self._closed or self._index.known_absent(key):
                return False
        found = self._shards.file_bytes(key) == self._file_bytes
        with self._lock:
            if found:
                self._index.add(key)
            else:
                self._index.note_absent(key)
        return found

    def lookup(self, key: ChunkKey, count: bool = True) -> bool:
        hit = self.contains(key)
        if hit:
            with self._lock:
                self._index.touch(key)
        if count:
            self._counters.add(hits=int(hit), misses=int(not hit))
        return hit

    def keys(self) -> list[ChunkKey]:
        with self._lock:
            return self._index.keys()

    def stats(self) -> TierStats:
        used = self._usage.read()
        with self._lock:
            full = self._is_full()
            note = "disabled" if self._capacity == 0 else self._stop_note if full else ""
            return self._counters.snapshot(
                self._capacity, used, len(self._index), healthy=not full, note=note
            )

    # ----- reads ------------------------------------------------------------------------------

    def get(self, key: ChunkKey) -> bytes | None:
        buf = bytearray(self._payload_len)
        if not self._read(key, memoryview(buf)):
            return None
        return bytes(buf)

    def read_into(self, key: ChunkKey, out: torch.Tensor) -> bool:
        """Read into a contiguous CPU uint8 tensor of at least the payload length."""
        if out.dtype != torch.uint8 or not out.is_contiguous() or out.device.type != "cpu":
            raise ValueError("read_into needs a contiguous CPU uint8 tensor")
        if not self.contains(key):
            return False
        n = self._payload_len
        if out.numel() < n:
            raise ValueError(f"read_into: destination holds {out.numel()} bytes, chunk is {n}")
        return self._read(key, out.numpy().data.cast("B")[:n])

    def _read(self, key: ChunkKey, out: memoryview) -> bool:
        if not self.contains(key):
            return False
        try:
            with self._shards.opened(key) as (dir_fd, name):
                n = fmt.read_chunk(
                    name, self._fp_digest, key, out, dir_fd=dir_fd, secret=self._secret
                )
                if n != self._payload_len:
                    raise fmt.CorruptChunk(f"payload of {n} bytes, chunks are {self._payload_len}")
                with contextlib.suppress(OSError):  # mtime: the LRU order every process shares
                    os.utime(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            # Evicted by another process (or by us) since the index saw it: a plain miss. Its
            # name is not deleted: a new valid file may have been renamed there meanwhile.
            with self._lock:
                self._index.remove(key)
                self._index.note_absent(key)
            return False
        except (fmt.CorruptChunk, OSError, ValueError):
            # Never serve doubtful bytes: forget the chunk and delete its file.
            # (ValueError: the file grew past a slot.)
            if self._forget(key, delete=True):
                self._counters.add(errors=1)
            return False
        with self._lock:
            self._index.touch(key)
        self._counters.add(bytes_out=n)
        return True

    # ----- writes -----------------------------------------------------------------------------

    def accepts(self) -> bool:
        """Writes are wanted now (open, sized, not full or failing)."""
        with self._lock:
            return not self._closed and self._capacity > 0 and not self._is_full()

    def stores(self, key: ChunkKey) -> bool:
        return self.contains(key)

    def put(self, key: ChunkKey, data: Payload) -> bool:
        """Write synchronously; False on refusal or failure (never raises on I/O errors)."""
        if not self.accepts():
            return False
        return self._write(key, data)

    def write_many(self, items: Sequence[tuple[ChunkKey, Payload]]) -> list[bool]:
        return [self.put(key, data) for key, data in items]

    def count_dropped(self, n: int) -> None:
        """Chunks that never reached this tier (evicted from CPU before their write)."""
        self._counters.add(dropped=n)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._eviction.close()
        self._shards.close()

    def _write(self, key: ChunkKey, data: Payload) -> bool:
        try:
            payload = as_byte_view(data)
        except (ValueError, TypeError):
            self._counters.add(errors=1)
            return False
        if payload.nbytes != self._payload_len:
            self._counters.add(errors=1)  # would be refused when read back: never store it
            return False
        size = self._file_bytes
        if self.contains(key):  # also when another process wrote it
            return True
        if not self._eviction.reserve(size, self._capacity):
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
            self._eviction.unreserve(size)
            with self._lock:
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
        total = self._usage.add(size)
        self._eviction.unreserve(size)
        with self._lock:
            self._failed_writes = 0
            self._index.add(key)
        self._counters.add(bytes_in=payload.nbytes)
        # Another process may have written while we did: whoever finds the sum over the cap
        # evicts, so the directory settles within the cap once writes stop.
        if total > self._capacity or self._eviction.reconcile_due():
            self._eviction.trim(lambda t: t <= self._capacity)
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
        ev = self._eviction
        return ev.trim(lambda total: total + ev.reserved <= self._capacity, wait=True)

    def clear(self) -> list[ChunkKey]:
        """Delete every chunk of the directory (other processes' too: they share it); not
        counted as evictions (see CpuTier.clear)."""
        with self._lock:
            self._full_since = None
        return self._eviction.trim(lambda total: total <= 0, wait=True, count=False)

    def _freed(self) -> None:
        # With self._lock held (SharedEviction calls it): space freed, try admitting again.
        self._full_since = None

    # ----- index ------------------------------------------------------------------------------

    def _is_full(self) -> bool:
        if self._full_since is None:
            return False
        if time.monotonic() - self._full_since >= self._full_retry_s:
            self._full_since = None
            return False
        return True

    def _forget(self, key: ChunkKey, *, delete: bool) -> bool:
        with self._lock:
            known = self._index.remove(key)
            if known:
                self._full_since = None
        if delete:
            self._eviction.unlink(key)
        return known

    def read_note(self, name: str) -> bytes | None:
        """A small side file of this tier's directory (e.g. the planner's measurements)."""
        with self._lock:
            if self._closed:
                return None
        return read_note(self._shards.fp_fd, name)

    def write_note(self, name: str, data: bytes) -> bool:
        with self._lock:
            if self._closed:
                return False
        try:
            write_note(self._shards.fp_fd, name, data)
        except OSError:
            return False
        return True

    def probe_read_rate(self, chunks: int = 8, threads: int = 4) -> float | None:
        """Bytes/s reading up to ``chunks`` of the most recent chunk files (disk_probe.py)."""
        with self._lock:
            keys = self._index.keys()[-chunks:]
        return probe_read_rate(self._read, keys, self._payload_len, threads)

    def count_skipped_slow(self) -> None:
        """A held chunk not offered: recomputing it was expected to be faster."""
        self._counters.add(skipped_slow=1)

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
        for _mtime, key, _size in scan.found:
            self._index.add(key)
