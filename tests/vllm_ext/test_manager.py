"""KvpanelManager against a real TieredStore (no engine): what vLLM's repeated polls count."""

from __future__ import annotations

import pytest

from kvpanel.cache.keys import Fingerprint
from kvpanel.cache.store import TieredStore
from kvpanel.vllm_ext.compat import LookupResult, ReqContext
from kvpanel.vllm_ext.manager import KvpanelManager

CHUNK = 4096


def make_fp() -> Fingerprint:
    return Fingerprint(
        model="m" * 32,
        dtype="bfloat16",
        layout="test",
        block_tokens=16,
        chunk_tokens=16,
        chunk_bytes=CHUNK,
    )


def test_polls_of_one_request_count_each_chunk_once() -> None:
    with TieredStore(make_fp(), cpu_bytes=8 * CHUNK) as store:
        manager = KvpanelManager(store, make_fp())
        a, b = ReqContext(req_id="a"), ReqContext(req_id="b")
        out = manager.prepare_store([b"k1", b"k2"], a)
        assert out is not None and len(out.keys_to_store) == 2
        manager.complete_store([b"k1", b"k2"], a)
        for _ in range(5):  # vLLM re-asks while request b waits for GPU room
            assert manager.lookup(b"k1", b) is LookupResult.HIT
            assert manager.lookup(b"k2", b) is LookupResult.HIT
            assert manager.lookup(b"k3", b) is LookupResult.MISS
        cpu = store.stats()["cpu"]
        assert (cpu.hits, cpu.misses) == (2, 1)
        manager.lookup(b"k1", ReqContext(req_id="c"))  # another request counts again
        assert store.stats()["cpu"].hits == 3


def test_remembered_keys_are_the_fingerprinted_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    import kvpanel.vllm_ext.manager as manager_mod
    from kvpanel.cache.keys import chunk_key

    monkeypatch.setattr(manager_mod, "_KEY_CACHE", 2)  # clears every third distinct key
    with TieredStore(make_fp(), cpu_bytes=8 * CHUNK) as store:
        manager = KvpanelManager(store, make_fp())
        a = ReqContext(req_id="a")
        blocks = [b"k1", b"k2", b"k3", b"k4"]
        out = manager.prepare_store(blocks, a)
        assert out is not None and len(out.keys_to_store) == 4
        manager.complete_store(blocks, a)
        # What the store holds is keyed exactly as chunk_key() keys it, cache or not.
        assert set(store.cpu.keys()) == {chunk_key(make_fp(), k) for k in blocks}
        for _ in range(3):
            assert all(manager.lookup(k, a) is LookupResult.HIT for k in blocks)
        assert manager.lookup(b"k5", a) is LookupResult.MISS
        assert len(manager._key_cache) <= 2
