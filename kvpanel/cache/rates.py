"""Measured rates that a busy-then-idle worker's wall clock would get wrong.

Primitives:
- ``BusyRate``: the throughput of something that works on several jobs at once (a tier's
  promotion or write-behind threads), as work done over the time it had work (not wall
  time), recent seconds weighted most.
- ``PeakRate``: the engine's recompute rate in tokens/s, the best 2 s window recently seen
  (the engine is not always busy, and an idle engine's throughput says nothing about its speed).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque

# Busy time a measured rate must span (reads of one 6-12 MB chunk take ~5-10 ms).
_MIN_SAMPLE_S = 0.05


class BusyRate:
    """Units per second of busy time (time with at least one job running, however many run
    side by side), both summed with exponential forgetting over wall time (``half_life_s``):
    jobs that finish together add their units to the same busy time instead of reading as
    units over microseconds, and many short jobs add up (a per-job weight would cap the busy
    time at a few jobs' worth: 6 MB writes of ~2 ms would never reach a measurement)."""

    def __init__(self, half_life_s: float = 5.0) -> None:
        self._decay_per_s = math.log(2) / half_life_s
        self._lock = threading.Lock()
        self._active = 0
        self._busy_since = 0.0
        self._aged_at = time.monotonic()
        self._units = 0.0
        self._busy_s = 0.0
        self._seeded: float | None = None

    @property
    def rate(self) -> float | None:
        # Not aged here: an idle tier keeps its last measurement (its speed did not change).
        with self._lock:
            if self._busy_s >= _MIN_SAMPLE_S and self._units > 0:
                return self._units / self._busy_s
            return self._seeded

    def seed(self, rate: float) -> None:
        """A measurement from elsewhere (a probe), until enough jobs replace it."""
        with self._lock:
            if self._seeded is None and rate > 0:
                self._seeded = rate

    def start(self) -> None:
        with self._lock:
            if self._active == 0:
                self._busy_since = time.monotonic()
            self._active += 1

    def finish(self, units: float) -> None:
        with self._lock:
            now = time.monotonic()
            busy = now - self._busy_since if self._active else 0.0
            self._busy_since = now
            self._active = max(0, self._active - 1)
            keep = math.exp(-self._decay_per_s * (now - self._aged_at))
            self._aged_at = now
            self._units = keep * self._units + units
            self._busy_s = keep * self._busy_s + busy


class PeakRate:
    """The best rate over ``window_s`` windows among the last ``keep`` windows."""

    def __init__(self, window_s: float = 2.0, keep: int = 30) -> None:
        self._window_s = window_s
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._units = 0.0
        self._done: deque[float] = deque(maxlen=keep)

    def add(self, units: float) -> None:
        with self._lock:
            self._roll(time.monotonic())
            self._units += units

    def seed(self, rate: float) -> None:
        with self._lock:
            if not self._done and rate > 0:
                self._done.append(rate)

    @property
    def rate(self) -> float | None:
        with self._lock:
            self._roll(time.monotonic())
            return max(self._done) if self._done else None

    def _roll(self, now: float) -> None:
        if now - self._start < self._window_s:
            return
        if self._units > 0:
            self._done.append(self._units / (now - self._start))
        self._start = now
        self._units = 0.0
