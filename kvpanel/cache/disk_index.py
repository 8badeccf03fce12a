"""What one process knows of a shared disk cache directory: a cache of the directory.

Primitives:
- ``ChunkIndex``: the chunk files this process believes are there, oldest first (LRU), plus a
  short negative cache of keys just found absent, so a lookup that misses checks the directory
  at most once per ``negative_ttl_s`` per key (engines poll the same keys every step).

Other processes add and delete files behind this index's back: a key absent here may be on disk
(a miss asks the directory), and a key present here may be gone (a read then fails as a miss).
Not thread-safe: the owning tier guards it with its own lock.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from kvpanel.cache.keys import ChunkKey
from kvpanel.cache.lru import LruIndex

# Bounds the negative cache's memory under lookups of many distinct absent keys.
_MAX_ABSENT = 65536


class ChunkIndex:
    def __init__(self, negative_ttl_s: float) -> None:
        self._lru: LruIndex[ChunkKey] = LruIndex()
        self._absent: dict[ChunkKey, float] = {}  # key -> monotonic time its absence expires
        self._negative_ttl_s = negative_ttl_s
        # Keys added while a scan of the directory runs: the scan may have passed their shard
        # before their rename, and replacing the index with it must not forget them.
        self._added_during_scan: set[ChunkKey] | None = None

    def __contains__(self, key: object) -> bool:
        return key in self._lru

    def __len__(self) -> int:
        return len(self._lru)

    def keys(self) -> list[ChunkKey]:
        """Oldest first."""
        return list(self._lru.victims())

    def add(self, key: ChunkKey) -> None:
        """As most recently used."""
        self._absent.pop(key, None)
        self._lru.add(key)
        if self._added_during_scan is not None:
            self._added_during_scan.add(key)

    def touch(self, key: ChunkKey) -> None:
        self._lru.touch(key)

    def remove(self, key: ChunkKey) -> bool:
        present = key in self._lru
        self._lru.remove(key)
        if self._added_during_scan is not None:
            self._added_during_scan.discard(key)
        return present

    def pop_oldest(self) -> ChunkKey | None:
        key = self._lru.pop_oldest()
        if key is not None and self._added_during_scan is not None:
            self._added_during_scan.discard(key)
        return key

    def scan_started(self) -> None:
        self._added_during_scan = set()

    def replace(self, oldest_first: Iterable[ChunkKey]) -> None:
        """The directory as measured by the scan begun at ``scan_started`` (ordered by mtime,
        which reads refresh in every process), plus what was added here since, as newest."""
        recent = self._added_during_scan or set()
        self._added_during_scan = None
        self._lru.clear()
        self._absent.clear()
        for key in oldest_first:
            if key not in recent:
                self._lru.add(key)
        for key in recent:
            self._lru.add(key)

    def known_absent(self, key: ChunkKey) -> bool:
        until = self._absent.get(key)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._absent[key]
        return False

    def note_absent(self, key: ChunkKey) -> None:
        now = time.monotonic()
        if len(self._absent) >= _MAX_ABSENT:
            self._absent = {k: t for k, t in self._absent.items() if t > now}
            if len(self._absent) >= _MAX_ABSENT:
                self._absent.clear()
        self._absent[key] = now + self._negative_ttl_s
