"""What vLLM's stat loggers tell us, accumulated thread-safely for the snapshot builder.

vLLM calls its stat loggers once per output batch on the API server's event loop; ``record``
must stay cheap, so it only adds numbers under a lock. The snapshot builder (another thread)
reads cumulative totals and a TTFT window.

Primitives: EngineSamples.record_scheduler / record_iteration / totals() -> EngineTotals.
"""

from __future__ import annotations

import bisect
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


# Upper bounds (seconds) of the TTFT histogram's buckets: vLLM's own for
# vllm:time_to_first_token_seconds, so the two series line up on one dashboard.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip


class EngineSamples:
    def __init__(self, ttft_window: int = 512):
        self._lock = threading.Lock()
        self._running = self._waiting = self._finished = 0
        self._kv_usage = 0.0
        self._prefix_queries = self._prefix_hits = 0
        self._prompt_tokens = self._generation_tokens = 0
        self._ttfts: deque[float] = deque(maxlen=ttft_window)
        # Every TTFT since start, bucketed (not a window): Prometheus histograms are cumulative.
        self._ttft_buckets = [0] * len(TTFT_BUCKETS)  # per bucket, not cumulative
        self._ttft_count = 0
        self._ttft_sum = 0.0

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
            for t in ttfts:
                i = bisect.bisect_left(TTFT_BUCKETS, t)
                if i < len(TTFT_BUCKETS):
                    self._ttft_buckets[i] += 1
                self._ttft_count += 1
                self._ttft_sum += t
            self._finished += finished

    def ttft_histogram(self) -> tuple[list[tuple[float, int]], int, float]:
        """Every TTFT since start: ([(upper bound, cumulative count)], count, sum)."""
        with self._lock:
            cumulative, n = [], 0
            for le, c in zip(TTFT_BUCKETS, self._ttft_buckets, strict=True):
                n += c
                cumulative.append((le, n))
            return cumulative, self._ttft_count, self._ttft_sum

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
