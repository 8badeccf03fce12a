"""The CPU tier's shared host pool (TP>1): segments the scheduler's store owns, mapped by worker
processes by name; freed segments unlinked and never renamed; stale pools of dead engines
removed; a pool of another layout refused."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kvpanel.cache.cpu_tier import CpuTier
from kvpanel.cache.host_pool import (
    SharedSegments,
    pool_directory,
    remove_stale_pools,
    segment_slots,
)
from kvpanel.cache.host_pool_map import SegmentMapper
from kvpanel.cache.keys import ChunkKey
from kvpanel.cache.store import TieredStore
from tests.cache.conftest import make_fp

SLOT = 4096
SEG = 4 * SLOT


def key(i: int) -> ChunkKey:
    return ChunkKey(i.to_bytes(16, "little"))


def shared_tier(pool: Path, capacity: int) -> CpuTier:
    spp = segment_slots(SLOT, SEG)
    return CpuTier(capacity, SLOT, segment_bytes=SEG, memory=SharedSegments(pool, SLOT, spp))


def _worker_writes(pool: str, slot: int, value: int, rank: int, ranks: int) -> None:
    # Another process, as a vLLM worker of one rank: its shard of the slot only.
    mapper = SegmentMapper(Path(pool))
    shard = mapper.slot_bytes // ranks
    mapper.slot(slot)[rank * shard : (rank + 1) * shard].fill_(value + rank)
    mapper.close()


def test_worker_processes_write_their_shards_the_store_reads_the_whole_slot(tmp_path):
    tier = shared_tier(tmp_path / "pool", 8 * SLOT)
    res = tier.reserve([key(1)])
    assert res is not None
    (slot,) = res.slots
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_worker_writes, args=(str(tmp_path / "pool"), slot, 10, r, 2))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    tier.commit(res.keys)
    view = tier.view(slot)
    assert torch.equal(view[: SLOT // 2], torch.full((SLOT // 2,), 10, dtype=torch.uint8))
    assert torch.equal(view[SLOT // 2 :], torch.full((SLOT // 2,), 11, dtype=torch.uint8))
    tier.close()
    assert not (tmp_path / "pool").exists()


def test_freed_segments_are_unlinked_and_their_indices_never_reused(tmp_path):
    pool = tmp_path / "pool"
    tier = shared_tier(pool, 8 * SLOT)  # two segments of 4 slots
    assert sorted(p.name for p in pool.glob("seg-*")) == ["seg-0", "seg-1"]
    mapper = SegmentMapper(pool)
    res = tier.reserve([key(i) for i in range(8)])
    assert res is not None
    tier.commit(res.keys)
    high = max(res.slots)
    mapper.slot(high).fill_(7)  # the worker maps segment 1
    tier.resize(4 * SLOT)  # retires one segment: its file goes at once (nothing pinned)
    names = sorted(p.name for p in pool.glob("seg-*"))
    assert len(names) == 1
    tier.resize(8 * SLOT)  # grows again: a new index, never the freed one's name
    grown = sorted(p.name for p in pool.glob("seg-*"))
    assert len(grown) == 2 and "seg-2" in grown
    res2 = tier.reserve([key(100 + i) for i in range(4)])
    assert res2 is not None
    for s in res2.slots:
        mapper.slot(s).fill_(9)
    tier.commit(res2.keys)
    for s in res2.slots:
        assert int(tier.view(s).min()) == 9 == int(tier.view(s).max())
    # The mapper let go of the freed segment's memory when it mapped the new one.
    assert mapper.mapped_bytes() <= 2 * SEG
    mapper.close()
    tier.close()


def test_pinned_segment_keeps_its_file_until_released(tmp_path):
    pool = tmp_path / "pool"
    tier = shared_tier(pool, 4 * SLOT)
    res = tier.reserve([key(1)])
    assert res is not None
    tier.commit(res.keys)
    (slot,) = tier.acquire([key(1)])  # an in-flight load
    tier.resize(0)
    assert list(pool.glob("seg-*")), "a worker may still be copying from it"
    SegmentMapper(pool).slot(slot)  # still mappable by the worker doing the copy
    tier.release([key(1)])
    assert not list(pool.glob("seg-*"))
    tier.close()


def test_store_with_host_pool_round_trips_and_removes_it(tmp_path):
    pool = tmp_path / "pool"
    fp = make_fp()
    with TieredStore(fp, cpu_bytes=4 * fp.chunk_bytes, host_pool=pool) as store:
        res = store.reserve([key(1)])
        assert res is not None
        SegmentMapper(pool).slot(res.slots[0]).fill_(5)
        store.commit(res.keys)
        (slot,) = store.acquire([key(1)])
        assert int(store.view(slot).min()) == 5
        store.release([key(1)])
    assert not pool.exists()


OWNER = """
import sys, time
from pathlib import Path
from kvpanel.cache.host_pool import SharedSegments
pool = SharedSegments(Path(sys.argv[1]), 4096, 4)
pool.allocate(0, 4096)
print("ready", flush=True)
time.sleep(600)
"""


def test_a_live_engines_pool_is_kept_a_killed_ones_removed(tmp_path):
    """Liveness is the owner's flock, not its pid (which another pid namespace sharing /dev/shm
    cannot judge): a pool is removed only once its owner is gone, whatever killed it."""
    here = pool_directory("engine-a", root=tmp_path)
    live = SharedSegments(here, SLOT, 4)
    with pytest.raises(RuntimeError, match="in use"):
        SharedSegments(here, SLOT, 4)
    other = pool_directory("engine-b", root=tmp_path)
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(other)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        assert remove_stale_pools(tmp_path) == []  # both alive: both kept
        assert (other / "seg-0").exists() and (here / "layout.json").exists()
    finally:
        owner.kill()  # SIGKILL: no cleanup of its own
        owner.wait(30)
    assert other.exists()
    assert remove_stale_pools(tmp_path) == [other]
    assert not other.exists() and here.exists()
    live.close()


def test_the_sweep_leaves_links_fresh_dirs_and_others_alone(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep").write_text("x")
    link = tmp_path / "kvpanel-pool-link"
    link.symlink_to(target)
    fresh = tmp_path / "kvpanel-pool-fresh"  # mkdir done, lock file not yet made
    fresh.mkdir(mode=0o700)
    assert remove_stale_pools(tmp_path) == []
    assert (target / "keep").exists() and link.is_symlink() and fresh.exists()


def test_mapper_refuses_a_linked_or_shared_pool_and_never_creates_segments(tmp_path):
    pool = tmp_path / "pool"
    tier = shared_tier(pool, 4 * SLOT)
    link = tmp_path / "link"
    link.symlink_to(pool)
    with pytest.raises(RuntimeError, match="private"):
        SegmentMapper(link).slot(0)
    mapper = SegmentMapper(pool)
    with pytest.raises(KeyError):
        mapper.slot(10 * segment_slots(SLOT, SEG))  # a segment the store never made
    assert not (pool / "seg-10").exists()
    mapper.close()
    os.chmod(pool, 0o750)
    with pytest.raises(RuntimeError, match="private"):
        SegmentMapper(pool).slot(0)
    os.chmod(pool, 0o700)
    tier.close()


def test_no_room_in_shm_is_a_memory_error_and_no_segment_left(tmp_path, monkeypatch):
    import errno

    from kvpanel.cache import host_pool

    pool = tmp_path / "pool"
    tier = shared_tier(pool, 4 * SLOT)

    def enospc(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(host_pool.os, "posix_fallocate", enospc)
    with pytest.raises(MemoryError, match="lower --cpu-cache-gb"):
        tier.resize(8 * SLOT)
    assert sorted(p.name for p in pool.glob("seg-*")) == ["seg-0"]
    tier.close()


def test_a_freed_segment_is_unmapped_while_the_worker_is_idle(tmp_path, monkeypatch):
    from kvpanel.cache import host_pool_map

    monkeypatch.setattr(host_pool_map, "_SWEEP_S", 0.05)
    pool = tmp_path / "pool"
    tier = shared_tier(pool, 8 * SLOT)
    dropped: list[int] = []
    mapper = SegmentMapper(pool, register=lambda t: True, unregister=lambda t: dropped.append(1))
    mapper.slot(0)
    mapper.slot(segment_slots(SLOT, SEG))  # both segments mapped (and "registered")
    assert mapper.mapped_bytes() == 2 * SEG and mapper.registered() == 2
    tier.resize(4 * SLOT)  # one segment freed; the worker asks for nothing after that
    deadline = time.monotonic() + 5
    while mapper.mapped_bytes() > SEG and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mapper.mapped_bytes() == SEG and dropped == [1]
    mapper.close()
    tier.close()


def test_pool_directory_name_is_a_plain_name():
    path = pool_directory("../../etc/x y")
    assert path.parent == Path("/dev/shm") and "/" not in path.name and ".." not in path.name


def test_mapper_without_a_pool_says_so(tmp_path):
    with pytest.raises(RuntimeError, match="missing"):
        SegmentMapper(tmp_path / "nothing").slot(0)


def test_pool_files_are_private_to_the_engines_user(tmp_path):
    pool = tmp_path / "pool"
    tier = shared_tier(pool, 4 * SLOT)
    assert os.stat(pool).st_mode & 0o077 == 0
    assert all(os.stat(p).st_mode & 0o077 == 0 for p in pool.glob("seg-*"))
    tier.close()


def test_rank_reports_are_summed_and_garbage_is_left_out(tmp_path, monkeypatch):
    from kvpanel.cache.host_pool import write_rank_report
    from kvpanel.vllm_ext import control

    monkeypatch.setattr(control, "_engine_kv_bytes", 0)  # no worker in this process
    pool = tmp_path / "pool"
    fp = make_fp()
    with TieredStore(fp, cpu_bytes=4 * fp.chunk_bytes, host_pool=pool) as store:

        def stats() -> dict:
            reply = control.handle_request(store, {"op": "stats"})
            assert reply["ok"], reply
            return reply

        assert stats().get("engine_kv_bytes", 0) == 0
        for rank in (0, 1):
            write_rank_report(
                pool,
                rank,
                {"engine_kv_bytes": 1000, "transfers": {"load_bytes": 10, "load_seconds": 0.5}},
            )
        (pool / "rank-2.json").write_text("{not json")
        (pool / "rank-3.json").write_text(
            '{"engine_kv_bytes": -5, "transfers": {"load_bytes": "x"}}'
        )
        reply = stats()
        assert reply["engine_kv_bytes"] == 2000
        totals = reply["transfers"]
        assert totals["load_bytes"] == 20 and totals["load_seconds"] == 1.0
    write_rank_report(pool, 0, {})  # the pool is gone: nothing raised


def test_a_full_shm_is_a_clear_error_and_the_tier_keeps_what_it_had(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from kvpanel.vllm_ext.control import handle_request

    pool = tmp_path / "pool"
    fp = make_fp()
    with TieredStore(fp, cpu_bytes=4 * fp.chunk_bytes, host_pool=pool) as store:
        res = store.reserve([key(1)])
        assert res is not None
        store.commit(res.keys)
        # /dev/shm (a container's 64 MiB, say) has room for one more chunk only.
        full = SimpleNamespace(total=1 << 30, used=0, free=fp.chunk_bytes)
        monkeypatch.setattr("kvpanel.vllm_ext.control.shutil.disk_usage", lambda _p: full)
        reply = handle_request(store, {"op": "resize", "tier": "cpu", "bytes": 64 << 20})
        assert not reply["ok"] and "free in" in reply["error"], reply
        assert reply.get("tiers") is None
        assert store.cpu.contains(key(1))
        assert store.stats()["cpu"].capacity_bytes >= 4 * fp.chunk_bytes


def test_a_store_that_fails_to_start_leaves_no_pool(tmp_path, monkeypatch):
    import errno

    from kvpanel.cache import host_pool

    fp = make_fp()
    pool = tmp_path / "pool"
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(Exception):  # noqa: B017  (the disk tier's own error)
        TieredStore(
            fp,
            cpu_bytes=4 * fp.chunk_bytes,
            disk_path=not_a_dir,
            disk_bytes=1 << 20,
            host_pool=pool,
        )
    assert not pool.exists()

    def enospc(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(host_pool.os, "posix_fallocate", enospc)
    with pytest.raises(MemoryError):
        TieredStore(fp, cpu_bytes=4 * fp.chunk_bytes, host_pool=pool)
    assert not pool.exists()


def test_a_report_written_while_the_pool_closes_does_not_leave_it(tmp_path, monkeypatch):
    # The CI flake this pins down: a worker's report timer wrote into the pool while the engine
    # removed it; rmtree then met a non-empty directory and left the pool in /dev/shm.
    from kvpanel.cache import host_pool

    real_rmtree = host_pool.shutil.rmtree

    pool = tmp_path / "kvpanel-pool-x"
    segments = SharedSegments(pool, SLOT, 4)
    segments.allocate(0, SEG)
    calls: list[Path] = []

    def rmtree_meeting_a_late_write(path, ignore_errors=False):
        calls.append(Path(path))
        if len(calls) == 1:  # a report lands after the listing: the directory is not removed
            real_rmtree(path, ignore_errors=True)
            Path(path).mkdir()
            (Path(path) / "rank-1.json").write_text("{}")
            return
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(host_pool.shutil, "rmtree", rmtree_meeting_a_late_write)
    segments.close()
    assert len(calls) == 2
    assert not list(tmp_path.iterdir())
    # A report after the close finds no pool under its name and makes none.
    host_pool.write_rank_report(pool, 0, {"engine_kv_bytes": 1})
    assert not list(tmp_path.iterdir())


def test_a_pool_closed_under_a_stream_of_reports_is_gone(tmp_path):
    import threading

    from kvpanel.cache import host_pool

    pool = tmp_path / "kvpanel-pool-y"
    segments = SharedSegments(pool, SLOT, 4)
    stop = threading.Event()

    def reports() -> None:
        while not stop.is_set():
            host_pool.write_rank_report(pool, 1, {"engine_kv_bytes": 1})

    writer = threading.Thread(target=reports)
    writer.start()
    time.sleep(0.05)
    segments.close()
    stop.set()
    writer.join()
    assert not list(tmp_path.iterdir())
