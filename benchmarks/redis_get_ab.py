"""A/B of the Redis tier's read for normal values: plain GET vs ``get_checked`` (length check
in Redis + GETRANGE, one pipeline), each followed by ``decode``; rounds interleaved, one Redis.

Usage: python benchmarks/redis_get_ab.py [--rounds 40] [--chunks 8] [--mib 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from redis_bench import start_redis  # noqa: E402

from kvpanel.cache import remote_format as fmt  # noqa: E402
from kvpanel.cache.keys import ChunkKey, Fingerprint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--mib", type=float, default=6)
    args = ap.parse_args()
    n = int(args.mib * 2**20)
    fp = Fingerprint("bench", "bfloat16", "bench", 16, 256, n)
    keys = [ChunkKey(i.to_bytes(16, "little")) for i in range(args.chunks)]
    names = [fmt.redis_key(fp.hex(), k) for k in keys]
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(tmp)
        try:
            c = redis.Redis.from_url(url)
            for k, name in zip(keys, names, strict=True):
                p = memoryview(torch.randint(0, 256, (n,), dtype=torch.uint8).numpy())
                c.set(name, fmt.encode(fp.digest(), k, p))

            def plain(i: int) -> None:
                fmt.decode(c.get(names[i]), fp.digest(), keys[i])  # type: ignore[arg-type]

            def checked(i: int) -> None:
                size, raw = fmt.get_checked(c, names[i], fmt.HEADER_BYTES + n)
                assert raw is not None
                fmt.decode(raw, fp.digest(), keys[i])

            variants: list[tuple[str, Callable[[int], None]]] = [
                ("GET + decode", plain),
                ("get_checked + decode", checked),
            ]
            times: dict[str, list[float]] = {name: [] for name, _f in variants}
            for r in range(args.rounds + 1):
                for name, f in variants[r % 2 :] + variants[: r % 2]:
                    t0 = time.perf_counter()
                    for i in range(len(keys)):
                        f(i)
                    if r:  # round 0 warms up
                        times[name].append((time.perf_counter() - t0) / len(keys) * 1e3)
        finally:
            proc.kill()
            proc.wait()
    for name, v in times.items():
        print(
            f"{name:<22} median {statistics.median(v):7.2f} ms/chunk, min {min(v):7.2f}"
            f"  ({args.rounds} rounds x {len(keys)} x {args.mib:g} MiB)"
        )


if __name__ == "__main__":
    main()
