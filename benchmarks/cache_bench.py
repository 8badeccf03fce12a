"""Micro-benchmarks of kvpanel.cache on this machine.

Measures: hashing a prompt into prefix-chained chunk keys + looking them all up in a populated
TieredStore (the per-request scheduling cost), and put/get bandwidth of the CPU tier (copies
into / out of slots) and of the disk tier (synchronous put, validated get).

Usage: python benchmarks/cache_bench.py [--tokens 20000] [--chunk 256] [--chunk-mb N]
Default chunk size is gpt-oss-20b's: 24 layers * 8 kv heads * 64 dim * 2 (K,V) * 2 bytes
* 256 tokens = 12.58 MB per 256-token chunk.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvpanel.cache.cpu_tier import CpuTier  # noqa: E402
from kvpanel.cache.disk_tier import DiskTier  # noqa: E402
from kvpanel.cache.keys import ChunkKey, Fingerprint, prefix_chunk_keys  # noqa: E402
from kvpanel.cache.store import LookupState, TieredStore  # noqa: E402

GPT_OSS_20B_BYTES_PER_TOKEN = 24 * 8 * 64 * 2 * 2


def median_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--chunk", type=int, default=256, help="tokens per chunk")
    ap.add_argument("--chunk-mb", type=float, default=None, help="override bytes per chunk")
    ap.add_argument("--chunks", type=int, default=16, help="chunks moved per bandwidth test")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--disk-dir", default=None, help="directory for the disk test (tmp)")
    args = ap.parse_args()

    chunk_bytes = (
        int(args.chunk_mb * (1 << 20))
        if args.chunk_mb
        else GPT_OSS_20B_BYTES_PER_TOKEN * args.chunk
    )
    fp = Fingerprint("openai/gpt-oss-20b", "bfloat16", "bench", 16, args.chunk, chunk_bytes)
    rng = random.Random(0)
    tokens = [rng.randrange(200_000) for _ in range(args.tokens)]
    rows: list[tuple[str, str]] = []

    # --- scheduling path: hash + lookup (chunk size is irrelevant here; use tiny slots) ---
    small_fp = Fingerprint(fp.model, fp.dtype, fp.layout, 16, args.chunk, 64)
    keys = prefix_chunk_keys(small_fp, tokens, args.chunk)
    with TieredStore(small_fp, cpu_bytes=len(keys) * 64) as store:
        res = store.reserve(keys)
        assert res is not None
        store.commit(res.keys)
        hash_ms = median_ms(lambda: prefix_chunk_keys(small_fp, tokens, args.chunk), args.runs)

        def hash_and_lookup() -> None:
            for k in prefix_chunk_keys(small_fp, tokens, args.chunk):
                assert store.lookup(k) is LookupState.HIT

        total_ms = median_ms(hash_and_lookup, args.runs)
    rows.append((f"hash {args.tokens} tokens -> {len(keys)} keys", f"{hash_ms:.3f} ms"))
    rows.append(("hash + lookup all in TieredStore", f"{total_ms:.3f} ms"))

    # --- CPU tier bandwidth ---
    n = args.chunks
    data = [torch.randint(0, 256, (chunk_bytes,), dtype=torch.uint8) for _ in range(2)]
    cpu = CpuTier(n * chunk_bytes, chunk_bytes)
    ckeys = [ChunkKey(i.to_bytes(16, "little")) for i in range(n)]
    # First pass touches fresh pages (page faults); the second is the steady state.
    put_s = {}
    for label in ("first touch", "warm"):
        cpu.clear()
        t0 = time.perf_counter()
        for i, k in enumerate(ckeys):
            assert cpu.insert(k, data[i % 2])
        put_s[label] = time.perf_counter() - t0
    out = torch.empty(chunk_bytes, dtype=torch.uint8)
    t0 = time.perf_counter()
    for k in ckeys:
        slot = cpu.acquire([k])[0]
        out.copy_(cpu.view(slot))
        cpu.release([k])
    get_s = time.perf_counter() - t0
    for label, secs in put_s.items():
        rows.append(
            (
                f"cpu put ({n} x {chunk_bytes / 1e6:.2f} MB, {label})",
                f"{gbps(n * chunk_bytes, secs):.2f} GB/s",
            )
        )
    rows.append(("cpu get (acquire + copy out)", f"{gbps(n * chunk_bytes, get_s):.2f} GB/s"))

    # --- disk tier bandwidth ---
    with tempfile.TemporaryDirectory(dir=args.disk_dir) as tmp:
        disk = DiskTier(tmp, fp, 2 * n * chunk_bytes)
        try:
            t0 = time.perf_counter()
            for i, k in enumerate(ckeys):
                assert disk.put(k, data[i % 2])
            disk_put_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for k in ckeys:
                assert disk.read_into(k, out)
            get_s = time.perf_counter() - t0
        finally:
            disk.close()
    rows.append(
        ("disk put (sync, checksum, no fsync)", f"{gbps(n * chunk_bytes, disk_put_s):.2f} GB/s")
    )
    rows.append(
        (
            "disk get (read_into + validate, page cache warm)",
            f"{gbps(n * chunk_bytes, get_s):.2f} GB/s",
        )
    )

    width = max(len(name) for name, _ in rows)
    print(f"{'benchmark':<{width}}  result")
    print(f"{'-' * width}  {'-' * 12}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
