"""The resize dialog checks the server's bound (``max_capacity_bytes``: for disk, free space +
what the tier holds) before sending, and says it in GiB/TiB."""

from __future__ import annotations

import re

from textual.widgets import Input, Static

from kvpanel.panel.screens import ResizeScreen

from .recorded import make_app, prime

GiB = 1 << 30


async def test_disk_100t_is_refused_in_the_preview() -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await prime(pilot, 1)
        tiers = {k: dict(v) for k, v in app.snapshot["tiers"].items()}
        tiers["disk"]["max_capacity_bytes"] = 700 * GiB  # e.g. 300 GiB free + 400 GiB held
        screen = ResizeScreen(tiers, None, tier="disk")
        await app.push_screen(screen)
        await pilot.pause()
        screen.query_one("#size", Input).value = "100T"
        await pilot.pause()
        preview = str(screen.query_one("#preview", Static).render())
        assert "100.00 TiB" in preview and "700.00 GiB" in preview, preview
        assert not re.search(r"\d{7,}", preview), preview
        assert screen.query_one("#preview", Static).has_class("error")
        screen.query_one("#size", Input).value = "600G"
        await pilot.pause()
        assert not screen.query_one("#preview", Static).has_class("error")
