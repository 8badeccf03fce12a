"""KvpanelManager on vLLM's OffloadingManager hooks, against a real TieredStore (no engine):
request state ends at ``on_request_finished``, KV events under vLLM's own keys, the load source,
and ``shutdown`` writing what is queued."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from kvpanel.cache.disk_tier import DiskTier
from kvpanel.cache.store import TieredStore
from kvpanel.vllm_ext.compat import CPU_MEDIUM, CacheHitSource, LookupResult, ReqContext
from kvpanel.vllm_ext.manager import KvpanelManager

from .test_manager import CHUNK, make_fp


def store_chunks(manager: KvpanelManager, keys: list[bytes], req: str = "w") -> None:
    ctx = ReqContext(req_id=req)
    out = manager.prepare_store(keys, ctx)
    assert out is not None
    manager.complete_store(out.keys_to_store, ctx)


def end_step(manager: KvpanelManager) -> None:
    """What vLLM's scheduler does after each schedule(): this step's lookup holds go."""
    from kvpanel.vllm_ext.compat import ScheduleEndContext

    manager.on_schedule_end(ScheduleEndContext(new_req_ids=[], preempted_req_ids=[]))


def test_live_requests_keep_their_state_until_finished() -> None:
    # More requests waiting at once than the old 1,024-request bound: none may lose its
    # state (its chunks would be counted again on every poll), and finishing drops it.
    with TieredStore(make_fp(), cpu_bytes=8 * CHUNK) as store:
        manager = KvpanelManager(store, make_fp())
        store_chunks(manager, [b"k1"])
        waiting = [ReqContext(req_id=f"r{i}") for i in range(1500)]
        for ctx in waiting:
            assert manager.lookup(b"k1", ctx) is LookupResult.HIT
        hits = store.stats()["cpu"].hits
        assert manager.lookup(b"k1", waiting[0]) is LookupResult.HIT  # a re-poll
        assert store.stats()["cpu"].hits == hits
        for ctx in waiting:
            manager.on_request_finished(ctx)
        assert manager.open_requests == 0
        # A request vLLM never reported finished stays bounded (a leak guard, not the rule).
        manager.on_request_finished(ReqContext(req_id="never-seen"))
        assert manager.open_requests == 0


def test_kv_events_report_cpu_stores_and_removals_under_vllm_keys() -> None:
    with TieredStore(make_fp(), cpu_bytes=2 * CHUNK) as store:
        manager = KvpanelManager(store, make_fp(), kv_events=True)
        store_chunks(manager, [b"k1", b"k2"])
        events = list(manager.take_events())
        assert [(e.removed, e.medium, sorted(e.keys)) for e in events] == [
            (False, CPU_MEDIUM, [b"k1", b"k2"])
        ]
        assert list(manager.take_events()) == []  # taken once
        manager.lookup(b"k2", ReqContext(req_id="r"))  # k1 is now the LRU victim
        end_step(manager)
        store_chunks(manager, [b"k3"])
        assert [(e.removed, list(e.keys)) for e in manager.take_events()] == [
            (True, [b"k1"]),
            (False, [b"k3"]),
        ]
        # A store that failed was never readable: nothing to announce.
        ctx = ReqContext(req_id="f")
        out = manager.prepare_store([b"k4"], ctx)
        assert out is not None
        manager.complete_store(out.keys_to_store, ctx, success=False)
        assert [(e.removed, list(e.keys)) for e in manager.take_events()] == [(True, [b"k2"])]
        # A clear (reset_cache or the panel's) removes what was announced, and only that.
        manager.reset_cache()
        assert [(e.removed, list(e.keys)) for e in manager.take_events()] == [(True, [b"k3"])]
        # Shrinking the tier (the panel's resize) evicts: announced as removals too.
        store_chunks(manager, [b"k5", b"k6"])
        manager.take_events()
        store.resize("cpu", CHUNK)  # retires the whole segment: both chunks go
        assert store.stats()["cpu"].chunks == 0
        assert [(e.removed, sorted(e.keys)) for e in manager.take_events()] == [
            (True, [b"k5", b"k6"])
        ]


def test_kv_events_off_keeps_nothing() -> None:
    with TieredStore(make_fp(), cpu_bytes=2 * CHUNK) as store:
        manager = KvpanelManager(store, make_fp())
        store_chunks(manager, [b"k1"])
        assert list(manager.take_events()) == []


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_load_source_names_the_tier_a_hit_came_from(tmp_path: Path) -> None:
    fp = make_fp()
    with TieredStore(fp, cpu_bytes=4 * CHUNK, disk_path=tmp_path, disk_bytes=64 * CHUNK) as store:
        manager = KvpanelManager(store, fp)
        store_chunks(manager, [b"k1"])
        assert store.flush(timeout=10)
        store.clear("cpu")  # k1 now only on disk
        store_chunks(manager, [b"k2"])
        ctx = ReqContext(req_id="r")
        assert manager.lookup(b"k1", ctx) is LookupResult.HIT_PENDING
        wait_for(lambda: manager.lookup(b"k1", ctx) is LookupResult.HIT)
        assert manager.lookup(b"k2", ctx) is LookupResult.HIT
        assert manager.get_load_source(b"k1", ctx) == CacheHitSource.DISK
        assert manager.get_load_source(b"k2", ctx) == CacheHitSource.HOST
        manager.on_request_finished(ctx)


def test_shutdown_writes_queued_chunks_and_closes_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    write_many = DiskTier.write_many

    def slow_write_many(self, items):  # a disk that is still busy when the engine stops
        gate.wait(0.5)
        return write_many(self, items)

    monkeypatch.setattr(DiskTier, "write_many", slow_write_many)
    fp = make_fp()
    store = TieredStore(fp, cpu_bytes=8 * CHUNK, disk_path=tmp_path, disk_bytes=64 * CHUNK)
    manager = KvpanelManager(store, fp)
    store_chunks(manager, [b"k1", b"k2", b"k3"])
    assert store.pending_write_bytes() > 0
    manager.shutdown()
    assert store.pending_write_bytes() == 0
    assert len(list(tmp_path.rglob("*.kvc"))) == 3
    manager.shutdown()  # vLLM may call it again on a second teardown path


def test_chunks_in_flight_at_a_reset_free_their_slots_once_flushed() -> None:
    # vLLM never completes the jobs in flight at reset_cache (they are stale); 0.33 says when
    # the workers are done with them (on_reset_flushed): their slots must come back then.
    with TieredStore(make_fp(), cpu_bytes=4 * CHUNK) as store:
        manager = KvpanelManager(store, make_fp())
        store_chunks(manager, [b"k1"])
        loading, storing = ReqContext(req_id="l"), ReqContext(req_id="s")
        assert manager.lookup(b"k1", loading) is LookupResult.HIT
        manager.prepare_load([b"k1"], loading)  # a load job in flight
        end_step(manager)
        out = manager.prepare_store([b"k2", b"k3"], storing)  # a store job in flight
        assert out is not None and len(out.keys_to_store) == 2
        other = ReqContext(req_id="o")
        manager.prepare_load([b"k1"], other)
        manager.complete_load([b"k1"], other)  # a finished load leaves nothing behind
        manager.reset_cache()
        fresh = [b"n1", b"n2", b"n3", b"n4"]
        assert manager.prepare_store(fresh, ReqContext(req_id="x")) is None  # still held
        manager.on_reset_flushed()
        out = manager.prepare_store(fresh, ReqContext(req_id="x"))
        assert out is not None and len(out.keys_to_store) == 4
        assert manager.pinned_for_jobs == 4  # only the new store's reservations


def test_requests_not_asked_about_yet_are_the_engines_queue() -> None:
    # vLLM gives requests at on_new_request and asks about each once it can schedule it; the
    # planner counts the ones in between as work the engine has queued.
    with TieredStore(make_fp(), cpu_bytes=8 * CHUNK) as store:
        manager = KvpanelManager(store, make_fp())
        contexts = [ReqContext(req_id=f"r{i}") for i in range(3)]
        for ctx in contexts:
            manager.on_new_request(ctx)
        manager.on_new_request(contexts[0])  # told twice: counted once
        assert store.planner.snapshot()["engine_waiting_requests"] == 3
        manager.lookup(b"k1", contexts[0])
        manager.lookup(b"k2", contexts[0])  # later polls of the same request change nothing
        assert store.planner.snapshot()["engine_waiting_requests"] == 2
        manager.on_request_finished(contexts[1])  # ended (aborted) before it was asked about
        manager.on_request_finished(contexts[0])
        assert store.planner.snapshot()["engine_waiting_requests"] == 1
        manager.lookup(b"k1", contexts[2])
        manager.on_request_finished(contexts[2])
        assert store.planner.snapshot()["engine_waiting_requests"] == 0


def test_a_request_scheduled_without_a_lookup_leaves_the_queue() -> None:
    # vLLM asks about a prompt only if it has a whole chunk beyond its GPU prefix hit: a short
    # one is scheduled unasked and must not count as queued work until it finishes.
    from kvpanel.vllm_ext.compat import ScheduleEndContext

    with TieredStore(make_fp(), cpu_bytes=8 * CHUNK) as store:
        manager = KvpanelManager(store, make_fp())
        for i in range(3):
            manager.on_new_request(ReqContext(req_id=f"short{i}"))
        manager.on_schedule_end(
            ScheduleEndContext(new_req_ids=["short0", "short1"], preempted_req_ids=[])
        )
        assert store.planner.snapshot()["engine_waiting_requests"] == 1
        manager.on_request_finished(ReqContext(req_id="short0"))  # finishing changes nothing now
        assert store.planner.snapshot()["engine_waiting_requests"] == 1


def test_a_hit_cannot_vanish_before_its_load_in_the_same_step() -> None:
    # Between vLLM's lookup and its prepare_load (one schedule() call) the panel may clear the
    # CPU tier and a Redis fetch may evict for room: prepare_load must still get every chunk
    # that hit (vLLM's scheduler does not expect it to fail), and the next step sees the clear.
    from kvpanel.vllm_ext.compat import ScheduleEndContext

    end = ScheduleEndContext(new_req_ids=[], preempted_req_ids=[])
    with TieredStore(make_fp(), cpu_bytes=2 * CHUNK) as store:
        manager = KvpanelManager(store, make_fp())
        store_chunks(manager, [b"k1"])
        ctx = ReqContext(req_id="r")
        assert manager.lookup(b"k1", ctx) is LookupResult.HIT
        store.clear("cpu")  # the panel, from its control thread
        assert store.reserve([b"x" * 16, b"y" * 16]) is None  # k1 is held: no room for two
        slots = manager.prepare_load([b"k1"], ctx).block_ids
        manager.complete_load([b"k1"], ctx)
        manager.on_schedule_end(end)
        assert len(slots) == 1 and len(store.holds) == 0
        assert manager.lookup(b"k1", ReqContext(req_id="next")) is LookupResult.MISS
        assert store.reserve([b"x" * 16, b"y" * 16]) is not None  # its slot is free again


def test_lookup_and_load_under_a_clearing_thread_never_fail() -> None:
    from kvpanel.vllm_ext.compat import ScheduleEndContext

    end = ScheduleEndContext(new_req_ids=[], preempted_req_ids=[])
    with TieredStore(make_fp(), cpu_bytes=8 * CHUNK) as store:
        manager = KvpanelManager(store, make_fp())
        stop = threading.Event()

        def panel() -> None:
            while not stop.is_set():
                store.clear("cpu")
                time.sleep(0.0002)

        clearer = threading.Thread(target=panel)
        clearer.start()
        loads = 0
        try:
            for i in range(3000):
                ctx = ReqContext(req_id=f"r{i}")
                if manager.lookup(b"k1", ctx) is LookupResult.MISS:
                    store_chunks(manager, [b"k1"], req=f"w{i}")
                else:
                    manager.prepare_load([b"k1"], ctx)
                    manager.complete_load([b"k1"], ctx)
                    loads += 1
                manager.on_schedule_end(end)
                manager.on_request_finished(ctx)
        finally:
            stop.set()
            clearer.join()
        assert loads > 0
        assert len(store.holds) == 0 and manager.pinned_for_jobs == 0


def test_after_a_reset_old_disk_chunks_are_never_served_and_new_ones_stay_apart(
    tmp_path: Path,
) -> None:
    # vLLM resets the connector (reset_connector=True) around an in-place weight update: the
    # weight files, and so the fingerprint, did not change, but the KV did. A disk chunk made
    # before must never be served after, and one made after never to an engine on the files.
    fp = make_fp()
    with TieredStore(fp, cpu_bytes=4 * CHUNK, disk_path=tmp_path, disk_bytes=64 * CHUNK) as store:
        manager = KvpanelManager(store, fp)
        store_chunks(manager, [b"old"])
        assert store.flush(timeout=10)
        manager.reset_cache()
        end_step(manager)
        ctx = ReqContext(req_id="after")
        assert manager.lookup(b"old", ctx) is LookupResult.MISS  # on disk, under the old epoch
        store_chunks(manager, [b"new"], req="after-w")
        assert store.flush(timeout=10)
        assert manager.lookup(b"new", ReqContext(req_id="x")) is LookupResult.HIT
        end_step(manager)
        assert store.stats()["disk"].chunks == 2
    with TieredStore(fp, cpu_bytes=4 * CHUNK, disk_path=tmp_path, disk_bytes=64 * CHUNK) as store:
        restarted = KvpanelManager(store, fp)  # a restart loads the weight files again
        ctx = ReqContext(req_id="r")
        assert restarted.lookup(b"new", ctx) is LookupResult.MISS
        assert restarted.lookup(b"old", ctx) is LookupResult.HIT_PENDING
        wait_for(lambda: restarted.lookup(b"old", ctx) is LookupResult.HIT)
        end_step(restarted)
