"""Redis tier get/put bandwidth next to a bare redis-py + hiredis loop over the same values and
the same number of connections.

For N values of --mib MiB (default 16 x 6 MiB) and C connections (default 4: C threads, each
with its own pooled connection, each moving N/C values):
- bare GET / SET: redis-py (hiredis parser) ``get``/``set`` of the bare bytes, one per call:
  what a client that checks nothing gets (redis-py's hiredis packer copies a SET's value twice,
  so a second SET row writes the bare bytes as they are: the floor for a SET);
- tier get / get_many: ``RemoteTier.get`` per key, or one ``get_many`` pipeline per thread
  (length checked in Redis, header and checksum validated);
- tier put / put_many: ``RemoteTier.put`` per key, or one ``put_many`` pipeline per thread
  (header + checksum, payload sent from the tensor's memory);
- store promotion: ``TieredStore`` lookup -> PENDING -> CPU HIT of every key, C fetch threads
  (includes the copy into the CPU slot);
- per-chunk costs inside the tier: the payload checksum and the copy into a CPU slot.
Ratios are tier / bare. Best of --repeats runs. Starts its own redis-server on 127.0.0.1 (no
persistence) unless --url is given.

Usage: python benchmarks/redis_bench.py [--chunks 16] [--mib 6] [--connections 4] [--url ...]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis
import redis.utils
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvpanel.cache.buffers import as_byte_view, copy_into  # noqa: E402
from kvpanel.cache.keys import ChunkKey, Fingerprint  # noqa: E402
from kvpanel.cache.remote_client import set_many  # noqa: E402
from kvpanel.cache.remote_tier import RemoteTier  # noqa: E402
from kvpanel.cache.secret import payload_check  # noqa: E402
from kvpanel.cache.store import LookupState, TieredStore  # noqa: E402


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("redis-server not found: apt-get install redis-server, or pass --url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*argv, "--dir", workdir], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(500):
        try:
            client.ping()
            return proc, f"redis://127.0.0.1:{port}"
        except redis.ConnectionError:
            time.sleep(0.02)
    proc.kill()
    sys.exit("redis-server did not start")


def use_xxh3() -> None:
    """Replace the unkeyed payload check with xxh3-128 in the tier's modules (this process only;
    values written so are unreadable by a tree that checks with blake2b)."""
    import xxhash

    from kvpanel.cache import remote_format, remote_tier

    def xxh3_check(payload, fingerprint, key, secret):  # type: ignore[no-untyped-def]
        assert secret is None
        return xxhash.xxh3_128(payload).digest()

    remote_format.payload_check = xxh3_check  # type: ignore[assignment]
    remote_tier.payload_check = xxh3_check  # type: ignore[assignment]
    globals()["payload_check"] = xxh3_check


def best(fn: Callable[[], object], repeats: int) -> float:
    """Best of ``repeats`` wall times (seconds): the least disturbed run."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def in_threads(shares: Sequence[Sequence[Any]], work: Callable[[Sequence[Any]], None]) -> None:
    """``work(share)`` for every share at once, one thread each (so one connection each)."""
    errors: list[BaseException] = []

    def run(share: Sequence[Any]) -> None:
        try:
            work(share)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(s,)) for s in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def split(items: Sequence[Any], n: int) -> list[Sequence[Any]]:
    return [items[i::n] for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=16)
    ap.add_argument("--mib", type=float, default=6.0)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--url", default=None)
    ap.add_argument(
        "--checksum",
        choices=("tree", "xxh3-128"),
        default="tree",
        help="tree: the payload check this tree's tiers use (default); xxh3-128: swap in xxh3-128 "
        "for this run only, to see the tier's own cost without the checksum",
    )
    args = ap.parse_args()
    if args.checksum == "xxh3-128":
        use_xxh3()
    nbytes = int(args.mib * 2**20)
    fp = Fingerprint("bench/redis", "bfloat16", "bench", 16, 256, nbytes)
    keys = [ChunkKey(i.to_bytes(16, "little")) for i in range(args.chunks)]
    data = [torch.randint(0, 256, (nbytes,), dtype=torch.uint8) for _ in keys]
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = (None, args.url) if args.url else start_redis(tmp)
        try:
            rows, costs = run(url, fp, keys, data, args.connections, args.repeats)
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
    total = nbytes * len(keys)
    print(
        f"\n{len(keys)} values x {args.mib:g} MiB = {total / 2**20:.0f} MiB per pass, "
        f"{args.connections} connections, best of {args.repeats}, {url}, "
        f"hiredis parser: {redis.utils.HIREDIS_AVAILABLE}, checksum: {args.checksum}"
    )
    print(f"{'operation':<46} {'GB/s':>6} {'ms/value':>9} {'vs bare':>8}")
    bare = {"get": rows[0][1], "put": rows[1][1]}
    for name, seconds, kind in rows:
        ratio = f"{bare[kind] / seconds:8.2f}" if kind and not name.startswith("bare") else ""
        print(f"{name:<46} {total / seconds / 1e9:>6.2f} {seconds / len(keys) * 1e3:>9.2f}{ratio}")
    for name, seconds in costs:
        print(f"  per value, one thread: {name:<24} {seconds * 1e3:6.2f} ms")


