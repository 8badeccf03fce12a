"""Pilot tests: every action of the panel against the recorded backend."""

from __future__ import annotations

from typing import Any

import pytest
from textual.widgets import DataTable, Input, Label, ProgressBar, Static, TabbedContent

from kvpanel.panel.backend import BackendError
from kvpanel.panel.screens import BenchScreen, ClearScreen, HelpScreen, ResizeScreen

from .recorded import make_app, prime

GiB = 1 << 30
SIZE = (120, 40)


def text_of(widget: Any) -> str:
    return str(widget.render())


async def settle(pilot: Any) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.pause()


async def test_dashboard_shows_every_tier_and_metric() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await prime(pilot, 3)
        for tier in ("vllm", "cpu", "disk", "remote"):
            assert app.query_one(f"#tier-{tier}")
        assert "/64.0 GiB" in text_of(app.query_one("#tier-cpu .col-used", Label))
        assert "Qwen/Qwen3-8B" in text_of(app.query_one("#engine-model", Label))
        assert "DEMO MODEL" not in app.sub_title
        assert "tok/s" in text_of(app.query_one("#traffic-prompt", Label))


async def test_demo_model_is_said_plainly() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        snap = app.backend.snapshot()
        snap["model"] = {**snap["model"], "name": "kvpanel/tiny-demo", "demo": True}
        await app.ingest(snap)
        await pilot.pause()
        assert "DEMO MODEL" in text_of(app.query_one("#engine-model", Label))
        assert "DEMO MODEL" in app.sub_title


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("-1", "negative"),
        ("abc", "not a size"),
        ("4X", "unknown unit"),
        ("99999999T", "too large"),
        ("2000G", "larger than host RAM"),
    ],
)
async def test_resize_rejects_bad_input(bad: str, message: str) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await prime(pilot, 1)
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, ResizeScreen)
        await pilot.press(*bad)
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, ResizeScreen), "a bad size must not close the dialog"
        preview = app.screen.query_one("#preview", Static)
        assert message in text_of(preview)
        assert preview.has_class("error")
        assert app.backend.calls == []


async def test_resize_previews_then_applies() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await prime(pilot, 1)
        before = app.backend.current()["tiers"]["cpu"]
        assert before["capacity_bytes"] == 64 * GiB
        await pilot.press("r")
        await pilot.pause()
        await pilot.press(*"32G")
        await pilot.pause()
        preview = text_of(app.screen.query_one("#preview", Static))
        assert preview.startswith("cpu: 64.00 GiB -> 32.00 GiB, evicts ~")
        assert int(preview.split("~")[1].split()[0]) > 0
        await pilot.press("enter")
        await settle(pilot)
        assert not isinstance(app.screen, ResizeScreen)
        assert app.backend.calls == [("resize", ("cpu", 32 * GiB))]
        assert app.backend.current()["tiers"]["cpu"]["capacity_bytes"] == 32 * GiB
        assert "/32.0 GiB" in text_of(app.query_one("#tier-cpu .col-used", Label))
        # ...and it sticks across later snapshots of the replay
        app.poll_now()
        await settle(pilot)
        assert "/32.0 GiB" in text_of(app.query_one("#tier-cpu .col-used", Label))


async def test_updates_keep_flowing_while_a_dialog_is_open() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await prime(pilot, 1)
        for key in ("r", "c", "b", "question_mark"):
            await pilot.press(key)
            await pilot.pause()
            app.poll_now()
            await settle(pilot)
            assert app.is_running
            await pilot.press("escape")
            await pilot.pause()
        assert app.backend.snapshot_calls == 5


async def test_resize_other_tier_and_escape_cancels() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await prime(pilot, 1)
        await pilot.press("r")
        await pilot.pause()
        app.screen.query_one("#tier").value = "disk"
        await pilot.press(*"1.5TiB")
        await pilot.pause()
        assert text_of(app.screen.query_one("#preview")).startswith("disk: 512.00 GiB -> 1.50 TiB")
        await pilot.press("escape")
        await settle(pilot)
        assert app.backend.calls == []


async def test_clear_asks_then_clears() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await prime(pilot, 1)
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, ClearScreen)
        assert "from cpu?" in text_of(app.screen.query_one("#warning", Static))
        await pilot.press("escape")  # cancel first: nothing happens
        await settle(pilot)
        assert app.backend.calls == []
        await pilot.press("c")
        await pilot.pause()
        await pilot.click("#confirm")
        await settle(pilot)
        assert app.backend.calls == [("clear", "cpu")]
        assert app.backend.current()["tiers"]["cpu"]["used_bytes"] == 0
        assert text_of(app.query_one("#tier-cpu .col-used", Label)).startswith("0.0/64.0")


