"""Fetch threads for the Redis tier: keys asked for one by one, fetched several per round trip.

Primitives:
- ``BatchFetcher``: ``submit(key)`` queues a key; each of ``workers`` threads takes up to its
  share of what is queued (at most ``max_batch`` keys) and hands the batch to ``fetch``. The
  scheduler looks a prompt's chunks up one after the other within microseconds, so the keys of
  one prompt mostly travel in a few pipelines (one round trip each, however many are absent),
  spread over several connections (for bandwidth when they are present).
- ``shutdown``: stop taking keys; queued ones are handed to ``drop`` (never fetched), then the
  threads are joined.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from kvpanel.cache.keys import ChunkKey

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
