"""Write-behind to disk: nothing lost while the CPU tier holds a chunk, drops counted, progress."""

import threading
import time
from pathlib import Path

import torch
from conftest import CHUNK_BYTES, key, payload

from kvpanel.cache.disk_tier import DiskTier
from kvpanel.cache.keys import Fingerprint
from kvpanel.cache.store import TieredStore


def commit(store: TieredStore, i: int) -> None:
    res = store.reserve([key(i)])
    assert res is not None and res.keys == [key(i)]
    store.view(res.slots[0]).copy_(payload(i))
    store.commit(res.keys)


def gate_disk(store: TieredStore) -> threading.Event:
    """Hold every disk write until the returned event is set (a disk slower than the engine)."""
    assert store.disk is not None
    gate = threading.Event()
    real = store.disk.write_many

    def slow(items):  # type: ignore[no-untyped-def]
        gate.wait(30)
        return real(items)

    store.disk.write_many = slow  # type: ignore[method-assign]
    return gate


def test_slow_disk_loses_nothing_while_cpu_has_room(tmp_path: Path, fp: Fingerprint) -> None:
    """600 commits queued behind a stalled disk (more than any fixed write queue would hold):
    every one reaches the disk once it moves, none is dropped."""
    n = 600
    with TieredStore(
        fp, cpu_bytes=(n + 8) * CHUNK_BYTES, disk_path=tmp_path, disk_bytes=(n + 8) << 13
    ) as store:
        gate = gate_disk(store)
        for i in range(n):
            commit(store, i)
        queued = store.stats()["disk"].queued_bytes
        assert queued >= (n - 4) * CHUNK_BYTES  # at most one chunk per writer thread taken
        gate.set()
        assert store.flush(30)
        s = store.stats()["disk"]
        assert (s.chunks, s.dropped, s.queued_bytes) == (n, 0, 0)
        assert store.disk is not None
        out = torch.empty(CHUNK_BYTES, dtype=torch.uint8)
        for i in (0, n // 2, n - 1):
            assert store.disk.read_into(key(i), out) and torch.equal(out, payload(i))


def test_evicted_before_written_is_counted_dropped(tmp_path: Path, fp: Fingerprint) -> None:
    """A CPU tier of 4 slots, 12 commits behind a stalled disk: the chunks the CPU tier had to
    evict first are counted as dropped, the rest are written, nothing is unaccounted for."""
    with TieredStore(
        fp, cpu_bytes=4 * CHUNK_BYTES, disk_path=tmp_path, disk_bytes=1 << 20, disk_writers=1
    ) as store:
        gate = gate_disk(store)
        committed = 0
        for i in range(12):
            res = store.reserve([key(i)])
            if res is None:  # every slot pinned by the stalled writer or queued: CPU is full
                continue
            store.view(res.slots[0]).copy_(payload(i))
            store.commit(res.keys)
            committed += 1
        gate.set()
        assert store.flush(30)
        s = store.stats()["disk"]
        assert s.dropped > 0
        assert s.chunks + s.dropped == committed
        assert store.disk is not None
        out = torch.empty(CHUNK_BYTES, dtype=torch.uint8)
        stored = store.disk.keys()
        for k in stored:
            assert store.disk.read_into(k, out)
            assert torch.equal(out, payload(int.from_bytes(k, "little")))


def test_flush_reports_bytes_left(tmp_path: Path, fp: Fingerprint) -> None:
    with TieredStore(
        fp, cpu_bytes=64 * CHUNK_BYTES, disk_path=tmp_path, disk_bytes=1 << 20
    ) as store:
        gate = gate_disk(store)
        for i in range(20):
            commit(store, i)
        seen: list[int] = []
        threading.Timer(0.3, gate.set).start()
        assert store.flush(30, progress=seen.append)
        assert seen and seen[0] == 20 * CHUNK_BYTES and all(b > 0 for b in seen)


def test_close_writes_what_is_queued(tmp_path: Path, fp: Fingerprint) -> None:
    store = TieredStore(fp, cpu_bytes=64 * CHUNK_BYTES, disk_path=tmp_path, disk_bytes=1 << 20)
    gate = gate_disk(store)
    for i in range(10):
        commit(store, i)
    threading.Timer(0.2, gate.set).start()
    t0 = time.monotonic()
    store.close()
    assert time.monotonic() - t0 >= 0.15
    again = DiskTier(tmp_path, fp, 1 << 20)
    try:
        assert sorted(again.keys()) == sorted(key(i) for i in range(10))
    finally:
        again.close()


def test_write_rate_counts_busy_time_not_idle_time(tmp_path: Path, fp: Fingerprint) -> None:
    """The disk's write rate in the stats is bytes over the time a writer was busy: a disk
    that takes 0.1 s per chunk reads as at most a chunk per 0.1 s, and a 0.6 s pause between
    two writes (an empty queue) does not make it look slower."""
    with TieredStore(
        fp, cpu_bytes=8 * CHUNK_BYTES, disk_path=tmp_path, disk_bytes=1 << 20, disk_writers=1
    ) as store:
        assert store.disk is not None
        assert store.stats()["disk"].write_bytes_per_s is None  # nothing written yet
        real = store.disk.write_many

        def slow(items):  # type: ignore[no-untyped-def]
            time.sleep(0.1 * len(items))
            return real(items)

        store.disk.write_many = slow  # type: ignore[method-assign]
        commit(store, 0)
        assert store.flush(30)
        time.sleep(0.6)
        commit(store, 1)
        assert store.flush(30)
        rate = store.stats()["disk"].write_bytes_per_s
        assert rate is not None
        per_chunk = CHUNK_BYTES / 0.1
        # Upper bound: each write slept 0.1 s per chunk. Lower bound: far above the wall-clock
        # figure, which the 0.6 s pause would cut to 2 chunks / 0.8 s = 0.25 per 0.1 s.
        assert 0.5 * per_chunk < rate <= per_chunk, (rate, per_chunk)


def test_a_failed_write_adds_no_bytes_to_the_rate(tmp_path: Path, fp: Fingerprint) -> None:
    with TieredStore(
        fp, cpu_bytes=8 * CHUNK_BYTES, disk_path=tmp_path, disk_bytes=1 << 20, disk_writers=1
    ) as store:
        assert store.disk is not None
        real = store.disk.write_many

        def failing(items):  # type: ignore[no-untyped-def]
            time.sleep(0.06)
            return [False] * len(items)

        store.disk.write_many = failing  # type: ignore[method-assign]
        commit(store, 0)
        assert store.flush(30)
        # Busy time but no bytes written: no figure (BusyRate needs bytes), not a speed.
        assert store.stats()["disk"].write_bytes_per_s is None

        def slow(items):  # type: ignore[no-untyped-def]
            time.sleep(0.06)
            return real(items)

        store.disk.write_many = slow  # type: ignore[method-assign]
        commit(store, 1)
        assert store.flush(30)
        # The failed write's time still counts as busy: a failing disk reads as slower.
        rate = store.stats()["disk"].write_bytes_per_s
        assert rate is not None and 0 < rate < CHUNK_BYTES / 0.06, rate


def test_many_short_writes_on_four_writers_give_a_rate(tmp_path: Path, fp: Fingerprint) -> None:
    """A fast disk: 3 ms per chunk on 4 writers. The rate is measured (a per-job forgetting
    weight once kept it None forever) and counts the writers' overlapping time once."""
    n = 80
    with TieredStore(
        fp, cpu_bytes=(n + 8) * CHUNK_BYTES, disk_path=tmp_path, disk_bytes=(n + 8) << 13
    ) as store:
        assert store.disk is not None
        real = store.disk.write_many

        def fast(items):  # type: ignore[no-untyped-def]
            time.sleep(0.003 * len(items))
            return real(items)

        store.disk.write_many = fast  # type: ignore[method-assign]
        for i in range(n):
            commit(store, i)
        assert store.flush(30)
        rate = store.stats()["disk"].write_bytes_per_s
        assert rate is not None and rate <= 4 * CHUNK_BYTES / 0.003, rate
