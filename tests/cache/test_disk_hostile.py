"""Hostile or broken contents of a (possibly shared) disk cache directory: FIFOs and
directories where kvpanel expects chunk files or shard folders. None of them may block the tier,
stop it from starting, mark it full, or be served. (Symlinks and short payloads:
test_disk_hostile_files.py.)
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import CHUNK_BYTES, key
from hostile_dirs import (
    DISK_BYTES,
    data,
    fill,
    opened,
    path_of,
    unblock_fifo,
)
from test_store import wait_state

from kvpanel.cache import disk_format as fmt
from kvpanel.cache.keys import ChunkKey, Fingerprint
from kvpanel.cache.store import LookupState, TieredStore

# ----- item 3: FIFOs ------------------------------------------------------------------------------


def test_fifo_chunk_file_at_start_does_not_block(tmp_path: Path, fp: Fingerprint) -> None:
    fp_dir = fill(tmp_path, fp, [1, 2])
    fifo = path_of(fp_dir, 1)
    fifo.unlink()
    os.mkfifo(fifo)
    try:
        with opened(tmp_path, fp) as t:
            assert sorted(t.keys()) == [key(2)] and t.stats().errors == 1
            assert not fifo.exists()  # not a chunk: removed (unlink takes the name, not data)
            assert t.get(key(2)) == data(2)
    finally:
        unblock_fifo(fifo)


def test_fifo_chunk_file_at_runtime_is_a_miss(tmp_path: Path, fp: Fingerprint) -> None:
    """Planted after the index was built: the FIFO key ends as a MISS at once, and the keys
    after it are still promoted (the single promotion thread used to block in open())."""
    fill(tmp_path, fp, [1, 2, 3])
    fifo = fmt.chunk_path(tmp_path / fp.hex(), key(1))
    store = TieredStore(fp, cpu_bytes=8 * CHUNK_BYTES, disk_path=tmp_path, disk_bytes=DISK_BYTES)
    assert store.disk_probe is not None
    store.disk_probe.join(30)  # its start-up read of these files would meet the FIFO first
    try:
        fifo.unlink()
        os.mkfifo(fifo)
        for i in (1, 2, 3):
            assert store.lookup(key(i)) is LookupState.PENDING
        assert wait_state(store, key(2)) is LookupState.HIT
        assert wait_state(store, key(3)) is LookupState.HIT
        assert wait_state(store, key(1)) is LookupState.MISS
        assert store.stats()["disk"].errors == 1 and not store.has_pending()
        assert not store.disk.contains(key(1))  # type: ignore[union-attr]
    finally:
        unblock_fifo(fifo)
        store.close()


def test_hung_promotion_times_out_and_others_go_on(
    tmp_path: Path, fp: Fingerprint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that never returns (a hung NFS server): past the deadline the lookup is a MISS,
    other keys keep being promoted, and the slot is given back when the read finally returns."""
    fill(tmp_path, fp, [1, 2, 3, 4])
    store = TieredStore(
        fp,
        cpu_bytes=8 * CHUNK_BYTES,
        disk_path=tmp_path,
        disk_bytes=DISK_BYTES,
        promote_workers=1,
        promote_timeout_s=0.3,
    )
    disk = store.disk
    assert disk is not None
    release = threading.Event()
    real_read_into = disk.read_into

    def hung_for_key1(k: ChunkKey, out: torch.Tensor) -> bool:
        if k == key(1):
            release.wait(30)
            out.fill_(7)  # bytes that must never be served as key 1
            return False
        return real_read_into(k, out)

    monkeypatch.setattr(disk, "read_into", hung_for_key1)
    try:
        assert store.lookup(key(1)) is LookupState.PENDING
        time.sleep(0.05)  # the only worker is now stuck in key 1's read
        assert store.lookup(key(2)) is LookupState.PENDING
        t0 = time.monotonic()
        assert wait_state(store, key(1), timeout=3) is LookupState.MISS
        assert time.monotonic() - t0 < 2
        # A worker replaces the stuck one: key 2 (queued behind it) and key 3 are promoted.
        assert wait_state(store, key(2), timeout=3) is LookupState.HIT
        assert store.lookup(key(3)) is LookupState.PENDING
        assert wait_state(store, key(3), timeout=3) is LookupState.HIT
        assert store.lookup(key(1)) is LookupState.MISS  # still stuck: no second read started
        release.set()
        deadline = time.monotonic() + 5
        while store.cpu.used_bytes != 2 * CHUNK_BYTES and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.cpu.used_bytes == 2 * CHUNK_BYTES  # key 1's slot given back, never published
        assert store.lookup(key(4)) is LookupState.PENDING
        assert wait_state(store, key(4)) is LookupState.HIT
    finally:
        release.set()
        store.close()


