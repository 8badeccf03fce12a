"""Pins on the CPU-tier chunks a lookup answered HIT for, until the scheduler's step ends.

vLLM asks ``lookup`` and then, once it has allocated GPU blocks, ``prepare_load`` for the chunks
that hit, within one ``schedule()`` call. Between the two, other threads may take a chunk away
(a Redis fetch reserving room evicts the least recently used, the panel clears or shrinks the
tier): the load would then name a chunk that is gone, and vLLM's scheduler does not expect
``prepare_load`` to fail. A hold is a pin (``CpuTier.pin_ready``: no LRU or counter change)
taken at the hit and dropped when the step ends (``on_schedule_end``). A chunk cleared while
held stays readable to that step's ``acquire`` and goes at its last unpin.

Primitives: LookupHolds(cpu).hold(key) -> bool; release_all(); len(holds)
"""

from __future__ import annotations

import threading
import time

from kvpanel.cache.cpu_tier import CpuTier
from kvpanel.cache.keys import ChunkKey


class LookupHolds:
    __slots__ = ("_cpu", "_keys", "_lock", "_max_age_s", "_since")

    def __init__(self, cpu: CpuTier, max_age_s: float = 10.0) -> None:
        self._cpu = cpu
        self._keys: set[ChunkKey] = set()
        self._lock = threading.Lock()
        # A safety net for an engine that never ends a step (no vLLM version is known to):
        # holds older than this go at the next hold, so a tier can never fill with them.
        self._max_age_s = max_age_s
        self._since = 0.0

    def hold(self, key: ChunkKey) -> bool:
        """Pin ``key`` (once per step) if it is READY; False if it is gone."""
        with self._lock:
            now = time.monotonic()
            if self._keys and now - self._since > self._max_age_s:
                self._release()
            if key in self._keys:
                return True
            if self._cpu.pin_ready(key) is None:
                return False
            if not self._keys:
                self._since = now
            self._keys.add(key)
            return True

    def release_all(self) -> None:
        with self._lock:
            self._release()

    def _release(self) -> None:
        keys, self._keys = self._keys, set()
        self._cpu.release(keys)

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)
