"""Measured rates: busy time counted once for parallel jobs, short jobs adding up, forgetting
by wall time, the engine's best window."""

import threading
import time

from kvpanel.cache.rates import BusyRate, PeakRate


def run_jobs(meter: BusyRate, threads: int, jobs: int, seconds: float) -> None:
    """``threads`` threads side by side, each timing ``jobs`` jobs of ``seconds``, 1 unit each."""

    def work() -> None:
        for _ in range(jobs):
            meter.start()
            time.sleep(seconds)
            meter.finish(1)

    running = [threading.Thread(target=work) for _ in range(threads)]
    for t in running:
        t.start()
    for t in running:
        t.join()


def test_busy_rate_counts_parallel_jobs_once() -> None:
    """Four jobs of 0.1 s side by side: 4 units in ~0.1 s of busy time, not in 0.4 s."""
    meter = BusyRate()
    run_jobs(meter, threads=4, jobs=1, seconds=0.1)
    assert meter.rate is not None and meter.rate > 20  # one at a time would give ~10/s


def test_busy_rate_measures_many_short_parallel_jobs() -> None:
    """400 jobs of 2 ms on 4 threads (a fast disk's 6 MB writes): a measured rate, near 4
    units per 2 ms of busy time, where a per-job weight never reached 50 ms of busy time."""
    meter = BusyRate()
    run_jobs(meter, threads=4, jobs=100, seconds=0.002)
    # At most 2000/s (4 side by side, each >= 2 ms); one at a time would give <= 500/s.
    assert meter.rate is not None and 500 < meter.rate <= 2000, meter.rate


def test_busy_rate_forgets_old_jobs_by_time() -> None:
    """A slow job, then after two half-lives fast ones: the figure follows the recent jobs."""
    meter = BusyRate(half_life_s=0.05)
    meter.start()
    time.sleep(0.1)
    meter.finish(1)  # 10/s
    time.sleep(0.1)
    for _ in range(3):
        meter.start()
        time.sleep(0.02)
        meter.finish(10)  # 500/s
    assert meter.rate is not None and meter.rate > 250, meter.rate
    time.sleep(0.3)  # idle: the last measurement stands
    assert meter.rate is not None and meter.rate > 250


def test_peak_rate_keeps_the_busy_window() -> None:
    peak = PeakRate(window_s=0.05)
    peak.add(100)
    time.sleep(0.06)
    peak.add(0)  # closes the busy window
    busy = peak.rate
    time.sleep(0.12)  # idle windows add nothing
    assert busy is not None and peak.rate == busy


def test_busy_rate_ignores_jobs_finishing_together() -> None:
    """Two jobs that end microseconds apart: 200 units over ~0.1 s, not 100 over microseconds."""
    meter = BusyRate()
    meter.start()
    meter.start()
    time.sleep(0.1)
    meter.finish(100)
    meter.finish(100)  # right after: its own busy time is ~0
    assert meter.rate is not None and 1000 < meter.rate < 2500  # exact: 2000
