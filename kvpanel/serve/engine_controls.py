"""One control channel over all of a server's engine cores.

With vLLM's data parallelism (``--data-parallel-size N``) each DP rank is an engine-core
process with a store and a control socket of its own (``engine_socket_path``). The status
merges their replies and every tier operation goes to each of them:

- counters (hits, misses, bytes in/out, evictions, errors, dropped, queued, skipped) add up;
- the CPU tier is private to each engine: capacity, use and chunks add up, and resizing it to
  N bytes gives each of the n engines N // n;
- a disk directory or a Redis DB is shared by the ranks (each sees all of it): capacity, use
  and chunks are the largest any engine reports, and a resize sets each engine's (shared) cap;
- a tier is healthy only when it is healthy in every engine.

Primitives: EngineControl (the protocol); EngineControls(paths).call(**request);
merge_replies(replies). (The DP ranks a server starts: ``vllm_flags.dp_ranks``.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from kvpanel.cache.stats import TierCounters
from kvpanel.vllm_ext.control import ControlClient

# Every tier counter (TierCounters' fields) and the write-behind backlog add up over engines.
_COUNTERS = (*(f for f in TierCounters.__slots__ if f not in ("name", "_lock")), "queued_bytes")
_SIZES = ("capacity_bytes", "used_bytes", "chunks")
PRIVATE_TIERS = frozenset({"cpu"})  # one per engine; disk and remote are shared by the ranks


def _num(value: Any) -> int | float:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _merge_tier(name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(rows[0])
    for field in _COUNTERS:
        out[field] = sum(_num(r.get(field)) for r in rows)
    for field in _SIZES:
        values = [_num(r.get(field)) for r in rows]
        out[field] = sum(values) if name in PRIVATE_TIERS else max(values)
    # What one resize may ask for: the host's RAM (CPU) or the shared dir's room, once.
    out["max_capacity_bytes"] = max(_num(r.get("max_capacity_bytes")) for r in rows)
    out["healthy"] = all(bool(r.get("healthy", True)) for r in rows)
    notes = dict.fromkeys(str(r.get("note") or "") for r in rows)
    out["note"] = "; ".join(n for n in notes if n)
    return out


def merge_replies(replies: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One reply as if from one engine; the first failed reply if any engine failed."""
    for reply in replies:
        if not reply.get("ok", False):
            return reply
    if len(replies) == 1:
        return replies[0]
    tiers: dict[str, list[dict[str, Any]]] = {}
    for reply in replies:
        for name, row in (reply.get("tiers") or {}).items():
            tiers.setdefault(name, []).append(row)
    merged: dict[str, Any] = {
        "ok": True,
        "tiers": {name: _merge_tier(name, rows) for name, rows in tiers.items()},
        "engines": len(replies),
    }
    transfers: dict[str, float] = {}
    for reply in replies:
        for field, value in (reply.get("transfers") or {}).items():
            transfers[field] = transfers.get(field, 0) + _num(value)
    merged["transfers"] = transfers
    kv_bytes = sum(_num(r.get("engine_kv_bytes")) for r in replies)
    if kv_bytes:
        merged["engine_kv_bytes"] = kv_bytes
    return merged


class EngineControl(Protocol):
    """What the status hub needs: ControlClient (one engine) or EngineControls (several)."""

    def call(self, **request: Any) -> dict[str, Any]: ...


class EngineControls:
    """``ControlClient.call`` over one or several engines' control sockets."""

    def __init__(self, paths: Sequence[str], timeout: float = 120.0) -> None:
        if not paths:
            raise ValueError("no engine control socket")
        self.clients = [ControlClient(p, timeout) for p in paths]

    @property
    def path(self) -> str:
        return self.clients[0].path

    def call(self, **request: Any) -> dict[str, Any]:
        n = len(self.clients)
        if request.get("op") == "resize" and request.get("tier") in PRIVATE_TIERS and n > 1:
            size = request.get("bytes")
            if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
                request = {**request, "bytes": size // n}  # the total, split over the engines
        # One engine after the other: an OSError (an engine not up yet, or gone) reaches the
        # caller as it does with one engine.
        return merge_replies([c.call(**request) for c in self.clients])
