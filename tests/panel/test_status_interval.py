"""Interval figures are per consumer: the --no-ui JSON lines and an HTTP client (the panel) each
see the hits of their own interval, however their polls interleave; a clear restarts the
since-clear counts."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from kvpanel.metrics.interval import IntervalWindow
from kvpanel.panel.backend import HttpBackend
from kvpanel.serve.control_api import make_router
from kvpanel.serve.hub import StatusHub

TOKEN = "s3cret"
STATIC = {"model": {"name": "tiny", "demo": True}, "config": {"chunk_tokens": 16}}
# hub.snapshot() (the HTTP status) reuses a build younger than this
STATUS_MAX_AGE_S = 0.4


class FakeEngineControl:
    """The engine's control socket: one cpu tier whose counters the test moves."""

    def __init__(self) -> None:
        self.hits = self.misses = 0

    def stats(self) -> dict[str, Any]:
        return {
            "capacity_bytes": 1 << 30,
            "used_bytes": 0,
            "chunks": 0,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "errors": 0,
            "healthy": True,
            "note": "",
        }

    def call(self, **request: Any) -> dict[str, Any]:
        return {"ok": True, "tiers": {"cpu": self.stats()}, "transfers": {}}


def http_client(hub: StatusHub) -> HttpBackend:
    """The panel's own backend, talking to the real control API router."""
    app = FastAPI()
    app.include_router(make_router(hub, TOKEN))
    backend = HttpBackend("http://testserver", TOKEN)
    backend._client = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})
    return backend


def cpu(snap: dict[str, Any]) -> dict[str, Any]:
    return dict(snap["tiers"]["cpu"])


def test_json_lines_and_an_http_client_both_see_the_hits_of_their_interval() -> None:
    engine = FakeEngineControl()
    hub = StatusHub(STATIC, engine)  # type: ignore[arg-type]
    hub.base_url = "http://testserver"
    http, panel_window = http_client(hub), IntervalWindow()
    hub.status_line()
    panel_window.apply(http.snapshot())
    for round_hits, round_misses in ((10, 10), (3, 1)):
        engine.hits += round_hits
        engine.misses += round_misses
        expected = round_hits / (round_hits + round_misses)
        time.sleep(STATUS_MAX_AGE_S + 0.05)  # the HTTP status rebuilds: it sees the hits first
        panel_view = cpu(panel_window.apply(http.snapshot()))
        line = cpu(hub.status_line())  # then the JSON lines' own interval
        assert panel_view["hit_rate"] == expected
        assert line["hit_rate"] == expected
        # the cumulative counters are in every consumer's copy
        assert line["hits"] == panel_view["hits"] == engine.hits
    assert line["hit_ratio"] == 13 / 24
    # nothing happened since: each consumer's next interval has no lookups
    time.sleep(STATUS_MAX_AGE_S + 0.05)
    assert cpu(panel_window.apply(http.snapshot()))["hit_rate"] is None
    assert cpu(hub.status_line())["hit_rate"] is None


def test_since_clear_counts_restart_at_a_clear() -> None:
    engine = FakeEngineControl()
    engine.hits, engine.misses = 30, 10
    hub = StatusHub(STATIC, engine)  # type: ignore[arg-type]
    before = cpu(hub.refresh())
    assert before["hits_since_clear"] == 30 and before["cleared_at"] is None
    hub.clear("cpu")
    engine.hits, engine.misses = 31, 13
    after = cpu(hub.refresh())
    assert after["hits"] == 31 and after["hit_ratio"] == 31 / 44  # since start
    assert after["hits_since_clear"] == 1 and after["misses_since_clear"] == 3
    assert after["hit_ratio_since_clear"] == 0.25
    assert after["cleared_at"] is not None
