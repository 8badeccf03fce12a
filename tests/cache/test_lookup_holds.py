"""A CPU hit is held from its lookup to the scheduler's step end: an eviction by another thread
or an operator's clear in between cannot make the step's acquire fail."""

from __future__ import annotations

import pytest

from kvpanel.cache.cpu_tier import CpuTier
from kvpanel.cache.keys import ChunkKey
from kvpanel.cache.lookup_holds import LookupHolds

SLOT = 64


def key(i: int) -> ChunkKey:
    return ChunkKey(i.to_bytes(16, "little"))


def filled(n: int, capacity: int) -> CpuTier:
    cpu = CpuTier(capacity * SLOT, SLOT)
    for i in range(n):
        assert cpu.insert(key(i), bytes([i]) * SLOT)
    return cpu


def test_a_held_chunk_survives_eviction_pressure_and_goes_after_release():
    cpu = filled(2, capacity=2)
    holds = LookupHolds(cpu)
    assert holds.hold(key(0)) and holds.hold(key(0)) and len(holds) == 1  # once per step
    # Room for a new chunk (a Redis fetch, a store) evicts the unheld one, never the held one.
    assert cpu.reserve([key(9)]) is not None
    assert cpu.contains(key(0)) and not cpu.contains(key(1))
    assert cpu.reserve([key(8)]) is None  # only the held chunk is left to evict: no room
    (slot,) = cpu.acquire([key(0)])
    assert bytes(cpu.view(slot)) == bytes([0]) * SLOT
    cpu.release([key(0)])
    holds.release_all()
    assert len(holds) == 0
    assert cpu.reserve([key(8)]) is not None  # evictable again


def test_a_chunk_cleared_while_held_is_still_read_by_the_step_then_dropped():
    cpu = filled(1, capacity=2)
    holds = LookupHolds(cpu)
    assert holds.hold(key(0))
    assert cpu.clear() == [key(0)]
    assert not cpu.lookup(key(0))  # invisible to the next lookups at once
    (slot,) = cpu.acquire([key(0)])  # this step's load still gets the bytes it was promised
    assert bytes(cpu.view(slot)) == bytes([0]) * SLOT
    cpu.release([key(0)])
    holds.release_all()
    assert cpu.stats().used_bytes == 0  # the last unpin dropped it
    with pytest.raises(KeyError):
        cpu.acquire([key(0)])


def test_a_gone_chunk_is_not_held_and_old_holds_expire():
    cpu = filled(1, capacity=2)
    holds = LookupHolds(cpu, max_age_s=0.0)
    assert not holds.hold(key(5))
    assert holds.hold(key(0))
    cpu.clear()
    assert holds.hold(key(0)) is False  # the stale hold went first, and key 0 is cleared
    assert cpu.stats().used_bytes == 0
