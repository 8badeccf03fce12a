"""What oversized junk under kvpanel's Redis key names costs a reader: time and memory.

Writes N values of M MB (zeros, made server-side with SETRANGE so this process never holds
them) under the names of N chunk keys of one fingerprint, then times ``RemoteTier.get`` of each
and reports the growth of this process's peak RSS (VmHWM minus VmRSS before the gets) and the
bytes Redis sent (``INFO stats`` total_net_output_bytes). The values must come back as misses.

Starts its own redis-server on 127.0.0.1 unless --url is given.

Usage: python benchmarks/redis_junk_bench.py [--values 4] [--mb 200] [--chunk-mb 6.29]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from redis_bench import start_redis  # noqa: E402

from kvpanel.cache import remote_format as fmt  # noqa: E402
from kvpanel.cache.keys import ChunkKey, Fingerprint  # noqa: E402
from kvpanel.cache.store import LookupState, TieredStore  # noqa: E402


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--values", type=int, default=4)
    ap.add_argument("--mb", type=float, default=200)
    ap.add_argument("--chunk-mb", type=float, default=6 * 1.048576)
    ap.add_argument("--url", default=None)
    ap.add_argument(
        "--store", action="store_true", help="through TieredStore lookups (4 GET threads at once)"
    )
    args = ap.parse_args()
    chunk_bytes = int(args.chunk_mb * 1e6)
    fp = Fingerprint("bench/junk", "bfloat16", "bench", 16, 256, chunk_bytes)
    keys = [ChunkKey(i.to_bytes(16, "little")) for i in range(args.values)]
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = (None, args.url) if args.url else start_redis(tmp)
        try:
            client = redis.Redis.from_url(url)
            for k in keys:
                client.setrange(fmt.redis_key(fp.hex(), k), int(args.mb * 1e6) - 1, b"x")
            store = TieredStore(fp, cpu_bytes=chunk_bytes * len(keys), remote_url=url)
            tier = store.remote
            assert tier is not None
            try:
                sent0 = int(client.info("stats")["total_net_output_bytes"])
                rss0 = _status_kib("VmRSS")
                t0 = time.perf_counter()
                if args.store:
                    for k in keys:
                        store.lookup(k)
                    while store.has_pending():
                        time.sleep(0.001)
                    got = [store.lookup(k) is LookupState.HIT or None for k in keys]
                else:
                    got = [tier.get(k, expect_bytes=chunk_bytes) for k in keys]
                seconds = time.perf_counter() - t0
                peak = _status_kib("VmHWM")
                sent = int(client.info("stats")["total_net_output_bytes"]) - sent0
                left = sum(int(client.exists(fmt.redis_key(fp.hex(), k))) for k in keys)
                errors = tier.stats().errors
            finally:
                store.close()
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
    print(
        f"{args.values} x {args.mb:g} MB junk: {seconds:.2f} s,"
        f" peak RSS +{(peak - rss0) / 1024:.0f} MiB, Redis sent {sent / 2**20:.1f} MiB,"
        f" hits {sum(g is not None for g in got)},"
        f" values left {left}, tier errors {errors}"
    )


if __name__ == "__main__":
    main()
