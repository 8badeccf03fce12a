"""Shutdown flush through the engine's control socket reports the bytes still to write."""

import threading
from pathlib import Path

import torch

from kvpanel.cache.keys import ChunkKey, Fingerprint
from kvpanel.cache.store import TieredStore
from kvpanel.serve.hub import StatusHub
from kvpanel.vllm_ext.control import ControlClient, start_control_server

CHUNK_BYTES = 4096


def make_fp() -> Fingerprint:
    return Fingerprint("test/flush", "bfloat16", "test", 16, 16, CHUNK_BYTES)


def key(i: int) -> ChunkKey:
    return ChunkKey(i.to_bytes(16, "little"))


def payload(i: int) -> torch.Tensor:
    return torch.full((CHUNK_BYTES,), i + 1, dtype=torch.uint8)


def test_hub_flush_reports_progress_until_written(tmp_path: Path) -> None:
    store = TieredStore(
        make_fp(), cpu_bytes=64 * CHUNK_BYTES, disk_path=tmp_path / "d", disk_bytes=1 << 20
    )
    try:
        assert store.disk is not None
        gate = threading.Event()
        real = store.disk.write_many

        def slow(items):  # type: ignore[no-untyped-def]
            gate.wait(30)
            return real(items)

        store.disk.write_many = slow  # type: ignore[method-assign]
        for i in range(16):
            res = store.reserve([key(i)])
            assert res is not None
            store.view(res.slots[0]).copy_(payload(i))
            store.commit(res.keys)
        sock = str(tmp_path / "c.sock")
        start_control_server(sock, store)
        hub = StatusHub({}, ControlClient(sock))
        seen: list[int] = []
        threading.Timer(1.2, gate.set).start()
        assert hub.flush(timeout=30, progress=seen.append)
        assert seen and seen[0] == 16 * CHUNK_BYTES
        assert store.stats()["disk"].chunks == 16 and store.pending_write_bytes() == 0
        out = torch.empty(CHUNK_BYTES, dtype=torch.uint8)
        assert store.disk.read_into(key(3), out) and torch.equal(out, payload(3))
    finally:
        store.close()
