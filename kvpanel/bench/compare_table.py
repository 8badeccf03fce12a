"""The comparison's table: per mode, warm-up / query mean TTFT, query total, ratios to vanilla.

summary_rows(outcomes)   - one dict per mode (also the JSON's rows)
print_table(outcomes)    - the table, then each mode's query-round TTFT gain over vanilla
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from kvpanel.bench.result import QUERY, WARMUP

if TYPE_CHECKING:
    from kvpanel.bench.compare import ModeOutcome

BASELINE = "vanilla"


def _ratio(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b) or b <= 0:
        return math.nan
    return a / b


def summary_rows(outcomes: Sequence[ModeOutcome]) -> list[dict[str, Any]]:
    """Per mode: warm-up / query mean TTFT, query total, and ratios to the vanilla mode."""
    base = next((o for o in outcomes if o.mode in (BASELINE, "none") and o.result), None)
    rows = []
    for o in outcomes:
        q_ttft, q_total = o.stat(QUERY, "mean_ttft_s"), o.stat(QUERY, "total_s")
        b_ttft = base.stat(QUERY, "mean_ttft_s") if base else math.nan
        b_total = base.stat(QUERY, "total_s") if base else math.nan
        rows.append(
            {
                "mode": o.mode,
                "offload": o.offload,
                "ok": o.ok,
                "error": o.error,
                "warmup_mean_ttft_s": o.stat(WARMUP, "mean_ttft_s"),
                "query_mean_ttft_s": q_ttft,
                "query_ttft_p90_s": o.stat(QUERY, "ttft_p90_s"),
                "query_total_s": q_total,
                "ttft_gain": o.result.ttft_gain if o.result else math.nan,
                "query_ttft_vs_vanilla": _ratio(q_ttft, b_ttft),
                # vanilla's query-round mean TTFT / this mode's: > 1 means faster than vanilla
                "query_ttft_gain_vs_vanilla": _ratio(b_ttft, q_ttft),
                "query_total_vs_vanilla": _ratio(q_total, b_total),
                # --query-rounds N: every round's figure and their means (round 1 is above)
                "query_rounds": len(o.per_query_round("total_s")),
                "query_mean_ttft_s_per_round": o.per_query_round("mean_ttft_s"),
                "query_total_s_per_round": o.per_query_round("total_s"),
                "query_mean_ttft_s_all_rounds": o.query_rounds_mean("mean_ttft_s"),
                "query_total_s_all_rounds": o.query_rounds_mean("total_s"),
            }
        )
    return rows


def _cell(x: float, unit: str = "s") -> str:
    return "-" if math.isnan(x) else f"{x:.3f}{unit}"


def print_table(outcomes: Sequence[ModeOutcome], file: TextIO | None = None) -> None:
    out = file if file is not None else sys.stdout
    head = ["mode", "status", "warmup TTFT", "query TTFT", "query total", "TTFT gain"]
    head += ["TTFT/vanilla", "total/vanilla"]
    summary = summary_rows(outcomes)
    n_rounds = max((int(r["query_rounds"]) for r in summary), default=1)
    if n_rounds > 1:  # --query-rounds: the means over every query round, after round 1's
        head += [f"TTFT, {n_rounds} rounds", f"total, {n_rounds} rounds"]
    rows: list[list[str]] = [head]
    errors = []
    gains = []
    for r in summary:
        if r["mode"] not in (BASELINE, "none") and not math.isnan(r["query_ttft_gain_vs_vanilla"]):
            gains.append(
                f"{r['mode']} query-round TTFT gain over vanilla: "
                f"{r['query_ttft_gain_vs_vanilla']:.2f}x" + ("" if r["ok"] else " (mode failed)")
            )
        status = "ok" if r["ok"] else "failed"
        if not r["ok"]:
            errors.append(f"{r['mode']}: {r['error']}")
        rows.append(
            [
                str(r["mode"]),
                status,
                _cell(r["warmup_mean_ttft_s"]),
                _cell(r["query_mean_ttft_s"]),
                _cell(r["query_total_s"]),
                _cell(r["ttft_gain"], "x"),
                _cell(r["query_ttft_vs_vanilla"], "x"),
                _cell(r["query_total_vs_vanilla"], "x"),
            ]
        )
        if n_rounds > 1:
            rows[-1] += [
                _cell(r["query_mean_ttft_s_all_rounds"]),
                _cell(r["query_total_s_all_rounds"]),
            ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    print("\n=== COMPARISON (long_doc_qa) ===", file=out)
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
    for g in gains:
        print(g, file=out)
    for e in errors:
        print(f"  {e}", file=out)
    out.flush()