async def test_benchmark_start_progress_result_and_comparison() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await prime(pilot, 1)
        await pilot.press("b")
        await pilot.pause()
        assert isinstance(app.screen, BenchScreen)
        await pilot.press("enter")  # defaults
        await settle(pilot)
        assert app.bench_active
        assert app.query_one(TabbedContent).active == "tab-bench"
        bar = app.query_one(ProgressBar)
        assert bar.display
        seen = []
        for _ in range(10):
            app.poll_now()
            await settle(pilot)
            seen.append(bar.progress)
            if not app.bench_active:
                break
        assert not app.bench_active
        assert any(0 < p < 100 for p in seen), seen
        table = app.query_one("#bench-table", DataTable)
        assert table.display and table.row_count == 7
        assert str(table.get_row_at(0)[2]) == "-"  # no previous run yet
        # second run: the table compares with the first one
        await pilot.press("b")
        await pilot.pause()
        bench_input = app.screen.query_one("#num_documents", Input)
        bench_input.value = "10"
        await pilot.press("enter")
        await settle(pilot)
        while app.bench_active:
            app.poll_now()
            await settle(pilot)
        row = table.get_row_at(0)
        assert str(row[2]) != "-" and "%" in str(row[3])
        assert app.backend.calls[-1][1]["num_documents"] == 10


async def test_benchmark_dialog_rejects_bad_numbers() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await prime(pilot, 1)
        await pilot.press("b")
        await pilot.pause()
        app.screen.query_one("#repeat_count", Input).value = "0"
        await pilot.click("#run")
        await pilot.pause()
        assert isinstance(app.screen, BenchScreen)
        assert "repeat count" in text_of(app.screen.query_one("#bench-error"))


async def test_theme_switch_cycles_kvpanel_themes() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        assert app.theme == "kvpanel-dark"
        await pilot.press("t")
        assert app.theme == "kvpanel-light"
        assert not app.current_theme.dark
        await pilot.press("t")
        assert app.theme == "kvpanel-high-contrast"
        await pilot.press("t")
        assert app.theme == "kvpanel-dark"


async def wait_for(pilot: Any, condition: Any, timeout: float = 10.0) -> bool:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return True
        await pilot.pause(0.05)
    return bool(condition())


async def test_pause_stops_polling_and_resume_restarts_it() -> None:
    app = make_app(autopoll=True, refresh_hz=4)
    async with app.run_test(size=SIZE) as pilot:
        assert await wait_for(pilot, lambda: app.backend.snapshot_calls >= 2)
        await pilot.press("p")
        await settle(pilot)
        assert app.paused and "PAUSED" in app.sub_title
        calls = app.backend.snapshot_calls
        await pilot.pause(1.0)  # four refresh periods
        await settle(pilot)
        assert app.backend.snapshot_calls == calls
        await pilot.press("p")
        assert await wait_for(pilot, lambda: app.backend.snapshot_calls > calls)
        assert "PAUSED" not in app.sub_title


@pytest.mark.parametrize("key", ["question_mark", "f1"])
async def test_help_opens_and_closes(key: str) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(key)
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


async def test_quit() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("q")
        await pilot.pause()
    assert app.return_code == 0


async def test_every_action_is_in_footer_and_command_palette() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        ids = {b.id for b in app.BINDINGS if not isinstance(b, tuple)}  # type: ignore[union-attr]
        assert {"resize", "clear", "bench", "pause", "theme", "help", "quit", "stop"} <= ids
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for title in (
            "Resize a tier",
            "Clear a tier",
            "Run long-doc-qa benchmark",
            "Pause / resume updates",
            "Next kvpanel theme",
            "Help",
            "Leave the panel",
        ):
            assert title in titles
        footer_keys = {k for k, b in app.active_bindings.items() if b.binding.show}
        # t (theme) is left out of the footer so that the footer fits 80 columns.
        assert {"r", "c", "b", "p", "1", "2", "question_mark", "q"} <= footer_keys


class FailingBackend:
    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any) -> Any:
            raise BackendError("cannot reach http://127.0.0.1:9: connection refused")

        return fail


async def test_backend_errors_show_in_subtitle_not_crash() -> None:
    from kvpanel.panel.app import KvpanelApp

    app = KvpanelApp(FailingBackend(), autopoll=False)  # type: ignore[arg-type]
    async with app.run_test(size=SIZE) as pilot:
        app.poll_now()
        await settle(pilot)
        assert "cannot reach" in app.sub_title
        assert app.is_running
