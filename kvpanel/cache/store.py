"""Tiered store: the facade the vLLM integration talks to.

Primitives:
- ``LookupState``: HIT (READY in CPU), PENDING (being promoted from disk), MISS.
- ``TieredStore``: a ``CpuTier`` plus an optional ``DiskTier``; CPU commits are written
  through to disk in the background, disk hits are promoted into CPU slots in the background.

Lock order: store lock -> tier locks. Tiers never call back into the store while holding
their own locks, and disk write completions only touch the CPU tier.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from enum import Enum
from pathlib import Path

import torch

from kvpanel.cache.cpu_tier import CpuTier, Reservation
from kvpanel.cache.disk_tier import DiskTier
from kvpanel.cache.keys import ChunkKey, Fingerprint
from kvpanel.cache.stats import TierStats, TransferTotals

TIERS = ("cpu", "disk")


class LookupState(Enum):
    HIT = "hit"
    MISS = "miss"
    PENDING = "pending"


class TieredStore:
    def __init__(
        self,
        fp: Fingerprint,
        *,
        cpu_bytes: int,
        disk_path: str | Path | None = None,
        disk_bytes: int = 0,
        pin_memory: bool = False,
        promote_workers: int = 1,
    ) -> None:
        self.fingerprint = fp
        self.cpu = CpuTier(cpu_bytes, fp.chunk_bytes, pin=pin_memory)
        # No disk tier without a size: opening one with capacity 0 would evict (delete) every
        # chunk a previous run left there, and a size-less path is more likely a slip.
        self.disk: DiskTier | None = None
        if disk_path is not None and disk_bytes > 0:
            self.disk = DiskTier(disk_path, fp, disk_bytes)
        self._transfers = TransferTotals()
        self._lock = threading.Lock()
        self._pending: dict[ChunkKey, Future[None]] = {}
        self._promoter = ThreadPoolExecutor(
            max_workers=max(1, promote_workers), thread_name_prefix="kvpanel-promote"
        )
        self._closed = False

    # ----- lookups ----------------------------------------------------------------------------

    def lookup(self, key: ChunkKey) -> LookupState:
        with self._lock:
            if key in self._pending:
                return LookupState.PENDING  # counted when the promotion started
            if self.cpu.lookup(key):
                return LookupState.HIT
            if self.disk is None or self._closed or not self.disk.lookup(key):
                return LookupState.MISS
            # Reserve here, not in the worker, so "no CPU room" is a MISS right away instead of
            # a PENDING that fails later and is retried on every poll.
            res = self.cpu.reserve([key])
            if res is None or not res.keys:
                return LookupState.MISS
            self._pending[key] = self._promoter.submit(self._promote, key, res.slots[0])
            return LookupState.PENDING

    def has_pending(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def _promote(self, key: ChunkKey, slot: int) -> None:
        ok = False
        try:
            assert self.disk is not None
            ok = self.disk.read_into(key, self.cpu.view(slot))
        finally:
            self.cpu.commit([key], success=ok)
            with self._lock:
                self._pending.pop(key, None)

    # ----- CPU slots (delegated) --------------------------------------------------------------

    def reserve(self, keys: Sequence[ChunkKey]) -> Reservation | None:
        return self.cpu.reserve(keys)

    def acquire(self, keys: Sequence[ChunkKey]) -> list[int]:
        return self.cpu.acquire(keys)

    def release(self, keys: Iterable[ChunkKey]) -> None:
        self.cpu.release(keys)

    def view(self, slot: int) -> torch.Tensor:
        return self.cpu.view(slot)

    def touch(self, keys: Iterable[ChunkKey]) -> None:
        self.cpu.touch(keys)

    def record_transfer(self, nbytes: int, seconds: float, *, load: bool) -> None:
        """Account one finished GPU<->CPU copy (called by the engine's worker)."""
        self._transfers.add(nbytes, seconds, load=load)

    def transfers(self) -> TransferTotals:
        return self._transfers.copy()

    def commit(self, keys: Iterable[ChunkKey], success: bool = True) -> None:
        """Publish reserved chunks in CPU and write them through to disk in the background."""
        disk = self.disk
        write_through = disk is not None and success and not self._closed
        ready = self.cpu.commit(keys, success, keep_pinned=write_through)
        if not write_through or disk is None:
            return
        for key, slot in ready.items():
            # The slot stays pinned (not evictable, not reused) until its bytes are on disk.
            if not disk.put_async(key, self.cpu.view(slot), self._unpin_callback(key)):
                self.cpu.release([key])

    def _unpin_callback(self, key: ChunkKey) -> Callable[[bool], None]:
        def on_done(_ok: bool) -> None:
            self.cpu.release([key])

        return on_done

    # ----- management -------------------------------------------------------------------------

    def resize(self, tier: str, capacity_bytes: int) -> list[ChunkKey]:
        if tier == "cpu":
            return self.cpu.resize(capacity_bytes)
        if tier == "disk":
            if self.disk is None:
                if capacity_bytes == 0:
                    return []
                raise ValueError("no disk tier configured (TieredStore was built without a path)")
            return self.disk.resize(capacity_bytes)
        raise ValueError(f"unknown tier {tier!r}, expected one of {TIERS}")

    def clear(self, tier: str) -> list[ChunkKey]:
        if tier == "cpu":
            return self.cpu.clear()
        if tier == "disk":
            return self.disk.clear() if self.disk is not None else []
        raise ValueError(f"unknown tier {tier!r}, expected one of {TIERS}")

    def stats(self) -> dict[str, TierStats]:
        disk = (
            self.disk.stats()
            if self.disk is not None
            else TierStats("disk", 0, 0, 0, 0, 0, 0, 0, 0, 0, note="disabled")
        )
        return {"cpu": self.cpu.stats(), "disk": disk}

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for in-flight promotions and queued disk writes; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.has_pending():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        if self.disk is None:
            return True
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self.disk.flush(left)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._promoter.shutdown(wait=True)
        if self.disk is not None:
            self.disk.close()  # drains queued writes, whose callbacks unpin CPU slots

    def __enter__(self) -> TieredStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
