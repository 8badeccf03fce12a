"""Modal screens: resize, clear, benchmark parameters, stop the server, help. They only
collect input; the app does the backend calls (in thread workers) with what they return via
dismiss()."""

from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from kvpanel.panel.backend import BENCH_DEFAULTS, REPEAT_MODES
from kvpanel.panel.fmt import fmt_bytes, fmt_count, parse_size, resize_preview
from kvpanel.settings import ENGINE_TIER

MAX_CAPACITY = 1 << 50  # 1 PiB: anything above is a typo, not a cache size
MODAL_CSS = """
DialogScreen { align: center middle; background: $background 60%; }
.dialog {
    width: 64; max-width: 100%; height: auto; max-height: 100%;
    border: thick $primary; background: $surface; padding: 0 1;
}
.dialog .title { text-style: bold; color: $primary; width: 100%; margin-bottom: 1; }
.dialog .message { width: 100%; margin: 1 0 0 0; }
.dialog .error { color: $error; text-style: bold; }
.dialog .buttons { height: auto; width: 100%; align-horizontal: right; margin-top: 1; }
.dialog .buttons Button { margin-left: 1; min-width: 10; }
"""


def tier_options(tiers: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (f"{name}  ({fmt_bytes(t.get('capacity_bytes', 0))})", name)
        for name, t in tiers.items()
        if name != ENGINE_TIER  # vLLM's own KV cache: sized at startup, not through kvpanel
    ]


class DialogScreen(ModalScreen[Any]):
    """Base of the modal dialogs: centered box, escape cancels."""

    SCOPED_CSS = False
    DEFAULT_CSS = MODAL_CSS
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="cancel")]

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(None)


class ResizeScreen(DialogScreen):
    """Pick a tier and a size; dismisses with (tier, capacity_bytes) or None."""

    def __init__(self, tiers: dict[str, Any], host_ram: int | None = None, tier: str = "cpu"):
        super().__init__()
        self.tiers = {k: v for k, v in tiers.items() if k != ENGINE_TIER}
        self.host_ram = host_ram or None
        self.initial = tier if tier in self.tiers else next(iter(self.tiers), None)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="resize-dialog"):
            yield Label("Resize a tier", classes="title")
            yield Select(
                tier_options(self.tiers),
                value=self.initial if self.initial else Select.NULL,
                allow_blank=not self.initial,
                id="tier",
            )
            yield Input(placeholder="new size: 4G, 512M, 1.5GiB or bytes", id="size")
            yield Static("", id="preview", classes="message")
            with Horizontal(classes="buttons"):
                yield Button("Apply", variant="primary", id="apply")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#size", Input).focus()
        self._validate()

    def _validate(self) -> tuple[str, int] | str:
        """(tier, bytes) when valid, else the error text; updates the preview line."""
        preview = self.query_one("#preview", Static)
        tier = self.query_one("#tier", Select).value
        text = self.query_one("#size", Input).value
        error = ""
        size = 0
        if not isinstance(tier, str) or tier not in self.tiers:
            error = f"no resizable tier ({ENGINE_TIER} is sized by vLLM)"
        elif not text.strip():
            preview.update(Content("Current: ") + fmt_bytes(self.tiers[tier]["capacity_bytes"]))
            preview.remove_class("error")
            return "enter a size"
        else:
            try:
                size = parse_size(text)
            except ValueError as e:
                error = str(e)
            else:
                # The server's own bound (disk: free space + what the tier holds; cpu: 90%
                # of RAM), so that what the preview accepts, the server accepts.
                limit = self.tiers[tier].get("max_capacity_bytes")
                if size > MAX_CAPACITY:
                    error = f"too large: {fmt_bytes(size)} (limit {fmt_bytes(MAX_CAPACITY)})"
                elif isinstance(limit, int) and size > limit:
                    error = f"too large: {fmt_bytes(size)}, {tier} can grow to {fmt_bytes(limit)}"
                    if tier == "disk":
                        error += " (free space + what it holds)"
                elif tier == "cpu" and self.host_ram and size > self.host_ram:
                    error = f"larger than host RAM ({fmt_bytes(self.host_ram)})"
        if error:
            preview.update(error)
            preview.add_class("error")
            return error
        assert isinstance(tier, str)
        preview.update(resize_preview(tier, self.tiers[tier], size))
        preview.remove_class("error")
        return tier, size

    @on(Input.Changed)
    @on(Select.Changed)
    def _changed(self) -> None:
        self._validate()

    @on(Input.Submitted)
    @on(Button.Pressed, "#apply")
    def _apply(self) -> None:
        result = self._validate()
        if isinstance(result, tuple):
            self.dismiss(result)
        else:
            preview = self.query_one("#preview", Static)
            preview.update(result)
            preview.add_class("error")


