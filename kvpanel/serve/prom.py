"""kvpanel's metrics on the server's Prometheus ``/metrics``, next to vLLM's (``kvpanel_*``).

A custom collector reads the latest snapshot at scrape time, so nothing is updated on the
serving path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from kvpanel.serve.hub import StatusHub

_TIER_GAUGES = {
    "capacity_bytes": "Tier capacity in bytes",
    "used_bytes": "Tier bytes in use",
    "chunks": "Chunks held by the tier",
    "healthy": "1 when the tier is healthy",
}
_TIER_COUNTERS = {
    "hits": "Chunk hits",
    "misses": "Chunk misses",
    "evictions": "Chunks evicted",
    "errors": "Errors (corrupt chunks, I/O failures)",
    "bytes_in": "Bytes written into the tier",
    "bytes_out": "Bytes read from the tier",
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
                c.add_metric([name], float(t.get(field, 0)))
            yield c
        ttft = GaugeMetricFamily(
            "kvpanel_ttft_seconds", "TTFT quantiles over the recent window", labels=["quantile"]
        )
        for q in ("p50", "p90", "p99"):
            v = snap.get("ttft_s", {}).get(q)
            if v is not None:
                ttft.add_metric([q], float(v))
        yield ttft


def register(hub: StatusHub) -> KvpanelCollector:
    collector = KvpanelCollector(hub)
    REGISTRY.register(collector)
    return collector
