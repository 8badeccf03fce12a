"""kvpanel's metrics on the server's Prometheus ``/metrics``, next to vLLM's (``kvpanel_*``).

A custom collector reads the latest snapshot at scrape time, so nothing is updated on the
serving path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from kvpanel.serve.hub import StatusHub
from kvpanel.settings import ENGINE_TIER

_TIER_GAUGES = {
    "capacity_bytes": "Tier capacity in bytes",
    "used_bytes": "Tier bytes in use",
    "chunks": "Chunks held by the tier",
    "healthy": "1 when the tier is healthy",
    "queued_bytes": "Bytes committed to the CPU tier waiting for their write to this tier",
}
# hits/misses of kvpanel's tiers count chunks; the vllm tier (vLLM's prefix cache) counts
# tokens, so it has series of its own rather than a unit that changes with the label.
_TIER_COUNTERS = {
    "hits": "Chunks found in a kvpanel tier (cpu, disk, remote), each once per request",
    "misses": "Chunks looked up in a kvpanel tier and not found, each once per request",
    "evictions": "Chunks evicted",
    "errors": "Errors (corrupt chunks, I/O failures)",
    "dropped": "Chunks evicted from the CPU tier before their write to this tier",
    "skipped_slow": "Requests recomputed instead of loaded from this tier (loading was slower)",
    "bytes_in": "Bytes written into the tier",
    "bytes_out": "Bytes read from the tier",
}
_TOKEN_COUNTED = ("hits", "misses")
_ENGINE_TOKEN_COUNTERS = {
    "hits_tokens": "Prompt tokens found in vLLM's own prefix cache (the vllm tier)",
    "misses_tokens": "Prompt tokens looked up in vLLM's own prefix cache and not found",
}


class KvpanelCollector(Collector):
    def __init__(self, hub: StatusHub):
        self.hub = hub

    def collect(self) -> Iterator[Any]:
        snap = self.hub.snapshot()
        tiers = snap.get("tiers", {})
        for field, doc in _TIER_GAUGES.items():
            g = GaugeMetricFamily(f"kvpanel_tier_{field}", doc, labels=["tier"])
            for name, t in tiers.items():
                g.add_metric([name], float(t.get(field, 0)))
            yield g
        for field, doc in _TIER_COUNTERS.items():
            c = CounterMetricFamily(f"kvpanel_tier_{field}", doc, labels=["tier"])
            for name, t in tiers.items():
                if name != ENGINE_TIER or field not in _TOKEN_COUNTED:
                    c.add_metric([name], float(t.get(field, 0)))
            yield c
        engine = tiers.get(ENGINE_TIER)
        if engine is not None:
            for field, doc in _ENGINE_TOKEN_COUNTERS.items():
                c = CounterMetricFamily(f"kvpanel_vllm_prefix_cache_{field}", doc)
                c.add_metric([], float(engine.get(field.removesuffix("_tokens"), 0)))
                yield c
        buckets, count, total = self.hub.samples.ttft_histogram()
        yield HistogramMetricFamily(
            "kvpanel_ttft_seconds",
            "Time to first token of each request since the server started",
            buckets=[*((str(float(le)), float(n)) for le, n in buckets), ("+Inf", float(count))],
            sum_value=total,
        )


def register(hub: StatusHub) -> KvpanelCollector:
    collector = KvpanelCollector(hub)
    REGISTRY.register(collector)
    return collector
