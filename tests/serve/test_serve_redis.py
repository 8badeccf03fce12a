"""Two `kvpanel serve` instances share KV through one real Redis (the remote tier)."""

from __future__ import annotations

import random

import pytest

from tests.vllm_ext.test_remote_e2e import redis_url  # noqa: F401  (fixture)

from .conftest import complete, output_text, start, wait_status

pytestmark = pytest.mark.vllm


def test_prompt_served_by_a_is_a_hit_on_b(tiny_llama, tmp_path, redis_url):  # noqa: F811
    rng = random.Random(42)
    p = [rng.randrange(10, 30000) for _ in range(600)]
    a = start(
        tiny_llama, tmp_path / "a", "--cpu-cache-gb", "0.1", "--remote-url", redis_url, name="a"
    )
    b = start(
        tiny_llama, tmp_path / "b", "--cpu-cache-gb", "0.1", "--remote-url", redis_url, name="b"
    )
    try:
        text_a = output_text(complete(a.url, tiny_llama, p, max_tokens=8))
        wait_status(a, lambda s: s["tiers"]["remote"]["bytes_in"] > 0)  # written through
        text_b = output_text(complete(b.url, tiny_llama, p, max_tokens=8))
        s = wait_status(b, lambda s: s["tiers"]["remote"]["hits"] >= 2)
        assert s["tiers"]["remote"]["healthy"]
        assert s["tiers"]["cpu"]["chunks"] >= 2  # promoted into B's own CPU tier
        assert text_a == text_b
    finally:
        assert a.stop() == 0
        assert b.stop() == 0
