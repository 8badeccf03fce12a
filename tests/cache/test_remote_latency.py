"""The Redis tier at speed: several keys per round trip, pipelined writes, hiredis, and the lookup
budget (a slow Redis must not delay prompts it cannot help)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.utils
import torch
from conftest import CHUNK_BYTES, key, payload
from test_remote_tier import as_tensor, calls, wait_for
from test_store_remote import read, remote_store, settle, store_chunks

from kvpanel.cache.keys import Fingerprint
from kvpanel.cache.remote_tier import RemoteTier
from kvpanel.cache.store import LookupState, TieredStore
from tests.delay_proxy import DelayProxy
from tests.redis_server import RedisServer, require_redis

DELAY = 0.3


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    require_redis()
    srv = RedisServer(tmp_path / "redis").start()
    yield srv
    srv.kill()


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[DelayProxy]:
    with DelayProxy(server.port, DELAY) as p:
        yield p


def test_redis_py_parses_replies_with_hiredis() -> None:
    # redis-py's own parser reads a 6 MiB value ~5x slower (docs/benchmarks.md); hiredis is a
    # declared dependency, and redis-py picks it up by itself when it is importable.
    assert redis.utils.HIREDIS_AVAILABLE


def test_get_many_is_one_round_trip(
    server: RedisServer, proxy: DelayProxy, fp: Fingerprint
) -> None:
    tier = RemoteTier(proxy.url(), fp, probe_interval_s=0.1)
    try:
        assert tier.put_many([(key(i), payload(i)) for i in range(4)]) == [True] * 4
        before = calls(server)
        t0 = time.perf_counter()
        got = tier.get_many([key(i) for i in range(8)], expect_bytes=CHUNK_BYTES)
        took = time.perf_counter() - t0
        assert took < 2 * DELAY, f"{took:.2f}s for 8 keys: more than one round trip"
        for i in range(4):
            assert got[i] is not None and torch.equal(as_tensor(got[i]), payload(i))
        assert got[4:] == [None] * 4
        after = calls(server)
        assert after["eval"] - before.get("eval", 0) == 8
        assert after["getrange"] - before.get("getrange", 0) == 8
        # The absent ones are remembered: the store would not ask again.
        assert not any(tier.may_have(key(i)) for i in range(4, 8))
    finally:
        tier.close()


def test_put_many_from_several_threads(server: RedisServer, fp: Fingerprint) -> None:
    tier = RemoteTier(server.url, fp)
    try:
        results: list[list[bool]] = []

        def writer(base: int) -> None:
            results.append(tier.put_many([(key(base + i), payload(base + i)) for i in range(8)]))

        threads = [threading.Thread(target=writer, args=(100 * t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [[True] * 8] * 4
        for base in range(0, 400, 100):
            got = tier.get_many([key(base + i) for i in range(8)], expect_bytes=CHUNK_BYTES)
            for i, g in enumerate(got):
                assert g is not None and torch.equal(as_tensor(g), payload(base + i))
        assert tier.stats().bytes_in == 32 * CHUNK_BYTES
    finally:
        tier.close()


def test_put_many_reports_refused_items_without_raising(
    server: RedisServer, fp: Fingerprint
) -> None:
    big = 1 << 20
    admin = server.client()
    admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) + 3 * big // 2)
    tier = RemoteTier(server.url, fp)
    try:
        ok = tier.put_many([(key(i), payload(i, big)) for i in range(6)])
        assert not all(ok)  # Redis said OOM once it was full: those items only
        assert tier.stats().errors == ok.count(False) and tier.healthy
        for i, stored in enumerate(ok):
            got = tier.get(key(i), expect_bytes=big)
            assert (got is not None) is stored
            assert got is None or torch.equal(as_tensor(got), payload(i, big))
        admin.config_set("maxmemory", 0)
        not_cpu = torch.empty(big, dtype=torch.uint8, device="meta")
        errors = tier.stats().errors
        # The connection is fine; a payload that is not CPU bytes is refused alone.
        assert tier.put_many([(key(8), not_cpu), (key(9), payload(9, big))]) == [False, True]
        assert tier.stats().errors == errors + 1
    finally:
        tier.close()


def test_slow_redis_answers_cold_lookups_at_once_and_still_serves_its_chunks(
    server: RedisServer, proxy: DelayProxy, fp: Fingerprint
) -> None:
    """Behind a 0.3 s reply delay: a key nobody stored is a MISS right away (no GET, nothing
    pending); keys this store wrote, and keys another server wrote (found by the index's SCAN),
    are still fetched and hit. Once Redis is fast again, unknown keys are asked for again."""
    with remote_store(server.url, fp) as other:
        store_chunks(other, [1])
        assert other.flush(5)
    options = {"probe_interval_s": 0.1, "index_interval_s": 0.1}
    with TieredStore(
        fp, cpu_bytes=4 * CHUNK_BYTES, remote_url=proxy.url(), remote_options=options
    ) as s:
        store_chunks(s, [2])
        assert s.flush(10)
        t0 = time.perf_counter()
        for i in range(10, 20):
            assert s.lookup(key(i)) is LookupState.MISS
        assert time.perf_counter() - t0 < 0.05 and not s.has_pending()
        assert "over lookup budget" in s.stats()["remote"].note

        s.clear("cpu")
        assert s.lookup(key(2)) is LookupState.PENDING  # ours: known to be there
        assert settle(s, key(2)) is LookupState.HIT and torch.equal(read(s, 2), payload(2))

        # Another server's chunk: a miss until a SCAN lists it, then fetched.
        wait_for(lambda: s.lookup(key(1)) is not LookupState.MISS, timeout=10)
        assert settle(s, key(1)) is LookupState.HIT and torch.equal(read(s, 1), payload(1))

        proxy.delay_s = 0.0  # fast again: the PINGs bring the round trip under the budget
        wait_for(lambda: s.lookup(key(30)) is LookupState.PENDING, timeout=10)
        assert settle(s, key(30)) is LookupState.MISS
        assert "over lookup budget" not in s.stats()["remote"].note
