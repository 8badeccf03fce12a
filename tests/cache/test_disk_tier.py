import errno
import os
import time
from pathlib import Path

import pytest
import torch
from conftest import CHUNK_BYTES, key, make_fp, payload

from kvpanel.cache import disk_format as fmt
from kvpanel.cache.disk_tier import DiskTier, DiskTierError
from kvpanel.cache.keys import Fingerprint
from kvpanel.cache.secret import CacheSecret

FILE_BYTES = fmt.HEADER_BYTES + CHUNK_BYTES


def data(i: int) -> bytes:
    return bytes(payload(i).tolist())


@pytest.fixture
def tier(tmp_path: Path, fp: Fingerprint):
    t = DiskTier(tmp_path, fp, 100 * FILE_BYTES)
    yield t
    t.close()


def path_of(t: DiskTier, i: int) -> Path:
    return fmt.chunk_path(t.dir, key(i))


def test_round_trip(tier: DiskTier) -> None:
    assert tier.put(key(1), data(1))
    assert tier.write_many([(key(2), payload(2))]) == [True]
    assert tier.get(key(1)) == data(1)
    out = torch.zeros(CHUNK_BYTES, dtype=torch.uint8)
    assert tier.read_into(key(2), out) and torch.equal(out, payload(2))
    assert tier.lookup(key(1)) and not tier.lookup(key(3))
    assert tier.get(key(3)) is None
    s = tier.stats()
    assert (s.name, s.chunks, s.hits, s.misses, s.errors) == ("disk", 2, 1, 1, 0)
    assert s.used_bytes == 2 * FILE_BYTES and s.bytes_in == 2 * CHUNK_BYTES
    assert path_of(tier, 1).exists()
    assert tier.evict(key(1)) and not path_of(tier, 1).exists() and not tier.contains(key(1))


def test_restart_rebuilds_index(tmp_path: Path, fp: Fingerprint) -> None:
    t = DiskTier(tmp_path, fp, 100 * FILE_BYTES)
    for i in range(5):
        assert t.put(key(i), data(i))
    t.close()
    t.close()  # idempotent
    stale = path_of(t, 0).with_name("junk.kvc.tmp.123.abcd")
    stale.write_bytes(b"partial")
    abandoned = time.time() - 3600  # older than any live write (disk_dirs.YOUNG_TMP_S)
    os.utime(stale, (abandoned, abandoned))
    t2 = DiskTier(tmp_path, fp, 100 * FILE_BYTES)
    try:
        assert sorted(t2.keys()) == sorted(key(i) for i in range(5))
        assert t2.get(key(3)) == data(3)
        assert not stale.exists()
    finally:
        t2.close()


def test_truncated_file_deleted_at_start_and_on_read(tmp_path: Path, fp: Fingerprint) -> None:
    t = DiskTier(tmp_path, fp, 100 * FILE_BYTES)
    t.put(key(1), data(1))
    t.put(key(2), data(2))
    with open(path_of(t, 2), "r+b") as f:
        f.truncate(FILE_BYTES - 10)
    assert t.get(key(2)) is None
    assert not path_of(t, 2).exists() and not t.contains(key(2))
    assert t.stats().errors == 1
    with open(path_of(t, 1), "r+b") as f:
        f.truncate(100)
    t.close()
    t2 = DiskTier(tmp_path, fp, 100 * FILE_BYTES)
    try:
        assert not t2.contains(key(1)) and not path_of(t, 1).exists()
    finally:
        t2.close()


def test_bit_flip_is_a_miss_and_deleted(tier: DiskTier) -> None:
    tier.put(key(1), data(1))
    p = path_of(tier, 1)
    raw = bytearray(p.read_bytes())
    raw[fmt.HEADER_BYTES + 1234] ^= 0x01
    p.write_bytes(bytes(raw))
    out = torch.zeros(CHUNK_BYTES, dtype=torch.uint8)
    assert not tier.read_into(key(1), out)
    assert not p.exists() and not tier.contains(key(1)) and tier.stats().errors == 1


def test_foreign_header_is_a_miss(tier: DiskTier, tmp_path: Path) -> None:
    # A valid file of another key copied under this key's name.
    tier.put(key(1), data(1))
    tier.put(key(2), data(2))
    path_of(tier, 2).write_bytes(path_of(tier, 1).read_bytes())
    assert tier.get(key(2)) is None and not path_of(tier, 2).exists()
    # A valid file of another fingerprint under this key's name.
    other = DiskTier(tmp_path / "other", make_fp(model="other"), 10 * FILE_BYTES)
    other.put(key(1), data(9))
    other.close()
    path_of(tier, 1).write_bytes(path_of(other, 1).read_bytes())
    assert tier.get(key(1)) is None and not path_of(tier, 1).exists()
    assert tier.stats().errors == 2


def test_other_fingerprint_dir_ignored(tmp_path: Path, fp: Fingerprint) -> None:
    other_fp = make_fp(model="other")
    other = DiskTier(tmp_path, other_fp, 10 * FILE_BYTES)
    other.put(key(1), data(1))
    other.close()
    t = DiskTier(tmp_path, fp, 10 * FILE_BYTES)
    try:
        assert t.keys() == [] and not t.contains(key(1))
        t.clear()
        assert path_of(other, 1).exists()
    finally:
        t.close()