class ClearScreen(DialogScreen):
    """Confirm dropping every chunk of one tier; dismisses with the tier name or None."""

    def __init__(self, tiers: dict[str, Any], tier: str = "cpu") -> None:
        super().__init__()
        self.tiers = {k: v for k, v in tiers.items() if k != ENGINE_TIER}
        self.initial = tier if tier in self.tiers else next(iter(self.tiers), None)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="clear-dialog"):
            yield Label("Clear a tier", classes="title")
            yield Select(
                tier_options(self.tiers),
                value=self.initial if self.initial else Select.NULL,
                allow_blank=not self.initial,
                id="tier",
            )
            yield Static("", id="warning", classes="message")
            with Horizontal(classes="buttons"):
                yield Button("Clear", variant="error", id="confirm")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self._describe()
        self.query_one("#confirm", Button).focus()

    @on(Select.Changed)
    def _describe(self) -> None:
        tier = self.query_one("#tier", Select).value
        t = self.tiers.get(tier) if isinstance(tier, str) else None
        text = (
            f"Drop all {fmt_count(t.get('chunks', 0))} chunks "
            f"({fmt_bytes(t.get('used_bytes', 0))}) from {tier}? Requests will recompute them "
            "or load them from a lower tier."
            if t
            else "No tier to clear."
        )
        self.query_one("#warning", Static).update(text)

    @on(Button.Pressed, "#confirm")
    def _confirm(self) -> None:
        tier = self.query_one("#tier", Select).value
        if isinstance(tier, str) and tier in self.tiers:
            self.dismiss(tier)


_BENCH_FIELDS = (
    ("num_documents", "documents"),
    ("document_length", "document length (tokens)"),
    ("output_len", "output length (tokens)"),
    ("repeat_count", "repeat count"),
    ("shuffle_seed", "shuffle seed"),
    ("max_inflight_requests", "max in-flight requests"),
)


class BenchScreen(DialogScreen):
    """long-doc-qa parameters; dismisses with the params dict or None."""

    DEFAULT_CSS = (
        MODAL_CSS
        + """
    #bench-grid { grid-size: 2; grid-columns: 28 1fr; grid-rows: 1; height: auto; }
    #bench-grid Label { color: $text-muted; }
    """
    )

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.params = {**BENCH_DEFAULTS, **(params or {})}

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="bench-dialog"):
            yield Label("Run the long-doc-qa benchmark", classes="title")
            with Grid(id="bench-grid"):
                for key, label in _BENCH_FIELDS:
                    yield Label(label)
                    yield Input(str(self.params[key]), type="integer", id=key, compact=True)
                yield Label("repeat mode")
                yield Select(
                    [(m, m) for m in REPEAT_MODES],
                    value=self.params["repeat_mode"],
                    allow_blank=False,
                    id="repeat_mode",
                    compact=True,
                )
            yield Static("", id="bench-error", classes="message error")
            with Horizontal(classes="buttons"):
                yield Button("Run", variant="primary", id="run")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#num_documents", Input).focus()

    def collect(self) -> dict[str, Any] | str:
        params: dict[str, Any] = {}
        for key, label in _BENCH_FIELDS:
            raw = self.query_one(f"#{key}", Input).value.strip()
            try:
                value = int(raw)
            except ValueError:
                return f"{label}: enter a whole number"
            if value < (0 if key == "shuffle_seed" else 1):
                return f"{label}: must be {'>= 0' if key == 'shuffle_seed' else '>= 1'}"
            params[key] = value
        params["repeat_mode"] = self.query_one("#repeat_mode", Select).value
        return params

    @on(Input.Submitted)
    @on(Button.Pressed, "#run")
    def _run(self) -> None:
        result = self.collect()
        if isinstance(result, str):
            self.query_one("#bench-error", Static).update(result)
        else:
            self.dismiss(result)


