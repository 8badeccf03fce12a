"""Reporting a BenchResult: LMCache's results block, CSV, JSON, a TTFT plot, a progress bar.

print_results(result, ...)    - the "=== BENCHMARK RESULTS ===" block of LMCache's script
write_csv(result, path)       - one row per request (warm-up and query rounds)
write_json(result, path)      - the whole result (params, rounds, gains, records)
write_plot(result, path)      - PNG, TTFT of each request for each round (matplotlib, Agg);
                                returns False with a warning when matplotlib is missing
output_paths(json_path)       - the CSV / PNG paths that go with a JSON path
ProgressPrinter               - a progress_cb that draws a one-line bar on stderr
"""

from __future__ import annotations

import csv
import json
import math
import sys
import warnings
from pathlib import Path
from typing import TextIO

from kvpanel.bench.result import QUERY, WARMUP, BenchResult

CSV_FIELDS = (
    "round",
    "index",
    "doc_index",
    "forced_miss",
    "ok",
    "error",
    "start_s",
    "ttft_s",
    "latency_s",
    "prompt_tokens",
    "output_tokens",
)

CSI = "\x1b["
RESET = CSI + "0m"


def _fmt(x: float, unit: str = "s") -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}{unit}"


def _fmt_gain(x: float) -> str:
    return "n/a" if math.isnan(x) else ("inf" if math.isinf(x) else f"{x:.2f}") + "×"


def results_lines(
    result: BenchResult, show_ttft_gain: bool = False, show_latency_gain: bool = False
) -> list[tuple[str, str]]:
    """(ANSI color code, text) lines of the results block, in LMCache's order and wording."""
    w, q = result.rounds[WARMUP], result.rounds[QUERY]
    lines = [
        ("36;1", "\n=== BENCHMARK RESULTS ==="),
        ("32", f"Warmup round mean TTFT: {_fmt(w.mean_ttft_s)}"),
        ("33", f"Warmup round time: {_fmt(w.total_s)}"),
        ("35", f"Warmup round prompt count: {w.count}"),
        ("32", f"Query round mean TTFT: {_fmt(q.mean_ttft_s)}"),
        ("33", f"Query round time: {_fmt(q.total_s)}"),
        ("35", f"Query round prompt count: {q.count}"),
    ]
    extra = result.query_rounds()[1:]  # --query-rounds N > 1
    for k, r in enumerate(extra, start=2):
        lines.append(("32", f"Query round {k} mean TTFT: {_fmt(r.mean_ttft_s)}"))
        lines.append(("33", f"Query round {k} time: {_fmt(r.total_s)}"))
    if extra:
        n = len(extra) + 1
        ttft, total = result.query_rounds_mean("mean_ttft_s"), result.query_rounds_mean("total_s")
        lines.append(("32", f"Query rounds ({n}) mean TTFT: {_fmt(ttft)}"))
        lines.append(("33", f"Query rounds ({n}) mean time: {_fmt(total)}"))
    if show_ttft_gain:
        lines.append(("34", f"Actual TTFT gain: {_fmt_gain(result.ttft_gain)}"))
    if show_latency_gain:
        lines.append(("34", f"Actual latency gain: {_fmt_gain(result.latency_gain)}"))
    lines.append(
        (
            "0",
            f"TTFT p50/p90: warmup {_fmt(w.ttft_p50_s)}/{_fmt(w.ttft_p90_s)}, "
            f"query {_fmt(q.ttft_p50_s)}/{_fmt(q.ttft_p90_s)}",
        )
    )
    if result.failed_requests:
        lines.append(("31", f"Failed requests: {result.failed_requests}"))
    return lines


def print_results(
    result: BenchResult,
    file: TextIO | None = None,
    color: bool | None = None,
    show_ttft_gain: bool = False,
    show_latency_gain: bool = False,
) -> None:
    """Print the results block; colored like LMCache's when ``file`` is a terminal."""
    out = file if file is not None else sys.stdout
    if color is None:
        color = out.isatty()
    for code, text in results_lines(result, show_ttft_gain, show_latency_gain):
        print(f"{CSI}{code}m{text}{RESET}" if color else text, file=out)
    out.flush()


def output_paths(json_path: str | Path) -> tuple[Path, Path]:
    """``out.json`` -> (``out.csv``, ``out.png``)."""
    p = Path(json_path)
    return p.with_suffix(".csv"), p.with_suffix(".png")


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return value


def write_csv(result: BenchResult, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for rec in result.records:
            writer.writerow([_cell(getattr(rec, name)) for name in CSV_FIELDS])
    return p


def write_json(result: BenchResult, path: str | Path, with_text: bool = False) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result.to_dict(with_text=with_text), indent=2) + "\n")
    return p


def write_plot(result: BenchResult, path: str | Path) -> bool:
    """TTFT per request, one panel per round; forced misses marked. False: no matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: skipping the TTFT plot", stacklevel=2)
        return False
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    names = [n for n in (WARMUP, QUERY) if n in result.rounds]
    names += [r.name for r in result.query_rounds()[1:]]
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names, strict=True):
        recs = [r for r in result.round_records(name) if r.ok and r.ttft_s is not None]
        hits = [r for r in recs if not r.forced_miss]
        misses = [r for r in recs if r.forced_miss]
        ax.scatter([r.index for r in hits], [r.ttft_s for r in hits], s=14, label="TTFT")
        if misses:
            ax.scatter(
                [r.index for r in misses],
                [r.ttft_s for r in misses],
                s=20,
                marker="x",
                label="TTFT (forced miss)",
            )
        stats = result.rounds[name]
        if not math.isnan(stats.mean_ttft_s):
            ax.axhline(stats.mean_ttft_s, linestyle="--", linewidth=1, label="mean")
        ax.set_title(f"{name.capitalize()} round ({stats.ok_count}/{stats.count} ok)")
        ax.set_xlabel("Request index")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("TTFT (s)")
        ax.set_ylim(bottom=0)
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(f"long_doc_qa: {result.model}")
    fig.tight_layout()
    fig.savefig(p, dpi=100)
    plt.close(fig)
    return True


class ProgressPrinter:
    """``progress_cb`` drawing ``phase [#####-----] done/total`` on one line of ``stream``.

    On a terminal the line is redrawn in place; elsewhere only finished phases are printed.
    """

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = self.stream.isatty()

    def __call__(self, phase: str, done: int, total: int) -> None:
        finished = done >= total
        if not self.tty and not finished:
            return
        filled = self.width if total <= 0 else self.width * done // total
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"{phase:<8} [{bar}] {done}/{total}"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if finished else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
