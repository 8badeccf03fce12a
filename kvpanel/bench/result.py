"""What a benchmark run measured: per-request records, per-round statistics, the whole result.

    RequestRecord  - one request: round, document, TTFT, latency, token counts, ok / error
    RoundStats     - one round: mean / p50 / p90 TTFT, wall time, counts
    query_round_name(k) - "query", "query2", ...: the names of the query phase's rounds
    BenchResult    - params, rounds, records, gains; ``to_dict`` / ``from_dict`` for JSON
    percentile     - linear-interpolation percentile (numpy's default), no numpy needed

Plain data: no I/O, no asyncio, so the control API and the panel can pass results around freely.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from kvpanel.metrics.percentile import percentile as _percentile

WARMUP = "warmup"
QUERY = "query"


def query_round_name(k: int) -> str:
    """Round k of the query phase (1-based): "query", then "query2", "query3"..."""
    return QUERY if k == 1 else f"{QUERY}{k}"


@dataclass(slots=True)
class RequestRecord:
    """One request. Times are seconds; ``start_s`` / ``end_s`` are relative to the round start."""

    round: str
    index: int  # position in the round
    doc_index: int
    forced_miss: bool = False
    ok: bool = False
    error: str = ""
    start_s: float = 0.0
    ttft_s: float | None = None
    latency_s: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    text: str = ""  # generated text (kept out of the CSV)
    response_id: str = ""  # the API's response id (JSON only), to find it in a server trace


def percentile(values: Sequence[float], q: float) -> float:
    """kvpanel's percentile (kvpanel.metrics.percentile), NaN for no values as in the CSV."""
    value = _percentile(values, q)
    return math.nan if value is None else value


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


@dataclass(slots=True)
class RoundStats:
    """Statistics of one round over its successful requests (NaN when there are none)."""

    name: str
    total_s: float
    count: int
    ok_count: int
    mean_ttft_s: float
    ttft_p50_s: float
    ttft_p90_s: float
    mean_latency_s: float
    # Unix time of the round's start: lines request times up with a server-side trace.
    started_at: float = 0.0

    @classmethod
    def from_records(
        cls,
        name: str,
        total_s: float,
        records: Sequence[RequestRecord],
        started_at: float = 0.0,
    ) -> RoundStats:
        ttfts = [r.ttft_s for r in records if r.ok and r.ttft_s is not None]
        lats = [r.latency_s for r in records if r.ok and r.latency_s is not None]
        return cls(
            name=name,
            total_s=total_s,
            count=len(records),
            ok_count=sum(1 for r in records if r.ok),
            mean_ttft_s=_mean(ttfts),
            ttft_p50_s=percentile(ttfts, 50),
            ttft_p90_s=percentile(ttfts, 90),
            mean_latency_s=_mean(lats),
            started_at=started_at,
        )

    @property
    def per_prompt_s(self) -> float:
        """Round wall time per prompt (LMCache's latency-gain unit)."""
        return self.total_s / self.count if self.count else math.nan


def _ratio(num: float, den: float) -> float:
    if math.isnan(num) or math.isnan(den):
        return math.nan
    return num / den if den > 0 else math.inf


@dataclass(slots=True)
class BenchResult:
    """A finished run. ``rounds`` maps "warmup" / "query" to their statistics."""

    params: dict[str, Any]
    base_url: str
    model: str
    token_ids: bool
    rounds: dict[str, RoundStats] = field(default_factory=dict)
    records: list[RequestRecord] = field(default_factory=list)
    started_at: float = 0.0  # unix time
    # The server was stopped and started again between the warm-up and the query round, so the
    # query round can only hit what survived a restart (disk, Redis).
    restarted_before_query: bool = False
    restarted_base_url: str = ""

    @property
    def ttft_gain(self) -> float:
        """Warm-up mean TTFT / query mean TTFT (LMCache's "TTFT gain")."""
        return _ratio(self.rounds[WARMUP].mean_ttft_s, self.rounds[QUERY].mean_ttft_s)

    @property
    def latency_gain(self) -> float:
        """Warm-up round time per prompt / query round time per prompt (LMCache)."""
        return _ratio(self.rounds[WARMUP].per_prompt_s, self.rounds[QUERY].per_prompt_s)

    def query_rounds(self) -> list[RoundStats]:
        """The query phase's rounds in order ("query", "query2", ...)."""
        out = []
        k = 1
        while query_round_name(k) in self.rounds:
            out.append(self.rounds[query_round_name(k)])
            k += 1
        return out

    def query_rounds_mean(self, attr: str) -> float:
        """Mean of a ``RoundStats`` field over the query rounds (NaN without any)."""
        return _mean([float(getattr(r, attr)) for r in self.query_rounds()])

    @property
    def failed_requests(self) -> int:
        return sum(1 for r in self.records if not r.ok)

    def failure(self) -> str | None:
        """Why this run cannot be used (any failed request), or None.

        A run with some failed requests is failed too: its rounds average over fewer requests
        (or none), so its times compare with nothing and must not become a baseline.
        """
        failed = [r for r in self.records if not r.ok]
        if not failed:
            return None
        first = failed[0].error or "no error message"
        return f"{len(failed)} of {len(self.records)} requests failed (first: {first})"

    def round_records(self, name: str) -> list[RequestRecord]:
        return [r for r in self.records if r.round == name]

    def to_dict(self, with_text: bool = False) -> dict[str, Any]:
        records = []
        for r in self.records:
            d = asdict(r)
            if not with_text:
                d.pop("text")
            records.append(d)
        return {
            "benchmark": "long_doc_qa",
            "params": dict(self.params),
            "base_url": self.base_url,
            "model": self.model,
            "token_ids": self.token_ids,
            "started_at": self.started_at,
            "restarted_before_query": self.restarted_before_query,
            "restarted_base_url": self.restarted_base_url,
            "rounds": {
                k: {f: _json_float(x) if isinstance(x, float) else x for f, x in asdict(v).items()}
                for k, v in self.rounds.items()
            },
            "ttft_gain": _json_float(self.ttft_gain),
            "latency_gain": _json_float(self.latency_gain),
            "failed_requests": self.failed_requests,
            "records": records,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResult:
        rounds = {
            k: RoundStats(**{f: _from_json_float(x) for f, x in v.items()})
            for k, v in data["rounds"].items()
        }
        return cls(
            params=dict(data["params"]),
            base_url=data["base_url"],
            model=data["model"],
            token_ids=bool(data["token_ids"]),
            rounds=rounds,
            records=[RequestRecord(**r) for r in data["records"]],
            started_at=float(data.get("started_at", 0.0)),
            restarted_before_query=bool(data.get("restarted_before_query", False)),
            restarted_base_url=str(data.get("restarted_base_url", "")),
        )


def _json_float(x: float) -> float | None:
    """JSON has no NaN / Infinity: both become null."""
    return None if math.isnan(x) or math.isinf(x) else x


def _from_json_float(x: Any) -> Any:
    return math.nan if x is None else x
