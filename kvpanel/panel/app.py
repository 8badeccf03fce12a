"""KvpanelApp: the dashboard. Backend calls run in thread workers that post typed messages;
the UI thread only renders what arrives."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Footer, Header, RichLog, TabbedContent, TabPane

from kvpanel.metrics.interval import IntervalWindow, restarted
from kvpanel.panel.backend import BackendError, PanelBackend
from kvpanel.panel.bench_view import BenchPane
from kvpanel.panel.connection import ConnectionBanner, ConnectionState
from kvpanel.panel.css import APP_CSS
from kvpanel.panel.keys import BINDINGS, COMMAND_TEXTS, QUIT_TEXTS
from kvpanel.panel.messages import (
    ActionFailed,
    BenchReady,
    LogsReady,
    PollDone,
    SnapshotReady,
    TiersChanged,
)
from kvpanel.panel.screens import (
    BenchScreen,
    ClearScreen,
    HelpScreen,
    ResizeScreen,
    StopServerScreen,
)
from kvpanel.panel.themes import BUILTIN_THEMES, DEFAULT_THEME, all_themes, next_theme
from kvpanel.panel.widgets import EnginePanel, TierTable, TrafficPanel, TtftPanel

HISTORY = 120
W = TypeVar("W", bound=Widget)


class KvpanelApp(App[None]):
    CSS = APP_CSS
    TITLE = "kvpanel"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    BINDINGS = BINDINGS
    QUIT_TEXTS = QUIT_TEXTS
    COMMAND_TEXTS = COMMAND_TEXTS

    def __init__(
        self,
        backend: PanelBackend,
        *,
        refresh_hz: float = 2.0,
        theme: str | None = None,
        title: str = "kvpanel",
        source: str = "",
        autopoll: bool = True,
        theme_dir: Path | None = None,
        handle_sighup: bool = False,
        owns_server: bool = False,
    ) -> None:
        """``owns_server``: this panel runs the server (`kvpanel serve`), so quitting stops it."""
        super().__init__()
        self.owns_server = owns_server
        self.quit_action = "stop_server" if owns_server else "leave"
        self.window = IntervalWindow()  # this panel's own interval, whoever else polls
        self.backend = backend
        self.refresh_hz = min(4.0, max(2.0, float(refresh_hz)))
        self.title = title
        self.source = source
        self.autopoll = autopoll
        self.handle_sighup = handle_sighup
        self.paused = False
        self.snapshot: dict[str, Any] = {}
        self.hit_history: dict[str, deque[float | None]] = {}
        self.ttft_history: deque[float] = deque(maxlen=HISTORY)
        self.log_next = 0
        self.server_restarted = False
        self.bench_active = False
        self.bench_params: dict[str, Any] | None = None
        self.last_error: str | None = None
        self.connection = ConnectionState()
        self._polling = False
        self._timer: Timer | None = None
        themes, self.theme_warnings = all_themes(theme_dir)
        for t in themes:
            self.register_theme(t)
        self.panel_themes = [t.name for t in themes]
        wanted = theme or DEFAULT_THEME
        if wanted not in self.available_themes:
            self.theme_warnings.append(f"unknown theme {wanted!r}, using {DEFAULT_THEME}")
            wanted = DEFAULT_THEME
        self.theme = wanted

    # -- layout ---------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        yield ConnectionBanner(id="connection")
        with Vertical(id="dashboard"):
            yield TierTable(id="tiers", classes="box")
            with Horizontal(id="middle"):
                yield TtftPanel(id="ttft", classes="box")
                yield TrafficPanel(id="traffic", classes="box")
                yield EnginePanel(id="engine", classes="box")
            with TabbedContent(id="bottom"):
                with TabPane("Engine log", id="tab-log"):
                    yield RichLog(id="log", max_lines=5000, wrap=True, markup=False)
                with TabPane("Benchmark", id="tab-bench"):
                    yield BenchPane(id="bench")
        yield Footer(compact=True)  # every key fits 80 columns

    def _dash(self, widget_type: type[W]) -> W:
        """A dashboard widget, whatever screen (dialog, help) is on top; NoMatches when gone."""
        stack = self.screen_stack
        if not stack:
            raise NoMatches("the app is shutting down")
        return stack[0].query_one(widget_type)

    def on_mount(self) -> None:
        self.query_one("#tiers").border_title = "KV cache tiers"
        self.query_one("#ttft").border_title = "TTFT"
        self.query_one("#traffic").border_title = "Traffic"
        self.query_one("#engine").border_title = "Engine"
        self._update_subtitle()
        for warning in self.theme_warnings:
            self.notify(warning, severity="warning")
        if self.handle_sighup:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.exit)
        if self.autopoll:
            self._timer = self.set_interval(1.0 / self.refresh_hz, self.poll_now)
            self.poll_now()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        commands = {**self.COMMAND_TEXTS, self.quit_action: self.QUIT_TEXTS[self.quit_action]}
        for action, (title, help_text) in commands.items():
            yield SystemCommand(title, help_text, getattr(self, f"action_{action}"))
        for command in super().get_system_commands(screen):
            if command.title not in ("Quit", "Keys", "Theme"):
                yield command

    # -- polling (thread workers) ---------------------------------------------------------
    def poll_now(self) -> None:
        if self.paused or self._polling:
            return
        self._polling = True
        self._poll(self.log_next, self.bench_active)

    @work(thread=True, group="poll", exit_on_error=False)
    def _poll(self, log_next: int, bench_active: bool) -> None:
        try:
            self.post_message(SnapshotReady(self.backend.snapshot()))
            lines, nxt = self.backend.logs(log_next)
            self.post_message(LogsReady(lines, nxt))
            if bench_active:
                self.post_message(BenchReady(self.backend.bench_status()))
        except BackendError as e:
            self.post_message(ActionFailed(str(e), from_poll=True))
        except Exception as e:  # never let a worker take the UI down
            self.post_message(ActionFailed(f"{type(e).__name__}: {e}", from_poll=True))
        finally:
            self.post_message(PollDone())

    def on_poll_done(self, _: PollDone) -> None:
        self._polling = False

    async def on_snapshot_ready(self, message: SnapshotReady) -> None:
        if self.last_error:
            self.last_error = None
            self._update_subtitle()
        await self.ingest(message.snapshot)

    def _show_connection(self) -> None:
        try:
            self.screen_stack[0].query_one(ConnectionBanner).show_state(self.connection)
            self._dash(TierTable).set_stale(self.connection.lost)
        except (NoMatches, IndexError):
            return

    async def ingest(self, snap: dict[str, Any]) -> None:
        """Record history from one snapshot and redraw (also used by tests and demos)."""
        if self.connection.ok():
            self.notify(f"Connected again to {self.source or 'the server'}", timeout=4)
        self._show_connection()
        if self.snapshot and restarted(self.snapshot, snap):
            self.server_restarted = True  # its log starts again at line 0
        snap = self.window.apply(snap)
        model_changed = snap.get("model") != self.snapshot.get("model")
        self.snapshot = snap
        if model_changed:
            self._update_subtitle()
        for name, tier in snap.get("tiers", {}).items():
            hist = self.hit_history.setdefault(name, deque(maxlen=HISTORY))
            rate = tier.get("hit_rate")  # None: no lookups this interval, drawn as a gap
            hist.append(None if rate is None else float(rate))
        p50 = snap.get("ttft_s", {}).get("p50")
        if p50 is not None:
            self.ttft_history.append(float(p50))
        await self.render_snapshot()

    async def render_snapshot(self) -> None:
        snap = self.snapshot
        try:
            await self._dash(TierTable).update_from(snap.get("tiers", {}), self.hit_history)
            self._dash(TtftPanel).update_from(snap.get("ttft_s", {}), self.ttft_history)
            self._dash(TrafficPanel).update_from(snap)
            self._dash(EnginePanel).update_from(snap)
        except NoMatches:  # shutting down: the dashboard is already gone
            return
        bench = snap.get("bench")
        if bench and bench.get("state") == "running" and not self.bench_active:
            self.post_message(BenchReady(bench))  # started elsewhere (another panel, the CLI)

    def on_logs_ready(self, message: LogsReady) -> None:
        # After a restart (uptime went back, or the log shrank) these lines were read from the
        # new log at the old position: drop them and read the new log from its first line.
        if self.server_restarted or message.next_index < self.log_next:
            self.server_restarted, self.log_next = False, 0
            with contextlib.suppress(NoMatches):
                self._dash(RichLog).write("--- the server restarted; its log follows ---")
            return
        self.log_next = message.next_index
        try:
            log = self._dash(RichLog)
        except NoMatches:
            return
        width = log.scrollable_content_region.width if log.size.width else None
        for line in message.lines:
            log.write(self._style_log_line(line), width=width or None)

    def _style_log_line(self, line: str) -> Any:
        from rich.text import Text

        theme = self.current_theme
        if " ERROR " in line or line.startswith("ERROR"):
            return Text(line, style=theme.error or "red")
        if " WARNING " in line or line.startswith("WARNING"):
            return Text(line, style=theme.warning or "yellow")
        return Text(line)

    def on_bench_ready(self, message: BenchReady) -> None:
        bench = message.bench
        try:
            self._dash(BenchPane).show(bench)
        except NoMatches:
            return
        if bench and bench.get("state") == "running" and not self.bench_active:
            self.bench_active = True
            self._dash(TabbedContent).active = "tab-bench"
        elif bench is None or bench.get("state") != "running":
            self.bench_active = False
            if bench and bench.get("state") == "done":
                self.notify("Benchmark finished", severity="information")
            elif bench and bench.get("state") == "failed":
                self.notify(f"Benchmark failed: {bench.get('error')}", severity="error")

    def on_action_failed(self, message: ActionFailed) -> None:
        if message.from_poll:
            if message.text != self.last_error:  # one toast per distinct problem
                self.notify(message.text, title="update failed", severity="error")
            self.last_error = message.text
            self.connection.failed(message.text)
            self._show_connection()
            self._update_subtitle()
        else:
            self.notify(message.text, title="action failed", severity="error", timeout=8)

    async def on_tiers_changed(self, message: TiersChanged) -> None:
        self.notify(message.text)
        if self.snapshot:
            self.snapshot = {**self.snapshot, "tiers": message.tiers}
            await self.render_snapshot()

    def _update_subtitle(self) -> None:
        model = self.snapshot.get("model", {})
        parts = []
        if model:
            demo = "DEMO MODEL " if model.get("demo") else ""
            parts.append(f"{demo}{model.get('name', '?')}")
        if self.source:
            parts.append(self.source)
        if self.paused:
            parts.append("⏸ PAUSED")
        elif self.autopoll:
            parts.append(f"{self.refresh_hz:g}/s")
        if self.last_error:
            parts.append(f"⚠ {self.last_error}")
        self.sub_title = " · ".join(parts)

    # -- actions --------------------------------------------------------------------------
    def action_resize(self) -> None:
        host = self.snapshot.get("host", {})
        screen = ResizeScreen(self.snapshot.get("tiers", {}), host.get("ram_total_bytes"))
        self.push_screen(screen, self._resize_chosen)

    def _resize_chosen(self, choice: tuple[str, int] | None) -> None:
        if choice:
            self._do_tier_op("resize", *choice)

    def action_clear_tier(self) -> None:
        self.push_screen(ClearScreen(self.snapshot.get("tiers", {})), self._clear_chosen)

    def _clear_chosen(self, tier: str | None) -> None:
        if tier:
            self._do_tier_op("clear", tier)

    @work(thread=True, group="action", exit_on_error=False)
    def _do_tier_op(self, op: str, tier: str, size: int = 0) -> None:
        from kvpanel.panel.fmt import fmt_bytes

        try:
            if op == "resize":
                reply = self.backend.resize(tier, size)
                text = f"{tier} resized to {fmt_bytes(size)}"
            else:
                reply = self.backend.clear(tier)
                text = f"{tier} cleared"
            self.post_message(TiersChanged(text, dict(reply.get("tiers", {}))))
        except BackendError as e:
            self.post_message(ActionFailed(f"{op} {tier}: {e}"))

    def action_bench(self) -> None:
        if self.bench_active:
            self.notify("A benchmark is already running", severity="warning")
            return
        self.push_screen(BenchScreen(self.bench_params), self._bench_chosen)

    def _bench_chosen(self, params: dict[str, Any] | None) -> None:
        if params:
            self.bench_params = params
            self._start_bench(params)

    @work(thread=True, group="action", exit_on_error=False)
    def _start_bench(self, params: dict[str, Any]) -> None:
        try:
            reply = self.backend.start_bench(params)
            self.post_message(BenchReady(reply.get("bench") or {"state": "running"}))
        except BackendError as e:
            self.post_message(ActionFailed(f"benchmark: {e}"))

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        self._update_subtitle()
        self.notify("Updates paused" if self.paused else "Updates resumed")
        if not self.paused:
            self.poll_now()

    def action_cycle_theme(self) -> None:
        self.theme = next_theme(self.panel_themes, self.theme)
        self.notify(f"Theme: {self.theme}", timeout=2)

    def action_show_log(self) -> None:
        self._dash(TabbedContent).active = "tab-log"

    def action_show_bench(self) -> None:
        self._dash(TabbedContent).active = "tab-bench"

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.QUIT_TEXTS[self.quit_action][1].lower()))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in self.QUIT_TEXTS:
            return action == self.quit_action
        return True

    def action_stop_server(self) -> None:
        if not isinstance(self.screen, StopServerScreen):
            self.push_screen(StopServerScreen(), self._stop_chosen)

    def _stop_chosen(self, stop: bool | None) -> None:
        if stop:
            self.exit()  # `kvpanel serve` stops the server once its panel has exited

    def action_leave(self) -> None:
        self.exit()


__all__ = ["BUILTIN_THEMES", "KvpanelApp", "SnapshotReady", "ActionFailed", "LogsReady"]
