"""A benchmark whose requests failed ends `failed` with the reason: no change figures, never
the baseline; the change column shows sign, value and unit whatever the size."""

from __future__ import annotations

from typing import Any

import pytest
from textual.widgets import DataTable, Label

from kvpanel.bench.result import BenchResult, RequestRecord, RoundStats
from kvpanel.panel.bench_view import CHANGE_WIDTH, BenchPane, fmt_change
from kvpanel.serve.hub import StatusHub

from .recorded import make_app

SIZE = (120, 40)
TOO_LONG = "HTTPError 400: This model's maximum context length is 2048 tokens"


def done(query_ttft: float, requests: int = 40) -> dict[str, Any]:
    rounds = {"mean_ttft_s": query_ttft, "total_s": query_ttft * 10, "ttft_p50_s": query_ttft}
    rounds["ttft_p90_s"] = query_ttft
    return {
        "state": "done",
        "result": {"warmup_round": dict(rounds), "query_round": dict(rounds), "requests": requests},
    }


def table_text(table: DataTable[Any]) -> str:
    return "\n".join(table.render_line(y).text for y in range(table.size.height))


async def test_failed_bench_shows_reason_no_change_figures_and_keeps_the_baseline() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        pane = app.query_one(BenchPane)
        table = app.query_one("#bench-table", DataTable)
        pane.show({"state": "running", "progress": 0.1})
        pane.show(done(2.0))  # the baseline
        pane.show({"state": "running", "progress": 0.1})
        failed = {
            "state": "failed",
            "error": f"40 of 40 requests failed (first: {TOO_LONG})",
            "result": {"warmup_round": {"mean_ttft_s": None}, "query_round": None},
        }
        pane.show(failed)
        await pilot.pause()
        status = str(app.query_one("#bench-status", Label).render())
        assert "failed" in status and "40 of 40 requests failed" in status
        assert not table.display  # no change figures for a run that measured nothing
        # the next good run compares with the last good one, not with the failed run
        pane.show({"state": "running", "progress": 0.1})
        pane.show(done(1.0))
        await pilot.pause()
        assert table.display
        assert str(table.get_row_at(2)[2]) == "2.00 s"  # previous: the baseline
        assert "-50.0%" in str(table.get_row_at(2)[3])


@pytest.mark.parametrize(
    ("now", "before", "text"),
    [
        (5.175, 1.0, "+417.5%"),
        (320.73, 1.0, "+31973%"),
        (0.028, 1.0, "-97.2%"),
        (5e4, 1.0, "x50.0k"),
    ],
)
def test_change_text_always_fits_with_its_unit(now: float, before: float, text: str) -> None:
    assert fmt_change(now, before) == text
    assert len(text) <= CHANGE_WIDTH


async def test_change_column_shows_the_percent_sign() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        pane = app.query_one(BenchPane)
        app.query_one("#tab-bench")
        app.query_one("TabbedContent").active = "tab-bench"
        pane.show(done(1.0))
        pane.show({"state": "running", "progress": 0.1})
        pane.show(done(320.73))
        await pilot.pause()
        text = table_text(app.query_one("#bench-table", DataTable))
        assert "+31973%" in text, text


def test_hub_reports_a_bench_with_failed_requests_as_failed(monkeypatch: Any) -> None:
    """Documents longer than max_model_len: every request answered 400; the run is failed."""
    import kvpanel.bench.long_doc_qa as long_doc_qa

    def run_benchmark(params: Any, base_url: str, progress_cb: Any = None) -> BenchResult:
        records = [RequestRecord("warmup", i, i, error=TOO_LONG) for i in range(2)]
        records.append(RequestRecord("query", 0, 0, ok=True, ttft_s=0.1, latency_s=0.2))
        rounds = {
            name: RoundStats.from_records(name, 1.0, [r for r in records if r.round == name])
            for name in ("warmup", "query")
        }
        return BenchResult({}, base_url, "m", True, rounds=rounds, records=records)

    monkeypatch.setattr(long_doc_qa, "run_benchmark", run_benchmark)
    hub = StatusHub({}, None)
    hub.base_url = "http://127.0.0.1:1"
    hub.start_bench({"num_documents": 2, "document_length": 100})
    assert hub._bench_thread is not None
    hub._bench_thread.join(10)
    bench = hub.bench()
    assert bench is not None and bench["state"] == "failed"
    assert bench["error"] == f"2 of 3 requests failed (first: {TOO_LONG})"
