"""`kvpanel serve --no-ui` reports its startup phases before "ready", from real vLLM signals."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import signal
import subprocess
import time

import pytest

from kvpanel.serve.startup import PHASES

from .conftest import serve_argv, start

pytestmark = pytest.mark.vllm
ALT_SCREEN = b"\x1b[?1049h"  # how Textual's app takes the terminal


def test_phase_events_in_order_before_ready(tiny_llama, tmp_path):
    server = start(tiny_llama, tmp_path)
    try:
        events = [json.loads(line) for line in list(server.stdout_lines)]
    finally:
        assert server.stop() == 0
    kinds = [e.get("event") for e in events]
    assert "ready" in kinds, kinds
    ready_at = kinds.index("ready")
    before_ready = events[:ready_at]
    phases = [e for e in before_ready if e.get("event") == "phase"]
    names = [e["phase"] for e in phases]
    # kvpanel's own steps, then the engine's as its log shows them (CPU, --enforce-eager: no
    # warm-up compile and no CUDA graphs), then the API server.
    assert names[:3] == ["importing_vllm", "reading_config", "starting_engine"], names
    for engine_phase in ("loading_weights", "profiling", "kv_cache"):
        assert engine_phase in names, names
    assert names[-1] == "starting_api", names
    order = list(PHASES)
    assert [order.index(n) for n in names] == sorted(order.index(n) for n in names), names
    assert len(set(names)) == len(names), names
    elapsed = [e["elapsed_s"] for e in phases]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0, elapsed
    # Nothing of startup after ready.
    assert not [e for e in events[ready_at:] if e.get("event") == "phase"]


def test_terminal_shows_phases_before_the_panel(tiny_llama, tmp_path):
    """Without --no-ui, on a terminal: the phases count up where the panel will appear."""
    argv = [
        a for a in serve_argv(tiny_llama, "--state-dir", str(tmp_path / "state")) if a != "--no-ui"
    ]
    main_fd, term_fd = pty.openpty()
    proc = subprocess.Popen(
        argv, stdin=term_fd, stdout=term_fd, stderr=term_fd, start_new_session=True
    )
    os.close(term_fd)
    seen = b""
    try:
        deadline = time.monotonic() + 600
        # Up to "loading weights" (the engine's own log lines reached the terminal's progress),
        # or until the panel takes the screen (the alternate screen: too late for startup).
        while b"loading weights" not in seen and time.monotonic() < deadline:
            if ALT_SCREEN in seen:
                break
            if select.select([main_fd], [], [], 1.0)[0]:
                try:
                    seen += os.read(main_fd, 65536)
                except OSError:  # the process ended and closed the terminal
                    break
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        os.close(main_fd)
    text = seen.decode(errors="replace")
    labels = ["starting vLLM on", "importing vLLM", "starting the engine", "loading weights"]
    at = [text.find(label) for label in labels]
    assert -1 not in at and at == sorted(at), text[-2000:]
    # A phase that lasts counts up on its line ("... N s"), so a slow start is visibly alive.
    assert re.search(r"importing vLLM \.\.\. \d+ s", text), text[-2000:]
