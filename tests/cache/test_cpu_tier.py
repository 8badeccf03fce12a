import threading

import pytest
import torch
from conftest import key, payload

from kvpanel.cache.cpu_tier import CpuTier

SLOT = 1024


def fill(tier: CpuTier, ids: list[int]) -> None:
    for i in ids:
        assert tier.insert(key(i), payload(i, SLOT))


def test_reserve_commit_acquire_round_trip() -> None:
    tier = CpuTier(4 * SLOT, SLOT)
    res = tier.reserve([key(1), key(2)])
    assert res is not None and res.keys == [key(1), key(2)] and res.evicted == []
    assert not tier.contains(key(1))  # WRITING is invisible
    for i, slot in zip((1, 2), res.slots, strict=True):
        tier.view(slot).copy_(payload(i, SLOT))
    tier.commit(res.keys)
    assert tier.lookup(key(1)) and not tier.lookup(key(9))
    slots = tier.acquire([key(2), key(1)])
    assert torch.equal(tier.view(slots[0]), payload(2, SLOT))
    assert torch.equal(tier.view(slots[1]), payload(1, SLOT))
    tier.release([key(2), key(1)])
    again = tier.reserve([key(1), key(3)])
    assert again is not None and again.keys == [key(3)]  # present keys are skipped
    tier.commit(again.keys, success=False)
    assert not tier.contains(key(3))
    s = tier.stats()
    assert (s.hits, s.misses, s.chunks, s.name) == (1, 1, 2, "cpu")
    assert s.bytes_in == 2 * SLOT and s.bytes_out == 2 * SLOT
    assert tier.used_bytes == 2 * SLOT


def test_acquire_missing_raises_and_pins_nothing() -> None:
    tier = CpuTier(4 * SLOT, SLOT)
    fill(tier, [1])
    with pytest.raises(KeyError):
        tier.acquire([key(1), key(2)])
    assert tier.evict(key(1)) and not tier.contains(key(1))  # was not left pinned


def test_lru_eviction_order() -> None:
    tier = CpuTier(3 * SLOT, SLOT)
    fill(tier, [1, 2, 3])
    assert tier.lookup(key(1))  # 2 is now the oldest
    res = tier.reserve([key(4)])
    assert res is not None and res.evicted == [key(2)]
    tier.commit(res.keys)
    assert set(tier.keys()) == {key(1), key(3), key(4)}
    assert tier.stats().evictions == 1


def test_pinned_never_evicted_and_all_or_nothing() -> None:
    tier = CpuTier(3 * SLOT, SLOT)
    fill(tier, [1, 2, 3])
    tier.acquire([key(1), key(2)])
    assert tier.reserve([key(4), key(5)]) is None  # only one evictable slot
    assert set(tier.keys()) == {key(1), key(2), key(3)}  # and nothing was evicted
    res = tier.reserve([key(4)])
    assert res is not None and res.evicted == [key(3)]
    assert tier.reserve([key(5)]) is None  # 4 is WRITING (pinned), 1 and 2 acquired
    # Keys of the request itself are never evicted to make room for it.
    tier.commit(res.keys)
    tier.release([key(1), key(2)])
    assert tier.reserve([key(1), key(2), key(4), key(5)]) is None


def test_disabled_tier() -> None:
    tier = CpuTier(0, SLOT)
    assert tier.reserve([key(1)]) is None
    assert not tier.insert(key(1), payload(1, SLOT))
    assert not tier.lookup(key(1))
    assert tier.allocated_bytes == 0 and tier.stats().note == "disabled"


def test_capacity_rounds_down_and_segments() -> None:
    tier = CpuTier(10 * SLOT + 100, SLOT, segment_bytes=4 * SLOT)
    assert tier.capacity_bytes == 10 * SLOT == tier.allocated_bytes
    fill(tier, list(range(10)))
    for i in range(10):
        slot = tier.acquire([key(i)])[0]
        assert torch.equal(tier.view(slot), payload(i, SLOT))
        tier.release([key(i)])


def test_grow_keeps_data() -> None:
    tier = CpuTier(2 * SLOT, SLOT, segment_bytes=2 * SLOT)
    fill(tier, [1, 2])
    assert tier.resize(5 * SLOT) == []
    assert tier.capacity_bytes == 5 * SLOT == tier.allocated_bytes
    fill(tier, [3, 4, 5])
    assert len(tier.keys()) == 5
    slot = tier.acquire([key(1)])[0]
    assert torch.equal(tier.view(slot), payload(1, SLOT))


