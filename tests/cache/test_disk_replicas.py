"""Several disk tiers (replicas) sharing one cache directory: in one process and in several."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import key, payload
from replica_worker import FILE_BYTES, expected, shard_key

from kvpanel.cache import disk_dirs
from kvpanel.cache import disk_format as fmt
from kvpanel.cache.disk_tier import DiskTier
from kvpanel.cache.keys import Fingerprint

WORKER = Path(__file__).with_name("replica_worker.py")


def data(i: int) -> bytes:
    return bytes(payload(i).tolist())


def chunk_files(t: DiskTier) -> list[str]:
    """One listing of the one shard folder the workers' keys live in (a snapshot)."""
    shard = t.dir / shard_key(0).hex()[:2]
    try:
        return [n for n in os.listdir(shard) if n.endswith(fmt.SUFFIX)]
    except FileNotFoundError:
        return []


def test_two_tiers_one_dir_see_each_others_chunks(tmp_path: Path, fp: Fingerprint) -> None:
    a = DiskTier(tmp_path, fp, 100 * FILE_BYTES, negative_ttl_s=0.0)
    b = DiskTier(tmp_path, fp, 100 * FILE_BYTES, negative_ttl_s=0.3)
    try:
        assert a.put(key(1), data(1))
        assert b.lookup(key(1)) and b.get(key(1)) == data(1)  # a miss asked the directory
        assert b.put(key(2), data(2))
        assert a.get(key(2)) == data(2)
        assert not a.stores(key(3)) and b.put(key(3), data(3)) and a.stores(key(3))

        assert not b.contains(key(4))  # remembered absent for negative_ttl_s...
        assert a.put(key(4), data(4))
        assert not b.contains(key(4))  # ...so polls do not stat every step
        time.sleep(0.35)
        assert b.contains(key(4)) and b.get(key(4)) == data(4)

        # A chunk the other tier deleted is a plain miss: no error, no other file touched.
        assert a.evict(key(1))
        assert b.get(key(1)) is None and b.stats().errors == 0
        assert sorted(b.keys()) == sorted([key(2), key(3), key(4)])
        for i in (2, 3, 4):
            assert fmt.chunk_path(a.dir, key(i)).is_file()
        assert a.used_bytes == b.used_bytes == 3 * FILE_BYTES
    finally:
        a.close()
        b.close()


def test_shared_cap_held_across_tiers_in_one_process(tmp_path: Path, fp: Fingerprint) -> None:
    cap = 6
    a = DiskTier(tmp_path, fp, cap * FILE_BYTES)
    b = DiskTier(tmp_path, fp, cap * FILE_BYTES)
    try:
        for i in range(20):
            assert (a if i % 2 else b).put(key(i), data(i))
            on_disk = list(a.dir.rglob(f"*{fmt.SUFFIX}"))
            assert len(on_disk) <= cap, i
        # The directory's least recently written went first, whichever tier wrote them.
        left = sorted(int.from_bytes(bytes.fromhex(p.stem), "little") for p in on_disk)
        assert left == list(range(20 - cap, 20))
        assert a.used_bytes == cap * FILE_BYTES
        assert a.stats().errors == b.stats().errors == 0
    finally:
        a.close()
        b.close()


def churn(root: Path, cap: int, seed: int, seconds: float, parity: int) -> subprocess.Popen:
    argv = [sys.executable, str(WORKER), str(root), str(cap), "churn", str(seed), str(seconds)]
    return subprocess.Popen([*argv, str(parity)], stdout=subprocess.PIPE, text=True)


def started(proc: subprocess.Popen) -> None:
    assert proc.stdout is not None and proc.stdout.readline().strip() == "started"


def result(proc: subprocess.Popen) -> dict:
    assert proc.stdout is not None
    out = proc.stdout.read()
    assert proc.wait(30) == 0
    return json.loads(out)


def test_two_processes_share_the_cap_and_never_read_a_torn_file(
    tmp_path: Path, fp: Fingerprint
) -> None:
    cap = 8
    watcher = DiskTier(tmp_path, fp, cap * FILE_BYTES)  # opened first: creates the dir
    procs = [churn(tmp_path, cap, seed, 6.0, seed % 2) for seed in (1, 2)]
    for p in procs:
        started(p)
    most = 0
    samples = 0
    while any(p.poll() is None for p in procs):
        most = max(most, len(chunk_files(watcher)))
        samples += 1
        time.sleep(0.002)
    outs = [result(p) for p in procs]
    print(f"\n{samples} samples, at most {most} files (cap {cap}); workers: {outs}")
    for out in outs:
        assert out["bad"] == 0  # every byte read back was the key's own
        assert out["errors"] == 0  # a file evicted by the other process is no corruption
        assert out["hits_of_others"] > 0 and out["misses"] > 0
    # One chunk in flight from the other process at most; settled: within the cap.
    assert most <= cap + 1
    assert len(chunk_files(watcher)) <= cap
    watcher.close()
    fresh = DiskTier(tmp_path, fp, cap * FILE_BYTES)
    try:
        assert fresh.used_bytes == len(chunk_files(fresh)) * FILE_BYTES
        for k in list(fresh.keys()):
            i = int.from_bytes(k[1:], "little")
            assert fresh.get(k) == expected(i)
    finally:
        fresh.close()


def age_temps(shard: Path) -> None:
    """Make the temp files in ``shard`` older than disk_dirs.YOUNG_TMP_S."""
    old = time.time() - disk_dirs.YOUNG_TMP_S - 60
    for name in os.listdir(shard):
        if fmt.TMP_MARKER in name:
            os.utime(shard / name, (old, old))


