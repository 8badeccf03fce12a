"""What the Redis tier believes Redis holds, for answering lookups without a round trip.

Primitives:
- ``PresenceIndex``: a bounded set of chunk keys seen in Redis: written or read by this process,
  or listed by a SCAN of the fingerprint's names (``scan_keys``). Thread-safe.

The index only decides whether a lookup is worth a GET while Redis is slower than the lookup
budget; the GET itself still decides the answer. So a stale entry (evicted, expired, deleted by
another server) costs one GET that ends as a miss and removes the entry, and a missing entry (a
key another server wrote after the last SCAN) costs a recompute: neither can serve wrong KV.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from kvpanel.cache import remote_format as fmt
from kvpanel.cache.keys import ChunkKey
from kvpanel.cache.remote_client import Client


class PresenceIndex:
    def __init__(self, max_keys: int) -> None:
        self._max = max(1, max_keys)
        self._keys: OrderedDict[ChunkKey, None] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._keys

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    def add(self, keys: Iterable[ChunkKey]) -> None:
        with self._lock:
            for key in keys:
                self._keys[key] = None
                self._keys.move_to_end(key)
            while len(self._keys) > self._max:
                self._keys.popitem(last=False)  # the least recently seen

    def discard(self, key: ChunkKey) -> None:
        with self._lock:
            self._keys.pop(key, None)


def scan_keys(client: Client, fp_hex: str, count: int = 10_000) -> list[ChunkKey]:
    """The chunk keys under this fingerprint's names (SCAN: a few round trips per
    ``count`` keys of the whole database, never a blocking KEYS)."""
    return [ChunkKey(k) for k in fmt.chunk_keys(fmt.scan_names(client, fp_hex, count), fp_hex)]
