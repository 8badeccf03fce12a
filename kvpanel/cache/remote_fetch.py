"""Fetch threads for the Redis tier: keys asked for one by one, fetched several per round trip.

Primitives:
- ``BatchFetcher``: ``submit(key)`` queues a key; each of ``workers`` threads takes up to its
  share of what is queued (at most ``max_batch`` keys) and hands the batch to ``fetch``. The
  scheduler looks a prompt's chunks up one after the other within microseconds, so the keys of
  one prompt mostly travel in a few pipelines (one round trip each, however many are absent),
  spread over several connections (for bandwidth when they are present).
- ``shutdown``: stop taking keys; queued ones are handed to ``drop`` (never fetched), then the
  threads are joined.
- ``fetch_into_cpu``: what one batch does for the store: GET the values, copy each valid one
  into a fresh CPU slot.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from kvpanel.cache.buffers import copy_into
from kvpanel.cache.cpu_tier import CpuTier
from kvpanel.cache.keys import ChunkKey

if TYPE_CHECKING:  # redis-py is only imported with a remote_url
    from kvpanel.cache.remote_tier import RemoteTier

log = logging.getLogger("kvpanel")

Batch = Callable[[list[ChunkKey]], None]


class BatchFetcher:
    def __init__(self, workers: int, max_batch: int, fetch: Batch, drop: Batch) -> None:
        self._workers = max(1, workers)
        self._max_batch = max(1, max_batch)
        self._fetch = fetch
        self._drop = drop
        self._queue: deque[ChunkKey] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"kvpanel-remote-get-{i}", daemon=True)
            for i in range(self._workers)
        ]
        for t in self._threads:
            t.start()

    def submit(self, key: ChunkKey) -> None:
        with self._cond:
            self._queue.append(key)
            self._cond.notify()

    def _take(self) -> list[ChunkKey] | None:
        with self._cond:
            while not self._queue and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
            # An even share per thread: one thread must not pipeline a whole prompt alone
            # while the others idle (the values would arrive over one connection, one by one).
            share = -(-len(self._queue) // self._workers)
            n = min(len(self._queue), self._max_batch, max(1, share))
            return [self._queue.popleft() for _ in range(n)]

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            try:
                self._fetch(batch)
            except Exception:  # a bug in one batch must not stop all later fetches
                log.exception("kvpanel remote fetch failed")

    def shutdown(self) -> None:
        with self._cond:
            self._stopped = True
            left = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        if left:
            self._drop(left)
        for t in self._threads:
            t.join()


def fetch_into_cpu(remote: RemoteTier, cpu: CpuTier, keys: list[ChunkKey], forget: Batch) -> None:
    """GET ``keys`` in one pipeline; each valid value goes into a CPU slot of its own. A key is
    ``forget``-ten as pending as soon as it is in its slot or known absent (all of them at the
    end, whatever happened)."""
    try:
        payloads = remote.get_many(keys, expect_bytes=cpu.slot_bytes)
        for key, payload in zip(keys, payloads, strict=True):
            try:
                if payload is not None:  # None: remembered as a miss (or the tier is down)
                    _publish(remote, cpu, key, payload)
            finally:
                forget([key])  # answered as soon as it is in its slot
    finally:
        forget(keys)


def _publish(remote: RemoteTier, cpu: CpuTier, key: ChunkKey, payload: memoryview) -> None:
    res = cpu.reserve([key])
    if res is None:
        remote.note_miss(key)  # no CPU room: do not GET it again on every poll
        return
    if not res.keys:
        return  # stored meanwhile by the engine itself
    ok = False
    try:
        copy_into(cpu.view(res.slots[0]), payload)
        ok = True
    finally:
        cpu.commit(res.keys, success=ok)
