"""Pilot tests: cumulative hits and hit ratio per tier, the panel's own interval, and a hit
history that is empty when nothing was looked up."""

from __future__ import annotations

import copy
from typing import Any

from textual.widgets import Label

from .recorded import load_stream, make_app, prime

SIZE = (120, 40)


def cell(app: Any, tier: str, col: str) -> str:
    return str(app.query_one(f"#tier-{tier} .col-{col}", Label).render())


def spark_text(app: Any, tier: str) -> str:
    widget = app.query_one(f"#tier-{tier} .col-spark")
    return "".join(widget.render_line(y).text for y in range(widget.size.height))


async def test_tier_rows_show_cumulative_hits_and_ratio() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await prime(pilot, 40)
        last = load_stream()["snapshots"][39]["tiers"]
        cpu = last["cpu"]
        assert cell(app, "cpu", "hits") == f"{cpu['hits_since_clear'] / 1000:.1f}k"
        assert cell(app, "cpu", "ratio") == f"{cpu['hit_ratio_since_clear'] * 100:.0f}%"
        assert "hits, ratio: since start" in str(app.query_one("#tiers").border_subtitle)


async def test_panel_computes_its_own_interval_from_cumulative_counters() -> None:
    """Another consumer may have taken the server's interval (hit_rate null there): the panel
    differences the counters of its own two snapshots."""
    first = copy.deepcopy(load_stream()["snapshots"][0])
    second = copy.deepcopy(first)
    second["uptime_s"] += 0.5
    second["tiers"]["cpu"].update(hits=first["tiers"]["cpu"]["hits"] + 30, hit_rate=None)
    second["tiers"]["cpu"]["misses"] += 10
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await app.ingest(first)
        await app.ingest(second)
        await pilot.pause()
        assert cell(app, "cpu", "hit") == "75%"


async def test_empty_hit_history_draws_empty_not_full() -> None:
    snap = copy.deepcopy(load_stream()["snapshots"][0])
    for tier in snap["tiers"].values():
        tier.update(hits=0, misses=0, hit_rate=None, hit_ratio=None)
        tier.update(hits_since_clear=0, misses_since_clear=0, hit_ratio_since_clear=None)
    idle = copy.deepcopy(snap)
    idle["uptime_s"] += 0.5
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await app.ingest(snap)  # no history yet
        await pilot.pause()
        assert spark_text(app, "cpu").strip() == ""
        await app.ingest(idle)  # history of one interval without lookups (None)
        await pilot.pause()
        assert app.hit_history["cpu"] and all(h is None for h in app.hit_history["cpu"])
        text = spark_text(app, "cpu")
        assert text and text.strip() == "", repr(text)
        assert cell(app, "cpu", "hit") == "-" and cell(app, "cpu", "ratio") == "-"


async def test_hit_history_is_drawn_on_a_fixed_scale() -> None:
    """A steady 10 % must not read as full bars (a min..max scale would draw it so)."""
    base = copy.deepcopy(load_stream()["snapshots"][0])
    base["tiers"]["cpu"]["hit_rate"] = 0.1  # the server's figure for the first snapshot
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        for i in range(5):
            snap = copy.deepcopy(base)
            snap["uptime_s"] += i
            snap["tiers"]["cpu"].update(hits=100 + 10 * i, misses=100 + 90 * i)
            await app.ingest(snap)
        await pilot.pause()
        bars = spark_text(app, "cpu").strip()
        assert bars == "▁" * 5, repr(bars)
