"""Where a worker finds the CPU-tier slot bytes it copies KV to and from.

Primitives:
    SlotSource  - shard(slot_id) -> this rank's bytes of the slot; shard_bytes; record_transfer;
                  report_engine_kv_bytes; publish (each engine step, throttled)
    StoreSlots  - one rank: the scheduler's TieredStore, in this same process
    PoolSlots   - several ranks: the store's segments mapped from the host pool (cache.host_pool);
                  rank r's shard of a slot is bytes [r * shard, (r + 1) * shard)
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

import torch

from kvpanel.cache.host_pool import write_rank_report
from kvpanel.cache.host_pool_map import SegmentMapper
from kvpanel.cache.stats import TransferTotals
from kvpanel.cache.store import TieredStore
from kvpanel.vllm_ext import runtime
from kvpanel.vllm_ext.control import report_engine_kv_bytes

_REPORT_S = 0.25


class SlotSource(Protocol):
    @property
    def shard_bytes(self) -> int: ...

    def shard(self, slot_id: int) -> torch.Tensor: ...

    def record_transfer(self, nbytes: int, seconds: float, load: bool, host_s: float) -> None: ...

    def report_engine_kv_bytes(self, nbytes: int) -> None: ...

    def publish(self) -> None: ...


class StoreSlots:
    def __init__(self, store: TieredStore, engine_id: str) -> None:
        self.store = store
        self.engine_id = engine_id
        self._checked = False

    @property
    def shard_bytes(self) -> int:
        return self.store.cpu.slot_bytes

    def shard(self, slot_id: int) -> torch.Tensor:
        if not self._checked:  # the scheduler exists by the first transfer
            runtime.check_same_process(self.engine_id)
            self._checked = True
        return self.store.view(slot_id)

    def record_transfer(self, nbytes: int, seconds: float, load: bool, host_s: float) -> None:
        self.store.record_transfer(nbytes, seconds, load=load, host_seconds=host_s)

    def report_engine_kv_bytes(self, nbytes: int) -> None:
        report_engine_kv_bytes(nbytes)  # the control server runs in this process

    def publish(self) -> None:
        pass  # the store has the totals already


class PoolSlots:
    """This rank's shards of the slots the scheduler's store placed in the shared host pool.

    The scheduler's store is in another process: this rank's copy totals and KV memory reach
    it as a report file in the pool, rewritten after finished copies at most every
    ``_REPORT_S`` (the engine steps every few ms under load; the status polls once a second).
    A report held back by that limit is written by a timer: the engine may not step again
    (its last request done), and the last copies must still reach the status."""

    def __init__(self, mapper: SegmentMapper, rank: int, ranks: int, slot_bytes: int) -> None:
        if slot_bytes % ranks:
            raise ValueError(f"a slot of {slot_bytes} bytes does not split into {ranks} shards")
        self.mapper = mapper
        self.rank = rank
        self._slot_bytes = slot_bytes
        self._shard = slot_bytes // ranks
        self._checked = False
        self._lock = threading.Lock()  # the engine's thread and the report timer
        self._totals = TransferTotals()
        self._kv_bytes = 0
        self._unreported = False
        self._next_report = 0.0
        self._timer: threading.Timer | None = None

    @property
    def shard_bytes(self) -> int:
        return self._shard

    def shard(self, slot_id: int) -> torch.Tensor:
        if not self._checked:  # the pool exists by the first transfer
            if self.mapper.slot_bytes != self._slot_bytes:
                raise RuntimeError(
                    f"kvpanel's host pool has {self.mapper.slot_bytes}-byte slots, this worker "
                    f"expects {self._slot_bytes}: it belongs to another engine"
                )
            self._checked = True
        start = self.rank * self._shard
        return self.mapper.slot(slot_id)[start : start + self._shard]

    def record_transfer(self, nbytes: int, seconds: float, load: bool, host_s: float) -> None:
        with self._lock:
            self._totals.add(nbytes, seconds, load=load, host_seconds=host_s)
            self._unreported = True

    def report_engine_kv_bytes(self, nbytes: int) -> None:
        with self._lock:
            self._kv_bytes = nbytes  # told at the first publish: the pool may not exist yet
            self._unreported = True

    def publish(self) -> None:
        with self._lock:
            if not self._unreported:
                return
            wait = self._next_report - time.monotonic()
            if wait > 0:
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._publish_held)
                    self._timer.daemon = True
                    self._timer.start()
                return
            self._write()

    def _publish_held(self) -> None:
        with self._lock:
            self._timer = None
            if self._unreported:
                self._write()

    def _write(self) -> None:
        # Called with the lock held.
        self._unreported, self._next_report = False, time.monotonic() + _REPORT_S
        report = {"engine_kv_bytes": self._kv_bytes, "transfers": self._totals.to_dict()}
        write_rank_report(self.mapper.directory, self.rank, report)
