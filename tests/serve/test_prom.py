"""kvpanel's series on /metrics: units per tier, TTFT as a histogram (no vLLM: a stand-in hub)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from kvpanel.metrics.engine_samples import EngineSamples
from kvpanel.serve.prom import KvpanelCollector


class StandInHub:
    def __init__(self, tiers: dict[str, Any]) -> None:
        self.samples = EngineSamples()
        self._tiers = tiers

    def snapshot(self) -> dict[str, Any]:
        return {"tiers": self._tiers, "ttft_s": {"p50": 0.2, "p90": 0.3, "p99": 0.4, "count": 3}}


def scrape(hub: StandInHub) -> str:
    registry = CollectorRegistry()
    registry.register(KvpanelCollector(hub))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def metric_lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_tier_hits_count_chunks_and_the_vllm_prefix_cache_counts_tokens() -> None:
    hub = StandInHub(
        {
            "vllm": {"hits": 640, "misses": 360, "capacity_bytes": 1 << 30},
            "cpu": {"hits": 3, "misses": 1, "dropped": 2, "capacity_bytes": 1 << 30},
        }
    )
    text = scrape(hub)
    assert metric_lines(text, "kvpanel_tier_hits_total") == [
        'kvpanel_tier_hits_total{tier="cpu"} 3.0'
    ]
    assert "# HELP kvpanel_tier_hits_total Chunks " in text
    assert metric_lines(text, "kvpanel_vllm_prefix_cache_hits_tokens_total") == [
        "kvpanel_vllm_prefix_cache_hits_tokens_total 640.0"
    ]
    assert metric_lines(text, "kvpanel_vllm_prefix_cache_misses_tokens_total") == [
        "kvpanel_vllm_prefix_cache_misses_tokens_total 360.0"
    ]
    assert 'kvpanel_tier_dropped_total{tier="cpu"} 2.0' in text
    assert 'kvpanel_tier_capacity_bytes{tier="vllm"}' in text  # bytes: one unit for every tier


def test_ttft_is_a_histogram_of_every_request_since_start() -> None:
    hub = StandInHub({})
    hub.samples.record_iteration(0, 0, [0.003, 0.2, 0.2], 3)
    hub.samples.record_iteration(0, 0, [3000.0], 1)  # beyond the last bucket: +Inf only
    text = scrape(hub)
    assert "# TYPE kvpanel_ttft_seconds histogram" in text
    assert 'kvpanel_ttft_seconds_bucket{le="0.001"} 0.0' in text
    assert 'kvpanel_ttft_seconds_bucket{le="0.005"} 1.0' in text
    assert 'kvpanel_ttft_seconds_bucket{le="0.1"} 1.0' in text
    assert 'kvpanel_ttft_seconds_bucket{le="0.25"} 3.0' in text
    assert 'kvpanel_ttft_seconds_bucket{le="2560.0"} 3.0' in text
    assert 'kvpanel_ttft_seconds_bucket{le="+Inf"} 4.0' in text
    assert "kvpanel_ttft_seconds_count 4.0" in text
    assert "kvpanel_ttft_seconds_sum 3000.403" in text
    assert "quantile" not in text
