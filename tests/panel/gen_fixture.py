"""Regenerate recorded_stream.json (deterministic): python tests/panel/gen_fixture.py"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

GiB = 1 << 30
CHUNK = 36 * (1 << 20)  # Qwen3-8B, 256 tokens x 144 KiB per token
N = 40


def snapshot(i: int, rng: random.Random) -> dict:
    wave = math.sin(i / 4.0)
    cpu_used = min(64 * GiB, int((52 + 9 * (i / N)) * GiB))
    disk_used = int((301 + 2.5 * i) * GiB)
    remote_used = int((120 + 0.5 * i) * GiB)
    gpu_used = int((50.2 + 4 * wave) * GiB)
    return {
        "schema": 1,
        "ts": 1764370000.0 + i * DT,
        "uptime_s": 3725.0 + i * DT,
        "server_id": "recorded-server",
        "model": {
            "name": "Qwen/Qwen3-8B",
            "demo": False,
            "engine": "vllm 0.32.0",
            "device": "cuda",
        },
        "config": {
            "cpu_bytes": 64 * GiB,
            "disk_path": "/mnt/nvme0/kvpanel",
            "disk_bytes": 512 * GiB,
            "remote_url": "redis://kv-cache-01:6379",
            "chunk_tokens": 256,
        },
        "tiers": {
            "vllm": tier(58 * GiB, gpu_used, 0.62 + 0.2 * wave, 1204 + 37 * i, 9.8, 4.1, rng),
            "cpu": tier(
                64 * GiB,
                cpu_used,
                0.48 + 0.25 * math.cos(i / 5),
                310 + 11 * i,
                11.2 + rng.random(),
                6.3 + rng.random(),
            ),
            "disk": tier(
                512 * GiB,
                disk_used,
                0.21 + 0.1 * math.sin(i / 3 + 1),
                42 + i // 4,
                3.1 + 0.4 * rng.random(),
                1.9 + 0.3 * rng.random(),
                note="nvme0n1",
            ),
            "remote": tier(
                256 * GiB, remote_used, 0.07 + 0.04 * rng.random(), 0, 0.9, 0.4, note="rtt 0.9 ms"
            ),
        },
        "engine_kv": {"usage": round(0.78 + 0.12 * wave, 3), "prefix_hit_rate": 0.412},
        "ttft_s": {
            "p50": round(0.21 + 0.08 * wave + 0.02 * rng.random(), 4),
            "p90": round(0.62 + 0.15 * wave, 4),
            "p99": round(1.41 + 0.2 * wave, 4),
            "count": 512,
        },
        "throughput": {
            "prompt_tps": round(18234.0 + 2100 * wave, 1),
            "generation_tps": round(1432.0 + 150 * math.cos(i / 3), 1),
        },
        "requests": {"running": 14 + (i % 5), "waiting": (i * 3) % 7, "finished": 28410 + 9 * i},
        "host": {"ram_used_bytes": 412 * GiB, "ram_total_bytes": 1007 * GiB, "rss_bytes": 71 * GiB},
        "gpus": [
            {
                "index": 0,
                "name": "NVIDIA H100 80GB HBM3",
                "mem_used_bytes": int(74.1 * GiB),
                "mem_total_bytes": int(79.6 * GiB),
                "util_pct": 87.0 + (i % 4),
            }
        ],
        "bench": None,
    }


LOOKUPS = {"vllm": 2400, "cpu": 900, "disk": 140, "remote": 30}  # per interval
DT = 0.5  # seconds between snapshots


def tier(cap, used, hit, evictions, load, store, rng=None, note=""):
    """Interval figures (hit, load, store) plus placeholders for the cumulative counters."""
    return {
        "capacity_bytes": cap,
        "used_bytes": used,
        "chunks": used // CHUNK,
        "hits": 0,
        "misses": 0,
        "hit_rate": round(max(0.0, min(1.0, hit)), 3),
        "evictions": evictions,
        "bytes_in": 0,
        "bytes_out": 0,
        "errors": 0,
        "healthy": True,
        "note": note,
        "load_gbps": round(load, 2),
        "store_gbps": round(store, 2),
    }


def accumulate(snaps: list[dict]) -> None:
    """Cumulative counters that integrate each snapshot's interval figures, as the server's
    are: a consumer differencing two snapshots gets those figures back."""
    totals: dict = {}
    tokens = {"prompt_tokens": 91_000_000, "generation_tokens": 7_700_000}
    for snap in snaps:
        for name, t in snap["tiers"].items():
            acc = totals.setdefault(name, {"hits": 4000, "misses": 3000, "in": 0, "out": 0})
            n = LOOKUPS[name]
            hits = round(n * t["hit_rate"])
            acc["hits"] += hits
            acc["misses"] += n - hits
            acc["out"] += int(t["load_gbps"] * 1e9 * DT)
            acc["in"] += int(t["store_gbps"] * 1e9 * DT)
            t.update(
                hits=acc["hits"], misses=acc["misses"], bytes_in=acc["in"], bytes_out=acc["out"]
            )
            t["hit_ratio"] = round(acc["hits"] / (acc["hits"] + acc["misses"]), 4)
            t.update(
                cleared_at=None,
                hits_since_clear=t["hits"],
                misses_since_clear=t["misses"],
                hit_ratio_since_clear=t["hit_ratio"],
            )
        tp = snap["throughput"]
        tokens["prompt_tokens"] += int(tp["prompt_tps"] * DT)
        tokens["generation_tokens"] += int(tp["generation_tps"] * DT)
        tp.update(tokens)
        snap["interval_s"] = DT


LOGS = [
    "INFO 11-28 14:02:11 [api_server.py:1024] Starting vLLM API server on http://0.0.0.0:8000",
    "INFO 11-28 14:02:11 [kvpanel] tiers: vllm 58.00 GiB, cpu 64.00 GiB, disk 512.00 GiB "
    "@ /mnt/nvme0/kvpanel, remote redis://kv-cache-01:6379",
    "INFO 11-28 14:02:12 [kvpanel] control API on http://127.0.0.1:8000/kvpanel/v1",
    "INFO 11-28 15:04:01 [loggers.py:123] Engine 000: Avg prompt throughput: 18234.1 tokens/s, "
    "Avg generation throughput: 1432.0 tokens/s, Running: 14 reqs, Waiting: 0 reqs, "
    "GPU KV cache usage: 78.1%, Prefix cache hit rate: 41.2%",
    "INFO 11-28 15:04:06 [kvpanel] cpu: stored 212 chunks (7.45 GiB), loaded 388 chunks",
    "WARNING 11-28 15:04:09 [kvpanel] disk: 3 loads slower than 50 ms (nvme0n1 busy)",
    "INFO 11-28 15:04:11 [loggers.py:123] Engine 000: Avg prompt throughput: 19877.4 tokens/s, "
    "Avg generation throughput: 1391.6 tokens/s, Running: 16 reqs, Waiting: 3 reqs, "
    "GPU KV cache usage: 84.9%, Prefix cache hit rate: 41.6%",
    "INFO 11-28 15:04:16 [kvpanel] cpu: evicted 37 chunks to disk (LRU)",
    "INFO 11-28 15:04:17 [kvpanel] disk: stored 37 chunks (1.30 GiB) in 212 ms (6.1 GB/s)",
    "INFO 11-28 15:04:19 [kvpanel] remote: loaded 4 chunks (144.00 MiB), rtt 0.9 ms",
    "INFO 11-28 15:04:21 [loggers.py:123] Engine 000: Avg prompt throughput: 17611.9 tokens/s, "
    "Avg generation throughput: 1588.2 tokens/s, Running: 18 reqs, Waiting: 5 reqs, "
    "GPU KV cache usage: 74.0%, Prefix cache hit rate: 41.2%",
    "INFO 11-28 15:04:22 [kvpanel] cpu: hit 1,204 of 2,451 lookups (49.1%) in the last 10 s",
    "INFO 11-28 15:04:24 [kvpanel] cpu: stored 96 chunks (3.38 GiB), loaded 301 chunks",
    "INFO 11-28 15:04:26 [kvpanel] disk: loaded 58 chunks (2.04 GiB) at 3.2 GB/s",
]

if __name__ == "__main__":
    rng = random.Random(7)
    snaps = [snapshot(i, rng) for i in range(N)]
    accumulate(snaps)
    data = {"snapshots": snaps, "logs": LOGS}
    out = Path(__file__).with_name("recorded_stream.json")
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {out}")
