"""``--restart-before-query``: each mode's server is stopped after the warm-up round and started
again, with the same arguments on the same tiers, before the query round.

What the query round then finds is what survived a restart: nothing for vanilla, native and
LMCache's CPU backend (their caches live in the server's memory), kvpanel's disk and Redis tiers.
The stop is a SIGTERM and a wait for the process to exit: ``kvpanel serve`` flushes its tiers'
write-behind queues before it exits and says so in its ``{"event": "stopped", "flushed": ...}``
line. ``--drop-page-cache`` then writes 3 to /proc/sys/vm/drop_caches (after a sync), so the disk
tier is read from the device, not from memory; where that is not permitted (no root, a read-only
/proc/sys in a container) the run goes on and every report says the cache was NOT dropped.

    drop_page_cache(path)      - sync + "3" into drop_caches: a PageCacheDrop (never raises)
    ServerRestarter            - the RestartHook for one mode: stop, drop, start; its RestartRecord
    restart_summary(outcome)   - per mode: ratios of the query round to the warm-up round, the
                                 query round's tier hits, dropped writes, how the stop went
    print_restart_table(rows)  - the table printed after the comparison's
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from kvpanel.bench.long_doc_qa import ProgressCallback
from kvpanel.bench.result import QUERY, WARMUP
from kvpanel.bench.server_proc import ServeProcess
from kvpanel.settings import ENGINE_TIER

if TYPE_CHECKING:
    from kvpanel.bench.compare import ModeOutcome

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


@dataclass(frozen=True, slots=True)
class RestartOptions:
    drop_page_cache: bool = False
    # A restart measures what survived the stop, so the stop waits for the tiers' flush
    # (a large disk tier on a GPU host can take minutes) rather than killing the server early.
    stop_timeout_s: float = 600.0


@dataclass(frozen=True, slots=True)
class PageCacheDrop:
    requested: bool
    dropped: bool
    note: str


def drop_page_cache(path: Path | None = None) -> PageCacheDrop:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``. Not permitted is a result, not an error."""
    target = DROP_CACHES if path is None else path
    os.sync()  # dirty pages are not dropped: write them first
    try:
        with open(target, "w") as f:
            f.write("3\n")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return PageCacheDrop(
            requested=True,
            dropped=False,
            note=f"page cache NOT dropped: cannot write {target} ({reason}); needs root and a "
            "writable /proc/sys (not a container's read-only one)",
        )
    return PageCacheDrop(requested=True, dropped=True, note=f"page cache dropped ({target})")


NOT_REQUESTED = PageCacheDrop(requested=False, dropped=False, note="page cache kept (not asked)")


@dataclass(slots=True)
class RestartRecord:
    """How one mode's restart went; seconds are wall time."""

    stop_s: float = math.nan
    exit_code: int | None = None
    flushed: bool | None = None  # None: the server printed no "stopped" line
    page_cache: PageCacheDrop = NOT_REQUESTED
    start_s: float = math.nan
    log_path: str | None = None  # the restarted server's stderr
    # The first server's status just after it was ready (a disk tier that already held chunks
    # makes the warm-up round no recompute) and just before the stop (its dropped writes).
    status_at_start: dict[str, Any] | None = None
    status_before_stop: dict[str, Any] | None = None
    # The restarted server's status after its pre-warm, as the query round begins: the query
    # round's own tier hits are the final counters minus these.
    status_before_query: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["page_cache"] = asdict(self.page_cache)
        for k in ("stop_s", "start_s"):
            d[k] = None if math.isnan(d[k]) else d[k]
        return d