def test_process_killed_mid_write_leaves_no_served_partial_file(
    tmp_path: Path, fp: Fingerprint
) -> None:
    live = DiskTier(tmp_path, fp, 10 * FILE_BYTES, negative_ttl_s=0.0)
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(tmp_path), "10", "hang"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "mid-write"
        shard = live.dir / shard_key(1).hex()[:2]
        temps = [n for n in os.listdir(shard) if fmt.TMP_MARKER in n]
        assert len(temps) == 1 and f"{fmt.TMP_MARKER}{proc.pid}." in temps[0]
        assert not live.contains(shard_key(1))  # the temp file is never a chunk
        # A temp file of a live writer (this process's own pid) is left alone by a scan.
        mine = shard / f"x{fmt.SUFFIX}{fmt.TMP_MARKER}{os.getpid()}.abcd"
        mine.write_bytes(b"partial")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        # Meanwhile the other tier keeps writing and reading.
        assert live.put(shard_key(2), expected(2)) and live.get(shard_key(2)) == expected(2)
        assert not live.contains(shard_key(1)) and live.get(shard_key(1)) is None
        # A young temp file of a pid not seen here is kept: it may be a replica's in another
        # container (its own pid namespace) writing right now.
        DiskTier(tmp_path, fp, 10 * FILE_BYTES).close()
        assert any(f"{fmt.TMP_MARKER}{proc.pid}." in n for n in os.listdir(shard))
        # Once older than any live write, the next scan removes the dead writer's temp file
        # and keeps the live one's.
        age_temps(shard)
        again = DiskTier(tmp_path, fp, 10 * FILE_BYTES)
        left = os.listdir(shard)
        assert not any(f"{fmt.TMP_MARKER}{proc.pid}." in n for n in left), left
        assert mine.name in left
        assert again.keys() == [shard_key(2)] and again.stats().errors == 0
        again.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        live.close()


def test_killed_writer_under_a_shared_cap(tmp_path: Path, fp: Fingerprint) -> None:
    """A churning process SIGKILLed at random moments: the survivor never reads a bad byte
    and the directory stays within the cap once the survivor has evicted again."""
    cap = 8
    survivor = churn(tmp_path, cap, 3, 14.0, 1)
    started(survivor)
    kills = 0
    for delay in (0.3, 0.9, 0.1, 0.6):  # fixed, so a failure can be re-run as it was
        victim = churn(tmp_path, cap, 10 + kills, 30.0, 0)
        started(victim)
        time.sleep(delay)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
        kills += 1
    stats = result(survivor)
    print(f"\n{kills} kills; survivor: {stats}")
    assert stats["bad"] == 0 and stats["errors"] == 0 and stats["hits"] > 0
    for shard in (p for p in Path(tmp_path).glob("*/*") if p.is_dir()):
        age_temps(shard)  # the killed writers' temp files, past the young-file grace
    t = DiskTier(tmp_path, fp, cap * FILE_BYTES)  # a fresh index: scans and reconciles
    try:
        assert len(chunk_files(t)) <= cap
        for k in list(t.keys()):
            assert t.get(k) == expected(int.from_bytes(k[1:], "little"))
        assert t.stats().errors == 0
        shard = t.dir / shard_key(0).hex()[:2]
        assert not [n for n in os.listdir(shard) if fmt.TMP_MARKER in n]
    finally:
        t.close()


def test_file_evicted_during_the_start_scan_is_no_error(
    tmp_path: Path, fp: Fingerprint, monkeypatch
) -> None:
    """Another process evicts a chunk between the new tier's listing and its header read."""
    a = DiskTier(tmp_path, fp, 10 * FILE_BYTES)
    for i in range(3):
        assert a.put(key(i), data(i))
    real_read_header = fmt.read_header

    def evicted_first(name, *args, **kw):
        if name == fmt.chunk_path(Path(), key(1)).name:
            assert a.evict(key(1))
        return real_read_header(name, *args, **kw)

    monkeypatch.setattr(fmt, "read_header", evicted_first)
    b = DiskTier(tmp_path, fp, 10 * FILE_BYTES)
    try:
        assert b.stats().errors == 0
        assert sorted(b.keys()) == [key(0), key(2)]
        assert b.used_bytes == 2 * FILE_BYTES
    finally:
        a.close()
        b.close()


def test_write_during_a_reconcile_scan_stays_indexed(
    tmp_path: Path, fp: Fingerprint, monkeypatch
) -> None:
    """A writer thread renames its file after the evictor's scan passed its shard: the index
    rebuilt from that scan must still hold it (the status counts chunks from the index)."""
    from kvpanel.cache import disk_evict

    t = DiskTier(tmp_path, fp, 10 * FILE_BYTES, reconcile_s=0.0)  # a scan after every write
    real_measure = disk_evict.measure_chunks
    late: list[int] = [5]

    def measure_then_write(*args, **kw):
        out = real_measure(*args, **kw)
        if late:
            i = late.pop()
            threading.Thread(target=t.put, args=(key(i), data(i))).start()
            time.sleep(0.2)  # stands for another writer thread finishing meanwhile
        return out

    monkeypatch.setattr(disk_evict, "measure_chunks", measure_then_write)
    try:
        assert t.put(key(1), data(1))  # its post-write scan races the write of key(5)
        assert sorted(t.keys()) == [key(1), key(5)]
        assert t.stats().chunks == 2 and t.used_bytes == 2 * FILE_BYTES
    finally:
        t.close()
