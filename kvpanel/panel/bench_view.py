"""The benchmark tab: progress while long-doc-qa runs, then this run vs the previous one."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.widgets import DataTable, Label, ProgressBar

from kvpanel.panel.fmt import fmt_count, fmt_seconds

# (label, round, key, lower is better)
METRICS = (
    ("warmup mean TTFT", "warmup_round", "mean_ttft_s"),
    ("warmup total", "warmup_round", "total_s"),
    ("query mean TTFT", "query_round", "mean_ttft_s"),
    ("query TTFT p50", "query_round", "ttft_p50_s"),
    ("query TTFT p90", "query_round", "ttft_p90_s"),
    ("query total", "query_round", "total_s"),
)


def _get(result: dict[str, Any] | None, round_name: str, key: str) -> float | None:
    value = ((result or {}).get(round_name) or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else None


CHANGE_WIDTH = 8  # the change column: sign, value and unit of fmt_change always fit


def fmt_change(now: float, before: float) -> str:
    """Relative change in at most CHANGE_WIDTH characters: +41.7%, -97.2%, +31973%, x1.2k."""
    pct = (now - before) / before * 100
    if abs(pct) < 1000:
        return f"{pct:+.1f}%"
    if abs(pct) < 100_000:
        return f"{pct:+.0f}%"
    return "x" + fmt_count(now / before)  # 1000x slower and more: the factor reads better


def change_text(now: float | None, before: float | None) -> Content:
    if now is None or before is None or before <= 0:
        return Content("-")
    delta = (now - before) / before
    if abs(delta) < 0.005:
        return Content.from_markup("[$text-muted]±0%[/]")
    color = "$success" if delta < 0 else "$error"  # every metric here is time: lower is better
    return Content.from_markup(f"[{color}]$d[/]", d=fmt_change(now, before))


class BenchPane(Vertical):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.result: dict[str, Any] | None = None
        self.previous: dict[str, Any] | None = None
        self._running = False

    def compose(self) -> ComposeResult:
        yield Label("No benchmark run yet. Press b to run long-doc-qa.", id="bench-status")
        yield ProgressBar(total=100, show_eta=False, id="bench-progress")
        table: DataTable[Any] = DataTable(id="bench-table", cursor_type="none", zebra_stripes=True)
        yield table

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("metric", "this run", "previous run")
        table.add_column("change", width=CHANGE_WIDTH)
        self.query_one(ProgressBar).display = False
        table.display = False

    def show(self, bench: dict[str, Any] | None) -> None:
        status = self.query_one("#bench-status", Label)
        bar = self.query_one(ProgressBar)
        if bench is None:
            return
        state = bench.get("state")
        if state == "running":
            self._running = True
            progress = float(bench.get("progress") or 0.0)
            bar.display = True
            bar.update(progress=round(progress * 100, 1))
            status.update(
                Content.from_markup(
                    "[b $accent]running[/] $phase", phase=str(bench.get("phase") or "")
                )
            )
            return
        bar.display = False
        if state == "failed":
            # A failed run is no measurement: no change figures, and the baseline stays the
            # last run that finished with every request answered.
            self._running = False
            self.query_one(DataTable).display = False
            status.update(
                Content.from_markup(
                    "[b $error]failed[/] (no comparison, not a baseline): $e",
                    e=str(bench.get("error") or "?"),
                )
            )
            return
        result = bench.get("result")
        if state == "done" and result and (self._running or self.result is None):
            self._running = False
            self.previous, self.result = self.result, result
            self._fill_table()
            status.update(
                Content.from_markup(
                    "[b $success]done[/] · $n requests", n=str(result.get("requests", "?"))
                )
            )

    def _fill_table(self) -> None:
        table = self.query_one(DataTable)
        table.clear()
        table.display = True
        for label, round_name, key in METRICS:
            now = _get(self.result, round_name, key)
            before = _get(self.previous, round_name, key)
            table.add_row(
                label,
                fmt_seconds(now),
                fmt_seconds(before) if self.previous else "-",
                change_text(now, before),
            )
        requests = (self.result or {}).get("requests", "-")
        prev_requests = (self.previous or {}).get("requests", "-")
        table.add_row("requests", str(requests), str(prev_requests), Content("-"))