class ServerRestarter:
    """The RestartHook of one mode (``run_benchmark(..., restart=it)``); ``server`` is the one
    running now, to be stopped by the caller when the benchmark ends."""

    def __init__(
        self,
        server: ServeProcess,
        ready_timeout_s: float,
        options: RestartOptions,
        api_key: str | None,
        log_path: Path | None,
        env: Mapping[str, str] | None,
        label: str,
        log: TextIO | None = None,
    ) -> None:
        self.server = server
        self._first = server
        self.ready_timeout_s = ready_timeout_s
        self.options = options
        self.api_key = api_key  # the user's, else each server's own token
        self.log_path = log_path
        self.env = env
        self.label = label
        self.out = log if log is not None else sys.stderr
        self.record = RestartRecord(log_path=str(log_path) if log_path else None)
        self.record.status_at_start = server.fresh_status(lines=1)
        chunks = _stored_chunks(self.record.status_at_start)
        if chunks:
            self._say(
                f"warning: the tiers already hold {chunks} chunks at start (a previous run's "
                "disk?): the warm-up round is not a pure recompute"
            )

    def watch_progress(self, inner: ProgressCallback | None) -> ProgressCallback:
        """``inner`` (may be None), plus: when the query round starts on the restarted server,
        its status then. Called in the benchmark's event loop before the round's clock starts,
        with no request in flight, so the wait for a fresh status line costs the round nothing."""

        def progress(phase: str, done: int, total: int) -> None:
            if phase == QUERY and done == 0 and self.server is not self._first:
                self.record.status_before_query = self.server.fresh_status()
            if inner is not None:
                inner(phase, done, total)

        return progress

    def _say(self, text: str) -> None:
        print(f"[{self.label}] {text}", file=self.out, flush=True)

    def __call__(self) -> tuple[str, str | None]:
        old = self.server
        self.record.status_before_stop = old.fresh_status()
        t0 = time.perf_counter()
        self.record.exit_code = old.stop(timeout_s=self.options.stop_timeout_s)
        self.record.stop_s = round(time.perf_counter() - t0, 1)
        stopped = old.stopped_event()
        self.record.flushed = None if stopped is None else bool(stopped.get("flushed"))
        self._say(
            f"stopped after the warm-up round in {self.record.stop_s:.1f}s "
            f"(exit code {self.record.exit_code}, flushed: {_yes_no(self.record.flushed)})"
        )
        if self.options.drop_page_cache:
            self.record.page_cache = drop_page_cache()
            self._say(self.record.page_cache.note)
        t1 = time.perf_counter()
        new = ServeProcess.start(old.argv, self.ready_timeout_s, self.log_path, self.env)
        self.server = new
        self.record.start_s = round(time.perf_counter() - t1, 1)
        self._say(f"restarted (same arguments), ready after {self.record.start_s:.1f}s")
        assert new.url is not None  # start() raised otherwise
        return new.url, self.api_key or new.token


def _yes_no(flag: bool | None) -> str:
    return "unknown (no stopped line)" if flag is None else ("yes" if flag else "NO")


