"""Shared helpers: the recorded stream fixture and a deterministic dashboard app."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from kvpanel.panel.backend import BENCH_DEFAULTS, REPEAT_MODES, BackendError
from kvpanel.settings import ENGINE_TIER

FIXTURE = Path(__file__).with_name("recorded_stream.json")


class RecordedBackend:
    """Replays recorded snapshots; resize/clear/bench act on the replay so Pilot tests see them.

    Each snapshot() returns the next recorded snapshot (looping), with the capacity changes,
    clears and the fake benchmark applied. Deterministic: no clocks, no randomness.
    """

    BENCH_STEPS = 4

    def __init__(
        self, snapshots: list[dict[str, Any]], log_lines: list[str] | None = None, loop: bool = True
    ) -> None:
        if not snapshots:
            raise ValueError("RecordedBackend needs at least one snapshot")
        self._snapshots = snapshots
        self._loop = loop
        self._index = 0
        self._capacity: dict[str, int] = {}
        self._cleared_at: dict[str, tuple[int, int]] = {}  # tier -> (used, chunks) at clear
        self._bench: dict[str, Any] | None = None
        self._bench_params: dict[str, Any] = dict(BENCH_DEFAULTS)
        self._current = self._apply(snapshots[0])
        self._bench_runs = 0
        self._bench_step = 0
        self.log_lines = list(log_lines or [])
        self.snapshot_calls = 0
        self.calls: list[tuple[str, Any]] = []

    # -- replay ---------------------------------------------------------------------------
    def _apply(self, recorded: dict[str, Any]) -> dict[str, Any]:
        snap = copy.deepcopy(recorded)
        for name, tier in snap.get("tiers", {}).items():
            used, chunks = int(tier.get("used_bytes", 0)), int(tier.get("chunks", 0))
            if name in self._cleared_at:
                used0, chunks0 = self._cleared_at[name]
                used, chunks = max(0, used - used0), max(0, chunks - chunks0)
            cap = self._capacity.get(name, int(tier.get("capacity_bytes", 0)))
            if used > cap:
                chunks = int(chunks * cap / used) if used else 0
                used = cap
            tier.update(capacity_bytes=cap, used_bytes=used, chunks=chunks)
        snap["bench"] = copy.deepcopy(self._bench)
        return snap

    def current(self) -> dict[str, Any]:
        return copy.deepcopy(self._current)

    def snapshot(self) -> dict[str, Any]:
        self.snapshot_calls += 1
        recorded = self._snapshots[self._index]
        if self._index + 1 < len(self._snapshots):
            self._index += 1
        elif self._loop:
            self._index = 0
        self._current = self._apply(recorded)
        return self.current()

    def _tier(self, tier: str) -> dict[str, Any]:
        tiers = self._current.get("tiers", {})
        if tier not in tiers:
            raise BackendError(f"unknown tier {tier!r}, expected one of {sorted(tiers)}")
        return dict(tiers[tier])

    def _tiers_reply(self) -> dict[str, Any]:
        recorded = self._snapshots[(self._index - 1) % len(self._snapshots)]
        self._current = self._apply(recorded)
        return {"ok": True, "tiers": copy.deepcopy(self._current["tiers"])}

    # -- actions --------------------------------------------------------------------------
    def resize(self, tier: str, capacity_bytes: int) -> dict[str, Any]:
        self.calls.append(("resize", (tier, capacity_bytes)))
        self._tier(tier)
        if tier == ENGINE_TIER:
            raise BackendError("the vllm tier is vLLM's own KV cache; it cannot be resized here")
        if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int):
            raise BackendError("capacity_bytes must be an integer")
        if capacity_bytes < 0:
            raise BackendError("capacity_bytes must be non-negative")
        self._capacity[tier] = capacity_bytes
        return self._tiers_reply()

    def clear(self, tier: str) -> dict[str, Any]:
        self.calls.append(("clear", tier))
        self._tier(tier)
        if tier == ENGINE_TIER:
            raise BackendError("the vllm tier is vLLM's own KV cache; it cannot be cleared here")
        recorded = self._snapshots[(self._index - 1) % len(self._snapshots)]["tiers"][tier]
        self._cleared_at[tier] = (int(recorded["used_bytes"]), int(recorded["chunks"]))
        return self._tiers_reply()

    def start_bench(self, params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("bench", dict(params)))
        if self._bench and self._bench["state"] == "running":
            raise BackendError("a benchmark is already running")
        for key, default in BENCH_DEFAULTS.items():
            value = params.get(key, default)
            if key == "repeat_mode":
                if value not in REPEAT_MODES:
                    raise BackendError(f"repeat_mode must be one of {', '.join(REPEAT_MODES)}")
            elif not isinstance(value, int) or value < (0 if key == "shuffle_seed" else 1):
                raise BackendError(f"{key} must be a positive integer")
        self._bench_runs += 1
        self._bench_step = 0
        self._bench_params = {**BENCH_DEFAULTS, **params}
        self._bench = {
            "state": "running",
            "progress": 0.0,
            "phase": "starting",
            "result": None,
            "error": None,
        }
        return {"ok": True, "bench": copy.deepcopy(self._bench)}

    def bench_status(self) -> dict[str, Any] | None:
        bench = self._bench
        if bench is None or bench["state"] != "running":
            return copy.deepcopy(bench)
        self._bench_step += 1
        steps = self.BENCH_STEPS
        if self._bench_step >= steps:
            bench.update(state="done", progress=1.0, phase="done", result=self._bench_result())
        else:
            frac = self._bench_step / steps
            phase = "warmup round" if frac <= 0.5 else "query round"
            bench.update(progress=frac, phase=phase)
        return copy.deepcopy(bench)

    def _bench_result(self) -> dict[str, Any]:
        p = self._bench_params
        n = p["num_documents"] * p["repeat_count"]
        # Later runs find more of the documents already offloaded: a bit faster each time.
        speed = 1.0 / (1.0 + 0.15 * (self._bench_runs - 1))
        base = p["document_length"] / 20000.0
        return {
            "warmup_round": {
                "mean_ttft_s": round(base * 1.9 * speed, 4),
                "total_s": round(base * 1.9 * p["num_documents"] * speed, 3),
            },
            "query_round": {
                "mean_ttft_s": round(base * 0.31 * speed, 4),
                "total_s": round(base * 0.31 * n * speed, 3),
                "ttft_p50_s": round(base * 0.28 * speed, 4),
                "ttft_p90_s": round(base * 0.52 * speed, 4),
            },
            "requests": p["num_documents"] + n,
        }

    def logs(self, since: int) -> tuple[list[str], int]:
        since = max(0, int(since))
        return self.log_lines[since:], len(self.log_lines)


def load_stream() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def recorded_backend() -> RecordedBackend:
    data = load_stream()
    return RecordedBackend(data["snapshots"], log_lines=data["logs"])


def make_app(theme: str = "kvpanel-dark", autopoll: bool = False, **kwargs: Any) -> Any:
    """An app on the recorded stream. autopoll=False: nothing changes unless the test says so."""
    from kvpanel.panel.app import KvpanelApp

    kwargs.setdefault("theme_dir", Path("/nonexistent"))
    return KvpanelApp(
        recorded_backend(),
        theme=theme,
        autopoll=autopoll,
        source="http://127.0.0.1:8000",
        **kwargs,
    )


async def prime(pilot: Any, snapshots: int = 40) -> None:
    """Feed `snapshots` recorded snapshots and all log lines synchronously (no workers)."""
    from kvpanel.panel.app import LogsReady

    app = pilot.app
    backend = app.backend
    for _ in range(snapshots):
        await app.ingest(backend.snapshot())
    await pilot.pause()
    lines, nxt = backend.logs(0)
    app.on_logs_ready(LogsReady(lines, nxt))
    await pilot.pause()
