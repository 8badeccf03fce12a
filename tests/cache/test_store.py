import time
from pathlib import Path

import pytest
import torch
from conftest import CHUNK_BYTES, key, payload

from kvpanel.cache import disk_format as fmt
from kvpanel.cache.keys import Fingerprint
from kvpanel.cache.store import LookupState, TieredStore


def store_chunks(store: TieredStore, ids: list[int]) -> None:
    res = store.reserve([key(i) for i in ids])
    assert res is not None
    for k, slot in zip(res.keys, res.slots, strict=True):
        store.view(slot).copy_(payload(int.from_bytes(k, "little")))
    store.commit(res.keys)


def wait_state(store: TieredStore, k: bytes, timeout: float = 5.0) -> LookupState:
    deadline = time.monotonic() + timeout
    while (state := store.lookup(k)) is LookupState.PENDING:  # type: ignore[arg-type]
        assert time.monotonic() < deadline
        time.sleep(0.001)
    return state


def test_cpu_only(fp: Fingerprint) -> None:
    with TieredStore(fp, cpu_bytes=4 * CHUNK_BYTES) as store:
        store_chunks(store, [1, 2])
        assert store.lookup(key(1)) is LookupState.HIT
        assert store.lookup(key(3)) is LookupState.MISS
        slots = store.acquire([key(2)])
        assert torch.equal(store.view(slots[0]), payload(2))
        store.release([key(2)])
        stats = store.stats()
        assert stats["cpu"].hits == 1 and stats["cpu"].misses == 1
        assert stats["disk"].note == "disabled"
        assert store.flush(1)


def test_write_through_then_promotion(tmp_path: Path, fp: Fingerprint) -> None:
    with TieredStore(
        fp, cpu_bytes=2 * CHUNK_BYTES, disk_path=str(tmp_path), disk_bytes=1 << 20
    ) as store:
        store_chunks(store, [1, 2])
        assert store.flush(5)
        assert store.disk is not None and store.disk.contains(key(1))
        # Written-through slots are unpinned again once on disk: they can be evicted.
        store.clear("cpu")
        assert store.cpu.used_bytes == 0
        assert store.lookup(key(1)) is LookupState.PENDING
        assert store.has_pending() or store.lookup(key(1)) is LookupState.HIT
        assert wait_state(store, key(1)) is LookupState.HIT
        slot = store.acquire([key(1)])[0]
        assert torch.equal(store.view(slot), payload(1))
        store.release([key(1)])
        s = store.stats()
        # lookup #1: cpu miss + disk hit; PENDING polls count nothing; final: cpu hit(s).
        assert s["cpu"].misses == 1 and s["disk"].hits == 1 and s["disk"].misses == 0
        assert s["cpu"].hits >= 1


def test_restart_serves_from_disk(tmp_path: Path, fp: Fingerprint) -> None:
    with TieredStore(fp, cpu_bytes=4 * CHUNK_BYTES, disk_path=tmp_path, disk_bytes=1 << 20) as s:
        store_chunks(s, [7])
    with TieredStore(fp, cpu_bytes=4 * CHUNK_BYTES, disk_path=tmp_path, disk_bytes=1 << 20) as s:
        assert s.lookup(key(7)) is LookupState.PENDING
        assert wait_state(s, key(7)) is LookupState.HIT
        assert torch.equal(s.view(s.acquire([key(7)])[0]), payload(7))


def test_corrupted_file_is_a_miss(tmp_path: Path, fp: Fingerprint) -> None:
    with TieredStore(fp, cpu_bytes=4 * CHUNK_BYTES, disk_path=tmp_path, disk_bytes=1 << 20) as s:
        store_chunks(s, [3])
        s.flush(5)
        s.clear("cpu")
        assert s.disk is not None
        p = fmt.chunk_path(s.disk.dir, key(3))
        raw = bytearray(p.read_bytes())
        raw[-1] ^= 0xFF
        p.write_bytes(bytes(raw))
        assert wait_state(s, key(3)) is LookupState.MISS
        assert not p.exists() and not s.cpu.contains(key(3))
        assert s.cpu.used_bytes == 0  # the promotion slot was dropped
        assert s.stats()["disk"].errors == 1


def test_no_cpu_room_is_an_immediate_miss(tmp_path: Path, fp: Fingerprint) -> None:
    with TieredStore(fp, cpu_bytes=CHUNK_BYTES, disk_path=tmp_path, disk_bytes=1 << 20) as s:
        store_chunks(s, [1])
        s.flush(5)
        s.acquire([key(1)])  # the only slot is pinned
        s.disk.put(key(2), payload(2))  # type: ignore[union-attr]
        assert s.lookup(key(2)) is LookupState.MISS
        s.release([key(1)])
        assert wait_state(s, key(2)) is LookupState.HIT


def test_resize_clear_and_bad_tier(tmp_path: Path, fp: Fingerprint) -> None:
    with TieredStore(fp, cpu_bytes=4 * CHUNK_BYTES, disk_path=tmp_path, disk_bytes=1 << 20) as s:
        store_chunks(s, [1, 2, 3])
        s.flush(5)
        assert len(s.resize("cpu", CHUNK_BYTES)) >= 2
        assert s.stats()["cpu"].capacity_bytes == CHUNK_BYTES
        assert set(s.clear("disk")) == {key(1), key(2), key(3)}
        with pytest.raises(ValueError):
            s.resize("gpu", 0)
        with pytest.raises(ValueError):
            s.clear("tape")
    with TieredStore(fp, cpu_bytes=0) as s:
        assert s.resize("disk", 0) == [] and s.clear("disk") == []
        with pytest.raises(ValueError):
            s.resize("disk", 1 << 20)
        assert s.reserve([key(1)]) is None
