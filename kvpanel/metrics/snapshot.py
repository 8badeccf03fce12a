"""Build the status snapshot (schema in schema.md) from engine totals and tier stats.

Rates (hit rate now, tokens/s, GB/s) are deltas between this build and the previous one, so the
builder keeps the previous inputs. One builder per server; ``build`` is called by one thread.

Primitives: SnapshotBuilder(static).build(totals, tiers, transfers, gpu_blocks) -> dict;
percentile(values, q).
"""

from __future__ import annotations

import time
from typing import Any

from kvpanel.metrics.engine_samples import EngineTotals
from kvpanel.metrics.host import gpus, host_memory

SCHEMA_VERSION = 1


def percentile(values: tuple[float, ...] | list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    idx = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[idx]


def _rate(now: float, before: float, seconds: float) -> float:
    return max(0.0, now - before) / seconds if seconds > 0 else 0.0


class SnapshotBuilder:
    def __init__(self, static: dict[str, Any]):
        self.static = static  # model, config
        self.started = time.time()
        self._prev_totals: EngineTotals | None = None
        self._prev_tiers: dict[str, dict[str, Any]] = {}
        self._prev_transfers: dict[str, float] = {}
        self._prev_at = time.monotonic()

    def build(
        self,
        totals: EngineTotals,
        tiers: dict[str, dict[str, Any]],
        transfers: dict[str, float],
        gpu_kv_bytes: int,
        bench: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        now = time.monotonic()
        dt = now - self._prev_at
        prev = self._prev_totals
        d_queries = totals.prefix_queries - (prev.prefix_queries if prev else 0)
        d_hits = totals.prefix_hits - (prev.prefix_hits if prev else 0)
        out_tiers: dict[str, dict[str, Any]] = {
            "gpu": {
                "capacity_bytes": gpu_kv_bytes,
                "used_bytes": int(gpu_kv_bytes * totals.kv_usage),
                "chunks": 0,
                "hits": totals.prefix_hits,
                "misses": totals.prefix_queries - totals.prefix_hits,
                "hit_rate": d_hits / d_queries if d_queries > 0 else None,
                "evictions": 0,
                "bytes_in": 0,
                "bytes_out": 0,
                "errors": 0,
                "healthy": True,
                "note": "prefix cache (tokens)",
                "load_gbps": 0.0,
                "store_gbps": 0.0,
            }
        }
        for name, t in tiers.items():
            before = self._prev_tiers.get(name, {})
            lookups = (t["hits"] - before.get("hits", 0)) + (t["misses"] - before.get("misses", 0))
            row = dict(t)
            row.pop("name", None)
            row["hit_rate"] = (t["hits"] - before.get("hits", 0)) / lookups if lookups > 0 else None
            row["load_gbps"] = _rate(t["bytes_out"], before.get("bytes_out", 0), dt) / 1e9
            row["store_gbps"] = _rate(t["bytes_in"], before.get("bytes_in", 0), dt) / 1e9
            out_tiers[name] = row
        if "cpu" in out_tiers and transfers:
            # The CPU tier's traffic is the GPU<->CPU copies; report their throughput over the
            # interval (bytes moved per wall second), the figure an operator compares with PCIe.
            pt = self._prev_transfers
            out_tiers["cpu"]["load_gbps"] = (
                _rate(transfers["load_bytes"], pt.get("load_bytes", 0), dt) / 1e9
            )
            out_tiers["cpu"]["store_gbps"] = (
                _rate(transfers["store_bytes"], pt.get("store_bytes", 0), dt) / 1e9
            )
            # Cumulative GPU<->CPU copy totals: bytes and busy seconds per direction.
            out_tiers["cpu"]["transfers"] = dict(transfers)
        snap: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "ts": time.time(),
            "uptime_s": time.time() - self.started,
            **self.static,
            "tiers": out_tiers,
            "gpu_kv": {
                "usage": totals.kv_usage,
                "prefix_hit_rate": d_hits / d_queries if d_queries > 0 else None,
            },
            "ttft_s": {
                "p50": percentile(totals.ttfts, 50),
                "p90": percentile(totals.ttfts, 90),
                "p99": percentile(totals.ttfts, 99),
                "count": len(totals.ttfts),
            },
            "throughput": {
                "prompt_tps": _rate(totals.prompt_tokens, prev.prompt_tokens if prev else 0, dt),
                "generation_tps": _rate(
                    totals.generation_tokens, prev.generation_tokens if prev else 0, dt
                ),
            },
            "requests": {
                "running": totals.running,
                "waiting": totals.waiting,
                "finished": totals.finished,
            },
            "host": host_memory(),
            "gpus": gpus(),
            "bench": bench,
        }
        self._prev_totals, self._prev_tiers, self._prev_at = totals, tiers, now
        self._prev_transfers = dict(transfers)
        return snap
