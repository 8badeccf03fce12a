"""KV events for the CPU tier under vLLM's own block keys, for KV-aware routers.

kvpanel keys chunks by its fingerprinted ``ChunkKey``; vLLM's events (and the routers reading
them: llm-d, Dynamo) speak vLLM's ``OffloadKey`` (block hash + KV group). So a chunk is
announced only when kvpanel knows the OffloadKey it was stored under: the chunks vLLM asked to
store, from ``complete_store``. Each announced chunk keeps its OffloadKey until its removal is
announced; no other removal is ever reported, so the map is bounded by the CPU tier's chunks.

What is not reported, because it cannot be reported truthfully:
- the disk and Redis tiers: files are shared with other processes and outlive this one, and
  Redis evicts on its own (maxmemory); their removals are not seen here;
- chunks promoted into CPU from disk or Redis: their OffloadKey is not recorded with them.

Order: the CPU tier calls ``on_readable`` under its own lock at each change, so the event log
is in the order of the changes (a removal never precedes the store it undoes).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from kvpanel.cache.cpu_tier import CpuTier
from kvpanel.cache.keys import ChunkKey
from kvpanel.vllm_ext.compat import CPU_MEDIUM, OffloadingEvent, OffloadKey


class CpuTierEvents:
    def __init__(self, cpu: CpuTier) -> None:
        self._cpu = cpu
        self._lock = threading.Lock()  # a leaf lock: taken under the tier lock, calls nothing
        self._committing: dict[ChunkKey, OffloadKey] = {}  # inside expect(...)/settle()
        self._announced: dict[ChunkKey, OffloadKey] = {}  # readable, store announced
        self._log: list[tuple[bool, OffloadKey]] = []  # (removed, key), in order
        cpu.readable_listener = self.on_readable

    def expect(self, chunks: Iterable[tuple[ChunkKey, OffloadKey]]) -> None:
        """Before committing vLLM's stores: the OffloadKeys they become readable under."""
        with self._lock:
            self._committing.update(chunks)

    def settle(self) -> None:
        """After the commit: keys that did not become readable (failed, cleared) are dropped."""
        with self._lock:
            self._committing.clear()

    def on_readable(self, key: ChunkKey, readable: bool) -> None:
        with self._lock:
            if readable:
                origin = self._committing.pop(key, None)
                if origin is not None and key not in self._announced:
                    self._announced[key] = origin
                    self._log.append((False, origin))
            else:
                origin = self._announced.pop(key, None)
                if origin is not None:
                    self._log.append((True, origin))

    def take(self) -> list[OffloadingEvent]:
        """The events since the last call, runs of one kind batched into one event."""
        with self._lock:
            log, self._log = self._log, []
        events: list[OffloadingEvent] = []
        for removed, key in log:
            if events and events[-1].removed == removed:
                events[-1].keys.append(key)
            else:
                events.append(OffloadingEvent(keys=[key], medium=CPU_MEDIUM, removed=removed))
        return events

    def close(self) -> None:
        if self._cpu.readable_listener == self.on_readable:
            self._cpu.readable_listener = None
