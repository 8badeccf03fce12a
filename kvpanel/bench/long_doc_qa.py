"""Long-document QA benchmark (after LMCache's ``benchmarks/long_doc_qa/long_doc_qa.py``).

Phases, all with at most ``max_inflight_requests`` requests in flight:

    prewarm  - 5 short prompts, not measured (wakes the server up)
    warmup   - every document once, in order: the KV cache is cold, prefill is full
    (sleep ``sleep_time_after_warmup`` seconds)
    query    - the documents again, ``repeat_count`` times each, in ``repeat_mode`` order,
               a share of them forced to miss by ``hit_miss_ratio``
    (restart, optional: the caller's hook stops the server and starts it again)
    query2.. - with ``query_rounds`` > 1 (not in LMCache's benchmark): the query round again,
               round k shuffled with ``shuffle_seed + k - 1``; more samples per server start

Programmatic use (the control API and the panel call it from a worker thread)::

    params = BenchParams(num_documents=4, document_length=2000)
    result = run_benchmark(params, "http://127.0.0.1:8000", progress_cb=cb, stop_event=ev)

``progress_cb(phase, done, total)`` is called with 0 at the start of each phase and after each
request; ``stop_event.set()`` makes the run raise BenchCancelled before its next request.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import httpx

from kvpanel.bench import prompts as wl
from kvpanel.bench.client import (
    RequestFailed,
    discover_model,
    make_client,
    probe_tokenizer,
    stream_request,
)
from kvpanel.bench.result import (
    WARMUP,
    BenchResult,
    RequestRecord,
    RoundStats,
    query_round_name,
)

log = logging.getLogger("kvpanel.bench")

ProgressCallback = Callable[[str, int, int], None]
# Restarts the server between the rounds; returns (new base URL, API key for it).
RestartHook = Callable[[], tuple[str, str | None]]
PREWARM = "prewarm"


class BenchError(RuntimeError):
    """The benchmark could not run (server unreachable, every pre-warm request failed...)."""


class BenchCancelled(RuntimeError):
    """``stop_event`` was set while the benchmark ran."""


# The panel's dialog and the control API start from BenchParams with these: a run of about a
# minute that fits the demo engine (max_model_len 4096) and overflows its GPU KV, so the tiers
# show. The CLI keeps LMCache's defaults, so its figures compare with LMCache's own benchmark.
INTERACTIVE_DEFAULTS: dict[str, Any] = {
    "num_documents": 20,
    "document_length": 2000,
    "output_len": 32,
    "max_inflight_requests": 8,
}


@dataclass(frozen=True, slots=True)
class BenchParams:
    """The workload. Defaults are LMCache's, except ``model`` (None: ask /v1/models)."""

    num_documents: int = 8
    document_length: int = 20000
    output_len: int = 100
    repeat_count: int = 2
    repeat_mode: str = "random"
    shuffle_seed: int = 0
    max_inflight_requests: int = 2
    sleep_time_after_warmup: float = 0.0
    model: str | None = None
    completions: bool = False  # True: /v1/completions, False: /v1/chat/completions
    hit_miss_ratio: str | None = None  # "H:M"
    token_ids: bool | None = None  # None: auto (token ids when the server cannot tokenize)
    prewarm: bool = True
    query_rounds: int = 1  # >1: the query round again, reshuffled (not in LMCache's benchmark)
    request_timeout_s: float = 3600.0
    api_key: str | None = None

    def validate(self) -> None:
        """Raise ValueError, with one line naming the problem, on a bad value."""
        for name in (
            "num_documents",
            "document_length",
            "output_len",
            "repeat_count",
            "query_rounds",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_inflight_requests < 1:
            raise ValueError(
                f"max_inflight_requests must be >= 1, got {self.max_inflight_requests}"
            )
        if self.repeat_mode not in wl.REPEAT_MODES:
            raise ValueError(
                f"repeat_mode must be one of {', '.join(wl.REPEAT_MODES)}, got {self.repeat_mode!r}"
            )
        if self.sleep_time_after_warmup < 0:
            raise ValueError("sleep_time_after_warmup must be >= 0")
        if self.request_timeout_s <= 0:
            raise ValueError("request_timeout_s must be > 0")
        if self.hit_miss_ratio is not None:
            wl.parse_hit_miss_ratio(self.hit_miss_ratio)
        if self.token_ids and len(wl.doc_id_tokens(self.num_documents - 1)) > self.document_length:
            raise ValueError("document_length is too short to tell the token-id documents apart")

    def public_dict(self) -> dict[str, object]:
        """The params for reports, without the API key."""
        d = asdict(self)
        d.pop("api_key")
        return d


@dataclass(slots=True)
class _QueryRound:
    name: str
    prompts: list[wl.Prompt]
    docs: list[int]
    forced: list[bool]


@dataclass(slots=True)
class _Workload:
    warmup: list[wl.Prompt]
    queries: list[_QueryRound]


def build_workload(params: BenchParams, token_ids: bool) -> _Workload:
    """Warm-up and query prompts. Seeded like LMCache: shuffle first, then the miss prefixes;
    query round k (k >= 2) draws from ``shuffle_seed + k - 1``."""
    docs: Sequence[wl.Prompt]
    if token_ids:
        docs = wl.make_token_documents(params.num_documents, params.document_length)
    else:
        docs = wl.make_documents(params.num_documents, params.document_length)
    ratio = wl.parse_hit_miss_ratio(params.hit_miss_ratio) if params.hit_miss_ratio else None
    queries = []
    for k in range(params.query_rounds):
        rng = random.Random(params.shuffle_seed + k)
        order = wl.repeat_indices(len(docs), params.repeat_count, params.repeat_mode, rng)
        prompts, forced = wl.add_cache_misses([docs[i] for i in order], ratio, rng)
        queries.append(_QueryRound(query_round_name(k + 1), prompts, order, forced))
    return _Workload(warmup=list(docs), queries=queries)


class _Runner:
    """One run: a client, a semaphore, the progress callback and the stop flag."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        params: BenchParams,
        model: str,
        chat: bool,
        progress_cb: ProgressCallback | None,
        stop_event: threading.Event | None,
    ) -> None:
        self.client = client
        self.params = params
        self.model = model
        self.chat = chat
        self.progress_cb = progress_cb
        self.stop_event = stop_event
        self.sem = asyncio.Semaphore(params.max_inflight_requests)

    def _progress(self, phase: str, done: int, total: int) -> None:
        if self.progress_cb is not None:
            self.progress_cb(phase, done, total)

    def _check_stop(self) -> None:
        if self.stop_event is not None and self.stop_event.is_set():
            raise BenchCancelled("benchmark stopped")

    async def _one(self, rec: RequestRecord, prompt: wl.Prompt, t0: float) -> None:
        async with self.sem:  # like LMCache, a request starts once it holds the semaphore
            self._check_stop()
            rec.start_s = time.perf_counter() - t0
            try:
                out = await stream_request(
                    self.client, self.model, prompt, self.params.output_len, self.chat
                )
            except (httpx.HTTPError, RequestFailed, ValueError) as exc:
                rec.error = f"{type(exc).__name__}: {exc}".strip()
                return
            rec.ttft_s = out.ttft_s
            rec.latency_s = out.latency_s
            rec.prompt_tokens = out.prompt_tokens
            rec.output_tokens = out.output_tokens
            rec.text = out.text
            rec.response_id = out.response_id
            rec.ok = out.ttft_s is not None
            if not rec.ok:
                rec.error = "stream ended without a token"

    async def run_round(
        self,
        name: str,
        prompts: Sequence[wl.Prompt],
        doc_indices: Sequence[int],
        forced: Sequence[bool] | None = None,
    ) -> tuple[list[RequestRecord], float, float]:
        """All ``prompts`` with bounded concurrency: the records, the wall time, the start's
        unix time."""
        total = len(prompts)
        records = [
            RequestRecord(
                round=name, index=i, doc_index=doc, forced_miss=bool(forced and forced[i])
            )
            for i, doc in enumerate(doc_indices)
        ]
        done = 0
        self._progress(name, 0, total)
        started_at = time.time()
        t0 = time.perf_counter()

        async def task(i: int) -> None:
            nonlocal done
            await self._one(records[i], prompts[i], t0)
            done += 1
            self._progress(name, done, total)

        outcomes = await asyncio.gather(*(task(i) for i in range(total)), return_exceptions=True)
        elapsed = time.perf_counter() - t0
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return records, elapsed, started_at

    async def prewarm(self, token_ids: bool) -> None:
        pre = wl.prewarm_prompts(token_ids)
        recs, _, _ = await self.run_round(PREWARM, pre, [-1] * len(pre))
        if not any(r.ok for r in recs):
            raise BenchError(f"every pre-warm request failed: {recs[0].error}")

    async def query_rounds(self, work: _Workload, result: BenchResult) -> None:
        for q in work.queries:
            recs, elapsed, at = await self.run_round(q.name, q.prompts, q.docs, q.forced)
            result.records.extend(recs)
            result.rounds[q.name] = RoundStats.from_records(q.name, elapsed, recs, at)


async def run_benchmark_async(
    params: BenchParams,
    base_url: str,
    progress_cb: ProgressCallback | None = None,
    stop_event: threading.Event | None = None,
    restart: RestartHook | None = None,
) -> BenchResult:
    """The benchmark in the running event loop (see the module docstring)."""
    params.validate()
    conns = params.max_inflight_requests + 2
    async with make_client(base_url, params.api_key, conns, params.request_timeout_s) as client:
        try:
            model = params.model or await discover_model(client)
        except (httpx.HTTPError, RequestFailed, ValueError) as exc:
            raise BenchError(f"cannot reach the server at {base_url}: {exc}") from exc
        token_ids = params.token_ids
        if token_ids is None:
            token_ids = not await probe_tokenizer(client, model)
            if token_ids:
                log.warning("the server does not tokenize text: sending token-id prompts")
        chat = not params.completions
        if token_ids and chat:
            log.warning("token-id prompts need /v1/completions: using it instead of chat")
            chat = False
        effective = replace(params, model=model, token_ids=token_ids, completions=not chat)
        effective.validate()
        runner = _Runner(client, effective, model, chat, progress_cb, stop_event)
        work = build_workload(effective, token_ids)
        result = BenchResult(
            params=effective.public_dict(),
            base_url=base_url,
            model=model,
            token_ids=token_ids,
            started_at=time.time(),
            restarted_before_query=restart is not None,
        )

        if effective.prewarm:
            await runner.prewarm(token_ids)

        recs, elapsed, at = await runner.run_round(
            WARMUP, work.warmup, list(range(len(work.warmup)))
        )
        result.records.extend(recs)
        result.rounds[WARMUP] = RoundStats.from_records(WARMUP, elapsed, recs, at)

        if effective.sleep_time_after_warmup > 0:
            runner._check_stop()
            await asyncio.sleep(effective.sleep_time_after_warmup)

        if restart is None:
            await runner.query_rounds(work, result)
            return result
    # The first client's connections point at the server the hook stops: a new client follows.
    runner._check_stop()
    try:
        new_url, new_key = await asyncio.to_thread(restart)
    except Exception as exc:
        raise BenchError(f"restart before the query round failed: {exc}") from exc
    result.restarted_base_url = new_url
    async with make_client(new_url, new_key, conns, params.request_timeout_s) as client:
        runner = _Runner(client, effective, model, chat, progress_cb, stop_event)
        # The new server gets the same unmeasured wake-up as the first one had before its round.
        if effective.prewarm:
            await runner.prewarm(token_ids)
        await runner.query_rounds(work, result)
    return result


def run_benchmark(
    params: BenchParams,
    base_url: str,
    progress_cb: ProgressCallback | None = None,
    stop_event: threading.Event | None = None,
    restart: RestartHook | None = None,
) -> BenchResult:
    """Run the benchmark to completion in a fresh event loop (call it from a thread without one).

    ``restart`` (optional) is called, in a worker thread, between the warm-up and the query
    round; it restarts the server and returns the new server's base URL and API key.

    Raises ValueError (bad params), BenchError (cannot run, or the restart failed),
    BenchCancelled (stop_event set). Individual failed requests do not raise: they are records
    with ``ok=False``.
    """
    return asyncio.run(run_benchmark_async(params, base_url, progress_cb, stop_event, restart))
