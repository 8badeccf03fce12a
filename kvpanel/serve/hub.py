"""The server's state as the control API and the panel see it (imports no vLLM).

StatusHub gathers engine totals (fed by the stat logger), the tiers' stats (over the engine's
control socket), host and GPU figures into snapshots; forwards resize/clear to the engine; runs
one benchmark at a time against this server.

Snapshots carry cumulative counters; interval figures are per consumer (metrics.interval):
``snapshot()`` (the HTTP status) covers at least STATUS_WINDOW_S before the build, picked by
time, not by who asked last; ``status_line()`` (the --no-ui JSON lines) covers the time since
the previous line.

Primitives: StatusHub.snapshot() / refresh() / status_line() / resize() / clear() /
start_bench() / bench() / logs(); HubError(status, message) for the HTTP layer.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from kvpanel.metrics.engine_samples import EngineSamples
from kvpanel.metrics.interval import IntervalWindow, with_interval
from kvpanel.metrics.snapshot import SnapshotBuilder
from kvpanel.serve.engine_controls import EngineControl
from kvpanel.serve.logtee import LogTee
from kvpanel.settings import ENGINE_TIER, TIERS

BENCH_FIELDS = {
    "num_documents": int,
    "document_length": int,
    "output_len": int,
    "repeat_count": int,
    "repeat_mode": str,
    "shuffle_seed": int,
    "max_inflight_requests": int,
}


# A benchmark request must not be able to take the server down: {"num_documents": 10**6,
# "document_length": 10**6} would build 10**12 tokens of prompts in this process (OOM). Bounds
# far above any real benchmark (LMCache's default is 8 x 20,000 tokens).
BENCH_MAX = {
    "num_documents": 100_000,
    "document_length": 1_000_000,
    "output_len": 100_000,
    "repeat_count": 1_000,
    "max_inflight_requests": 1_024,
    "shuffle_seed": 2**63 - 1,
}
BENCH_MAX_PROMPT_TOKENS = 100_000_000  # num_documents x document_length

# The HTTP status's interval figures cover at least this long before the build.
STATUS_WINDOW_S = 1.0


class HubError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class StatusHub:
    def __init__(
        self,
        static: dict[str, Any],
        control: EngineControl | None,
        logs: LogTee | None = None,
    ):
        self.samples = EngineSamples()
        self.control = control
        self.logtee = logs
        self.base_url: str | None = None
        self.engine_kv_bytes = 0
        self._builder = SnapshotBuilder(static)
        self._lock = threading.Lock()
        self._latest: dict[str, Any] | None = None
        self._latest_at = 0.0
        self._build_lock = threading.Lock()
        # Recent cumulative builds; the status's interval starts at one of them, chosen by age.
        self._builds: deque[dict[str, Any]] = deque(maxlen=64)
        self._line_window = IntervalWindow()
        self._bench: dict[str, Any] | None = None
        self._bench_thread: threading.Thread | None = None
        self._engine_error: str | None = None

    # ----- snapshots ---------------------------------------------------------------------------

    def _tiers(self) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
        if self.control is None:
            return {}, {}
        try:
            reply = self.control.call(op="stats")
        except OSError as e:
            self._engine_error = f"engine control socket: {e}"
            return {}, {}
        self._engine_error = None
        if reply.get("engine_kv_bytes"):
            # What vLLM allocated, counted by the worker: exact where the estimate from the
            # model's geometry is not (hybrid models whose layer groups share blocks).
            self.engine_kv_bytes = int(reply["engine_kv_bytes"])
        return reply.get("tiers", {}), reply.get("transfers", {})

    def _interval_start(self, uptime_s: float) -> dict[str, Any] | None:
        """The newest earlier build at least STATUS_WINDOW_S old (else the oldest kept)."""
        for build in reversed(self._builds):
            if uptime_s - build["uptime_s"] >= STATUS_WINDOW_S:
                return build
        return self._builds[0] if self._builds else None

    def refresh(self) -> dict[str, Any]:
        """Build a new status snapshot (its interval: >= STATUS_WINDOW_S before the build)."""
        with self._build_lock:
            tiers, transfers = self._tiers()
            with self._lock:
                bench = dict(self._bench) if self._bench else None
            cumulative = self._builder.build(
                self.samples.totals(), tiers, transfers, self.engine_kv_bytes, bench
            )
            if self._engine_error:
                cumulative["error"] = self._engine_error
            snap = with_interval(self._interval_start(cumulative["uptime_s"]), cumulative)
            self._builds.append(cumulative)
            with self._lock:
                self._latest = snap
                self._latest_at = time.monotonic()
            return snap

    def status_line(self) -> dict[str, Any]:
        """A fresh snapshot for the JSON lines: its interval is the time since the last line."""
        return self._line_window.apply(self.refresh())

    def snapshot(self, max_age: float = 0.4) -> dict[str, Any]:
        """The latest snapshot, rebuilt when older than ``max_age`` seconds."""
        with self._lock:
            latest, at = self._latest, self._latest_at
        if latest is not None and time.monotonic() - at <= max_age:
            return latest
        return self.refresh()

    # ----- control -----------------------------------------------------------------------------

    def _engine_call(self, **request: Any) -> dict[str, Any]:
        if self.control is None:
            raise HubError(409, "this server runs without kvpanel's tiers (--offload)")
        try:
            reply = self.control.call(**request)
        except OSError as e:
            raise HubError(503, f"engine control socket unavailable: {e}") from None
        if not reply.get("ok"):
            raise HubError(400, str(reply.get("error", "rejected")))
        return reply

    @staticmethod
    def _check_managed(tier: str, op: str) -> None:
        if tier == ENGINE_TIER:
            raise HubError(
                409,
                f"cannot {op} the {ENGINE_TIER} tier: it is vLLM's own KV cache, which vLLM "
                "manages (sized at engine start by --gpu-memory-utilization or "
                "--kv-cache-memory-bytes); kvpanel can resize and clear its own tiers: "
                + ", ".join(TIERS),
            )

    def resize(self, tier: str, capacity_bytes: Any) -> dict[str, Any]:
        self._check_managed(tier, "resize")
        if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int):
            raise HubError(400, f"capacity_bytes must be an integer, got {capacity_bytes!r}")
        reply = self._engine_call(op="resize", tier=tier, bytes=capacity_bytes)
        self.refresh()
        return {"ok": True, "tiers": reply["tiers"]}

    def clear(self, tier: str) -> dict[str, Any]:
        self._check_managed(tier, "clear")
        reply = self._engine_call(op="clear", tier=tier)
        stats = reply.get("tiers", {}).get(tier)
        if stats is not None:
            self._builder.mark_cleared(tier, stats)
        self.refresh()
        return {"ok": True, "tiers": reply["tiers"]}

    def flush(self, timeout: float = 60.0, progress: Callable[[int], None] | None = None) -> bool:
        """Wait for the engine's queued disk and Redis writes; ``progress(bytes_left)`` about
        twice a second while they are being written (the flush call itself blocks)."""
        control = self.control
        if control is None:
            return True
        result: list[bool] = []

        def run() -> None:
            try:
                result.append(bool(control.call(op="flush", timeout=timeout).get("ok")))
            except OSError:
                result.append(False)

        worker = threading.Thread(target=run, name="kvpanel-flush", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.5)
            if worker.is_alive() and progress is not None:
                with contextlib.suppress(OSError, ValueError):
                    tiers = control.call(op="stats").get("tiers", {})
                    progress(sum(int(t.get("queued_bytes", 0)) for t in tiers.values()))
        return bool(result and result[0])

    def logs(self, since: int) -> dict[str, Any]:
        if self.logtee is None:
            return {"lines": [], "next": since}
        lines, nxt = self.logtee.lines(since)
        return {"lines": lines, "next": nxt}

    # ----- benchmark ---------------------------------------------------------------------------

    def bench(self) -> dict[str, Any] | None:
        with self._lock:
            return dict(self._bench) if self._bench else None

    def start_bench(self, body: Any) -> dict[str, Any]:
        from kvpanel.bench.long_doc_qa import INTERACTIVE_DEFAULTS, BenchParams

        if not isinstance(body, dict):
            raise HubError(400, "body must be a JSON object")
        unknown = sorted(set(body) - set(BENCH_FIELDS))
        if unknown:
            raise HubError(400, f"unknown benchmark parameter(s): {', '.join(unknown)}")
        for k, v in body.items():
            if not isinstance(v, BENCH_FIELDS[k]) or isinstance(v, bool):
                raise HubError(400, f"{k} must be {BENCH_FIELDS[k].__name__}, got {v!r}")
            if k in BENCH_MAX and isinstance(v, int) and abs(v) > BENCH_MAX[k]:
                raise HubError(400, f"{k}={v} is too large (limit {BENCH_MAX[k]})")
        params = BenchParams(**{**INTERACTIVE_DEFAULTS, **body}, completions=True)
        docs = params.num_documents * params.document_length
        if docs > BENCH_MAX_PROMPT_TOKENS:
            raise HubError(400, f"num_documents x document_length = {docs} tokens is too large")
        try:
            params.validate()
        except ValueError as e:
            raise HubError(400, str(e)) from None
        if self.base_url is None:
            raise HubError(503, "server not ready")
        with self._lock:
            if self._bench and self._bench["state"] == "running":
                raise HubError(409, "a benchmark is already running")
            self._bench = {
                "state": "running",
                "progress": 0.0,
                "phase": "starting",
                "params": body,
                "result": None,
                "error": None,
                "started": time.time(),
            }
        self._bench_thread = threading.Thread(
            target=self._run_bench, args=(params,), name="kvpanel-bench", daemon=True
        )
        self._bench_thread.start()
        return {"ok": True, "bench": self.bench()}

    def _run_bench(self, params: Any) -> None:
        from kvpanel.bench.long_doc_qa import run_benchmark
        from kvpanel.bench.result import query_round_name

        phases = {"prewarm": (0.0, 0.1), "warmup": (0.1, 0.5)}
        n = params.query_rounds  # the query rounds share the second half of the bar
        for k in range(1, n + 1):
            phases[query_round_name(k)] = (0.5 + 0.5 * (k - 1) / n, 0.5 + 0.5 * k / n)

        def progress(phase: str, done: int, total: int) -> None:
            lo, hi = phases.get(phase, (0.0, 1.0))
            with self._lock:
                if self._bench is not None:
                    self._bench["phase"] = phase
                    self._bench["progress"] = lo + (hi - lo) * (done / total if total else 1.0)

        try:
            assert self.base_url is not None
            result = run_benchmark(params, self.base_url, progress_cb=progress)
            summary = {
                name: {k: r.get(k) for k in ("mean_ttft_s", "total_s", "ttft_p50_s", "ttft_p90_s")}
                for name, r in result.to_dict()["rounds"].items()
            }
            summary_out: dict[str, Any] = {
                "warmup_round": summary.get("warmup"),
                "query_round": summary.get("query"),
                "requests": len(result.records),
                "failed_requests": result.failed_requests,
            }
            failure = result.failure()
            with self._lock:
                assert self._bench is not None
                if failure:
                    self._bench.update(state="failed", error=failure, result=summary_out)
                else:
                    self._bench.update(state="done", progress=1.0, phase="done", result=summary_out)
        except Exception as e:  # report any failure to the panel instead of killing the thread
            with self._lock:
                assert self._bench is not None
                self._bench.update(state="failed", error=f"{type(e).__name__}: {e}")