def _tier_rows(status: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """kvpanel's tiers in a status line (not the GPU row: it counts prefix-cache tokens)."""
    tiers = (status or {}).get("tiers") or {}
    return {k: v for k, v in tiers.items() if k != ENGINE_TIER and isinstance(v, dict)}


def _stored_chunks(status: Mapping[str, Any] | None) -> int:
    return sum(int(row.get("chunks") or 0) for row in _tier_rows(status).values())


def _counts(status: Mapping[str, Any] | None, key: str) -> dict[str, int]:
    return {name: int(row.get(key) or 0) for name, row in _tier_rows(status).items()}


def _delta(
    end: Mapping[str, Any] | None, start: Mapping[str, Any] | None, key: str
) -> dict[str, int]:
    before = _counts(start, key)
    return {name: n - before.get(name, 0) for name, n in _counts(end, key).items()}


def _same_text(o: ModeOutcome) -> dict[str, int]:
    """Query-round answers equal to the warm-up answer of the same document (greedy decoding:
    KV that survived the restart must give the recomputed text). Forced misses are left out."""
    if o.result is None:
        return {"same": 0, "compared": 0}
    first = {r.doc_index: r.text for r in o.result.round_records(WARMUP) if r.ok}
    pairs = [
        (r.text, first[r.doc_index])
        for r in o.result.round_records(QUERY)
        if r.ok and not r.forced_miss and r.doc_index in first
    ]
    return {"same": sum(a == b for a, b in pairs), "compared": len(pairs)}


def _ratio(a: float, b: float) -> float:
    return a / b if not (math.isnan(a) or math.isnan(b)) and b > 0 else math.nan


def restart_summary(o: ModeOutcome) -> dict[str, Any]:
    """The restart's figures for one mode: query round over warm-up round (total and mean TTFT;
    above 1 means the restart made the documents slower than recomputing them), hits per tier
    in the restarted server, dropped writes per tier in each server."""
    rec = o.restart or RestartRecord()
    w_total, q_total = o.stat(WARMUP, "total_s"), o.stat(QUERY, "total_s")
    w_ttft, q_ttft = o.stat(WARMUP, "mean_ttft_s"), o.stat(QUERY, "mean_ttft_s")
    return {
        "warmup_total_s": w_total,
        "query_total_s": q_total,
        "warmup_mean_ttft_s": w_ttft,
        "query_mean_ttft_s": q_ttft,
        "query_over_warmup_total": _ratio(q_total, w_total),
        "query_over_warmup_ttft": _ratio(q_ttft, w_ttft),
        # The restarted server's counters start at 0; its pre-warm's hits are taken off.
        "query_round_hits": _delta(o.last_status, rec.status_before_query, "hits"),
        "dropped_before_restart": _counts(rec.status_before_stop, "dropped"),
        "dropped_after_restart": _counts(o.last_status, "dropped"),
        "chunks_at_start": _stored_chunks(rec.status_at_start),
        "same_text_as_warmup": _same_text(o),
        **rec.to_dict(),
    }


def _cell(x: float, unit: str = "s") -> str:
    return "-" if math.isnan(x) else f"{x:.3f}{unit}"


def _tier_cell(counts: Mapping[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in counts.items()) or "-"


def print_restart_table(
    outcomes: Sequence[ModeOutcome], rows: Sequence[Mapping[str, Any]], file: TextIO | None = None
) -> None:
    out = file if file is not None else sys.stdout
    head = ["mode", "warmup total", "query total", "total q/w", "warmup TTFT", "query TTFT"]
    head += ["TTFT q/w", "query-round hits", "dropped", "flushed", "same text"]
    table = [head]
    notes = []
    for o, r in zip(outcomes, rows, strict=True):
        if o.restart is None:
            continue
        dropped = {
            k: r["dropped_before_restart"].get(k, 0) + r["dropped_after_restart"].get(k, 0)
            for k in {**r["dropped_before_restart"], **r["dropped_after_restart"]}
        }
        table.append(
            [
                o.mode,
                _cell(r["warmup_total_s"]),
                _cell(r["query_total_s"]),
                _cell(r["query_over_warmup_total"], "x"),
                _cell(r["warmup_mean_ttft_s"]),
                _cell(r["query_mean_ttft_s"]),
                _cell(r["query_over_warmup_ttft"], "x"),
                _tier_cell(r["query_round_hits"]),
                _tier_cell(dropped),
                _yes_no(r["flushed"]),
                f"{r['same_text_as_warmup']['same']}/{r['same_text_as_warmup']['compared']}",
            ]
        )
        notes.append(f"{o.mode}: {o.restart.page_cache.note}")
        if r["chunks_at_start"]:
            notes.append(
                f"{o.mode}: the tiers held {r['chunks_at_start']} chunks at start: the warm-up "
                "round was not a pure recompute"
            )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    print("\n=== RESTART BEFORE THE QUERY ROUND (q/w: query round / warm-up round) ===", file=out)
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
    for n in dict.fromkeys(notes):
        print(f"  {n}", file=out)
    out.flush()
