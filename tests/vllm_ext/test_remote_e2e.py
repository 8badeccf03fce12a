"""Two real vLLM engine processes sharing KV through one Redis (the remote tier).

Each engine has its own CPU tier and no disk, so anything process B gets from process A came
through Redis. redis-server runs on 127.0.0.1 on a port of our own, started and killed here.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
import redis

from kvpanel.cache.disk_format import HEADER_BYTES
from tests.redis_server import REDIS_SERVER, require_redis

from .conftest import prompt, run_engine
from .test_engine_e2e import outputs, same_generation

pytestmark = pytest.mark.vllm

MiB = 1 << 20
P = prompt(0, 600)  # two full 256-token chunks + a tail that is always recomputed


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_redis()
    assert REDIS_SERVER is not None
    work = tmp_path_factory.mktemp("redis")
    port = 0
    for port in range(26379, 26479):
        try:
            redis.Redis(port=port, socket_connect_timeout=0.2).ping()
        except redis.ConnectionError:
            break  # nothing answers there
    log = open(work / "redis.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            REDIS_SERVER,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(work),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline and proc.poll() is None, "redis did not start"
            time.sleep(0.02)
    yield f"redis://127.0.0.1:{port}"
    proc.kill()
    proc.wait(10)


def engine(models: dict[str, str], url: str, rounds: list) -> dict:
    return {
        "model": models["llama"],
        "settings": {"cpu_bytes": 64 * MiB, "remote_url": url},
        "rounds": rounds,
    }


@pytest.fixture(scope="module")
def process_a(models, redis_url, tmp_path_factory) -> dict:
    """Process A computes P; its CPU commits are written through to Redis (flushed at exit)."""
    return run_engine(engine(models, redis_url, [[P]]), tmp_path_factory.mktemp("a"))


def test_process_a_writes_its_chunks_to_redis(process_a: dict, redis_url: str) -> None:
    out = outputs(process_a, 0)[0]
    assert out["cached"] == 0
    remote = process_a["rounds"][0]["tiers"]["remote"]
    assert remote["healthy"] and remote["bytes_in"] > 0 and remote["dropped"] == 0
    assert len(redis.Redis.from_url(redis_url).keys("kvpanel:*")) == 2


def test_process_b_hits_what_process_a_stored(process_a, models, redis_url, tmp_path) -> None:
    run = run_engine(engine(models, redis_url, [[P]]), tmp_path / "b")
    out = outputs(run, 0)[0]
    remote = run["rounds"][0]["tiers"]["remote"]
    assert out["cached"] == 512  # both full chunks came from Redis through B's CPU tier
    assert remote["hits"] >= 2 and remote["errors"] == 0
    assert run["rounds"][0]["vllm"]["vllm:external_prefix_cache_hits"] >= 512
    same_generation(out, outputs(process_a, 0)[0])


def test_garbage_in_redis_is_a_miss_with_correct_output(
    process_a, models, redis_url, tmp_path
) -> None:
    client = redis.Redis.from_url(redis_url)
    names = sorted(client.keys("kvpanel:*"))
    assert len(names) == 2
    first, second = names
    client.set(first, b"garbage" * 1000)
    raw = bytearray(client.get(second))
    raw[HEADER_BYTES + 777] ^= 0x01  # one bit in the payload: only the checksum sees it
    client.set(second, bytes(raw))
    run = run_engine(engine(models, redis_url, [[P]]), tmp_path / "c")
    out = outputs(run, 0)[0]
    remote = run["rounds"][0]["tiers"]["remote"]
    assert out["cached"] == 0
    assert remote["errors"] == 2 and remote["hits"] == 0
    same_generation(out, outputs(process_a, 0)[0])
    # The bad values were deleted and the recomputed chunks written back, valid again.
    check = run_engine(engine(models, redis_url, [[P]]), tmp_path / "d")
    assert outputs(check, 0)[0]["cached"] == 512
    assert check["rounds"][0]["tiers"]["remote"]["errors"] == 0
    same_generation(outputs(check, 0)[0], outputs(process_a, 0)[0])


def test_unreachable_redis_serves_with_misses(models, tmp_path) -> None:
    url = "redis://127.0.0.1:1"  # nothing listens on port 1
    run = run_engine(engine(models, url, [[P], [P]]), tmp_path / "down")
    first, second = outputs(run, 0)[0], outputs(run, 1)[0]
    remote = run["rounds"][1]["tiers"]["remote"]
    assert not remote["healthy"] and remote["note"].startswith("unreachable")
    assert first["cached"] == 0 and second["cached"] == 512  # the CPU tier still works
    same_generation(first, second)
