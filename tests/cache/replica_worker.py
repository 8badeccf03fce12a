"""A process sharing a disk cache dir with others (run by test_disk_replicas.py, not collected).

replica_worker.py ROOT CAP_FILES churn SEED SECONDS PARITY
    print "started", write keys of one parity, read keys of both, verify every byte read;
    then print JSON stats.
replica_worker.py ROOT CAP_FILES hang
    start writing key 1, stop right before its rename, print "mid-write", wait to be killed.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

import conftest  # tests/cache: puts the repo on sys.path
from conftest import CHUNK_BYTES, make_fp, payload

from kvpanel.cache import disk_format as fmt
from kvpanel.cache.disk_tier import DiskTier
from kvpanel.cache.keys import ChunkKey

FILE_BYTES = fmt.HEADER_BYTES + CHUNK_BYTES
KEYS = 40


def shard_key(i: int) -> ChunkKey:
    # One shard folder for every key, so one directory listing is a snapshot of the cache.
    return ChunkKey(b"\x07" + i.to_bytes(15, "little"))


def expected(i: int) -> bytes:
    return bytes(payload(i).tolist())


def churn(tier: DiskTier, seed: int, seconds: float, parity: int) -> dict:
    rng = random.Random(seed)
    datas = {i: expected(i) for i in range(KEYS)}
    stats = {"writes": 0, "hits": 0, "hits_of_others": 0, "misses": 0, "bad": 0}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        w = rng.randrange(parity, KEYS, 2)
        stats["writes"] += tier.put(shard_key(w), datas[w])
        r = rng.randrange(KEYS)
        got = tier.get(shard_key(r))
        if got is None:
            stats["misses"] += 1
        elif got != datas[r]:
            stats["bad"] += 1  # a torn or foreign file served: must never happen
        else:
            stats["hits"] += 1
            stats["hits_of_others"] += r % 2 != parity
    stats["errors"] = tier.stats().errors
    return stats


def hang_before_rename(tier: DiskTier) -> None:
    real_replace = os.replace

    def replace(src, dst, **kw):
        if fmt.TMP_MARKER in os.fspath(src) and os.fspath(dst).endswith(fmt.SUFFIX):
            print("mid-write", flush=True)
            time.sleep(3600)
        return real_replace(src, dst, **kw)

    os.replace = replace
    tier.put(shard_key(1), expected(1))


def main() -> None:
    root, cap_files, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    assert conftest.CHUNK_BYTES == CHUNK_BYTES
    tier = DiskTier(root, make_fp(), cap_files * FILE_BYTES, reconcile_s=0.5)
    try:
        if mode == "hang":
            hang_before_rename(tier)
        else:
            seed, seconds, parity = int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
            print("started", flush=True)
            print(json.dumps(churn(tier, seed, seconds, parity)), flush=True)
    finally:
        tier.close()


if __name__ == "__main__":
    main()
