"""Write-behind from the CPU tier to the tiers below it (disk, Redis): one mechanism for both.

Primitives:
- ``WriteTarget``: what a lower tier offers the write-behind: ``accepts()`` (has room, is
  healthy), ``stores(key)`` (already holds it), ``write_many(items) -> list[bool]``
  (synchronous, thread-safe, never raises), ``count_dropped(n)``, and ``batch_bytes`` (how many
  bytes one ``write_many`` call may carry: 0 for one chunk per call).
- ``SlotSource``: where the bytes are: ``pin_ready(key)`` -> a slot id or None (pinned so it
  cannot be reused while being read), ``view(slot)``, ``release(keys)``. The CPU tier is one;
  the I/O path never cares where a slot's memory lives.
- ``WriteBehind``: per target, a FIFO of keys (no bytes: a queued chunk stays in its CPU slot,
  which stays evictable) and ``writers`` threads. A writer takes the oldest keys, pins their
  slots, writes, unpins. A key the CPU tier evicted before its turn can no longer be written:
  it is counted as ``dropped`` on that target, the only way a committed chunk misses a tier
  that accepts writes. ``pending_bytes`` and ``flush(timeout, progress)`` say what is left;
  ``write_rate(name)`` how fast that tier takes writes while it has some.

Nothing is dropped because a queue is full: the queue is bounded by what the CPU tier holds.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from kvpanel.cache.keys import ChunkKey
from kvpanel.cache.rates import BusyRate

Progress = Callable[[int], None]  # bytes still to write


class WriteTarget(Protocol):
    name: str
    batch_bytes: int

    def accepts(self) -> bool: ...
    def stores(self, key: ChunkKey) -> bool: ...
    def write_many(self, items: Sequence[tuple[ChunkKey, torch.Tensor]]) -> list[bool]: ...
    def count_dropped(self, n: int) -> None: ...


class SlotSource(Protocol):
    @property
    def slot_bytes(self) -> int: ...
    def pin_ready(self, key: ChunkKey) -> int | None: ...
    def view(self, slot_id: int) -> torch.Tensor: ...
    def release(self, keys: Sequence[ChunkKey]) -> None: ...


class _Lane:
    """One target's queue and writer threads."""

    def __init__(self, target: WriteTarget, source: SlotSource, writers: int) -> None:
        self.target = target
        self._source = source
        self._cond = threading.Condition()
        self._queue: OrderedDict[ChunkKey, None] = OrderedDict()
        self._busy = 0  # keys taken by writers, not finished
        # Bytes written per second of time a writer was busy: the tier's write speed, which
        # wall time would understate whenever the queue runs dry (issue 17: >= 80 % of dd).
        self.rate = BusyRate()
        self._closing = False
        self._threads = [
            threading.Thread(
                target=self._run, name=f"kvpanel-{target.name}-writer-{i}", daemon=True
            )
            for i in range(max(1, writers))
        ]
        for th in self._threads:
            th.start()

    def enqueue(self, keys: Sequence[ChunkKey]) -> int:
        with self._cond:
            if self._closing:
                return 0
            added = 0
            for key in keys:
                if key not in self._queue:
                    self._queue[key] = None
                    added += 1
            if added:
                self._cond.notify(min(added, len(self._threads)))
        return added

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._busy

    def close(self) -> None:
        """Write what is queued, then stop the threads."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for th in self._threads:
            th.join()

    def _take(self) -> list[ChunkKey] | None:
        per_call = max(1, self.target.batch_bytes // max(1, self._source.slot_bytes))
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            batch: list[ChunkKey] = []
            while self._queue and len(batch) < per_call:
                batch.append(self._queue.popitem(last=False)[0])
            self._busy += len(batch)
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            try:
                self._write(batch)
            finally:
                with self._cond:
                    self._busy -= len(batch)
                    self._cond.notify_all()

    def _write(self, batch: list[ChunkKey]) -> None:
        target, source = self.target, self._source
        pinned: list[ChunkKey] = []
        items: list[tuple[ChunkKey, torch.Tensor]] = []
        dropped = 0
        try:
            for key in batch:
                if target.stores(key):
                    continue
                slot = source.pin_ready(key)
                if slot is None:
                    dropped += 1  # evicted from CPU before its turn: these bytes are gone
                    continue
                pinned.append(key)
                items.append((key, source.view(slot)))
            if items and target.accepts():
                self.rate.start()
                written = 0
                with contextlib.suppress(Exception):  # targets never raise; a bug must not kill us
                    written = sum(target.write_many(items))
                self.rate.finish(written * source.slot_bytes)
        finally:
            if pinned:
                source.release(pinned)
            if dropped:
                target.count_dropped(dropped)


class WriteBehind:
    def __init__(self, source: SlotSource, targets: Sequence[tuple[WriteTarget, int]]) -> None:
        """``targets``: (target, number of writer threads) pairs."""
        self._source = source
        self._lanes = [_Lane(t, source, n) for t, n in targets]

    def __bool__(self) -> bool:
        return bool(self._lanes)

    def enqueue(self, keys: Sequence[ChunkKey]) -> None:
        for lane in self._lanes:
            if lane.target.accepts():
                lane.enqueue(keys)

    def write_rate(self, target_name: str) -> float | None:
        """Bytes per second while writing to that tier (recent writes); None until enough
        writing was timed (BusyRate)."""
        lane = next((x for x in self._lanes if x.target.name == target_name), None)
        return None if lane is None else lane.rate.rate

    def pending_bytes(self, target_name: str | None = None) -> int:
        lanes = [x for x in self._lanes if target_name in (None, x.target.name)]
        return sum(lane.pending() for lane in lanes) * self._source.slot_bytes

    def flush(
        self,
        timeout: float | None = None,
        progress: Progress | None = None,
        every_s: float = 0.5,
    ) -> bool:
        """Wait until every queued chunk is written (or dropped); False on timeout.
        ``progress(bytes_left)`` is called every ``every_s`` while there is something left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        next_report = time.monotonic()
        while (left := self.pending_bytes()) > 0:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            if progress is not None and now >= next_report:
                progress(left)
                next_report = now + every_s
            time.sleep(0.002)
        return True

    def close(self) -> None:
        for lane in self._lanes:
            lane.close()
