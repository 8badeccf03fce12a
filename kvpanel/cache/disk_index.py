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

    def touch(self, key: ChunkKey) -> None:
        self._lru.touch(key)

    def remove(self, key: ChunkKey) -> bool:
        present = key in self._lru
        self._lru.remove(key)
        return present

    def pop_oldest(self) -> ChunkKey | None:
        return self._lru.pop_oldest()

    def replace(self, oldest_first: Iterable[ChunkKey]) -> None:
        """The directory as just measured (by mtime, which reads refresh in every process)."""
        self._lru.clear()
        self._absent.clear()
        for key in oldest_first:
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