def test_shrink_while_pinned_keeps_view_until_release() -> None:
    tier = CpuTier(8 * SLOT, SLOT, segment_bytes=4 * SLOT)
    fill(tier, list(range(8)))  # low slots first: keys 4..7 live in segment 1
    slot = tier.acquire([key(6)])[0]
    view = tier.view(slot)
    evicted = tier.resize(4 * SLOT)
    assert set(evicted) == {key(4), key(5), key(6), key(7)}
    assert tier.capacity_bytes == 4 * SLOT
    assert tier.allocated_bytes == 8 * SLOT  # retiring segment still held for the reader
    assert not tier.contains(key(6))
    assert torch.equal(view, payload(6, SLOT))
    assert torch.equal(tier.view(slot), payload(6, SLOT))
    # New chunks never land in the retiring segment.
    fill(tier, [10, 11])
    assert torch.equal(view, payload(6, SLOT))
    tier.release([key(6)])
    assert tier.allocated_bytes == 4 * SLOT
    with pytest.raises(KeyError):
        tier.view(slot)


def test_shrink_to_zero_frees_everything() -> None:
    tier = CpuTier(6 * SLOT, SLOT, segment_bytes=4 * SLOT)
    fill(tier, list(range(6)))
    res = tier.reserve([key(99)])
    assert res is not None
    assert len(tier.resize(0)) == 6
    assert tier.allocated_bytes > 0  # the WRITING slot is pinned
    tier.commit(res.keys)  # a write into a retired segment is dropped, not published
    assert not tier.contains(key(99))
    assert tier.allocated_bytes == 0 and tier.used_bytes == 0 and tier.capacity_bytes == 0


def test_shrink_partial_segment_and_regrow() -> None:
    tier = CpuTier(4 * SLOT, SLOT, segment_bytes=4 * SLOT)
    tier.resize(3 * SLOT)
    assert tier.capacity_bytes == 3 * SLOT == tier.allocated_bytes
    fill(tier, [1, 2, 3])
    tier.resize(7 * SLOT)
    assert tier.capacity_bytes == 7 * SLOT == tier.allocated_bytes
    assert len(tier.keys()) == 3


def test_clear_with_pins() -> None:
    tier = CpuTier(4 * SLOT, SLOT)
    fill(tier, [1, 2, 3])
    tier.acquire([key(1)])
    assert set(tier.clear()) == {key(1), key(2), key(3)}
    assert tier.keys() == [] and tier.used_bytes == SLOT
    tier.release([key(1)])
    assert tier.used_bytes == 0
    assert tier.reserve([key(i) for i in range(4)]) is not None


def test_insert_accepts_bytes_and_checks_length() -> None:
    tier = CpuTier(2 * SLOT, SLOT)
    data = bytes(payload(5, SLOT).tolist())
    assert tier.insert(key(5), data)
    assert torch.equal(tier.view(tier.acquire([key(5)])[0]), payload(5, SLOT))
    with pytest.raises(ValueError):
        tier.insert(key(6), b"short")
    assert not tier.contains(key(6)) and tier.used_bytes == SLOT


def test_concurrent_use_is_consistent() -> None:
    tier = CpuTier(16 * SLOT, SLOT, segment_bytes=4 * SLOT)
    errors: list[BaseException] = []

    def worker(base: int) -> None:
        try:
            for i in range(base, base + 200):
                tier.insert(key(i), payload(i % 7, SLOT))
                if tier.lookup(key(i)):
                    try:
                        slot = tier.acquire([key(i)])[0]
                    except KeyError:
                        continue  # evicted by another thread in between
                    assert torch.equal(tier.view(slot), payload(i % 7, SLOT))
                    tier.release([key(i)])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def resizer() -> None:
        for n in (8, 16, 4, 12, 16):
            tier.resize(n * SLOT)

    threads = [threading.Thread(target=worker, args=(k * 1000,)) for k in range(4)]
    threads.append(threading.Thread(target=resizer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert tier.allocated_bytes == tier.capacity_bytes == 16 * SLOT
    assert tier.used_bytes <= tier.capacity_bytes
