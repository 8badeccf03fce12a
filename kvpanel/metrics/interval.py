"""Interval figures (hit rate, GB/s, tokens/s) from two cumulative status snapshots.

A status snapshot carries cumulative counters (hits, misses, bytes, tokens). "The last interval"
is a different interval for every consumer (a panel at 2/s, the JSON lines every few seconds, a
one-off `kvpanel status`), so each consumer keeps its own previous snapshot in an IntervalWindow
and differences it: consumers never take each other's hits, however they interleave.

Primitives: with_interval(prev, snap) -> snap with the interval fields filled;
restarted(before, now) -> bool; IntervalWindow().apply(snap).
"""

from __future__ import annotations

import copy
from typing import Any

from kvpanel.settings import ENGINE_TIER


def _delta(now: dict[str, Any], before: dict[str, Any], key: str) -> float | None:
    """now[key] - before[key]; None when missing or when the counter went back (a restart)."""
    a, b = now.get(key), before.get(key)
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or a < b:
        return None
    return float(a - b)


def _gbps(delta_bytes: float | None, seconds: float) -> float:
    return (delta_bytes or 0.0) / seconds / 1e9


def _hit_rate(now: dict[str, Any], before: dict[str, Any]) -> float | None:
    hits, misses = _delta(now, before, "hits"), _delta(now, before, "misses")
    if hits is None or misses is None or hits + misses <= 0:
        return None
    return hits / (hits + misses)


def restarted(before: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether ``now`` comes from another server process than ``before`` (a restart)."""
    old, new = before.get("server_id"), now.get("server_id")
    if old is not None and new is not None:
        return bool(old != new)
    return float(now.get("uptime_s") or 0.0) < float(before.get("uptime_s") or 0.0)


def with_interval(prev: dict[str, Any] | None, snap: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``snap`` whose interval fields cover the time since ``prev``.

    Without a usable ``prev`` (none, or from before a server restart: uptime went back) the
    snapshot's own figures are kept. ``interval_s`` says how long the interval was.
    """
    if prev is None or restarted(prev, snap):
        return snap
    seconds = float(snap.get("uptime_s") or 0.0) - float(prev.get("uptime_s") or 0.0)
    if seconds <= 0:
        return snap
    out = copy.deepcopy(snap)
    out["interval_s"] = seconds
    before_tiers = prev.get("tiers") or {}
    for name, tier in (out.get("tiers") or {}).items():
        before = before_tiers.get(name)
        if before is None:
            continue
        tier["hit_rate"] = _hit_rate(tier, before)
        transfers, before_transfers = tier.get("transfers"), before.get("transfers")
        if transfers and before_transfers:
            # The CPU tier's traffic is the GPU<->CPU copies: bytes moved per wall second, the
            # figure an operator compares with PCIe.
            tier["load_gbps"] = _gbps(_delta(transfers, before_transfers, "load_bytes"), seconds)
            tier["store_gbps"] = _gbps(_delta(transfers, before_transfers, "store_bytes"), seconds)
        else:
            tier["load_gbps"] = _gbps(_delta(tier, before, "bytes_out"), seconds)
            tier["store_gbps"] = _gbps(_delta(tier, before, "bytes_in"), seconds)
    engine_now = (out.get("tiers") or {}).get(ENGINE_TIER)
    engine_before = before_tiers.get(ENGINE_TIER)
    if "engine_kv" in out and engine_now is not None and engine_before is not None:
        out["engine_kv"]["prefix_hit_rate"] = _hit_rate(engine_now, engine_before)
    tp, tp_before = out.get("throughput"), prev.get("throughput") or {}
    if tp is not None:
        for counter, rate in (
            ("prompt_tokens", "prompt_tps"),
            ("generation_tokens", "generation_tps"),
        ):
            d = _delta(tp, tp_before, counter)
            if d is not None:
                tp[rate] = d / seconds
    return out


class IntervalWindow:
    """One consumer's window: each ``apply`` covers the time since this consumer's last one."""

    def __init__(self) -> None:
        self._prev: dict[str, Any] | None = None

    def apply(self, snap: dict[str, Any]) -> dict[str, Any]:
        out = with_interval(self._prev, snap)
        self._prev = snap
        return out
