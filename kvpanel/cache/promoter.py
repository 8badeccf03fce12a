"""Worker threads for disk -> CPU promotions, with a deadline per promotion.

Primitives:
- ``Promotion``: one queued job. It is overdue ``timeout_s`` after a worker picked it up, or
  twice that after it was queued if no worker did (every thread hung, the replacement cap hit).
- ``PromotionPool``: runs jobs on ``workers`` threads. An overdue job is given up on by the
  caller (``give_up``): a running one stops counting against the pool's width and a replacement
  thread starts, so one read that never returns (a hung NFS server) cannot hold up other keys;
  its thread finishes the job whenever the read returns, then exits if it is surplus. A queued
  one still runs, seeing ``given_up`` set, so it can release what it holds without reading.

Threads are daemons: a read that never returns must not keep the process alive either.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable


class Promotion:
    __slots__ = ("fn", "queued", "started", "given_up", "holds_thread")

    def __init__(self, fn: Callable[[Promotion], None]) -> None:
        self.fn = fn
        self.queued = time.monotonic()
        self.started: float | None = None  # when a worker picked it up
        self.given_up = False
        self.holds_thread = False  # given up on while running: a replacement thread was added

    def overdue(self, timeout_s: float, now: float) -> bool:
        if self.started is None:
            return now - self.queued > 2 * timeout_s
        return now - self.started > timeout_s


class PromotionPool:
    def __init__(self, workers: int, *, name: str, max_given_up: int = 64) -> None:
        self._workers = max(1, workers)
        self._max_given_up = max_given_up  # bounds the threads a dying disk can pile up
        self._name = name
        self._jobs: queue.SimpleQueue[Promotion | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: dict[threading.Thread, Promotion | None] = {}  # thread -> current job
        self._given_up = 0
        self._closed = False

    def submit(self, fn: Callable[[Promotion], None]) -> Promotion:
        job = Promotion(fn)
        self._jobs.put(job)
        with self._lock:
            self._spawn_if_short()
        return job

    def give_up(self, job: Promotion) -> None:
        """``job`` is overdue: run the queue on without it (idempotent)."""
        with self._lock:
            if job.given_up:
                return
            job.given_up = True
            if job.started is None:
                return  # not running: no thread to replace
            job.holds_thread = True
            self._given_up += 1
            self._spawn_if_short()

    def shutdown(self, *, wait: bool = True, timeout_s: float | None = None) -> None:
        """Stop after the queued jobs; with ``wait``, join every thread not given up on, and
        not one whose job has run longer than ``timeout_s`` (a hung read must not hang close)."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._jobs.put(None)
        if not wait:
            return
        for th in threads:
            while th.is_alive():
                with self._lock:
                    job = self._threads.get(th)
                if job is not None and (
                    job.holds_thread
                    or (timeout_s is not None and job.overdue(timeout_s, time.monotonic()))
                ):
                    break
                th.join(0.05)

    def _spawn_if_short(self) -> None:
        # Called with the lock held.
        if self._closed:
            return
        wanted = self._workers + min(self._given_up, self._max_given_up)
        if len(self._threads) < wanted:
            th = threading.Thread(target=self._run, name=f"{self._name}-{id(self):x}", daemon=True)
            self._threads[th] = None
            try:
                th.start()
            except RuntimeError:  # no thread to be had: queued jobs wait, then go overdue
                del self._threads[th]

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            job = self._jobs.get()
            if job is None:
                break
            with self._lock:
                self._threads[me] = job
                job.started = time.monotonic()
            with contextlib.suppress(Exception):  # the job reports its own outcome
                job.fn(job)
            with self._lock:
                self._threads[me] = None
                if job.holds_thread:
                    self._given_up -= 1
                    if len(self._threads) > self._workers + self._given_up:
                        break  # a replacement took over this thread's place
        with self._lock:
            self._threads.pop(me, None)
