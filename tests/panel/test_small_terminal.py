"""At 80x24 nothing an operator needs is cut or hidden: evictions and load/store, whole model,
engine and host lines, the help's Close button; the occupancy bar reads without colour; the
bottom tabs have keys of their own."""

from __future__ import annotations

from textual.widgets import Button, Label, TabbedContent

from kvpanel.panel.screens import HelpScreen
from kvpanel.panel.widgets import OccupancyBar

from .recorded import make_app, prime

SMALL = (80, 24)


def fits(label: Label) -> bool:
    text = str(label.render())
    return 0 < len(text) <= label.content_region.width


async def test_80x24_shows_evictions_io_and_whole_engine_lines() -> None:
    app = make_app()
    async with app.run_test(size=SMALL) as pilot:
        await prime(pilot, 3)
        snap = app.snapshot
        for tier in ("vllm", "cpu", "disk", "remote"):
            evict = app.query_one(f"#tier-{tier} .col-evict", Label)
            io = app.query_one(f"#tier-{tier} .col-io", Label)
            assert evict.region.width > 0 and fits(evict), (tier, evict.region)
            assert io.region.width > 0 and fits(io), (tier, io.region)
            t = snap["tiers"][tier]
            assert str(io.render()) == f"{t['load_gbps']:.1f}/{t['store_gbps']:.1f}"
        for line in ("model", "engine", "host"):
            label = app.query_one(f"#engine-{line}", Label)
            assert fits(label), (line, str(label.render()), label.content_region.width)
        assert snap["model"]["name"] in str(app.query_one("#engine-model", Label).render())
        demo = {**snap, "model": {**snap["model"], "demo": True}}
        demo["model"]["name"] = "/root/.cache/kvpanel/models/tiny-llama-demo"
        await app.ingest(demo)
        await pilot.pause()
        label = app.query_one("#engine-model", Label)
        text = str(label.render())
        assert fits(label) and "DEMO MODEL" in text and "tiny-llama-demo" in text, text
        for header in app.query(".tier-header Label").results(Label):
            if header.region.width:
                assert "…" not in str(header.render()), str(header.render())


async def test_occupancy_bar_reads_without_colour() -> None:
    app = make_app()
    async with app.run_test(size=SMALL) as pilot:
        await prime(pilot, 3)
        bar = app.query_one("#tier-remote OccupancyBar", OccupancyBar)
        cells = "".join(seg.text for seg in bar.render_line(0))
        used = cells.count(OccupancyBar.FULL)
        assert used > 0 and cells.count(OccupancyBar.EMPTY) > 0, cells
        assert used == round(bar.fraction * len(cells)), (cells, bar.fraction)


async def test_help_close_button_is_on_screen_at_80x24() -> None:
    app = make_app()
    async with app.run_test(size=SMALL) as pilot:
        await prime(pilot, 1)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        close = app.screen.query_one("#cancel", Button)
        r = close.region
        assert r.height > 0 and r.bottom <= SMALL[1] and r.right <= SMALL[0], r
        await pilot.click("#cancel")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


async def test_tabs_have_direct_keys_in_footer_and_palette() -> None:
    app = make_app()
    async with app.run_test(size=SMALL) as pilot:
        await prime(pilot, 1)
        tabs = app.query_one(TabbedContent)
        await pilot.press("2")
        await pilot.pause()
        assert tabs.active == "tab-bench"
        await pilot.press("1")
        await pilot.pause()
        assert tabs.active == "tab-log"
        shown = {b.binding.id for b in app.active_bindings.values() if b.binding.show}
        assert {"show-log", "show-bench"} <= shown, shown
        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {"Show the engine log", "Show the benchmark"} <= titles, titles
