"""Hostile or broken contents of a (possibly shared) disk cache directory.

FIFOs, directories and symlinks where kvpanel expects chunk files or shard folders, and chunk
files whose header and checksum are valid but whose payload is not a whole chunk. None of them
may block the tier, stop it from starting, mark it full, make it touch files outside its own
directory, or be served.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import CHUNK_BYTES, key, payload
from test_store import store_chunks, wait_state

from kvpanel.cache import disk_format as fmt
from kvpanel.cache.disk_tier import DiskTier
from kvpanel.cache.keys import ChunkKey, Fingerprint
from kvpanel.cache.store import LookupState, TieredStore

FILE_BYTES = fmt.HEADER_BYTES + CHUNK_BYTES
DISK_BYTES = 100 * FILE_BYTES


def data(i: int) -> bytes:
    return bytes(payload(i).tolist())


def path_of(fp_dir: Path, i: int) -> Path:
    return fmt.chunk_path(fp_dir, key(i))


def key_in_other_shard(fp_dir: Path, *avoid: int) -> int:
    """A key id whose shard folder differs from those of ``avoid``."""
    taken = {path_of(fp_dir, i).parent.name for i in avoid}
    return next(i for i in range(1000, 2000) if path_of(fp_dir, i).parent.name not in taken)


def fill(root: Path, fp: Fingerprint, ids: list[int]) -> Path:
    """Write valid chunks ``ids`` with a tier that is closed again; returns the fp dir."""
    t = DiskTier(root, fp, DISK_BYTES)
    try:
        for i in ids:
            assert t.put(key(i), data(i))
    finally:
        t.close()
    return t.dir


def unblock_fifo(path: Path) -> None:
    """Let a reader stuck opening ``path`` go (the old code blocked there forever)."""
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def open_in_thread(root: Path, fp: Fingerprint, timeout: float = 5.0) -> DiskTier:
    """``DiskTier(...)`` that must come up within ``timeout``: a hang fails the test."""
    box: list[object] = []

    def build() -> None:
        try:
            box.append(DiskTier(root, fp, DISK_BYTES))
        except BaseException as e:  # surfaced below
            box.append(e)

    th = threading.Thread(target=build, daemon=True)
    th.start()
    th.join(timeout)
    assert box, f"DiskTier() did not come up within {timeout}s"
    if isinstance(box[0], BaseException):
        raise box[0]
    assert isinstance(box[0], DiskTier)
    return box[0]


@contextlib.contextmanager
def opened(root: Path, fp: Fingerprint) -> Iterator[DiskTier]:
    t = open_in_thread(root, fp)
    try:
        yield t
    finally:
        t.close()


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


# ----- item 5: symlinks below the cache root -----------------------------------------------------


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_symlinked_shard_dir_is_never_followed(tmp_path: Path, fp: Fingerprint) -> None:
    root = tmp_path / "cache"
    fp_dir = fill(root, fp, [1, 2])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The link's target holds what kvpanel would index, delete or write in a shard of its own.
    shard = path_of(fp_dir, 1).parent
    for p in shard.iterdir():
        p.rename(elsewhere / p.name)
    (elsewhere / "junk.kvc.tmp.1.abcd").write_bytes(b"partial")
    (elsewhere / "bad.kvc").write_bytes(b"not a chunk")
    shard.rmdir()
    shard.symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(elsewhere)
    with opened(root, fp) as t:
        assert t.keys() == [key(2)]  # key 1's file is behind the link: not indexed, not read
        assert t.stats().errors == 1
        assert not t.contains(key(1)) and t.get(key(1)) is None
        # A write to that shard goes to a real directory of ours, never through the link.
        assert t.put(key(1), data(1)) and t.get(key(1)) == data(1)
        assert not shard.is_symlink() and shard.is_dir()
        assert snapshot(elsewhere) == before
        # Swapped for a link at runtime: reads, writes and evictions do not go through it.
        other = path_of(fp_dir, 2).parent
        moved = tmp_path / "moved"
        other.rename(moved)
        other.symlink_to(moved, target_is_directory=True)
        moved_before = snapshot(moved)
        assert t.get(key(2)) is None  # not followed: a miss
        k = next(i for i in range(3, 3000) if path_of(fp_dir, i).parent == other)
        assert t.put(key(k), data(k))
        assert t.evict(key(k))
        t.clear()
        assert snapshot(moved) == moved_before
    assert snapshot(elsewhere) == before


def test_symlinked_fingerprint_dir_is_not_followed(tmp_path: Path, fp: Fingerprint) -> None:
    """The root may be a link (the operator's choice); ``<root>/<fingerprint>`` is ours."""
    elsewhere = tmp_path / "elsewhere"
    fill(elsewhere, fp, [1])
    target = elsewhere / fp.hex()
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    root = tmp_path / "cache"
    root.mkdir()
    (root / fp.hex()).symlink_to(target, target_is_directory=True)
    linked_root = tmp_path / "root-link"
    linked_root.symlink_to(root, target_is_directory=True)
    with opened(linked_root, fp) as t:
        assert t.keys() == [] and t.put(key(2), data(2))
        assert (root / fp.hex()).is_dir() and not (root / fp.hex()).is_symlink()
        assert path_of(root / fp.hex(), 2).is_file()
    after = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert after == before


def test_symlinked_lock_and_fingerprint_files_are_not_written_through(
    tmp_path: Path, fp: Fingerprint
) -> None:
    fp_dir = fill(tmp_path / "cache", fp, [1])
    victims = {}
    for name in (".lock", ".usage", "fingerprint.json"):
        victim = tmp_path / f"victim{name}"
        victim.write_bytes(b"precious")
        (fp_dir / name).unlink()
        (fp_dir / name).symlink_to(victim)
        victims[name] = victim
    with opened(tmp_path / "cache", fp) as t:
        assert t.keys() == [key(1)]
        assert Fingerprint.from_json((fp_dir / "fingerprint.json").read_text()) == fp
        for name, victim in victims.items():
            assert not (fp_dir / name).is_symlink() and victim.read_bytes() == b"precious"


# ----- item 6: a valid checksum over a short payload ---------------------------------------------


def write_short(fp_dir: Path, fp: Fingerprint, i: int, nbytes: int = 16) -> Path:
    path = path_of(fp_dir, i)
    path.unlink(missing_ok=True)
    fmt.write_chunk(path, fp.digest(), key(i), memoryview(bytes(i % 251 for i in range(nbytes))))
    return path


def test_short_payload_dropped_at_start(tmp_path: Path, fp: Fingerprint) -> None:
    fp_dir = fill(tmp_path, fp, [1, 2])
    short = write_short(fp_dir, fp, 1)
    long = write_short(fp_dir, fp, 2, CHUNK_BYTES + 16)
    with opened(tmp_path, fp) as t:
        assert t.keys() == [] and t.stats().errors == 2
        assert not short.exists() and not long.exists()


def test_short_payload_at_runtime_is_never_served(tmp_path: Path, fp: Fingerprint) -> None:
    """Planted after the index was built, into a slot that still holds another chunk's bytes."""
    fill(tmp_path, fp, [1])
    with TieredStore(
        fp, cpu_bytes=1 * CHUNK_BYTES, disk_path=tmp_path, disk_bytes=DISK_BYTES
    ) as store:
        store_chunks(store, [9])  # the one CPU slot now holds chunk 9's bytes
        assert store.flush(5)
        store.clear("cpu")
        short = write_short(tmp_path / fp.hex(), fp, 1)
        assert store.lookup(key(1)) is LookupState.PENDING
        assert wait_state(store, key(1)) is LookupState.MISS
        assert not short.exists()
        assert store.stats()["disk"].errors == 1
        assert not store.cpu.contains(key(1))
        # Through the tier directly, too: short or long, never a hit.
        disk = store.disk
        assert disk is not None
        write_short(tmp_path / fp.hex(), fp, 9, CHUNK_BYTES + 16)
        assert disk.get(key(9)) is None
        assert disk.read_into(key(9), torch.zeros(CHUNK_BYTES, dtype=torch.uint8)) is False
        assert store.stats()["disk"].errors == 2


def test_writes_of_another_size_are_refused(tmp_path: Path, fp: Fingerprint) -> None:
    with opened(tmp_path, fp) as t:
        assert not t.put(key(1), b"x" * 16)
        assert not t.contains(key(1)) and not path_of(t.dir, 1).exists()
        assert t.put(key(2), data(2))


def test_stalled_disk_is_skipped_and_close_does_not_hang(
    tmp_path: Path, fp: Fingerprint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every read hangs (a dead NFS server): once 4 reads (the floor) were given up on, lookups
    skip the disk (MISS, no CPU slot pinned behind it), and close() returns although the reads
    never do."""
    fill(tmp_path, fp, [1, 2, 3, 4, 5, 6, 7])
    store = TieredStore(
        fp,
        cpu_bytes=8 * CHUNK_BYTES,
        disk_path=tmp_path,
        disk_bytes=DISK_BYTES,
        promote_workers=2,
        promote_timeout_s=0.2,
    )
    disk = store.disk
    assert disk is not None
    release = threading.Event()

    def hung(_k: ChunkKey, _out: torch.Tensor) -> bool:
        release.wait(60)
        return False

    monkeypatch.setattr(disk, "read_into", hung)
    try:
        for k in (1, 2, 3, 4):
            assert store.lookup(key(k)) is LookupState.PENDING
        for k in (1, 2, 3, 4):
            assert wait_state(store, key(k), timeout=3) is LookupState.MISS
        used = store.cpu.used_bytes
        for k in (5, 6, 7):
            assert store.lookup(key(k)) is LookupState.MISS  # skipped: no read, no slot
        assert store.cpu.used_bytes == used
        store.lookup(key(1))  # a queued job behind hung threads must not hold close() either
        t0 = time.monotonic()
        store.close()
        assert time.monotonic() - t0 < 2
    finally:
        release.set()
        store.close()


def test_a_failing_disk_does_not_evict_the_cache_write_by_write(
    tmp_path: Path, fp: Fingerprint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At capacity every write evicts one chunk first. If writes keep failing (EIO after a bad
    remount), the tier stops admitting after a few, instead of evicting the whole cache."""
    t = DiskTier(tmp_path, fp, 10 * FILE_BYTES, full_retry_s=60)
    try:
        for i in range(10):
            assert t.put(key(i), data(i))

        def eio(*_a: object, **_k: object) -> int:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(fmt, "write_chunk", eio)
        for i in range(100, 120):
            assert not t.put(key(i), data(i))
        s = t.stats()
        assert s.chunks >= 10 - 3 and s.note == "write errors" and not s.healthy
        assert s.errors == 3
    finally:
        t.close()
