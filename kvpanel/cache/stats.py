"""Per-tier statistics.

Primitives:
- ``TierStats``: immutable snapshot of one tier (capacity, use, hit/miss, traffic, health).
- ``TierCounters``: the mutable counters a tier bumps, snapshotted into ``TierStats``.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TierStats:
    name: str
    capacity_bytes: int
    used_bytes: int
    chunks: int
    hits: int
    misses: int
    bytes_in: int
    bytes_out: int
    evictions: int
    errors: int
    healthy: bool = True
    note: str = ""  # e.g. "full", "disabled"
    dropped: int = 0  # chunks evicted from CPU before their write-behind reached this tier
    queued_bytes: int = 0  # committed to CPU, waiting for their write to this tier
    skipped_slow: int = 0  # held chunks not offered: the engine would recompute them sooner
    write_bytes_per_s: float | None = None  # write-behind speed while writing (disk, remote)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TierCounters:
    """Monotonic counters; own lock so a panel thread can snapshot while the tier works."""

    __slots__ = (
        "name",
        "hits",
        "misses",
        "bytes_in",
        "bytes_out",
        "evictions",
        "errors",
        "dropped",
        "skipped_slow",
        "_lock",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits = 0
        self.misses = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.evictions = 0
        self.errors = 0
        self.dropped = 0
        self.skipped_slow = 0
        self._lock = threading.Lock()

    def add(
        self,
        *,
        hits: int = 0,
        misses: int = 0,
        bytes_in: int = 0,
        bytes_out: int = 0,
        evictions: int = 0,
        errors: int = 0,
        dropped: int = 0,
        skipped_slow: int = 0,
    ) -> None:
        with self._lock:
            self.hits += hits
            self.misses += misses
            self.bytes_in += bytes_in
            self.bytes_out += bytes_out
            self.evictions += evictions
            self.errors += errors
            self.dropped += dropped
            self.skipped_slow += skipped_slow

    def snapshot(
        self, capacity: int, used: int, chunks: int, *, healthy: bool = True, note: str = ""
    ) -> TierStats:
        with self._lock:
            return TierStats(
                name=self.name,
                capacity_bytes=capacity,
                used_bytes=used,
                chunks=chunks,
                hits=self.hits,
                misses=self.misses,
                bytes_in=self.bytes_in,
                bytes_out=self.bytes_out,
                evictions=self.evictions,
                errors=self.errors,
                healthy=healthy,
                note=note,
                dropped=self.dropped,
                skipped_slow=self.skipped_slow,
            )


class TransferTotals:
    """Cumulative GPU<->CPU copy traffic per direction (thread-safe): bytes, busy seconds on
    the GPU, and host seconds spent enqueueing the copies (when the host time nears the GPU
    time, the copy engine waits for the host, not the link)."""

    FIELDS = (
        "load_bytes",
        "load_seconds",
        "load_host_seconds",
        "store_bytes",
        "store_seconds",
        "store_host_seconds",
    )
    __slots__ = ("_lock", *FIELDS)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.load_bytes = 0
        self.load_seconds = 0.0
        self.load_host_seconds = 0.0
        self.store_bytes = 0
        self.store_seconds = 0.0
        self.store_host_seconds = 0.0

    def add(self, nbytes: int, seconds: float, *, load: bool, host_seconds: float = 0.0) -> None:
        with self._lock:
            if load:
                self.load_bytes += nbytes
                self.load_seconds += seconds
                self.load_host_seconds += host_seconds
            else:
                self.store_bytes += nbytes
                self.store_seconds += seconds
                self.store_host_seconds += host_seconds

    def copy(self) -> TransferTotals:
        out = TransferTotals()
        with self._lock:
            for name in self.FIELDS:
                setattr(out, name, getattr(self, name))
        return out

    def to_dict(self) -> dict[str, float]:
        with self._lock:
            return {name: getattr(self, name) for name in self.FIELDS}

    def merge(self, other: object) -> None:
        """Add another worker's ``to_dict()`` (fields that are not numbers are skipped)."""
        if not isinstance(other, dict):
            return
        with self._lock:
            for name in self.FIELDS:
                value = other.get(name)
                if isinstance(value, int | float) and value >= 0:
                    setattr(self, name, getattr(self, name) + value)