# ----- item 4: directories and undeletable entries ------------------------------------------------


def test_directories_named_like_chunks_and_temps_at_start(tmp_path: Path, fp: Fingerprint) -> None:
    fp_dir = fill(tmp_path, fp, [1, 2])
    as_dir = path_of(fp_dir, 1)
    as_dir.unlink()
    as_dir.mkdir()
    (as_dir / "inside").write_bytes(b"x")  # non-empty: neither unlink nor rmdir can remove it
    tmp_dir = path_of(fp_dir, 2).parent / "x.tmp.1"
    tmp_dir.mkdir()
    (tmp_dir / "inside").write_bytes(b"y")
    with opened(tmp_path, fp) as t:
        assert t.keys() == [key(2)] and t.get(key(2)) == data(2)
        assert t.stats().errors == 2 and t.stats().healthy
        assert (as_dir / "inside").read_bytes() == b"x"  # nothing below them is touched
        assert (tmp_dir / "inside").read_bytes() == b"y"
        # The key whose path is taken by a directory is an error for that key only.
        assert not t.put(key(1), data(1)) and t.stats().note == ""
        assert t.put(key(3), data(3)) and t.get(key(3)) == data(3)


def test_directory_at_chunk_path_at_runtime_does_not_mark_full(
    tmp_path: Path, fp: Fingerprint
) -> None:
    with opened(tmp_path, fp) as t:
        blocker = path_of(t.dir, 1)
        blocker.mkdir(parents=True)
        (blocker / "inside").write_bytes(b"x")
        assert not t.put(key(1), data(1))
        s = t.stats()
        assert s.errors == 1 and s.note == "" and s.healthy
        assert t.put(key(2), data(2))  # other keys are still admitted
        assert t.write_many([(key(3), data(3))]) == [True] and t.contains(key(3))
        assert not any(fmt.TMP_MARKER in p.name for p in blocker.parent.iterdir())


def test_unreadable_shard_folder_is_skipped(
    tmp_path: Path, fp: Fingerprint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder the process cannot list (root reads through mode 000, so the error is injected)."""
    fp_dir = fill(tmp_path, fp, [1, 2])
    bad_shard = path_of(fp_dir, 1).parent.name
    real_scandir, real_listdir = os.scandir, os.listdir

    def check(path: object) -> None:
        where = os.readlink(f"/proc/self/fd/{path}") if isinstance(path, int) else str(path)
        if where.endswith(f"/{bad_shard}"):
            raise PermissionError(13, "Permission denied")

    def scandir(path):  # type: ignore[no-untyped-def]
        check(path)
        return real_scandir(path)

    def listdir(path):  # type: ignore[no-untyped-def]
        check(path)
        return real_listdir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "listdir", listdir)
    with opened(tmp_path, fp) as t:
        assert t.keys() == [key(2)] and t.stats().errors == 1


# ----- the shared bookkeeping files ----------------------------------------------------------


@pytest.mark.parametrize("name", [".usage", ".lock"])
def test_a_fifo_at_a_bookkeeping_file_is_a_clear_error_not_a_hang(
    tmp_path: Path, fp: Fingerprint, name: str
) -> None:
    from kvpanel.cache.disk_tier import DiskTier, DiskTierError

    DiskTier(tmp_path, fp, DISK_BYTES).close()  # a previous run made the directory
    (fp_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    (fp_dir / name).unlink()
    os.mkfifo(fp_dir / name)
    with pytest.raises(DiskTierError, match="not a regular file"):
        DiskTier(tmp_path, fp, DISK_BYTES)


def test_an_absurd_shared_usage_figure_never_stops_the_writes(
    tmp_path: Path, fp: Fingerprint
) -> None:
    # Another process (or a torn write) puts the largest 64-bit value in .usage while chunks
    # are written: adding to it must not raise out of put and leak the reservation.
    import struct

    from kvpanel.cache.disk_tier import DiskTier

    t = DiskTier(tmp_path, fp, DISK_BYTES)
    try:
        usage = t.dir / ".usage"
        for i in range(3):
            usage.write_bytes(struct.pack("<q", 2**63 - 1))
            t.put(key(i), data(i))  # the dir looks full: refused or written, never raised
        usage.write_bytes(struct.pack("<q", 0))
        assert t.put(key(9), data(9)) and t.get(key(9)) == data(9)
        assert t.accepts()
    finally:
        t.close()
