"""Pilot tests: what q and ctrl+c do, and say, in `kvpanel serve` (the panel owns the server)
and in `kvpanel attach` (it does not)."""

from __future__ import annotations

from typing import Any

import pytest

from kvpanel.panel.screens import StopServerScreen

from .recorded import make_app

SIZE = (120, 40)


def footer_labels(app: Any) -> dict[str, str]:
    return {k: b.binding.description for k, b in app.active_bindings.items() if b.binding.show}


def toasts(app: Any) -> list[str]:
    return [str(n.message) for n in app._notifications]


@pytest.mark.parametrize("key", ["q", "ctrl+c"])
async def test_serve_panel_asks_before_stopping_and_no_keeps_it_running(key: str) -> None:
    app = make_app(owns_server=True)
    async with app.run_test(size=SIZE) as pilot:
        assert footer_labels(app)["q"] == "Stop server"
        await pilot.press(key)
        await pilot.pause()
        assert isinstance(app.screen, StopServerScreen)
        assert "Stop the server? y/n" in str(app.screen.query_one(".title").render())
        assert app.return_code is None  # asked, not stopped
        await pilot.press("n")
        await pilot.pause()
        assert not isinstance(app.screen, StopServerScreen)
        assert app.return_code is None and app.is_running
        assert not any("ctrl+q" in t for t in toasts(app))


@pytest.mark.parametrize("keys", [("q", "y"), ("ctrl+c", "y"), ("ctrl+c", "ctrl+c")])
async def test_serve_panel_stops_after_yes(keys: tuple[str, str]) -> None:
    app = make_app(owns_server=True)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(keys[0])
        await pilot.pause()
        assert isinstance(app.screen, StopServerScreen)
        await pilot.press(keys[1])
        await pilot.pause()
    assert app.return_code == 0


@pytest.mark.parametrize("key", ["q", "ctrl+c"])
async def test_attach_panel_leaves_at_once_and_says_the_server_keeps_running(key: str) -> None:
    app = make_app()  # `kvpanel attach`: owns_server defaults to False
    async with app.run_test(size=SIZE) as pilot:
        assert footer_labels(app)["q"] == "Leave"
        palette = {c.title: c.help for c in app.get_system_commands(app.screen)}
        assert "server keeps running" in palette["Leave the panel"]
        assert "Stop the server" not in palette
        await pilot.press(key)
        await pilot.pause()
        assert not any("ctrl+q" in t for t in toasts(app))
    assert app.return_code == 0


async def test_serve_palette_says_stop_not_leave() -> None:
    app = make_app(owns_server=True)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        palette = {c.title: c.help for c in app.get_system_commands(app.screen)}
        assert "Leave the panel" not in palette
        assert "stop kvpanel serve" in palette["Stop the server"]