def test_capacity_eviction_lru(tmp_path: Path, fp: Fingerprint) -> None:
    t = DiskTier(tmp_path, fp, 3 * FILE_BYTES)
    try:
        for i in (1, 2, 3):
            t.put(key(i), data(i))
        assert t.lookup(key(1))
        t.put(key(4), data(4))
        assert sorted(t.keys()) == sorted([key(1), key(3), key(4)])
        assert not path_of(t, 2).exists()
        assert t.resize(FILE_BYTES) == [key(3), key(1)]
        assert t.used_bytes == FILE_BYTES and t.stats().evictions == 3
        assert not t.put(key(5), b"x" * (2 * FILE_BYTES))  # can never fit
    finally:
        t.close()


def test_over_capacity_at_start(tmp_path: Path, fp: Fingerprint) -> None:
    t = DiskTier(tmp_path, fp, 10 * FILE_BYTES)
    for i in range(4):
        t.put(key(i), data(i))
        os.utime(path_of(t, i), (1000 + i, 1000 + i))  # deterministic LRU order
    t.close()
    t2 = DiskTier(tmp_path, fp, 2 * FILE_BYTES)
    try:
        assert sorted(t2.keys()) == sorted([key(2), key(3)])
        assert not path_of(t, 0).exists()
    finally:
        t2.close()


def test_unusable_paths(tmp_path: Path, fp: Fingerprint) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(DiskTierError, match="not a directory"):
        DiskTier(afile, fp, FILE_BYTES)
    with pytest.raises(DiskTierError, match="not usable"):
        DiskTier(afile / "sub", fp, FILE_BYTES)


def test_disk_full_stops_admitting(
    tmp_path: Path, fp: Fingerprint, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = DiskTier(tmp_path, fp, 100 * FILE_BYTES, full_retry_s=0.3)
    try:
        t.put(key(1), data(1))
        real_write = os.write

        real_writev = os.writev

        def enospc(fd: int, buf: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(fmt.os, "write", enospc)
        monkeypatch.setattr(fmt.os, "writev", enospc)
        assert not t.put(key(2), data(2))
        s = t.stats()
        assert s.note == "full" and not s.healthy and s.errors == 1
        assert not t.accepts() and t.write_many([(key(3), data(3))]) == [False]
        assert not t.put(key(3), data(3))
        assert not any(".tmp." in p.name for p in path_of(t, 2).parent.iterdir())
        assert not t.contains(key(2))
        monkeypatch.setattr(fmt.os, "write", real_write)
        monkeypatch.setattr(fmt.os, "writev", real_writev)
        assert t.get(key(1)) == data(1)  # reads still work
        time.sleep(0.35)  # retry window elapsed
        assert t.put(key(3), data(3)) and t.stats().note == ""
    finally:
        t.close()


def test_full_cleared_by_eviction(
    tmp_path: Path, fp: Fingerprint, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = DiskTier(tmp_path, fp, 100 * FILE_BYTES)
    try:
        t.put(key(1), data(1))
        with monkeypatch.context() as m:
            m.setattr(fmt, "_write_all", lambda fd, buf: (_ for _ in ()).throw(OSError(28, "x")))
            assert not t.put(key(2), data(2))
        assert t.stats().note == "full"
        assert t.evict(key(1))
        assert t.stats().note == "" and t.put(key(2), data(2))
    finally:
        t.close()


# ----- cache secret: keyed chunks, one namespace per secret ----------------------------------

SECRET = CacheSecret(b"s" * 32)
OTHER_SECRET = CacheSecret(b"t" * 32)


def test_secret_namespaces_do_not_meet(tmp_path: Path, fp: Fingerprint) -> None:
    """Chunks written with secret S are hits for S only; others neither see nor delete them."""
    a = DiskTier(tmp_path, fp, 10 * FILE_BYTES, secret=SECRET)
    a.put(key(1), data(1))
    a.close()
    written = path_of(a, 1)
    assert written.exists() and a.dir.name != fp.hex()  # not the unkeyed dir
    for secret in (OTHER_SECRET, None):
        other = DiskTier(tmp_path, fp, 10 * FILE_BYTES, secret=secret)
        try:
            assert other.dir != a.dir and not other.contains(key(1))
            assert other.get(key(1)) is None
            other.put(key(2), data(2))  # lands in its own namespace
            other.clear()
            assert other.stats().errors == 0
        finally:
            other.close()
    assert written.exists()
    b = DiskTier(tmp_path, fp, 10 * FILE_BYTES, secret=CacheSecret(b"s" * 32))  # same secret
    try:
        out = torch.zeros(CHUNK_BYTES, dtype=torch.uint8)
        assert b.dir == a.dir and b.read_into(key(1), out) and torch.equal(out, payload(1))
        assert not b.contains(key(2)) and b.stats().errors == 0
    finally:
        b.close()


def test_forged_chunk_with_secret_is_a_miss(tmp_path: Path, fp: Fingerprint) -> None:
    """A file with a valid unkeyed header and checksum, named like a keyed chunk, is rejected."""
    t = DiskTier(tmp_path, fp, 10 * FILE_BYTES, secret=SECRET)
    try:
        t.put(key(1), data(1))
        forged = path_of(t, 1)
        digest = fmt.ChunkHeader.unpack(forged.read_bytes()).fingerprint  # readable by anyone
        fmt.write_chunk(forged, digest, key(1), memoryview(data(7)))  # unkeyed checksum
        assert t.get(key(1)) is None
        assert not forged.exists() and t.stats().errors == 1
    finally:
        t.close()
