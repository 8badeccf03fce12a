"""Put/get bandwidth of kvpanel's Redis tier for gpt-oss-20b-sized chunks.

Measures, for N chunks of 256 tokens (24 layers * 8 kv heads * 64 dim * 2 (K,V) * 2 bytes * 256
= 12.58 MB each): raw redis-py SET/GET of the bare bytes (the floor: socket + Redis), the tier's
synchronous put (header + blake2b checksum + SET) and its write-behind path (put_async of all
chunks, then flush: one writer thread batching pipelines), validated get, and whole-store
promotions (TieredStore lookup -> PENDING -> HIT with its GET pool).

Starts its own redis-server on 127.0.0.1 (a free port, no persistence) unless --url is given.

Usage: python benchmarks/redis_bench.py [--chunks 16] [--chunk-mb 12.58] [--url redis://...]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvpanel.cache.keys import ChunkKey, Fingerprint  # noqa: E402
from kvpanel.cache.remote_tier import RemoteTier  # noqa: E402
from kvpanel.cache.store import LookupState, TieredStore  # noqa: E402

GPT_OSS_20B_CHUNK = 24 * 8 * 64 * 2 * 2 * 256


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server not found: apt-get install redis-server, or pass --url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            exe,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(500):
        try:
            client.ping()
            return proc, f"redis://127.0.0.1:{port}"
        except redis.ConnectionError:
            time.sleep(0.02)
    proc.kill()
    sys.exit("redis-server did not start")


def timed(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best of ``repeats`` wall times (seconds): the least disturbed run."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--chunk-mb", type=float, default=GPT_OSS_20B_CHUNK / 1e6)
    ap.add_argument("--url", default=None)
    args = ap.parse_args()
    nbytes = int(args.chunk_mb * 1e6)
    fp = Fingerprint("bench/gpt-oss-20b", "bfloat16", "bench", 16, 256, nbytes)
    keys = [ChunkKey(i.to_bytes(16, "little")) for i in range(args.chunks)]
    data = [torch.randint(0, 256, (nbytes,), dtype=torch.uint8) for _ in keys]
    raw = [bytes(t.numpy()) for t in data]
    total = nbytes * len(keys)

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = (None, args.url) if args.url else start_redis(tmp)
        try:
            rows = run(url, fp, keys, data, raw)
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
    print(f"\n{len(keys)} chunks x {nbytes / 1e6:.2f} MB = {total / 1e6:.0f} MB per pass, {url}")
    print(f"{'operation':<44} {'GB/s':>7} {'ms/chunk':>9}")
    for name, seconds in rows:
        print(f"{name:<44} {total / seconds / 1e9:>7.2f} {seconds / len(keys) * 1e3:>9.2f}")


def run(
    url: str, fp: Fingerprint, keys: list[ChunkKey], data: list[torch.Tensor], raw: list[bytes]
) -> list[tuple[str, float]]:
    client = redis.Redis.from_url(url)
    names = [f"bench:raw:{i}" for i in range(len(keys))]
    rows = [
        (
            "redis-py SET (bare bytes, no header)",
            timed(lambda: [client.set(n, r) for n, r in zip(names, raw, strict=True)]),
        ),
        ("redis-py GET (bare bytes, no validation)", timed(lambda: [client.get(n) for n in names])),
    ]
    client.delete(*names)
    tier = RemoteTier(url, fp, max_queue=len(keys))
    try:
        assert tier.healthy, tier.stats().note

        def put_sync() -> None:
            for k, d in zip(keys, data, strict=True):
                assert tier.put(k, d)

        def put_async() -> None:
            for k, d in zip(keys, data, strict=True):
                assert tier.put_async(k, d)
            assert tier.flush(120)

        def get() -> None:
            for k in keys:
                assert tier.get(k, expect_bytes=fp.chunk_bytes) is not None

        rows.append(("tier put (sync: encode+checksum+SET)", timed(put_sync)))
        rows.append(("tier put_async x N + flush (pipelined)", timed(put_async)))
        rows.append(("tier get (GET + validate)", timed(get)))
    finally:
        tier.close()

    for workers in (1, 4):
        rows.append(
            (f"store promotion to CPU ({workers} GET threads)", promote(url, fp, keys, workers))
        )
    return rows


def promote(url: str, fp: Fingerprint, keys: list[ChunkKey], workers: int) -> float:
    """vLLM-style: look every key up (all PENDING at once), poll until all are CPU HITs."""
    best = float("inf")
    with TieredStore(
        fp, cpu_bytes=len(keys) * fp.chunk_bytes, remote_url=url, remote_workers=workers
    ) as store:
        for _ in range(3):
            store.clear("cpu")
            t0 = time.perf_counter()
            todo = set(keys)
            while todo:
                states = {k: store.lookup(k) for k in todo}
                if LookupState.MISS in states.values():
                    raise RuntimeError(f"promotion failed: {store.stats()['remote']}")
                todo = {k for k, st in states.items() if st is not LookupState.HIT}
                if todo:
                    time.sleep(0.0005)
            best = min(best, time.perf_counter() - t0)
    return best


if __name__ == "__main__":
    main()
