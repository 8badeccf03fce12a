"""PromotionPool: a job given up on frees its place; queued jobs expire when none can start."""

from __future__ import annotations

import threading
import time

from kvpanel.cache.promoter import Promotion, PromotionPool


def wait_for(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_running_job_given_up_gets_a_replacement_thread() -> None:
    pool = PromotionPool(1, name="test-promote")
    gate = threading.Event()
    ran: list[str] = []
    hung = pool.submit(lambda job: gate.wait(10))
    nxt = pool.submit(lambda job: ran.append("next"))
    assert wait_for(lambda: hung.started is not None)
    time.sleep(0.05)
    assert ran == []  # the only worker is hung
    assert hung.overdue(0.01, time.monotonic()) and not nxt.overdue(0.05, time.monotonic())
    pool.give_up(hung)
    assert wait_for(lambda: ran == ["next"]) and not nxt.given_up
    gate.set()
    pool.shutdown(wait=True)


def test_queued_job_expires_when_no_thread_can_start_it() -> None:
    """Every thread hung and the replacement cap reached: a queued job still becomes overdue
    (at twice the timeout) instead of pending forever, and later runs seeing ``given_up``."""
    pool = PromotionPool(1, name="test-promote", max_given_up=0)
    gate = threading.Event()
    seen: list[bool] = []
    hung = pool.submit(lambda job: gate.wait(10))
    assert wait_for(lambda: hung.started is not None)
    queued = pool.submit(lambda job: seen.append(job.given_up))
    pool.give_up(hung)  # no replacement: the cap is 0
    time.sleep(0.05)
    assert queued.started is None and not queued.overdue(0.1, time.monotonic())
    time.sleep(0.2)
    assert queued.overdue(0.1, time.monotonic())
    pool.give_up(queued)
    gate.set()
    assert wait_for(lambda: seen == [True])
    pool.shutdown(wait=True)


def test_shutdown_does_not_wait_for_a_job_given_up_on() -> None:
    pool = PromotionPool(2, name="test-promote")
    gate = threading.Event()
    hung: Promotion = pool.submit(lambda job: gate.wait(30))
    assert wait_for(lambda: hung.started is not None)
    pool.give_up(hung)
    t0 = time.monotonic()
    pool.shutdown(wait=True)
    assert time.monotonic() - t0 < 2
    gate.set()
