"""SVG snapshots of the dashboard, 80x24 and 160x48, in each built-in theme.

Deterministic: no polling (autopoll=False), the recorded stream is fed synchronously, and no
clock is shown. Update the baselines with `pytest tests/panel --snapshot-update`.
"""

from __future__ import annotations

from typing import Any

import pytest

from kvpanel.panel.themes import BUILTIN_THEMES

from .recorded import make_app, prime


@pytest.mark.parametrize("theme", BUILTIN_THEMES)
@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_dashboard_snapshot(snap_compare: Any, theme: str, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(theme), terminal_size=size, run_before=prime)


def test_resize_dialog_snapshot(snap_compare: Any) -> None:
    async def open_resize(pilot: Any) -> None:
        await prime(pilot)
        await pilot.press("r")
        await pilot.pause()
        await pilot.press(*"32G")

    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=open_resize)
