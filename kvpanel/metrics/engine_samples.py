"""What vLLM's stat loggers tell us, accumulated thread-safely for the snapshot builder.

vLLM calls its stat loggers once per output batch on the API server's event loop; ``record``
must stay cheap, so it only adds numbers under a lock. The snapshot builder (another thread)
reads cumulative totals and a TTFT window.

Primitives: EngineSamples.record_scheduler / record_iteration / totals() -> EngineTotals.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import NamedTuple


class EngineTotals(NamedTuple):
    at: float
    running: int
    waiting: int
    finished: int
    kv_usage: float
    prefix_queries: int
    prefix_hits: int
    prompt_tokens: int
    generation_tokens: int
    ttfts: tuple[float, ...]  # the recent window, oldest first


class EngineSamples:
    def __init__(self, ttft_window: int = 512):
        self._lock = threading.Lock()
        self._running = self._waiting = self._finished = 0
        self._kv_usage = 0.0
        self._prefix_queries = self._prefix_hits = 0
        self._prompt_tokens = self._generation_tokens = 0
        self._ttfts: deque[float] = deque(maxlen=ttft_window)

    def record_scheduler(
        self, running: int, waiting: int, kv_usage: float, prefix_queries: int, prefix_hits: int
    ) -> None:
        with self._lock:
            self._running, self._waiting, self._kv_usage = running, waiting, kv_usage
            self._prefix_queries += prefix_queries
            self._prefix_hits += prefix_hits

    def record_iteration(
        self, prompt_tokens: int, generation_tokens: int, ttfts: list[float], finished: int
    ) -> None:
        with self._lock:
            self._prompt_tokens += prompt_tokens
            self._generation_tokens += generation_tokens
            self._ttfts.extend(ttfts)
            self._finished += finished

    def totals(self) -> EngineTotals:
        with self._lock:
            return EngineTotals(
                time.monotonic(),
                self._running,
                self._waiting,
                self._finished,
                self._kv_usage,
                self._prefix_queries,
                self._prefix_hits,
                self._prompt_tokens,
                self._generation_tokens,
                tuple(self._ttfts),
            )
