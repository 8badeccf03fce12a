"""A server's engine cores behind one control channel (vLLM's data parallelism: one engine core,
store and control socket per DP rank): the status merges them, tier operations reach each."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kvpanel.cache.keys import ChunkKey, Fingerprint
from kvpanel.cache.store import TieredStore
from kvpanel.serve.engine_controls import EngineControls, merge_replies
from kvpanel.serve.hub import StatusHub
from kvpanel.serve.vllm_flags import dp_ranks
from kvpanel.vllm_ext.control import engine_socket_path, start_control_server

CHUNK = 4096


def key(i: int) -> ChunkKey:
    return ChunkKey(i.to_bytes(16, "little"))


def put(store: TieredStore, i: int) -> None:
    res = store.reserve([key(i)])
    assert res is not None
    store.view(res.slots[0]).copy_(torch.full((CHUNK,), i + 1, dtype=torch.uint8))
    store.commit(res.keys)


def test_two_engines_merged_and_operated_on(tmp_path: Path) -> None:
    fp = Fingerprint("test/dp", "bfloat16", "test", 16, 16, CHUNK)
    disk = tmp_path / "disk"  # replicas share one disk dir
    stores = [
        TieredStore(fp, cpu_bytes=8 * CHUNK, disk_path=disk, disk_bytes=64 * CHUNK)
        for _ in range(2)
    ]
    try:
        base = str(tmp_path / "control.sock")
        paths = [engine_socket_path(base, rank) for rank in range(2)]
        assert paths == [base, base + ".dp1"]
        for path, store in zip(paths, stores, strict=True):
            start_control_server(path, store)
        put(stores[0], 1)
        put(stores[1], 2)
        put(stores[1], 3)
        for s, own in zip(stores, (1, 2), strict=True):
            assert s.flush(30)
            s.lookup(key(own))  # a CPU hit in each engine
        controls = EngineControls(paths)
        reply = controls.call(op="stats")
        assert reply["ok"] and reply["engines"] == 2
        cpu, dsk = reply["tiers"]["cpu"], reply["tiers"]["disk"]
        assert cpu["capacity_bytes"] == 16 * CHUNK  # private: the engines' tiers add up
        assert cpu["chunks"] == 3
        assert cpu["hits"] == 2  # one per engine, added up
        assert dsk["capacity_bytes"] == 64 * CHUNK  # shared: one cap, not two
        assert dsk["chunks"] <= 3 and dsk["healthy"]

        # A CPU resize is the server's total, split over the engines; a disk size is shared.
        reply = controls.call(op="resize", tier="cpu", bytes=4 * CHUNK)
        assert reply["ok"], reply
        assert [s.cpu.capacity_bytes for s in stores] == [2 * CHUNK, 2 * CHUNK]
        assert reply["tiers"]["cpu"]["capacity_bytes"] == 4 * CHUNK
        assert controls.call(op="resize", tier="disk", bytes=32 * CHUNK)["ok"]
        assert all(s.disk is not None and s.disk.capacity_bytes == 32 * CHUNK for s in stores)
        reply = controls.call(op="clear", tier="cpu")
        assert reply["ok"] and reply["tiers"]["cpu"]["chunks"] == 0
        bad = controls.call(op="resize", tier="tape", bytes=1)
        assert not bad["ok"] and "tape" in bad["error"]

        # The status hub reads the merged figures like one engine's.
        hub = StatusHub({}, controls)
        assert hub.flush(timeout=10)
    finally:
        for s in stores:
            s.close()


def test_an_engine_that_does_not_answer_is_an_error_not_half_a_status(tmp_path: Path) -> None:
    controls = EngineControls([str(tmp_path / "missing.dp0")])
    with pytest.raises(OSError):
        controls.call(op="stats")


def test_merge_keeps_the_first_failure_and_sums_reports() -> None:
    ok = {"ok": True, "tiers": {}, "transfers": {"load_bytes": 5}, "engine_kv_bytes": 7}
    failed = {"ok": False, "error": "unknown tier 'x'"}
    assert merge_replies([ok, failed]) is failed
    merged = merge_replies([ok, ok])
    assert merged["transfers"] == {"load_bytes": 10} and merged["engine_kv_bytes"] == 14
    # Figures that are not numbers count as 0, never as text or True.
    odd = {"ok": True, "tiers": {"cpu": {"hits": "9", "capacity_bytes": True, "healthy": False}}}
    row = merge_replies([odd, odd])["tiers"]["cpu"]
    assert row["hits"] == 0 and row["capacity_bytes"] == 0 and row["healthy"] is False


@pytest.mark.parametrize(
    ("args", "want"),
    [
        ([], ([0], 1)),
        (["--data-parallel-size", "2"], ([0, 1], 2)),
        (["-dp=4", "--data-parallel-size-local", "2"], ([0, 1], 4)),
        (["-dp", "4", "-dpl", "2", "--data-parallel-start-rank", "2"], ([2, 3], 4)),
        (["--data-parallel-size", "two"], ([0], 1)),
    ],
)
def test_dp_ranks_from_vllm_flags(args: list[str], want: tuple[list[int], int]) -> None:
    assert dp_ranks(args) == want
