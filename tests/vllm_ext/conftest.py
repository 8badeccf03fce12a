"""Fixtures for the real-vLLM tests: tiny checkpoints with random weights and an engine runner."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

# vLLM on CPU: a fixed 1 GiB KV (otherwise it reserves a fraction of RAM, which fails when other
# tests' engines hold memory) and one OpenMP thread (faster and deterministic for tiny models).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from kvpanel.demo.tiny_models import write_tiny_model

ROOT = Path(__file__).resolve().parents[2]


def run_engine(spec: dict, workdir: Path, timeout: float = 600) -> dict:
    """Run tests/vllm_ext/engine_script.py in a fresh interpreter; return its JSON result."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path = workdir / "spec.json", workdir / "out.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.setdefault("VLLM_CACHE_ROOT", str(ROOT / ".vllm-cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.vllm_ext.engine_script", str(spec_path), str(out_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    (workdir / "stderr.log").write_text(proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-40:])
        raise AssertionError(f"engine exited {proc.returncode}:\n{tail}")
    result: dict = json.loads(out_path.read_text())
    return result


def prompt(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 30000) for _ in range(n)]


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("models")
    return {
        "llama": str(write_tiny_model(base / "llama", "llama", seed=0)),
        # Same architecture and config, other weights: its KV must never be served for llama.
        "llama-other": str(write_tiny_model(base / "llama-other", "llama", seed=1)),
        "gpt-oss": str(write_tiny_model(base / "gpt-oss", "gpt-oss", seed=0)),
    }


def rank_cores(ranks: int) -> str:
    """vllm-cpu's VLLM_CPU_OMP_THREADS_BIND for ``ranks`` ranks, one allowed core each ("0|1" on
    the 2-core CI machine; a container may be given other core ids)."""
    cores = sorted(os.sched_getaffinity(0))
    return "|".join(str(cores[i % len(cores)]) for i in range(ranks))