def run(
    url: str,
    fp: Fingerprint,
    keys: list[ChunkKey],
    data: list[torch.Tensor],
    conns: int,
    repeats: int,
) -> tuple[list[tuple[str, float, str]], list[tuple[str, float]]]:
    client = redis.Redis.from_url(url, max_connections=conns + 2)
    raw = [bytes(as_byte_view(t)) for t in data]
    names = [f"bench:bare:{i}".encode() for i in range(len(keys))]
    pairs = list(zip(names, raw, strict=True))
    rows: list[tuple[str, float, str]] = []

    def bare_get(share: Sequence[bytes]) -> None:
        for n in share:
            assert client.get(n) is not None

    def bare_set(share: Sequence[tuple[bytes, bytes]]) -> None:
        for n, r in share:
            client.set(n, r)

    bare_set(pairs)
    rows.append(
        (
            "bare GET (redis-py + hiredis)",
            best(lambda: in_threads(split(names, conns), bare_get), repeats),
            "get",
        )
    )
    rows.append(
        (
            "bare SET (redis-py + hiredis)",
            best(lambda: in_threads(split(pairs, conns), bare_set), repeats),
            "put",
        )
    )

    def unpacked_set(share: Sequence[tuple[bytes, bytes]]) -> None:
        for n, r in share:
            assert set_many(client, [(n, b"", memoryview(r))], None) == [True]

    rows.append(
        (
            "bare SET, value written as is (no packer copy)",
            best(lambda: in_threads(split(pairs, conns), unpacked_set), repeats),
            "",
        )
    )
    client.delete(*names)

    tier = RemoteTier(url, fp)
    items = list(zip(keys, data, strict=True))
    try:
        assert tier.healthy, tier.stats().note

        def put(share: Sequence[tuple[ChunkKey, torch.Tensor]]) -> None:
            for k, d in share:
                assert tier.put(k, d)

        def put_many(share: Sequence[tuple[ChunkKey, torch.Tensor]]) -> None:
            assert all(tier.put_many(list(share)))

        def get(share: Sequence[ChunkKey]) -> None:
            for k in share:
                assert tier.get(k, expect_bytes=fp.chunk_bytes) is not None

        def get_many(share: Sequence[ChunkKey]) -> None:
            assert all(v is not None for v in tier.get_many(list(share), fp.chunk_bytes))

        rows.append(
            (
                "tier put (one SET per call)",
                best(lambda: in_threads(split(items, conns), put), repeats),
                "put",
            )
        )
        rows.append(
            (
                "tier put_many (one pipeline per thread)",
                best(lambda: in_threads(split(items, conns), put_many), repeats),
                "put",
            )
        )
        rows.append(
            (
                "tier get (one key per call)",
                best(lambda: in_threads(split(keys, conns), get), repeats),
                "get",
            )
        )
        rows.append(
            (
                "tier get_many (one pipeline per thread)",
                best(lambda: in_threads(split(keys, conns), get_many), repeats),
                "get",
            )
        )
    finally:
        tier.close()
    rows.append(
        (
            f"store promotion to CPU ({conns} fetch threads)",
            promote(url, fp, keys, conns, repeats),
            "get",
        )
    )

    view = as_byte_view(data[0])
    slot = torch.empty(fp.chunk_bytes, dtype=torch.uint8)
    costs = [
        ("payload checksum", best(lambda: payload_check(view, b"f" * 16, keys[0], None), repeats)),
        ("copy into a CPU slot", best(lambda: copy_into(slot, raw[0]), repeats)),
    ]
    return rows, costs


def promote(url: str, fp: Fingerprint, keys: list[ChunkKey], workers: int, repeats: int) -> float:
    """vLLM-style: look every key up (all PENDING at once), poll until all are CPU HITs."""
    times = []
    with TieredStore(
        fp, cpu_bytes=len(keys) * fp.chunk_bytes, remote_url=url, remote_workers=workers
    ) as store:
        for _ in range(repeats):
            store.clear("cpu")
            t0 = time.perf_counter()
            todo = set(keys)
            while todo:
                states = {k: store.lookup(k) for k in todo}
                if LookupState.MISS in states.values():
                    raise RuntimeError(f"promotion failed: {store.stats()['remote']}")
                todo = {k for k, st in states.items() if st is not LookupState.HIT}
                if todo:
                    time.sleep(0.002)  # vLLM asks again once per engine step
            times.append(time.perf_counter() - t0)
    return min(times)


if __name__ == "__main__":
    main()
