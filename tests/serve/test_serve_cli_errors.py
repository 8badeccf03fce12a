"""`kvpanel serve` usage errors, as a user meets them: one stderr line that names the flag (or
path) and the reason, exit code 2, and nothing of the engine started.

Each case runs the real command; the vLLM flags are checked by vLLM's own parser (so the
process imports vLLM), but no engine may start: the busy port in particular must be refused
before the model loads, which takes from seconds (CPU) to minutes (large models on a GPU)."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from .conftest import serve_argv

pytestmark = pytest.mark.vllm

# Lines that only appear once vLLM builds an engine or loads weights.
ENGINE_OUTPUT = ("Initializing a V1 LLM engine", "Starting to load model", "Loading weights")


def run_serve(model: str, tmp: Path, *flags: str) -> tuple[int, list[str], str]:
    """(exit code, non-empty stderr lines, stdout) of ``kvpanel serve MODEL --no-ui FLAGS``."""
    argv = serve_argv(model, "--state-dir", str(tmp / "state"))
    # The test's flag replaces conftest's (vLLM would print a line about the duplicate).
    for flag in (f for f in flags if f.startswith("--") and f in argv):
        i = argv.index(flag)
        del argv[i : i + 2]
    argv += flags
    # Generous: a usage error returns after vLLM's import (seconds); an engine never starts.
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return done.returncode, lines, done.stdout


def assert_one_line(code: int, lines: list[str], *words: str) -> str:
    assert code == 2, (code, lines[-20:])
    assert len(lines) == 1, f"{len(lines)} stderr lines: {lines[:5]} ... {lines[-5:]}"
    line = lines[0]
    assert line.startswith("kvpanel serve: error: "), line
    for word in words:
        assert word in line, (word, line)
    return line


def test_bad_value_for_a_vllm_flag(tiny_llama: str, tmp_path: Path) -> None:
    code, lines, stdout = run_serve(tiny_llama, tmp_path, "--max-model-len", "abc")
    assert_one_line(code, lines, "--max-model-len", "'abc'")
    # A usage error is no engine failure: no "failed" (nor "ready") event, only the startup
    # phase that was under way.
    events = [json.loads(line)["event"] for line in stdout.splitlines()]
    assert set(events) <= {"phase"}, events


def test_unknown_flag(tiny_llama: str, tmp_path: Path) -> None:
    code, lines, _ = run_serve(tiny_llama, tmp_path, "--bogus-flag")
    assert_one_line(code, lines, "--bogus-flag", "unrecognized")


def test_missing_model_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    code, lines, _ = run_serve(str(missing), tmp_path)
    line = assert_one_line(code, lines, str(missing), "does not exist")
    assert "repo" not in line.lower()  # not taken for a hub name


def test_busy_port_is_refused_before_the_engine_starts(tiny_llama: str, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code, lines, _ = run_serve(tiny_llama, tmp_path, "--port", str(port))
    started = [line for line in lines if any(marker in line for marker in ENGINE_OUTPUT)]
    assert not started, started
    assert_one_line(code, lines, "--port", f"127.0.0.1:{port}", "in use")


def test_host_not_on_this_machine(tiny_llama: str, tmp_path: Path) -> None:
    # 203.0.113.0/24 is TEST-NET-3 (RFC 5737): never an address of this machine.
    code, lines, _ = run_serve(tiny_llama, tmp_path, "--host", "203.0.113.7")
    assert_one_line(code, lines, "--host", "203.0.113.7")