# Lines of at most 74 characters: the dialog is 76 wide inside at 80 columns.
HELP_TEXT = """\
[b $primary]kvpanel[/] shows the KV-cache tiers of a running [b]kvpanel serve[/] and lets
you change them. All data comes from the control API.

[b]Tiers[/]  occupancy (█ used, ░ free), chunks, hit rate now and since start,
       history, evictions, load/store GB/s, health. [b]vllm[/] is the engine's
       own KV cache (read-only here).
[b]NO DATA[/] banner (red, on top): the server does not answer; the figures
       are the last received. The panel retries and reconnects by itself.
[b]TTFT[/]   time to first token over the recent window: p50, p90, p99.

[b $accent]r[/]  resize a tier (4G, 512M, 1.5GiB or bytes; shows evictions first)
[b $accent]c[/]  clear a tier (asks first)
[b $accent]b[/]  run the long-doc-qa benchmark; compares with the previous run
[b $accent]1[/]  engine log tab                [b $accent]2[/]  benchmark results tab
[b $accent]p[/]  pause / resume updates        [b $accent]t[/]  next theme
[b $accent]?[/]  this help (also F1)
[b $accent]q[/]  QUIT_TEXT
[b $accent]ctrl+p[/]  command palette: every action, searchable

Themes: kvpanel-dark, kvpanel-light, kvpanel-high-contrast, plus *.toml
files in $KVPANEL_CONFIG_DIR/themes or ~/.config/kvpanel/themes.
"""


class StopServerScreen(DialogScreen):
    """Asks before `q` / ctrl+c stop a server this panel owns; dismisses True to stop."""

    BINDINGS = [
        Binding("y", "stop", "Stop", id="stop-yes"),
        Binding("ctrl+c", "stop", "Stop", show=False, id="stop-ctrl-c"),
        Binding("n,escape", "cancel", "Keep running", id="stop-no"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="stop-dialog"):
            yield Label("Stop the server? y/n", classes="title")
            yield Label(
                "This panel runs the server: stopping flushes the tiers, then ends vLLM and "
                "every client's requests.",
                classes="message",
            )
            with Horizontal(classes="buttons"):
                yield Button("Keep running (n)", id="cancel")
                yield Button("Stop (y)", variant="error", id="stop")

    def action_stop(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#stop")
    def _stop(self) -> None:
        self.dismiss(True)


class HelpScreen(DialogScreen):
    # The text scrolls inside the dialog, so Close stays on screen at 80x24.
    DEFAULT_CSS = (
        MODAL_CSS + "#help-dialog { width: 88; } #help-body { height: auto; max-height: 65vh; }"
    )
    BINDINGS = [
        Binding("escape,q,question_mark,f1", "cancel", "Close", id="close-help"),
    ]

    def __init__(self, quit_text: str = "leave the panel (the server keeps running)") -> None:
        super().__init__()
        self.quit_text = quit_text

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="help-dialog"):
            yield Label("Help", classes="title")
            with VerticalScroll(id="help-body"):
                yield Static(Content.from_markup(HELP_TEXT.replace("QUIT_TEXT", self.quit_text)))
            with Horizontal(classes="buttons"):
                yield Button("Close", variant="primary", id="cancel")
