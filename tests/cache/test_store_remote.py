"""TieredStore with a remote (Redis) tier: sharing between stores, lookup order, health."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import CHUNK_BYTES, key, payload
from test_remote_tier import wait_for

from kvpanel.cache import remote_format as fmt
from kvpanel.cache.keys import Fingerprint
from kvpanel.cache.store import LookupState, TieredStore
from tests.redis_server import RedisServer, free_port, require_redis

FAST = {"probe_interval_s": 0.1}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    require_redis()
    srv = RedisServer(tmp_path / "redis").start()
    yield srv
    srv.kill()


def remote_store(url: str, fp: Fingerprint, chunks: int = 4, **kw) -> TieredStore:  # type: ignore[no-untyped-def]
    return TieredStore(
        fp, cpu_bytes=chunks * CHUNK_BYTES, remote_url=url, remote_options=FAST, **kw
    )


def store_chunks(store: TieredStore, ids: list[int]) -> None:
    res = store.reserve([key(i) for i in ids])
    assert res is not None
    for k, slot in zip(res.keys, res.slots, strict=True):
        store.view(slot).copy_(payload(int.from_bytes(k, "little")))
    store.commit(res.keys)


def settle(store: TieredStore, k: bytes, timeout: float = 5.0) -> LookupState:
    """Poll like vLLM's scheduler does until the answer is final."""
    deadline = time.monotonic() + timeout
    while (state := store.lookup(k)) is LookupState.PENDING:  # type: ignore[arg-type]
        assert time.monotonic() < deadline
        time.sleep(0.001)
    return state


def read(store: TieredStore, i: int) -> torch.Tensor:
    slot = store.acquire([key(i)])[0]
    try:
        return store.view(slot).clone()
    finally:
        store.release([key(i)])


def test_one_store_writes_another_hits(server: RedisServer, fp: Fingerprint) -> None:
    with remote_store(server.url, fp) as a, remote_store(server.url, fp) as b:
        store_chunks(a, [1, 2])
        assert a.flush(5)  # flush covers the Redis write queue
        assert server.client().dbsize() == 2
        assert b.lookup(key(1)) is LookupState.PENDING  # B's own CPU tier does not have it
        assert settle(b, key(1)) is LookupState.HIT
        assert torch.equal(read(b, 1), payload(1))
        rs = b.stats()["remote"]
        assert rs.hits == 1 and rs.misses == 0 and rs.bytes_out == CHUNK_BYTES and rs.healthy
        assert a.stats()["remote"].bytes_in == 2 * CHUNK_BYTES
        # A's CPU slots were unpinned after the write-through: they can all be evicted.
        assert len(a.clear("cpu")) == 2 and a.cpu.used_bytes == 0


def test_cold_lookup_is_pending_then_miss_and_evicts_nothing(
    server: RedisServer, fp: Fingerprint
) -> None:
    with remote_store(server.url, fp, chunks=2) as s:
        store_chunks(s, [1, 2])  # the CPU tier is full
        assert s.lookup(key(9)) is LookupState.PENDING
        assert settle(s, key(9)) is LookupState.MISS
        # Remembered: no second GET, and a CPU slot was never reserved for it.
        assert s.lookup(key(9)) is LookupState.MISS and not s.has_pending()
        assert sorted(s.cpu.keys()) == sorted([key(1), key(2)])
        assert s.stats()["remote"].misses == 2


def test_lookup_order_cpu_disk_remote(server: RedisServer, fp: Fingerprint, tmp_path: Path) -> None:
    with remote_store(server.url, fp, disk_path=str(tmp_path / "disk"), disk_bytes=1 << 20) as s:
        store_chunks(s, [1])
        assert s.flush(5)
        assert s.disk is not None and s.disk.contains(key(1))
        assert server.client().dbsize() == 1
        assert s.lookup(key(1)) is LookupState.HIT  # CPU first: nobody else asked
        s.clear("cpu")
        assert settle(s, key(1)) is LookupState.HIT
        st = s.stats()
        assert st["disk"].hits == 1 and st["remote"].hits == 0  # disk before remote
        s.clear("cpu")
        assert s.disk.evict(key(1))
        assert settle(s, key(1)) is LookupState.HIT
        assert s.stats()["remote"].hits == 1
        assert torch.equal(read(s, 1), payload(1))


def test_corrupt_value_is_miss_error_and_deleted(server: RedisServer, fp: Fingerprint) -> None:
    name = fmt.redis_key(fp.hex(), key(1))
    with remote_store(server.url, fp) as s:
        server.client().set(name, b"\x00" * (CHUNK_BYTES + 64))
        assert settle(s, key(1)) is LookupState.MISS
        assert s.stats()["remote"].errors == 1
        assert not server.client().exists(name)
        assert s.cpu.used_bytes == 0


def test_redis_down_serving_continues(server: RedisServer, fp: Fingerprint) -> None:
    with remote_store(server.url, fp) as s:
        store_chunks(s, [1])
        assert s.flush(5)
        server.kill()
        s.clear("cpu")
        # The first lookup starts a GET that fails; from then on lookups are immediate misses.
        assert settle(s, key(1)) is LookupState.MISS
        t0 = time.perf_counter()
        for _ in range(100):
            assert s.lookup(key(1)) is LookupState.MISS
        assert time.perf_counter() - t0 < 0.1
        store_chunks(s, [2])  # commits keep working (the Redis write is refused)
        assert s.lookup(key(2)) is LookupState.HIT and s.flush(2)
        assert len(s.clear("cpu")) == 1  # and the refused write left no slot pinned
        rs = s.stats()["remote"]
        assert not rs.healthy and rs.note.startswith("unreachable: ")
        server.start()
        wait_for(lambda: s.stats()["remote"].healthy, timeout=5)
        store_chunks(s, [3])
        assert s.flush(5)
        s.clear("cpu")
        assert settle(s, key(3)) is LookupState.HIT  # hits resume, same store and tier


def test_unreachable_url_and_api_compat(fp: Fingerprint) -> None:
    with TieredStore(fp, cpu_bytes=2 * CHUNK_BYTES) as plain:
        assert set(plain.stats()) == {"cpu", "disk"}  # no remote entry unless configured
        assert plain.clear("remote") == [] and plain.resize("remote", 0) == []
    url = f"redis://127.0.0.1:{free_port()}"
    with TieredStore(fp, cpu_bytes=2 * CHUNK_BYTES, remote_url=url) as s:
        assert not s.stats()["remote"].healthy
        assert s.lookup(key(1)) is LookupState.MISS and not s.has_pending()
        store_chunks(s, [1])
        assert s.flush(1) and s.lookup(key(1)) is LookupState.HIT
        with pytest.raises(ValueError):
            s.resize("remote", 1 << 30)
    with pytest.raises(ValueError):
        TieredStore(fp, cpu_bytes=CHUNK_BYTES, remote_url="memcached://h:1")


def test_clear_remote_only_touches_this_fingerprint(server: RedisServer, fp: Fingerprint) -> None:
    server.client().set("someone-else", b"x")
    with remote_store(server.url, fp) as s:
        store_chunks(s, [1, 2])
        assert s.flush(5)
        assert sorted(s.clear("remote")) == sorted([key(1), key(2)])
    assert server.client().keys("*") == [b"someone-else"]
