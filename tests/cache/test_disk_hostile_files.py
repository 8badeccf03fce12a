"""Hostile or broken contents of a (possibly shared) disk cache directory: symlinks below the
cache root, chunk files whose header and checksum are valid but whose payload is not a whole
chunk, and a disk that stalls or fails. None may make the tier touch files outside its own
directory, hang, or be served.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import CHUNK_BYTES, key
from hostile_dirs import DISK_BYTES, FILE_BYTES, data, fill, opened, path_of
from test_store import store_chunks, wait_state

from kvpanel.cache import disk_format as fmt
from kvpanel.cache.disk_tier import DiskTier
from kvpanel.cache.keys import ChunkKey, Fingerprint
from kvpanel.cache.store import LookupState, TieredStore

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
