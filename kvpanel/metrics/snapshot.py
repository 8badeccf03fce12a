"""Build the status snapshot (schema in schema.md) from engine totals and tier stats.

The builder publishes cumulative counters only (hits, misses, bytes, tokens since start, and
since a tier's last clear); the interval figures (hit rate now, tokens/s, GB/s) come from
differencing two snapshots (kvpanel.metrics.interval), so each consumer has its own interval.

Primitives: SnapshotBuilder(static).build(totals, tiers, transfers, engine_kv_bytes) -> dict;
SnapshotBuilder.mark_cleared(tier, tier_stats).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from kvpanel.metrics.engine_samples import EngineTotals
from kvpanel.metrics.host import gpus, host_memory
from kvpanel.metrics.percentile import percentile
from kvpanel.settings import ENGINE_TIER

SCHEMA_VERSION = 1


def _ratio(hits: int, misses: int) -> float | None:
    return hits / (hits + misses) if hits + misses > 0 else None


class SnapshotBuilder:
    def __init__(self, static: dict[str, Any]):
        self.static = static  # model, config
        self.started = time.time()
        # uptime_s is monotonic: consumers divide counter deltas by its differences.
        self._started_mono = time.monotonic()
        # Tells one server process from the next on the same URL: a restarted server may already
        # have run longer than the old one had when last seen, so uptime alone cannot say.
        self.server_id = uuid.uuid4().hex[:16]
        self._cleared: dict[str, tuple[int, int, float | None]] = {}  # tier -> (hits, misses, when)

    def mark_cleared(self, tier: str, stats: dict[str, Any]) -> None:
        """Start the tier's since-clear counts at its counters as they were when cleared."""
        self._cleared[tier] = (int(stats.get("hits", 0)), int(stats.get("misses", 0)), time.time())

    def _since_clear(self, name: str, row: dict[str, Any]) -> None:
        hits, misses = int(row.get("hits", 0)), int(row.get("misses", 0))
        h0, m0, at = self._cleared.get(name, (0, 0, None))
        if hits < h0 or misses < m0:  # the tier's counters restarted: count from there
            h0, m0 = 0, 0
        row["hit_ratio"] = _ratio(hits, misses)
        row["cleared_at"] = at
        row["hits_since_clear"] = hits - h0
        row["misses_since_clear"] = misses - m0
        row["hit_ratio_since_clear"] = _ratio(hits - h0, misses - m0)

    def build(
        self,
        totals: EngineTotals,
        tiers: dict[str, dict[str, Any]],
        transfers: dict[str, float],
        engine_kv_bytes: int,
        bench: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        out_tiers: dict[str, dict[str, Any]] = {
            ENGINE_TIER: {
                "capacity_bytes": engine_kv_bytes,
                "used_bytes": int(engine_kv_bytes * totals.kv_usage),
                "chunks": 0,
                "hits": totals.prefix_hits,
                "misses": totals.prefix_queries - totals.prefix_hits,
                "hit_rate": None,
                "evictions": 0,
                "bytes_in": 0,
                "bytes_out": 0,
                "errors": 0,
                "dropped": 0,
                "queued_bytes": 0,
                "skipped_slow": 0,
                "healthy": True,
                "note": "prefix cache (tokens)",
                "load_gbps": 0.0,
                "store_gbps": 0.0,
            }
        }
        for name, t in tiers.items():
            row = dict(t)
            row.pop("name", None)
            row.update(hit_rate=None, load_gbps=0.0, store_gbps=0.0)
            out_tiers[name] = row
        if "cpu" in out_tiers and transfers:
            # Cumulative GPU<->CPU copy totals: bytes and busy seconds per direction.
            out_tiers["cpu"]["transfers"] = dict(transfers)
        for name, row in out_tiers.items():
            self._since_clear(name, row)
        config = dict(self.static.get("config") or {})
        for tier, key in (("cpu", "cpu_bytes"), ("disk", "disk_bytes")):
            if tier in tiers and "capacity_bytes" in tiers[tier]:
                # The tier's size now: a resize through the control API changes it.
                config[key] = int(tiers[tier]["capacity_bytes"])
        snap: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "ts": time.time(),
            "uptime_s": time.monotonic() - self._started_mono,
            "server_id": self.server_id,
            "interval_s": None,
            **self.static,
            **({"config": config} if "config" in self.static else {}),
            "tiers": out_tiers,
            "engine_kv": {"usage": totals.kv_usage, "prefix_hit_rate": None},
            "ttft_s": {
                "p50": percentile(totals.ttfts, 50),
                "p90": percentile(totals.ttfts, 90),
                "p99": percentile(totals.ttfts, 99),
                "count": len(totals.ttfts),
            },
            "throughput": {
                "prompt_tps": 0.0,
                "generation_tps": 0.0,
                "prompt_tokens": totals.prompt_tokens,
                "generation_tokens": totals.generation_tokens,
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
        return snap
