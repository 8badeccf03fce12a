"""The panel's keys: bindings, and the texts the command palette and help show for them.

Every action has a binding id, so it shows in the footer or the command palette (ctrl+p) and
can be remapped through Textual's keymap.
"""

from __future__ import annotations

from textual.binding import Binding, BindingType

BINDINGS: list[BindingType] = [
    Binding("r", "resize", "Resize", id="resize", tooltip="Resize a tier"),
    Binding("c", "clear_tier", "Clear", id="clear", tooltip="Clear a tier"),
    Binding("b", "bench", "Bench", id="bench", tooltip="Run long-doc-qa"),
    Binding("p", "toggle_pause", "Pause", id="pause", tooltip="Pause/resume updates"),
    # Not in the footer (it must fit 80 columns): in the command palette and the help.
    Binding("t", "cycle_theme", "Theme", id="theme", show=False, tooltip="Next kvpanel theme"),
    # The bottom tabs, one key each (Textual's own tab focus needs Tab, Tab, then arrows).
    Binding("1", "show_log", "Log", id="show-log", tooltip="Engine log tab"),
    Binding("2", "show_bench", "Results", id="show-bench", tooltip="Benchmark tab"),
    Binding("question_mark", "help", "Help", key_display="?", id="help"),
    Binding("f1", "help", "Help", show=False, id="help-f1"),
    # Which of each pair is live depends on owns_server (check_action): `kvpanel serve` asks,
    # then stops the server; `kvpanel attach` only closes this panel.
    Binding("q", "stop_server", "Stop server", id="stop", tooltip="Ask, then stop the server"),
    Binding("q", "leave", "Leave", id="quit", tooltip="Close the panel; the server keeps running"),
    Binding("ctrl+c,ctrl+q", "stop_server", "Stop server", show=False, id="stop-keys"),
    Binding("ctrl+c,ctrl+q", "leave", "Leave", show=False, id="quit-keys"),
]
QUIT_TEXTS = {
    "stop_server": (
        "Stop the server",
        "Ask, then stop kvpanel serve and its engine (q, ctrl+c)",
    ),
    "leave": ("Leave the panel", "Close this panel; the server keeps running (q, ctrl+c)"),
}
COMMAND_TEXTS = {
    "resize": ("Resize a tier", "Change a tier's capacity (r)"),
    "clear_tier": ("Clear a tier", "Drop every chunk of a tier (c)"),
    "bench": ("Run long-doc-qa benchmark", "Start the benchmark and compare runs (b)"),
    "toggle_pause": ("Pause / resume updates", "Freeze the dashboard (p)"),
    "cycle_theme": ("Next kvpanel theme", "Cycle dark, light, high contrast (t)"),
    "show_log": ("Show the engine log", "Bottom tab: the engine's log lines (1)"),
    "show_bench": ("Show the benchmark", "Bottom tab: progress and results (2)"),
    "help": ("Help", "Keys and what the panels show (? or F1)"),
}
