"""CPU tier: a resizable pool of fixed-size slots in (optionally pinned) host memory.

Primitives:
- ``ChunkState``: WRITING (slot reserved, bytes being copied in) or READY (readable).
- ``Reservation``: the keys newly placed by ``reserve`` with their slot ids and evictions.
- ``CpuTier``: key -> slot map with pin counts, LRU eviction, grow/shrink by segments.

Memory is carved into segments (one uint8 tensor each) of whole slots. A slot id is
``segment_index * slots_per_segment + offset`` and stays valid while its entry lives. Indices
are never reused: a worker that mapped a segment by index (TP>1, ``host_pool``) keeps its bytes.
Shrinking retires whole segments: unpinned chunks in them are evicted at once; a segment that
still holds pinned slots (an in-flight load or store) is "retiring" until the last of them is
released, so nothing in flight ever loses its memory.

Entries that must go while pinned (evicted, cleared, or in a retiring segment) are "doomed":
invisible to lookups and dropped when their last pin goes.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

import torch

from kvpanel.cache.buffers import Payload, copy_into
from kvpanel.cache.host_pool import SEGMENT_BYTES, PrivateSegments, SegmentMemory, segment_slots
from kvpanel.cache.keys import ChunkKey
from kvpanel.cache.lru import LruIndex
from kvpanel.cache.stats import TierCounters, TierStats


class ChunkState(Enum):
    WRITING = "writing"
    READY = "ready"


class Reservation(NamedTuple):
    keys: list[ChunkKey]
    slots: list[int]
    evicted: list[ChunkKey]


@dataclass(slots=True)
class _Entry:
    slot: int
    state: ChunkState
    pins: int
    doomed: bool = False


@dataclass(slots=True)
class _Segment:
    index: int
    tensor: torch.Tensor
    n_slots: int
    held: int = 0  # slots of this segment owned by entries
    retiring: bool = False


class CpuTier:
    """Thread-safe; every public method takes the one lock, none blocks on I/O."""

    def __init__(
        self,
        capacity_bytes: int,
        slot_bytes: int,
        *,
        pin: bool = False,
        segment_bytes: int = SEGMENT_BYTES,
        memory: SegmentMemory | None = None,
    ) -> None:
        if slot_bytes <= 0:
            raise ValueError(f"slot_bytes must be positive, got {slot_bytes}")
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self._slot_bytes = slot_bytes
        self._memory = memory if memory is not None else PrivateSegments(pin)
        self._slots_per_segment = segment_slots(slot_bytes, segment_bytes)
        self._next_index = 0
        self._lock = threading.Lock()
        self._resize_lock = threading.Lock()  # serializes resize(); never taken under _lock
        self._entries: dict[ChunkKey, _Entry] = {}
        self._lru: LruIndex[ChunkKey] = LruIndex()  # READY, not doomed
        self._segments: dict[int, _Segment] = {}
        self._free: list[int] = []  # min-heap: fill low segments first so high ones shrink cheaply
        self._live_slots = 0  # slots in non-retiring segments == capacity in slots
        self._allocated_bytes = 0
        self._counters = TierCounters("cpu")
        # Told (key, readable) each time a chunk becomes readable or stops being readable, under
        # the tier lock so calls come in the order of the changes (KV events must never announce
        # a removal before the store it undoes). Must be cheap and must not call the tier.
        self.readable_listener: Callable[[ChunkKey, bool], None] | None = None
        self._grow_to(capacity_bytes // slot_bytes)

    # ----- properties -------------------------------------------------------------------------

    @property
    def slot_bytes(self) -> int:
        return self._slot_bytes

    @property
    def memory(self) -> SegmentMemory:
        return self._memory

    @property
    def capacity_bytes(self) -> int:
        return self._live_slots * self._slot_bytes

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return len(self._entries) * self._slot_bytes

    @property
    def allocated_bytes(self) -> int:
        with self._lock:
            return self._allocated_bytes

    # ----- queries ----------------------------------------------------------------------------

    def contains(self, key: ChunkKey) -> bool:
        with self._lock:
            return self._visible_ready(key) is not None

    def lookup(self, key: ChunkKey, count: bool = True) -> bool:
        """READY? Touches the LRU; ``count=False`` for repeated polls of one request."""
        with self._lock:
            hit = self._visible_ready(key) is not None
            if hit:
                self._lru.touch(key)
        if count:
            self._counters.add(hits=int(hit), misses=int(not hit))
        return hit

    def touch(self, keys: Iterable[ChunkKey]) -> None:
        """Mark READY chunks as recently used (no hit/miss counted); absent keys are ignored."""
        with self._lock:
            for key in keys:
                if self._visible_ready(key) is not None:
                    self._lru.touch(key)

    def keys(self) -> list[ChunkKey]:
        with self._lock:
            return list(self._lru.victims())

    def view(self, slot_id: int) -> torch.Tensor:
        """The slot's bytes as a 1-D uint8 tensor (shares memory with the pool)."""
        seg_index, offset = divmod(slot_id, self._slots_per_segment)
        with self._lock:
            seg = self._segments.get(seg_index)
            if seg is None or offset >= seg.n_slots:
                raise KeyError(f"no such slot {slot_id}")
            start = offset * self._slot_bytes
            return seg.tensor[start : start + self._slot_bytes]

    def stats(self) -> TierStats:
        with self._lock:
            capacity = self._live_slots * self._slot_bytes
            used = len(self._entries) * self._slot_bytes
            chunks = len(self._lru)
        return self._counters.snapshot(
            capacity, used, chunks, note="disabled" if capacity == 0 else ""
        )

    # ----- store path -------------------------------------------------------------------------

    def reserve(self, keys: Sequence[ChunkKey]) -> Reservation | None:
        """Place every key not yet present (WRITING, pinned), or nothing at all (None)."""
        with self._lock:
            new = [k for k in dict.fromkeys(keys) if k not in self._entries]
            if not new:
                return Reservation([], [], [])
            requested = set(keys)
            shortfall = len(new) - len(self._free)
            if shortfall > 0:
                # Count first so a failed reservation evicts nothing.
                evictable = sum(
                    1
                    for k in self._lru.victims()
                    if self._entries[k].pins == 0 and k not in requested
                )
                if evictable < shortfall:
                    return None
            evicted: list[ChunkKey] = []
            while len(self._free) < len(new):
                victim = self._lru.pop_oldest(
                    skip=lambda k: self._entries[k].pins > 0 or k in requested
                )
                assert victim is not None  # guaranteed by the count above
                self._drop(victim)
                if self.readable_listener is not None:
                    self.readable_listener(victim, False)
                evicted.append(victim)
            slots = [heapq.heappop(self._free) for _ in new]
            for key, slot in zip(new, slots, strict=True):
                self._entries[key] = _Entry(slot, ChunkState.WRITING, pins=1)
                self._segment_of(slot).held += 1
        if evicted:
            self._counters.add(evictions=len(evicted))
        return Reservation(new, slots, evicted)

    def commit(self, keys: Iterable[ChunkKey], success: bool = True) -> dict[ChunkKey, int]:
        """Finish reserved writes: READY (success) or dropped (failure).

        Returns ``{key: slot}`` of the entries that became READY (and unpinned).
        """
        ready: dict[ChunkKey, int] = {}
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is None or entry.state is not ChunkState.WRITING:
                    continue
                if success and not entry.doomed:
                    entry.state = ChunkState.READY
                    entry.pins -= 1
                    self._lru.add(key)
                    ready[key] = entry.slot
                    if self.readable_listener is not None:
                        self.readable_listener(key, True)
                else:
                    entry.pins -= 1
                    entry.doomed = True
                    if entry.pins == 0:
                        self._drop(key)
        if ready:
            self._counters.add(bytes_in=len(ready) * self._slot_bytes)
        return ready

    def insert(self, key: ChunkKey, data: Payload) -> bool:
        """Reserve, copy and commit one chunk; False if there is no room."""
        res = self.reserve([key])
        if res is None:
            return False
        if not res.keys:
            return self.contains(key)
        try:
            copy_into(self.view(res.slots[0]), data)
        except BaseException:
            self.commit([key], success=False)
            raise
        self.commit([key])
        return True

    # ----- load path --------------------------------------------------------------------------

    def acquire(self, keys: Sequence[ChunkKey]) -> list[int]:
        """Pin READY entries for reading; all or nothing (KeyError names the first missing).
        A doomed entry that is still pinned (held since its lookup) is read too: its slot is
        not reused before its last unpin."""
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is None or entry.state is not ChunkState.READY:
                    raise KeyError(key.hex())
            slots = []
            for key in keys:
                entry = self._entries[key]
                entry.pins += 1
                if not entry.doomed:
                    self._lru.touch(key)
                slots.append(entry.slot)
        self._counters.add(bytes_out=len(slots) * self._slot_bytes)
        return slots

    def pin_ready(self, key: ChunkKey) -> int | None:
        """Pin a READY entry for a write-behind read: its slot, or None if it is gone. Unlike
        ``acquire`` this is not a use: the LRU order and the load counters stay as they are."""
        with self._lock:
            entry = self._visible_ready(key)
            if entry is None:
                return None
            entry.pins += 1
            return entry.slot

    def release(self, keys: Iterable[ChunkKey]) -> None:
        """Unpin (after a load, or after a write-behind read of ``pin_ready``)."""
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is None or entry.pins == 0:
                    raise KeyError(f"release of unpinned chunk {key.hex()}")
                entry.pins -= 1
                if entry.pins == 0 and entry.doomed:
                    self._drop(key)

    # ----- eviction and sizing ----------------------------------------------------------------

    def evict(self, key: ChunkKey) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.doomed:
                return False
            self._doom_or_drop(key, entry)
        self._counters.add(evictions=1)
        return True

    def clear(self) -> list[ChunkKey]:
        """Drop everything; pinned chunks vanish now and free their slots on release.

        Not counted as evictions: those measure capacity pressure, and an operator's clear is
        none (the status marks the clear with cleared_at instead)."""
        with self._lock:
            gone = [k for k, e in list(self._entries.items()) if not e.doomed]
            for key in gone:
                self._doom_or_drop(key, self._entries[key])
        return gone

    def resize(self, capacity_bytes: int) -> list[ChunkKey]:
        """Grow or shrink to ``capacity_bytes // slot_bytes`` slots; returns evicted keys."""
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        target = capacity_bytes // self._slot_bytes
        with self._resize_lock:
            with self._lock:
                evicted = self._shrink_to(target) if target < self._live_slots else []
            # Allocate outside the main lock: pinned allocation of GBs can take a while.
            self._grow_to(target)
        self._counters.add(evictions=len(evicted))
        return evicted

    def close(self) -> None:
        """Release shared segment files (other processes' mappings stay valid)."""
        self._memory.close()

    # ----- internals (caller holds the lock, except _grow_to) ---------------------------------

    def _visible_ready(self, key: ChunkKey) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None or entry.doomed or entry.state is not ChunkState.READY:
            return None
        return entry

    def _segment_of(self, slot: int) -> _Segment:
        return self._segments[slot // self._slots_per_segment]

    def _doom_or_drop(self, key: ChunkKey, entry: _Entry) -> None:
        readable = entry.state is ChunkState.READY and not entry.doomed
        if readable and self.readable_listener is not None:
            self.readable_listener(key, False)
        self._lru.remove(key)
        if entry.pins > 0:
            entry.doomed = True
        else:
            self._drop(key)

    def _drop(self, key: ChunkKey) -> None:
        """Forget an unpinned entry and give its slot back (or let its retiring segment go)."""
        entry = self._entries.pop(key)
        self._lru.remove(key)
        seg = self._segment_of(entry.slot)
        seg.held -= 1
        if not seg.retiring:
            heapq.heappush(self._free, entry.slot)
        elif seg.held == 0:
            self._free_segment(seg)

    def _free_segment(self, seg: _Segment) -> None:
        del self._segments[seg.index]
        self._memory.free(seg.index)
        self._allocated_bytes -= seg.n_slots * self._slot_bytes

    def _shrink_to(self, target: int) -> list[ChunkKey]:
        # Retire the emptiest (then highest) segments until at most `target` slots remain;
        # _grow_to then tops up with a smaller segment if that undershot.
        live = [s for s in self._segments.values() if not s.retiring]
        live.sort(key=lambda s: (s.held, -s.index))
        retired: list[_Segment] = []
        for seg in live:
            if self._live_slots <= target:
                break
            seg.retiring = True
            self._live_slots -= seg.n_slots
            retired.append(seg)
        retired_ids = {s.index for s in retired}
        self._free = [
            slot for slot in self._free if slot // self._slots_per_segment not in retired_ids
        ]
        heapq.heapify(self._free)
        evicted: list[ChunkKey] = []
        for key, entry in list(self._entries.items()):
            if entry.slot // self._slots_per_segment in retired_ids:
                if not entry.doomed:
                    evicted.append(key)
                self._doom_or_drop(key, entry)
        for seg in retired:
            if seg.held == 0 and seg.index in self._segments:
                self._free_segment(seg)
        return evicted

    def _grow_to(self, target: int) -> None:
        # Only called under _resize_lock (or from __init__), so no concurrent grow/shrink.
        while True:
            with self._lock:
                missing = target - self._live_slots
                if missing <= 0:
                    return
                index = self._next_index
                self._next_index += 1
            n_slots = min(missing, self._slots_per_segment)
            tensor = self._memory.allocate(index, n_slots * self._slot_bytes)
            with self._lock:
                self._segments[index] = _Segment(index, tensor, n_slots)
                self._live_slots += n_slots
                self._allocated_bytes += n_slots * self._slot_bytes
                base = index * self._slots_per_segment
                for slot in range(base, base + n_slots):
                    heapq.heappush(self._free, slot)
