"""The Redis tier under `kvpanel serve`: Redis slowed, killed and restarted mid-traffic; Redis
behind a slow link (replies delayed)."""

from __future__ import annotations

import statistics
import subprocess
import threading
import time

import pytest

from tests.delay_proxy import DelayProxy

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


def test_slow_redis_adds_no_delay_to_cold_prompts(tiny_llama, tmp_path, redis_server):
    """Redis behind a link that delays every reply by 0.3 s: prompts Redis cannot help (their
    chunks are nowhere) take as long as with a fast Redis, and chunks it holds still hit."""
    delay = 0.3
    with DelayProxy(redis_server.port) as proxy:
        server = start(
            tiny_llama, tmp_path, "--cpu-cache-gb", "0.0625", "--remote-url", proxy.url()
        )
        try:
            url, token = server.url, server.token
            kept = prompt(50, 600)
            ref = tokens(url, tiny_llama, kept)
            deadline = time.monotonic() + 20
            while redis_server.client().dbsize() < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert redis_server.client().dbsize() >= 2

            def cold(seed: int) -> float:
                t0 = time.monotonic()
                tokens(url, tiny_llama, prompt(seed, 600))  # two full chunks, in no tier
                return time.monotonic() - t0

            cold(59)  # the first request after start-up warms more than the tiers
            fast = [cold(60 + i) for i in range(3)]
            proxy.delay_s = delay
            # The tier's PINGs (one a second) measure the new round trip.
            deadline = time.monotonic() + 30
            while "over lookup budget" not in tier_status(url, token)["tiers"]["remote"]["note"]:
                assert time.monotonic() < deadline, "the tier did not notice the delay"
                time.sleep(0.3)
            reads = redis_server.client().info("commandstats").get("cmdstat_eval", {})
            slow = [cold(70 + i) for i in range(3)]
            after = redis_server.client().info("commandstats").get("cmdstat_eval", {})
            print(f"\ncold prompt (s): fast Redis {fast}, Redis +{delay}s {slow}")
            # No read was sent for them (each would have waited the delay) ...
            assert after.get("calls", 0) == reads.get("calls", 0)
            # ... so they took no longer than with a fast Redis (this host is shared: margin).
            assert statistics.median(slow) < statistics.median(fast) + delay / 2, (fast, slow)

            # What Redis holds is still worth its round trip: served from Redis, same tokens.
            assert http("POST", f"{url}/kvpanel/v1/tiers/cpu/clear", token=token)[0] == 200
            before = tier_status(url, token)["tiers"]["remote"]["hits"]
            assert tokens(url, tiny_llama, kept) == ref
            deadline = time.monotonic() + 10
            while True:
                after = tier_status(url, token)["tiers"]["remote"]
                if after["hits"] - before >= 2 or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            assert after["hits"] - before >= 2, after
        finally:
            assert server.stop() == 0
