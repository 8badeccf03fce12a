"""Startup phases from vLLM's log lines, and how the terminal shows them (no engine here: the
real run is tests/serve/test_serve_startup.py)."""

from __future__ import annotations

import os

from kvpanel.serve.startup import StartupPhases, TtyProgress

# vLLM 0.32 lines as `kvpanel serve` saw them on CPU, and the GPU worker's wording.
P = "(EngineCore pid=26270) INFO 12-02 01:57:07"
CPU_LOG = [
    f"{P} [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: model='m'",
    f"{P} [cpu_model_runner.py:68] Starting to load model /tmp/m...",
    "Loading safetensors checkpoint shards: 100% Completed | 1/1 [00:00<00:00,  7.66it/s]",
    f"{P} [default_loader.py:501] Loading weights took 0.15 seconds",
    f"{P} [kv_cache_utils.py:2327] CPU KV cache size: 1,048,576 tokens, Maximum concurrency",
    f"{P} [core.py:402] init engine (profile, create kv cache, warmup model) took 0.90 s",
]
GPU_LOG = [
    f"{P} [gpu_model_runner.py:5040] Starting to load model openai/gpt-oss-20b...",
    f"{P} [gpu_model_runner.py:5150] Model loading took 13.7 GiB memory and 9.1 seconds",
    f"{P} [gpu_worker.py:760] Available KV cache memory: 4.0 GiB",
    f"{P} [kv_cache_utils.py:2328] GPU KV cache size: 87,360 tokens, Maximum concurrency",
    f"{P} [gpu_worker.py:939] Compile and warming up model for size 8192",
    "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE):   3%|",
    f"{P} [core.py:402] init engine (profile, create kv cache, warmup model) took 61.20 s",
]


def names(phases: StartupPhases) -> list[str]:
    return [name for name, _ in phases.seen()]


def test_cpu_log_gives_the_engine_phases_in_order() -> None:
    phases = StartupPhases()
    for mark in ("importing_vllm", "reading_config", "starting_engine"):
        phases.mark(mark)
    for line in CPU_LOG:
        phases.feed(line)
    assert names(phases) == [
        "importing_vllm",
        "reading_config",
        "starting_engine",
        "loading_weights",
        "profiling",
        "kv_cache",
        "starting_api",
    ]
    elapsed = [t for _, t in phases.seen()]
    assert elapsed == sorted(elapsed)


def test_gpu_log_adds_warm_up_and_cuda_graphs() -> None:
    phases = StartupPhases()
    for line in GPU_LOG:
        phases.feed(line)
    assert names(phases) == [
        "loading_weights",
        "profiling",
        "kv_cache",
        "warming_up",
        "cuda_graphs",
        "starting_api",
    ]


def test_phases_only_move_forward_and_stop_at_close() -> None:
    phases = StartupPhases()
    phases.feed(CPU_LOG[3])  # profiling
    phases.feed(CPU_LOG[1])  # loading weights: earlier, so vLLM repeating a line changes nothing
    phases.mark("starting_engine")
    assert names(phases) == ["profiling"]
    assert phases.take_new() == phases.seen() and phases.take_new() == []
    phases.close()
    phases.feed(CPU_LOG[-1])
    assert names(phases) == ["profiling"]


def _drawn(is_tty: bool, steps: list[tuple[list[tuple[str, float]], float]]) -> str:
    read_fd, write_fd = os.pipe()
    progress = TtyProgress(write_fd, is_tty=is_tty)
    for seen, now in steps:
        progress.show(seen, now)
    progress.close()
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as r:
        return r.read().decode()


STEPS = [
    ([("importing_vllm", 0.0)], 0.2),
    ([("importing_vllm", 0.0)], 5.0),
    ([("importing_vllm", 0.0), ("reading_config", 8.1), ("starting_engine", 9.0)], 9.4),
    ([("importing_vllm", 0.0), ("reading_config", 8.1), ("starting_engine", 9.0)], 20.0),
]


def test_terminal_counts_up_the_current_phase_and_keeps_each_finished_one() -> None:
    out = _drawn(True, STEPS)
    final_lines = [line.rsplit("\r\x1b[K", 1)[-1] for line in out.split("\n") if line]
    assert final_lines == [
        "kvpanel:    0.0 s  importing vLLM (8.1 s)",
        "kvpanel:    8.1 s  reading the model config (0.9 s)",
        "kvpanel:    9.0 s  starting the engine ... 11 s",
    ]
    assert "importing vLLM ... 5 s" in out  # the count went up while the phase lasted


def test_not_a_terminal_one_plain_line_per_phase() -> None:
    out = _drawn(False, STEPS)
    assert out.splitlines() == [
        "kvpanel:    0.0 s  importing vLLM",
        "kvpanel:    8.1 s  reading the model config",
        "kvpanel:    9.0 s  starting the engine",
    ]
    assert "\r" not in out
