"""Fixtures for the reliability suite: real processes, real files, real Redis.

Reuses the project's helpers instead of copying them: ``kvpanel serve`` helpers from
tests/serve/conftest.py, the engine runner from tests/vllm_ext/conftest.py and ``RedisServer``
from tests/redis_server.py.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from kvpanel.cache import disk_format as fmt  # noqa: E402
from kvpanel.cache.keys import Fingerprint  # noqa: E402
from tests.redis_server import REDIS_CLI, RedisServer, require_redis  # noqa: E402, F401
from tests.serve.conftest import complete, http, start, tiny_llama  # noqa: E402, F401
from tests.vllm_ext.conftest import models, prompt, run_engine  # noqa: E402, F401

MiB = 1 << 20
CHUNK = 256 * 1024  # one tiny-llama chunk: 256 tokens


def tokens(url: str, model: str, ids: list[int], max_tokens: int = 4) -> list[int]:
    """Greedy output token ids through /v1/completions (the server skips the tokenizer)."""
    status, body = http(
        "POST",
        f"{url}/v1/completions",
        {
            "model": model,
            "prompt": ids,
            "max_tokens": max_tokens,
            "temperature": 0,
            "return_token_ids": True,
        },
    )
    assert status == 200, body
    return list(body["choices"][0]["token_ids"])


def tier_status(url: str, token: str) -> dict:
    code, body = http("GET", f"{url}/kvpanel/v1/status", token=token)
    assert code == 200, body
    return body


def tree_rss(pid: int) -> int:
    """RSS of a process and all its descendants, in bytes (0 if it is gone)."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def validate_disk_dir(root: Path) -> tuple[int, list[Path]]:
    """Check every .kvc under ``root`` against its fingerprint dir; (valid count, temp files)."""
    valid = 0
    for fp_dir in (d for d in root.iterdir() if d.is_dir()):
        fp = Fingerprint.from_json((fp_dir / "fingerprint.json").read_text())
        assert fp.hex() == fp_dir.name
        for path in fp_dir.rglob("*" + fmt.SUFFIX):
            key = bytes.fromhex(path.name[: -len(fmt.SUFFIX)])
            fmt.read_chunk(path, fp.digest(), key)  # raises CorruptChunk on a torn file
            valid += 1
    temps = [p for p in root.rglob("*") if fmt.TMP_MARKER in p.name]
    return valid, temps


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """mount(size) -> a fresh tmpfs of that size under tmp_path; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str, *, ro: bool = False) -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("needs root (and mount) to mount a tmpfs")
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        opts = f"size={size}" + (",ro" if ro else "")
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require_redis(cli=True)
    srv = RedisServer(tmp_path / "redis").start()
    yield srv
    srv.kill()
