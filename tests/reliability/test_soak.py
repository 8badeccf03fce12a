"""1,000 requests (repeated and new prompts, concurrency 4) against one `kvpanel serve`.

Samples the server's RSS (the serve process and its children) and the tiers' used bytes every
50 requests into ``soak.csv`` under the test's tmp dir, prints a summary, and bounds growth.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import MiB, prompt, start, tier_status, tokens, tree_rss, write_csv

pytestmark = pytest.mark.vllm

REQUESTS = 1000
EVERY = 50


def test_soak_1000_requests_bounded_memory(tiny_llama, tmp_path):
    server = start(
        tiny_llama,
        tmp_path,
        "--cpu-cache-gb",
        "0.03",
        "--disk-path",
        str(tmp_path / "disk"),
        "--disk-cache-gb",
        "0.05",
    )
    rng = random.Random(1234)
    pool = [prompt(10_000 + i, rng.randrange(300, 601)) for i in range(60)]
    plan = [
        pool[rng.randrange(len(pool))]
        if rng.random() < 0.5
        else prompt(20_000 + i, rng.randrange(300, 601))
        for i in range(REQUESTS)
    ]
    refs: dict[int, list[int]] = {}
    rows: list[dict] = []
    lock = threading.Lock()
    done = [0]
    failures: list[str] = []
    t0 = time.monotonic()

    def sample() -> None:
        st = tier_status(server.url, server.token)["tiers"]
        rows.append(
            {
                "requests": done[0],
                "elapsed_s": round(time.monotonic() - t0, 1),
                "rss_mib": round(tree_rss(server.proc.pid) / MiB, 1),
                "cpu_used_mib": round(st["cpu"]["used_bytes"] / MiB, 2),
                "cpu_capacity_mib": round(st["cpu"]["capacity_bytes"] / MiB, 2),
                "disk_used_mib": round(st["disk"]["used_bytes"] / MiB, 2),
                "disk_capacity_mib": round(st["disk"]["capacity_bytes"] / MiB, 2),
                "cpu_hits": st["cpu"]["hits"],
                "disk_hits": st["disk"]["hits"],
            }
        )

    def one(i: int) -> None:
        ids = plan[i]
        try:
            out = tokens(server.url, tiny_llama, ids, max_tokens=2)
        except BaseException as e:  # counted, reported below
            failures.append(f"{i}: {e}")
            return
        key = id(ids)
        with lock:
            if key in refs:
                if refs[key] != out:
                    failures.append(f"{i}: repeated prompt gave {out}, first {refs[key]}")
            else:
                refs[key] = out
            done[0] += 1
            due = done[0] % EVERY == 0
        if due:
            sample()

    try:
        sample()
        with ThreadPoolExecutor(4) as ex:
            list(ex.map(one, range(REQUESTS)))
        sample()
    finally:
        rc = server.stop()
    path = tmp_path / "soak.csv"
    write_csv(path, rows)
    q = max(1, len(rows) // 4)
    first, last = rows[1 : 1 + q], rows[-q:]  # rows[0] is before any request
    first_rss = statistics.mean(r["rss_mib"] for r in first)
    last_rss = statistics.mean(r["rss_mib"] for r in last)
    elapsed = rows[-1]["elapsed_s"]
    print(
        f"\nsoak: {REQUESTS} requests in {elapsed:.0f}s ({REQUESTS / elapsed:.1f} req/s), "
        f"{len(failures)} failed; RSS first-quarter mean {first_rss:.0f} MiB, last-quarter "
        f"{last_rss:.0f} MiB (x{last_rss / first_rss:.3f}), max "
        f"{max(r['rss_mib'] for r in rows):.0f} MiB; cpu used max "
        f"{max(r['cpu_used_mib'] for r in rows)} / {rows[-1]['cpu_capacity_mib']} MiB; disk used "
        f"max {max(r['disk_used_mib'] for r in rows)} / {rows[-1]['disk_capacity_mib']} MiB; "
        f"hits cpu {rows[-1]['cpu_hits']} disk {rows[-1]['disk_hits']}; curve: {path}"
    )
    assert rc == 0
    assert not failures, failures[:5]
    assert done[0] == REQUESTS
    assert last_rss < 1.3 * first_rss
    assert all(r["cpu_used_mib"] <= r["cpu_capacity_mib"] for r in rows)
    assert all(r["disk_used_mib"] <= r["disk_capacity_mib"] for r in rows)
