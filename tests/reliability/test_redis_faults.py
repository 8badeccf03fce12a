"""The Redis tier under `kvpanel serve`: Redis slowed, killed and restarted mid-traffic."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from .conftest import REDIS_CLI, http, prompt, start, tier_status, tokens

pytestmark = pytest.mark.vllm


def wait_remote(url: str, token: str, healthy: bool, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = tier_status(url, token)["tiers"]["remote"]
        if r["healthy"] is healthy or time.monotonic() > deadline:
            return r
        time.sleep(0.3)


def test_redis_slowed_killed_restarted_serving_continues(tiny_llama, tmp_path, redis_server):
    server = start(
        tiny_llama, tmp_path, "--cpu-cache-gb", "0.0625", "--remote-url", redis_server.url
    )
    timings: dict[str, float] = {}
    try:
        url, token = server.url, server.token
        p0 = prompt(10, 600)
        ref0 = tokens(url, tiny_llama, p0)
        assert wait_remote(url, token, True)["healthy"]
        deadline = time.monotonic() + 20
        while redis_server.client().dbsize() < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert redis_server.client().dbsize() >= 2

        # Slowed: DEBUG SLEEP 3 blocks Redis for 3 s while new prompts arrive.
        sleeper = threading.Thread(
            target=subprocess.run,
            args=([REDIS_CLI, "-p", str(redis_server.port), "DEBUG", "SLEEP", "3"],),
            kwargs={"capture_output": True},
        )
        sleeper.start()
        time.sleep(0.2)
        t0 = time.monotonic()
        for i in range(3):
            tokens(url, tiny_llama, prompt(20 + i, 600))
        timings["3 requests during DEBUG SLEEP 3"] = time.monotonic() - t0
        sleeper.join()
        assert wait_remote(url, token, True)["healthy"]

        # Killed: requests still succeed, the tier says unreachable.
        redis_server.kill()
        t0 = time.monotonic()
        for i in range(3):
            tokens(url, tiny_llama, prompt(30 + i, 600))
        timings["3 requests with Redis dead"] = time.monotonic() - t0
        down = wait_remote(url, token, False)
        assert down["healthy"] is False and down["note"].startswith("unreachable"), down
        assert tokens(url, tiny_llama, p0) == ref0  # CPU hits are unaffected

        # Restarted (empty, same port): the probe reconnects and writes resume.
        redis_server.start()
        t0 = time.monotonic()
        up = wait_remote(url, token, True)
        timings["reconnect after restart"] = time.monotonic() - t0
        assert up["healthy"], up
        p1 = prompt(40, 600)
        ref1 = tokens(url, tiny_llama, p1)
        deadline = time.monotonic() + 20
        while redis_server.client().dbsize() < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert redis_server.client().dbsize() >= 2
        # Hits come back from Redis once the CPU tier forgets p1.
        assert http("POST", f"{url}/kvpanel/v1/tiers/cpu/clear", token=token)[0] == 200
        before = tier_status(url, token)["tiers"]["remote"]["hits"]
        assert tokens(url, tiny_llama, p1) == ref1
        # The status snapshot may predate the request by up to its max age: poll briefly.
        deadline = time.monotonic() + 10
        while True:
            after = tier_status(url, token)["tiers"]["remote"]
            if after["hits"] - before >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert after["hits"] - before >= 2, after
    finally:
        assert server.stop() == 0
    print("\n" + "; ".join(f"{k}: {v:.1f}s" for k, v in timings.items()))
