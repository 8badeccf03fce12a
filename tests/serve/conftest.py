"""`kvpanel serve` as a real subprocess (real vLLM on CPU), and small HTTP helpers."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

# vLLM on CPU: a fixed 1 GiB KV (otherwise it reserves a fraction of RAM, which fails when other
# tests' engines hold memory) and one OpenMP thread (faster and deterministic for tiny models).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from kvpanel.bench.server_proc import ServeProcess
from kvpanel.demo.tiny_models import write_tiny_model

ENGINE_FLAGS = [
    "--enforce-eager",
    "--max-model-len",
    "2048",
    "--no-enable-prefix-caching",  # every cached token must come from kvpanel
]


def serve_argv(model: str | None, *extra: str) -> list[str]:
    """No model: the embedded demo model with the demo's own engine defaults (no ENGINE_FLAGS)."""
    code = "import sys; from kvpanel.cli import main; sys.exit(main())"
    engine_flags = ENGINE_FLAGS if model is not None else []
    return [
        sys.executable,
        "-c",
        code,
        "serve",
        *([model] if model is not None else []),
        "--no-ui",
        "--port",
        "0",
        "--status-interval",
        "1",
        *engine_flags,
        *extra,
    ]


def start(
    model: str | None,
    tmp: Path,
    *extra: str,
    name: str = "serve",
    env: dict[str, str] | None = None,
) -> ServeProcess:
    tmp.mkdir(parents=True, exist_ok=True)
    argv = serve_argv(model, "--state-dir", str(tmp / "state"), *extra)
    return ServeProcess.start(argv, ready_timeout_s=600, log_path=tmp / f"{name}.log", env=env)


def http(
    method: str,
    url: str,
    body: Any = None,
    token: str | None = None,
    raw: bytes | None = None,
    timeout: float = 120,
) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        text, status = e.read().decode(), e.code
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def complete(url: str, model: str, prompt: list[int], max_tokens: int = 4) -> dict:
    status, body = http(
        "POST",
        f"{url}/v1/completions",
        {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
    )
    assert status == 200, body
    return body


def output_text(body: dict) -> str:
    """The greedy output. The tiny models' word-level tokenizer maps each token id to its own
    word, so equal text means equal token ids."""
    text = body["choices"][0]["text"]
    assert text.strip(), body
    return str(text)


def wait_status(server: ServeProcess, pred, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in list(server.statuses):
            if "tiers" in s and pred(s):
                return s
        time.sleep(0.2)
    raise AssertionError(f"no status line matched; last: {server.last_status}")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    return str(write_tiny_model(tmp_path_factory.mktemp("m") / "llama", "llama", seed=0))
