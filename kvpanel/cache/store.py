"""Tiered store: the facade the vLLM integration talks to.

Primitives:
- ``LookupState``: HIT (READY in CPU), PENDING (being promoted from disk or Redis), MISS.
- ``TieredStore``: a ``CpuTier`` plus an optional ``DiskTier`` and an optional ``RemoteTier``
  (Redis, ``remote_url``); CPU commits are written behind to both (``write_behind``: nothing is
  lost while the chunk is still in CPU), and lookups go CPU -> disk -> remote, promoting hits
  into CPU slots in the background.

A disk promotion running past ``promote_timeout_s`` (a read that hangs, e.g. on a dead NFS
server) is given up on: its key answers MISS, a replacement worker promotes the other keys, and
its CPU slot stays reserved (WRITING, never readable) until the read returns.

Remote lookups never do I/O on the caller's (scheduler's) thread: a key the remote tier may
have is answered PENDING while fetch threads GET it (``BatchFetcher``: several keys per
pipeline); absent or invalid values end as a MISS on a later poll (the remote tier remembers
them briefly), valid ones as a CPU HIT. A CPU slot is reserved only once the bytes are in hand,
so a cold prompt evicts nothing. While Redis answers slower than its lookup budget, the tier
says "may have" only for keys it knows are there, so a cold prompt is a MISS at once instead of
waiting a slow round trip to learn that.

``secret`` (bytes shared by trusted servers): disk and Redis chunks carry a keyed MAC and live
in a namespace of that secret (``kvpanel.cache.secret``); without it they are checked, not
authenticated.

Lock order: store lock -> tier locks. Tiers never call back into the store while holding
their own locks, and write completions only touch the CPU tier.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kvpanel.cache.cpu_tier import CpuTier, Reservation
from kvpanel.cache.disk_tier import DiskTier
from kvpanel.cache.host_pool import SharedSegments, segment_slots
from kvpanel.cache.keys import ChunkKey, Fingerprint
from kvpanel.cache.load_planner import LoadPlanner, RequestPlan
from kvpanel.cache.lookup_holds import LookupHolds
from kvpanel.cache.promoter import Promotion, PromotionPool
from kvpanel.cache.remote_fetch import BatchFetcher, fetch_into_cpu
from kvpanel.cache.secret import CacheSecret
from kvpanel.cache.stats import TierStats, TransferTotals
from kvpanel.cache.write_behind import WriteBehind, WriteTarget
from kvpanel.settings import TIERS

if TYPE_CHECKING:  # imported when used: redis-py is only needed with a remote_url
    from kvpanel.cache.remote_tier import RemoteTier

log = logging.getLogger("kvpanel")

# The load planner's measurements, next to the disk tier's chunk files, for the next process.
_PLANNER_NOTE = "planner.json"

# Bytes of values one fetch pipeline asks for: small or absent chunks share a round trip, chunks
# of 4 MiB and more go one per pipeline and spread over the connections (benchmarks/
# redis_bench.py, 6 MiB values, 4 connections: 4 values per pipeline moved 0.25 GB/s, one per
# call 0.65 GB/s in the same run).
_REMOTE_BATCH_BYTES = 8 << 20


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
        promote_workers: int = 4,
        promote_timeout_s: float = 10.0,
        remote_url: str | None = None,
        remote_workers: int = 4,
        remote_options: Mapping[str, Any] | None = None,
        secret: bytes | None = None,
        disk_writers: int = 4,
        remote_writers: int = 4,
        host_pool: Path | None = None,
    ) -> None:
        self.fingerprint = fp
        keyed = CacheSecret(secret) if secret else None
        if keyed is not None and (disk_bytes > 0 or remote_url):
            log.info("kvpanel store: disk and Redis chunks are keyed with the cache secret")
        # No disk tier without a size: opening one with capacity 0 would evict (delete) every
        # chunk a previous run left there, and a size-less path is more likely a slip.
        self.disk: DiskTier | None = None
        if disk_path is not None and disk_bytes > 0:
            self.disk = DiskTier(disk_path, fp, disk_bytes, secret=keyed)
        self._transfers = TransferTotals()
        self.planner = LoadPlanner(fp.chunk_bytes, fp.chunk_tokens)
        self._lock = threading.Lock()
        # key -> its disk promotion, or None while the remote fetch threads have it.
        self._pending: dict[ChunkKey, Promotion | None] = {}
        self._promoting = 0  # Promotion entries in _pending: the disk's read backlog, in chunks
        self._given_up: set[ChunkKey] = set()  # promotions past their deadline, still running
        self._promote_timeout_s = promote_timeout_s
        # Reads given up on and not yet returned, past which the disk counts as stalled: one stuck
        # file must not turn the tier off, a dead mount must not pin a CPU slot per lookup.
        self._stalled_after = max(4, 2 * promote_workers)
        self._next_sweep = 0.0
        self._promoter = PromotionPool(promote_workers, name="kvpanel-promote")
        # Redis errors never raise from here (an unreachable Redis is an unhealthy tier); a
        # malformed URL does, as a ValueError, since that is a configuration mistake.
        self.remote: RemoteTier | None = None
        self._fetcher: BatchFetcher | None = None
        if remote_url:
            from kvpanel.cache.remote_tier import RemoteTier

            self.remote = RemoteTier(remote_url, fp, secret=keyed, **dict(remote_options or {}))
            # Own threads: a slow Redis must not hold up disk promotions. A batch is bounded
            # in bytes (values are held in memory until copied into their slots).
            remote = self.remote
            self._fetcher = BatchFetcher(
                remote_workers,
                max(1, _REMOTE_BATCH_BYTES // max(1, fp.chunk_bytes)),
                lambda keys: fetch_into_cpu(remote, self.cpu, keys, self._forget_pending),
                self._forget_pending,
            )
        # host_pool (TP>1): CPU slots in shared files that every rank's worker process maps.
        # Made after the tiers that may refuse their config, and removed if it fails itself:
        # a failed start leaves no pool behind in /dev/shm.
        memory = None
        if host_pool is not None:
            memory = SharedSegments(host_pool, fp.chunk_bytes, segment_slots(fp.chunk_bytes))
        try:
            self.cpu = CpuTier(cpu_bytes, fp.chunk_bytes, pin=pin_memory, memory=memory)
        except BaseException:
            if memory is not None:
                memory.close()
            raise
        self.holds = LookupHolds(self.cpu)
        targets: list[tuple[WriteTarget, int]] = []
        if self.disk is not None:
            targets.append((self.disk, disk_writers))
        if self.remote is not None:
            targets.append((self.remote, remote_writers))
        self._write_behind = WriteBehind(self.cpu, targets)
        self._closed = False
        self.disk_probe: threading.Thread | None = None  # reads some chunk files once, at start
        if self.disk is not None:
            note = self.disk.read_note(_PLANNER_NOTE)
            if note is not None:
                self.planner.seed_from_json(note)
            self.disk_probe = threading.Thread(
                target=self._probe_disk, name="kvpanel-disk-probe", daemon=True
            )
            self.disk_probe.start()

    def _probe_disk(self) -> None:
        # The first requests after a restart arrive before any promotion could be timed.
        disk = self.disk
        rate = disk.probe_read_rate() if disk is not None else None
        if rate is not None:
            self.planner.reads["disk"].seed(rate)
            log.info("kvpanel disk tier: read probe %.2f GB/s", rate / 1e9)

    # ----- lookups ----------------------------------------------------------------------------

    def lookup(
        self,
        key: ChunkKey,
        count: bool = True,
        plan: RequestPlan | None = None,
        position: int = 0,
        hold: bool = False,
    ) -> LookupState:
        """HIT (in CPU), PENDING (being promoted from disk/Redis), or MISS. ``count=False``:
        answer without counting, for a caller that asks again about the same request.

        ``plan``, ``position``: the request's load-or-recompute decisions (the same object on
        every call for one request) and the chunk's index in its prompt: a chunk held in a tier
        at or past the position where the planner turned that tier down for this request is a
        MISS (``skipped_slow``). Without a plan every held chunk is offered. ``hold``: pin a
        CPU hit until ``holds.release_all()`` (the scheduler's step end; ``lookup_holds``)."""
        with self._lock:
            self._give_up_overdue()
            if key in self._given_up:
                return LookupState.MISS
            if key in self._pending:
                return LookupState.PENDING  # counted when the promotion started
            if self.cpu.lookup(key, count) and (not hold or self.holds.hold(key)):
                return LookupState.HIT
            if self._closed:
                return LookupState.MISS
            if (
                self.disk is not None
                and len(self._given_up) < self._stalled_after  # else a miss, no slot pinned
                and self.disk.contains(key)
            ):
                if not self._admitted("disk", plan, position):
                    if count:
                        self.disk.count_skipped_slow()
                    return LookupState.MISS
                self.disk.lookup(key, count)
                # Reserve here, not in the worker, so "no CPU room" is a MISS right away
                # instead of a PENDING that fails later and is retried on every poll.
                res = self.cpu.reserve([key])
                if res is None or not res.keys:
                    return LookupState.MISS
                slot = res.slots[0]
                self._pending[key] = self._promoter.submit(
                    lambda job: self._promote(job, key, slot)
                )
                self._promoting += 1
                return LookupState.PENDING
            if self.remote is None or self._fetcher is None or not self.remote.may_have(key, count):
                return LookupState.MISS
            self._pending[key] = None
            self._fetcher.submit(key)
            return LookupState.PENDING

    def _admitted(self, tier: str, plan: RequestPlan | None, position: int) -> bool:
        # Called with the store lock held.
        if plan is None:
            return True

        def admit() -> bool:
            backlog = self._promoting
            prefix_tokens = (position + 1) * self.fingerprint.chunk_tokens
            return self.planner.admit(tier, backlog * self.cpu.slot_bytes, prefix_tokens)

        return plan.decide(tier, position, admit)

    def has_pending(self) -> bool:
        """Work the engine should keep stepping for (promotions given up on are not)."""
        with self._lock:
            self._give_up_overdue()
            return bool(self._pending)

    def _give_up_overdue(self) -> None:
        # Called with the store lock held, on lookups and polls (at most every 50 ms): an
        # overdue promotion is noticed even if nobody asks about its key again.
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 0.05
        for key, job in list(self._pending.items()):
            if isinstance(job, Promotion) and job.overdue(self._promote_timeout_s, now):
                del self._pending[key]
                self._promoting -= 1
                self._given_up.add(key)
                self._promoter.give_up(job)
                if self.disk is not None:
                    self.disk.count_error()

    def _promote(self, job: Promotion, key: ChunkKey, slot: int) -> None:
        ok = False
        try:
            assert self.disk is not None
            if not job.given_up:  # given up on before it started: only release the slot
                meter = self.planner.reads["disk"]
                meter.start()
                try:
                    ok = self.disk.read_into(key, self.cpu.view(slot))
                finally:
                    meter.finish(self.cpu.slot_bytes if ok else 0)
        finally:
            # Also when given up on: the slot was reserved (WRITING, never served) until now.
            self.cpu.commit([key], success=ok)
            with self._lock:
                if isinstance(self._pending.pop(key, None), Promotion):
                    self._promoting -= 1
                self._given_up.discard(key)

    def _forget_pending(self, keys: list[ChunkKey]) -> None:
        with self._lock:
            for key in keys:
                if key in self._pending and self._pending[key] is None:
                    del self._pending[key]

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

    def record_transfer(
        self, nbytes: int, seconds: float, *, load: bool, host_seconds: float = 0.0
    ) -> None:
        """Account one finished GPU<->CPU copy (called by the engine's worker): ``seconds`` on
        the GPU, ``host_seconds`` spent enqueueing it."""
        self._transfers.add(nbytes, seconds, load=load, host_seconds=host_seconds)

    def transfers(self) -> TransferTotals:
        return self._transfers.copy()

    def commit(self, keys: Iterable[ChunkKey], success: bool = True) -> None:
        """Publish reserved chunks in CPU and queue them for disk and Redis."""
        ready = self.cpu.commit(keys, success)
        if ready and self._write_behind and not self._closed:
            self._write_behind.enqueue(list(ready))

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
        if tier == "remote":
            if self.remote is None and capacity_bytes == 0:
                return []
            raise ValueError("the remote tier's size is Redis's own (maxmemory); set it there")
        raise ValueError(f"unknown tier {tier!r}, expected one of {TIERS}")

    def clear(self, tier: str) -> list[ChunkKey]:
        if tier == "cpu":
            return self.cpu.clear()
        if tier == "disk":
            return self.disk.clear() if self.disk is not None else []
        if tier == "remote":
            return self.remote.clear() if self.remote is not None else []
        raise ValueError(f"unknown tier {tier!r}, expected one of {TIERS}")

    def stats(self) -> dict[str, TierStats]:
        disk = (
            self.disk.stats()
            if self.disk is not None
            else TierStats("disk", 0, 0, 0, 0, 0, 0, 0, 0, 0, note="disabled")
        )
        out = {"cpu": self.cpu.stats(), "disk": disk}
        if self.remote is not None:
            out["remote"] = self.remote.stats()
        wb = self._write_behind
        for name in set(out) & {"disk", "remote"}:
            queued, rate = wb.pending_bytes(name), wb.write_rate(name)
            out[name] = replace(out[name], queued_bytes=queued, write_bytes_per_s=rate)
        return out

    def flush(
        self, timeout: float | None = None, progress: Callable[[int], None] | None = None
    ) -> bool:
        """Wait for in-flight promotions and queued disk and Redis writes; False on timeout.
        ``progress(bytes_left)`` is called about twice a second while writes are left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.has_pending():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        flushed = self._write_behind.flush(left, progress)
        if flushed and self.disk is not None:  # a server may be stopped without close()
            self.disk.write_note(_PLANNER_NOTE, self.planner.to_json().encode())
        return flushed

    def pending_write_bytes(self) -> int:
        return self._write_behind.pending_bytes()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with self._lock:
            for job in self._pending.values():
                if isinstance(job, Promotion) and job.started is None:
                    self._promoter.give_up(job)  # queued: release the slot without reading
        # Not for promotions given up on, nor for a read hung past the promotion timeout.
        self._promoter.shutdown(wait=True, timeout_s=self._promote_timeout_s)
        if self._fetcher is not None:
            self._fetcher.shutdown()
        self._write_behind.close()  # writes what is queued, then the tiers can go
        if self.disk is not None:
            self.disk.write_note(_PLANNER_NOTE, self.planner.to_json().encode())
            self.disk.close()
        if self.remote is not None:
            self.remote.close()
        self.cpu.close()

    def __enter__(self) -> TieredStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
