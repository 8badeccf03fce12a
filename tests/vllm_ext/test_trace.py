"""The opt-in event trace: JSON lines with wall-clock times when set, nothing when not."""

from __future__ import annotations

import json
import time
from pathlib import Path

from kvpanel.vllm_ext import trace


def test_disabled_trace_writes_nothing(tmp_path: Path) -> None:
    t = trace._Trace(None)
    t.emit("ask", req="r1")
    t.flush()
    assert list(tmp_path.iterdir()) == []


def test_trace_lines_are_json_with_wall_clock(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    t = trace._Trace(str(path), flush_s=None)
    before = time.time()
    t.emit("admit", req="cmpl-1-0", chunks=3)
    t.emit("submit", job=7, load=True, bytes=1024, host_s=0.001)
    assert not path.exists()  # buffered until flush (or _FLUSH_EVERY events)
    t.flush()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["ev"] for x in lines] == ["admit", "submit"]
    assert lines[0]["req"] == "cmpl-1-0" and lines[0]["chunks"] == 3
    assert lines[1]["job"] == 7 and lines[1]["load"] is True
    assert all(before <= x["t"] <= time.time() for x in lines)


def test_trace_flushes_when_the_buffer_fills(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    t = trace._Trace(str(path), flush_s=None)
    for i in range(trace._FLUSH_EVERY):
        t.emit("step", i=i)
    assert len(path.read_text().splitlines()) == trace._FLUSH_EVERY


def test_unwritable_trace_turns_itself_off(tmp_path: Path) -> None:
    t = trace._Trace(str(tmp_path / "missing-dir" / "trace.jsonl"), flush_s=None)
    t.emit("step")
    t.flush()  # must not raise: a trace never takes the engine down
    assert t.path is None
    t.emit("step")  # and stays a no-op


def test_trace_flushes_on_a_timer(tmp_path: Path) -> None:
    """vLLM's engine process may exit without atexit: lines reach the file without a flush."""
    path = tmp_path / "trace.jsonl"
    t = trace._Trace(str(path), flush_s=0.05)
    t.emit("fin", req="r1")
    deadline = time.time() + 10
    while not path.exists() and time.time() < deadline:
        time.sleep(0.02)
    assert json.loads(path.read_text())["req"] == "r1"
    t.path = None  # ends the timer thread
