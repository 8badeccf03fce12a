"""benchmarks/gpu/handoff_trace.py's step view: steps paired by process and step number."""

from __future__ import annotations

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "handoff_trace", Path(__file__).parents[2] / "benchmarks" / "gpu" / "handoff_trace.py"
)
assert spec and spec.loader
handoff = importlib.util.module_from_spec(spec)
spec.loader.exec_module(handoff)


def sched(t: float, step: int, prefill: dict | None = None, pid: int = 1) -> dict:
    p = prefill or {}
    return {"ev": "sched", "t": t, "s": 0.001, "step": step, "pid": pid, "prefill": p, "n": 1}


def upd(t: float, step: int, pid: int = 1) -> dict:
    return {"ev": "upd", "t": t, "s": 0.002, "step": step, "pid": pid}


def test_async_order_puts_a_slow_step_on_its_own_row() -> None:
    """vLLM's async scheduling: step 2 is scheduled before step 1's output is in. Step 2
    (a 3,600 + 33 token prefill) takes 1 s on the GPU: its row, not step 3's, is slow."""
    events = [
        sched(0.000, 1),
        sched(0.005, 2, {"a": 3600, "b": 33}),
        upd(0.012, 1),
        {"ev": "submit", "t": 0.013, "job": 7, "load": True, "bytes": 494_000_000},
        sched(0.015, 3),
        upd(1.010, 2),
        upd(1.020, 3),
    ]
    totals, slow = handoff.step_view(events, 0.0, 2.0, slow_ms=500)
    assert totals["steps"] == 3
    assert [row["step"] for row in slow] == [2]
    assert slow[0]["prefill"] == [3600, 33] and slow[0]["loads_mb"] == [494]
    assert 990 < slow[0]["model_ms"] < 1010


def test_unmatched_and_interleaved_processes() -> None:
    """Two engines (data parallel) in one trace, and a step whose output never came."""
    events = [
        sched(0.000, 1, pid=1),
        sched(0.001, 1, pid=2),
        upd(0.101, 1, pid=2),  # engine 2's step 1: 100 ms
        upd(0.300, 1, pid=1),  # engine 1's step 1: 300 ms
        sched(0.400, 2, pid=1),  # never updated inside the round
    ]
    totals, slow = handoff.step_view(events, 0.0, 1.0, slow_ms=200)
    assert totals["steps"] == 2
    assert len(slow) == 1 and slow[0]["step"] == 1 and 295 < slow[0]["model_ms"] < 305


def test_traces_without_step_numbers_give_no_steps() -> None:
    old = [{"ev": "sched", "t": 0.0, "prefill": {}, "n": 1}, {"ev": "step", "t": 0.1}]
    assert handoff.step_view(old, 0.0, 1.0, slow_ms=0)[0]["steps"] == 0
